"""The ``sample`` stage: posterior samples of the config's observations, into ``RUN_DIR/posterior``
(``NAME.h5``, a GetDist chain ``NAME.txt``, a triangle plot ``NAME.png`` and ``summary.json``).

``cosmosbi sample CONFIG --obs FILE`` samples the observations of a file with the same code
(:func:`posterior_samples`). Key: the observations (with the digest of each file's bytes), the
number of samples, the estimator's key and the datasets observations are taken from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cosmosbi.layout import RunLayout
from cosmosbi.simulators.store import SimulationDataset
from cosmosbi.stages.base import Declaration, StageType
from cosmosbi.stages.data import observation_rows, observation_summaries, read_observations

__all__ = ["STAGE", "file_digest", "output_shape", "posterior_samples", "sample_observations", "sample_file"]


def file_digest(path: str) -> str | None:
    """Hash of a file's bytes (observations are inputs like any config value), None if absent."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def declare(config, dump: dict, layout):
    if config.estimator is None or not config.observations:
        return
    observations = {
        name: {**obs, "file_digest": file_digest(obs["file"]) if obs["file"] else None}
        for name, obs in dump["observations"].items()
    }
    from_datasets = [o.dataset for o in config.observations.values() if o.dataset is not None]
    part = {"observations": observations, "n_samples": config.estimator.n_samples}
    needs = ["estimate", *(f"simulate:{n}" for n in from_datasets)]
    yield Declaration("sample", part, (layout.posterior,), tuple(dict.fromkeys(needs)))


def output_shape(config, source: str = "config") -> tuple[str, tuple[int, ...]]:
    """The name and shape of one simulator output the estimator reads."""
    spec = config.build_simulator(source).output_spec
    if spec is not None:
        name = config.estimator.output or next(iter(spec))
        return name, tuple(spec[name].shape)
    # a plain function declares no outputs: read them from the estimator's training dataset
    stored = SimulationDataset(RunLayout(config.run_dir).sims(config.estimator.dataset)).output_spec
    name = config.estimator.output or next(iter(stored))
    return name, tuple(stored[name]["shape"])


def posterior_samples(config, layout, x: np.ndarray, n: int, source: str = "config"):
    """Posterior samples of M observations x: (M, *output shape) by the trained estimator.

    Each observation is summarised as the estimator's training data were and sampled in turn
    with one generator seeded ``estimator.seed + 1``. Returns (samples (M, n, D), the
    estimator).
    """
    from cosmosbi.estimators.io import load_estimator

    if config.estimator is None:
        raise ValueError(f"{source}: no estimator section")
    estimator = load_estimator(layout.estimator, device=config.estimator.device)
    t = observation_summaries(config, layout, np.asarray(x))
    rng = np.random.default_rng(config.estimator.seed + 1)
    samples = [estimator.sample(int(n), t[m : m + 1], rng)[0] for m in range(len(t))]
    return np.stack(samples) if samples else np.empty((0, int(n), len(estimator.prior.names))), estimator


def sample_observations(config, layout, source: str = "config") -> str:
    """Sample the posterior of every observation of the config; returns a one-line summary."""
    import matplotlib.pyplot as plt

    from cosmosbi.analyses import plots
    from cosmosbi.estimators.io import save_samples_hdf5, write_getdist_chain
    from cosmosbi.files import atomic_path, atomic_write_json

    n_samples = config.estimator.n_samples
    names = list(config.build_simulator(source).parameter_names)
    output, expected = output_shape(config, source)
    rows = observation_rows(config, layout, source)
    for name, x in rows.items():
        if tuple(np.shape(x)) != expected:
            raise ValueError(
                f"{source}: observations.{name}: expected one output of shape {expected}, got {np.shape(x)}"
            )
    samples, estimator = posterior_samples(config, layout, np.stack(list(rows.values())), n_samples, source)
    out_dir = layout.posterior
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, block in zip(rows, samples):
        save_samples_hdf5(out_dir / f"{name}.h5", block, names, attrs={"observation": name})
        write_getdist_chain(out_dir / name, block, names, prior=estimator.prior)
        figure = plots.corner({name: block}, names, title=f"posterior of {name}")
        with atomic_path(out_dir / f"{name}.png") as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        lo, hi = np.quantile(block, [0.16, 0.84], axis=0)
        summary[name] = {
            p: {
                "mean": float(block[:, j].mean()),
                "std": float(block[:, j].std()),
                "interval_68": [float(lo[j]), float(hi[j])],
            }
            for j, p in enumerate(names)
        }
    atomic_write_json(out_dir / "summary.json", summary)
    shown = "; ".join(
        f"{n}: " + ", ".join(f"{p} = {v['mean']:.4g} +- {v['std']:.2g}" for p, v in s.items())
        for n, s in summary.items()
    )
    return f"{n_samples} posterior samples per observation -> {out_dir}; {shown}"


def sample_file(
    config,
    layout,
    obs_path: str | Path,
    out: str | Path | None = None,
    *,
    n_samples: int | None = None,
    obs_key: str | None = None,
    source: str = "config",
) -> dict:
    """Sample the trained estimator's posterior for the observations in ``obs_path`` (``cosmosbi sample``).

    The file holds one simulator output (e.g. a field (n, n)) or a batch (M, n, n). Writes
    ``OUT.h5`` (samples (n, D) or (M, n, D); default OUT: ``RUN_DIR/posterior/samples``) and
    GetDist chains ``OUT.txt`` (one observation) or ``OUT_<m>.txt``. Returns a dict of what was
    written.
    """
    from cosmosbi.estimators.io import save_samples_hdf5, write_getdist_chain

    if config.estimator is None:
        raise ValueError(f"{source}: no estimator section")
    x = read_observations(obs_path, obs_key)
    name, shape = output_shape(config, source)
    single = tuple(x.shape) == shape
    if not single and tuple(x.shape[1:]) != shape:
        raise ValueError(f"--obs: expected one {name} of shape {shape} or a batch (M, *{shape}), got {x.shape}")
    n = int(n_samples or config.estimator.n_samples)
    samples, estimator = posterior_samples(config, layout, x[None] if single else x, n, source)
    out = Path(out) if out is not None else layout.posterior / "samples"
    names = list(config.build_simulator(source).parameter_names)
    h5 = save_samples_hdf5(
        out.with_name(out.name + ".h5"),
        samples[0] if single else samples,
        names,
        attrs={"observations": str(obs_path), "estimator": str(layout.estimator)},
    )
    chains = []
    for m, block in enumerate(samples):
        root = out if single else out.with_name(f"{out.name}_{m}")
        chains.append(write_getdist_chain(root, block, names, prior=estimator.prior))
    return {"hdf5": h5, "chains": chains, "n_observations": len(samples), "n_samples": n}


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    return sample_observations(config, layout, source)


STAGE = StageType("sample", "sample", declare, run)
