"""The ``sample`` stage: posterior samples of the config's observations, into ``RUN_DIR/posterior``
(``NAME.h5``, a GetDist chain ``NAME.txt``, a triangle plot ``NAME.png`` and ``summary.json``).

Every observation is also checked (:func:`check_observations`, written under ``checks`` in
``summary.json``, as ``NAME-checks.png`` and in the page ``checks.html``):

- in distribution: the OOD p-value of its summaries against the estimator's training summaries
  (:func:`cosmosbi.analyses.shift.ood_scores`);
- posterior predictive check: ``estimator.ppc_simulations`` (default 100) simulations at
  posterior draws, seeded from ``estimator.seed`` and the observation's name; rank p-values of
  each of the estimator's summaries and, for map outputs, of each band of the power spectrum,
  and one combined p-value per set (:mod:`cosmosbi.analyses.checks`).

A p-value below :data:`ALPHA` is logged as a warning and named in the stage's result line.

``cosmosbi sample CONFIG --obs FILE`` samples the observations of a file with the same code
(:func:`posterior_samples`). Key: the observations (with the digest of each file's bytes), the
number of samples, ``estimator.ppc_simulations`` where set, the estimator's key and the
datasets observations are taken from.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from pathlib import Path

import numpy as np

from cosmosbi.layout import RunLayout
from cosmosbi.simulators.store import SimulationDataset
from cosmosbi.stages.base import Declaration, StageType
from cosmosbi.stages.data import estimator_data, observation_rows, observation_summaries, read_observations

__all__ = [
    "STAGE",
    "ALPHA",
    "DEFAULT_PPC_SIMULATIONS",
    "file_digest",
    "output_shape",
    "posterior_samples",
    "check_observations",
    "sample_observations",
    "sample_file",
]

ALPHA = 0.01  # p-values below this mark an observation out of distribution or unlike the posterior predictive
DEFAULT_PPC_SIMULATIONS = 100
MAX_CHECKED_SUMMARIES = 64  # more estimator inputs (e.g. raw pixels) are not checked one by one

log = logging.getLogger(__name__)


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
    if config.estimator.ppc_simulations is not None:  # hashed when set: keys of configs without it stay as they were
        part["ppc_simulations"] = config.estimator.ppc_simulations
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


def posterior_samples(config, layout, x: np.ndarray, n: int, source: str = "config", *, keep_going: bool = False):
    """Posterior samples of M observations x: (M, *output shape) by the trained estimator.

    Each observation is summarised as the estimator's training data were and sampled in turn
    with one generator seeded ``estimator.seed + 1``. Returns (samples (M, n, D), the
    estimator, {m: message} of the observations that could not be sampled). An observation
    whose estimated posterior has almost no mass inside the prior (far outside the training
    data) stops the sampling with a ``RuntimeError``; with ``keep_going`` its block of samples
    is NaN and the message is returned instead.
    """
    from cosmosbi.estimators.io import load_estimator

    if config.estimator is None:
        raise ValueError(f"{source}: no estimator section")
    estimator = load_estimator(layout.estimator, device=config.estimator.device)
    t = observation_summaries(config, layout, np.asarray(x))
    rng = np.random.default_rng(config.estimator.seed + 1)
    samples, failures = np.full((len(t), int(n), len(estimator.prior.names)), np.nan), {}
    for m in range(len(t)):
        try:
            samples[m] = estimator.sample(int(n), t[m : m + 1], rng)[0]
        except RuntimeError as err:
            if not keep_going:
                raise
            failures[m] = str(err)
    return samples, estimator, failures


def check_observations(
    config,
    layout,
    rows: dict[str, np.ndarray],
    samples: np.ndarray,
    source: str = "config",
    failures: dict[int, str] | None = None,
):
    """The checks of observations ``rows`` ({name: one simulator output}) with posterior samples
    (M, n, D), as described in the module docstring; ``failures`` ({m: message}) names the
    observations without posterior samples (no predictive check for them, and flagged).

    Writes ``NAME-checks.png`` for each observation with a predictive check and returns
    ({name: checks as JSON data}, the :class:`~cosmosbi.analyses.report.Report` of them all,
    one line per observation with a small p-value).
    """
    from cosmosbi.analyses import plots
    from cosmosbi.analyses.checks import map_spectrum, predictive_check, simulate_predictive
    from cosmosbi.analyses.report import Report
    from cosmosbi.analyses.shift import ood_scores
    from cosmosbi.files import atomic_path

    settings = config.estimator
    n_ppc = DEFAULT_PPC_SIMULATIONS if settings.ppc_simulations is None else settings.ppc_simulations
    simulator = config.build_simulator(source, settings.dataset)
    output = output_shape(config, source)[0]
    train_t = estimator_data(config, layout, settings.dataset, source)[1]
    observed_t = observation_summaries(config, layout, np.stack(list(rows.values())))
    k = min(10, len(train_t) - 1)
    ood = ood_scores(train_t, observed_t, k=k) if k >= 1 else np.full(len(rows), np.nan)
    report = Report(f"Checks of the observations of {config.run_dir}")
    results, warnings, table, shown = {}, [], [], []
    for m, (name, x) in enumerate(rows.items()):
        result = {
            "in_distribution": {
                "pvalue": float(ood[m]),
                "statistic": f"mean distance to the {k} nearest of {len(train_t)} training summaries "
                f"(dataset {settings.dataset!r})",
            }
        }
        problems = [f"out of the training distribution (OOD p = {ood[m]:.3g})"] if ood[m] < ALPHA else []
        groups = {}
        if failures and m in failures:
            problems.append(f"no posterior: {failures[m]}")
            result["posterior_error"] = failures[m]
        elif n_ppc > 0:
            seed = np.random.SeedSequence([settings.seed, zlib.crc32(name.encode())])
            _, predicted = simulate_predictive(simulator, samples[m], n_ppc, output, seed, config.batch_size)
            predicted_t = observation_summaries(config, layout, predicted)
            if predicted_t.shape[1] <= MAX_CHECKED_SUMMARIES:
                names = [f"t{j}" for j in range(predicted_t.shape[1])]
                groups["summaries"] = predictive_check(observed_t[m], predicted_t, names)
            spectrum = map_spectrum(np.concatenate([x[None], predicted]), simulator)
            if spectrum is not None and settings.summary != "power_spectrum":
                groups["power spectrum"] = predictive_check(spectrum[0][0], spectrum[0][1:], spectrum[1])
            result["predictive"] = {
                "n_simulations": n_ppc,
                "simulator": (config.datasets[settings.dataset].simulator or config.simulator).name,
                **{label.replace(" ", "_"): check.to_dict() for label, check in groups.items()},
            }
            problems += [
                f"unlike its posterior predictive {label} (p = {check.pvalue:.3g})"
                for label, check in groups.items()
                if check.pvalue < ALPHA
            ]
        result["flagged"] = bool(problems)
        results[name] = result
        if problems:
            line = f"{name}: " + "; ".join(problems)
            log.warning("observation %s", line)
            warnings.append(line)
        table.append(
            [
                name,
                float(ood[m]),
                *(f"{groups[g].pvalue:.3g}" if g in groups else "-" for g in ("summaries", "power spectrum")),
                "flagged" if problems else "consistent",
            ]
        )
        if groups:
            shown.append((name, groups))
    report.add_table(
        "Verdicts",
        ["observation", "OOD p-value", "PPC p (summaries)", "PPC p (power spectrum)", "verdict"],
        table,
        note=f"p-values below {ALPHA} flag an observation; PPC: {n_ppc} simulations at posterior draws, "
        "combined p-value of the Mahalanobis distance from the predictive draws.",
    )
    for name, groups in shown:
        figure = plots.predictive_histograms(groups, title=f"posterior predictive check of {name}")
        body = "<p>Grey: the statistics of the predictive simulations; red: the observation's.</p>"
        report.add(f"Posterior predictive check of {name}", body, figures=[figure])
        with atomic_path(layout.posterior / f"{name}-checks.png") as tmp:
            tmp.write_bytes(report.figures[-1][1])  # the PNG the report embeds
    return results, report, warnings


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
    samples, estimator, failures = posterior_samples(
        config, layout, np.stack(list(rows.values())), n_samples, source, keep_going=True
    )
    out_dir = layout.posterior
    out_dir.mkdir(parents=True, exist_ok=True)
    checks, report, warnings = check_observations(config, layout, rows, samples, source, failures)
    summary = {}
    for m, (name, block) in enumerate(zip(rows, samples)):
        if m in failures:  # nothing to write but the checks, which flag it
            summary[name] = {"checks": checks[name]}
            continue
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
        summary[name]["checks"] = checks[name]
    atomic_write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "checks.html") as tmp:
        tmp.write_text(report.html())
    shown = "; ".join(
        f"{n}: " + ", ".join(f"{p} = {s[p]['mean']:.4g} +- {s[p]['std']:.2g}" for p in names)
        for n, s in summary.items()
        if names[0] in s
    )
    flagged = f"; WARNING {' | '.join(warnings)}" if warnings else "; every observation passes its checks"
    return f"{n_samples} posterior samples per observation -> {out_dir}; {shown}{flagged}"


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
    samples, estimator, _ = posterior_samples(config, layout, x[None] if single else x, n, source)
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
