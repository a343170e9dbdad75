"""The work of each stage of an analysis, shared by ``cosmosbi run`` and the single-stage commands.

Each function runs one stage of a validated config and returns a one-line description of what
it produced; :mod:`cosmosbi.pipeline` decides which stages run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["simulate", "compress", "summarise", "estimate", "validate", "baseline", "sample", "observation_rows"]


def simulate(config, names: list[str] | None, source: str, *, comm=None, progress: bool = True, chunk: tuple[int, int] | None = None) -> str:
    """Simulate datasets ``names`` (default: all) of the config; under MPI every rank calls it.
    ``chunk=(k, K)`` simulates only block k of K of each dataset (see ``run_simulations``)."""
    from cosmosbi.simulators.pipeline import simulate_from_config

    summaries = simulate_from_config(config, names, source, comm=comm, progress=progress, chunk=chunk)
    return "; ".join(
        f"{name}: {s.simulated} of {s.n} simulations stored, {s.failed} failed, {s.new_this_run} run now -> {s.path} [{s.status}]"
        for name, s in summaries.items()
    )


def compress(config, source: str, *, progress: bool = True, summaries: bool = True) -> str:
    """Train the compressor and (unless ``summaries`` is false) write the summaries of its datasets."""
    from cosmosbi.compressors.pipeline import compressor_dir, summarise_from_config, train_from_config

    compressor, result = train_from_config(config, source, progress=progress)
    message = (f"compressor: best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} of {len(result.history)}"
               f"{' (stopped early)' if result.stopped_early else ''} -> {compressor_dir(config)}")
    if summaries:
        written = summarise_from_config(config, None, source, compressor)
        message += "; summaries (rows x dimension) of " + ", ".join(f"{name} ({len(ds)} x {compressor.summary_dim})" for name, ds in written.items())
    return message


def summarise(config, name: str, source: str) -> str:
    """Write the summaries of dataset ``name`` with the trained compressor."""
    from cosmosbi.compressors.pipeline import summarise_from_config

    written = summarise_from_config(config, [name], source)[name]
    return f"{name}: {len(written)} summaries of dimension {written.read('t').shape[1]} -> {written.path}"


def estimate(config, source: str, *, progress: bool = True) -> str:
    """Fit the configured NPE / NLE (or ensemble)."""
    import contextlib
    import io

    from cosmosbi.estimators.pipeline import train_from_config

    # sbi prints a convergence line of its own: keep it off a quiet run, end it on a verbose one
    with contextlib.redirect_stdout(io.StringIO()) if not progress else contextlib.nullcontext():
        estimator, directory = train_from_config(config, source, progress=progress)
    if progress:
        print()
    summaries = [m.summary for m in getattr(estimator, "members", [estimator])]
    seconds = sum(s.seconds for s in summaries)
    epochs = ", ".join(str(s.epochs) for s in summaries)
    return f"trained {config.estimator.kind.upper()} ({len(summaries)} network(s), epochs {epochs}) in {seconds:.1f} s -> {directory}"


def validate(config, source: str, *, progress: bool = True) -> str:
    """SBC, coverage, TARP, exact comparison and domain shift; writes metrics.json and report.html."""
    from cosmosbi.analyses.pipeline import validate_from_config
    from cosmosbi.files import read_json

    path = validate_from_config(config, source, progress=progress)
    metrics = read_json(path.parent / "metrics.json")
    parts = [f"{name}: SBC {row['verdict']}" for name, row in metrics["validation"]["sbc"].items()]
    for key in ("hpd_coverage", "tarp"):
        if metrics["validation"].get(key):
            parts.append(f"{key}: {metrics['validation'][key]['verdict']}")
    c2st = [c["c2st"] for c in metrics.get("exact_comparison", [])]
    if c2st:
        parts.append(f"C2ST vs exact {', '.join(f'{c:.3f}' for c in c2st)}")
    return "; ".join(parts) + f" -> {path}"


def baseline(config, source: str, *, progress: bool = True) -> str:
    """Power-spectrum Gaussian-likelihood posteriors of test observations against the full-field
    estimator's; writes ``RUN_DIR/baseline/metrics.json`` and ``triangle.png``."""
    from cosmosbi.analyses.baseline import baseline_from_config
    from cosmosbi.files import read_json

    path = baseline_from_config(config, source, progress=progress)
    m = read_json(path)
    s = m["summary"]
    parts = [f"area ratio ({', '.join(s['pair'])}) power spectrum / full field: mean {s['area_ratio_mean']:.3g}"
             f" +- {s['area_ratio_error'] or 0:.2g}, median {s['area_ratio_median']:.3g} over {s['n_observations']} test simulations"]
    if "S_8_std_ratio_mean" in s:
        parts.append(f"S_8 std ratio mean {s['S_8_std_ratio_mean']:.3g}")
    return "; ".join(parts) + f" -> {path}"


def observation_rows(config, source: str = "config") -> dict[str, np.ndarray]:
    """The config's observations: {name: one simulator output}, from files or dataset rows."""
    from cosmosbi.estimators.pipeline import _output_name, read_observations
    from cosmosbi.simulators.store import SimulationDataset

    out = {}
    for name, obs in (config.observations or {}).items():
        if obs.file is not None:
            out[name] = read_observations(obs.file, obs.key)
            continue
        dataset = SimulationDataset(config.dataset_dir(obs.dataset))
        if not 0 <= obs.index < len(dataset):
            raise ValueError(f"{source}: observations.{name}.index {obs.index} is outside dataset {obs.dataset!r} ({len(dataset)} rows)")
        out[name] = dataset.read(_output_name(dataset, config.estimator))[obs.index]
    return out


def sample(config, source: str, *, progress: bool = True) -> str:
    """Posterior samples for each observation: ``RUN_DIR/posterior/NAME.h5``, a GetDist chain
    ``NAME.txt``, a triangle plot ``NAME.png`` and ``summary.json`` (mean, std, 68% interval)."""
    import matplotlib.pyplot as plt

    from cosmosbi.analyses import plots
    from cosmosbi.estimators.io import load_estimator, save_samples_hdf5, write_getdist_chain
    from cosmosbi.estimators.pipeline import estimator_dir, observation_summaries
    from cosmosbi.files import atomic_path, atomic_write_json

    settings = config.estimator
    estimator = load_estimator(estimator_dir(config), device=settings.device)
    names = list(config.build_simulator(source).parameter_names)
    out_dir = Path(config.run_dir) / "posterior"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed + 1)
    summary = {}
    for name, x in observation_rows(config, source).items():
        spec = config.build_simulator(source).output_spec
        expected = tuple(spec[settings.output or next(iter(spec))].shape)
        if tuple(np.shape(x)) != expected:
            raise ValueError(f"{source}: observations.{name}: expected one output of shape {expected}, got {np.shape(x)}")
        t = observation_summaries(config, np.asarray(x)[None])
        samples = estimator.sample(settings.n_samples, t, rng)[0]  # (n, D)
        save_samples_hdf5(out_dir / f"{name}.h5", samples, names, attrs={"observation": name})
        write_getdist_chain(out_dir / name, samples, names, prior=estimator.prior)
        figure = plots.corner({name: samples}, names, title=f"posterior of {name}")
        with atomic_path(out_dir / f"{name}.png") as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        lo, hi = np.quantile(samples, [0.16, 0.84], axis=0)
        summary[name] = {p: {"mean": float(samples[:, j].mean()), "std": float(samples[:, j].std()), "interval_68": [float(lo[j]), float(hi[j])]}
                         for j, p in enumerate(names)}
    atomic_write_json(out_dir / "summary.json", summary)
    shown = "; ".join(f"{n}: " + ", ".join(f"{p} = {v['mean']:.4g} +- {v['std']:.2g}" for p, v in s.items()) for n, s in summary.items())
    return f"{settings.n_samples} posterior samples per observation -> {out_dir}; {shown}"
