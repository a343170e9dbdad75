"""The simulate stage of a config: ``cosmosbi simulate`` and the first stage of ``cosmosbi run``."""

from __future__ import annotations

from cosmosbi.simulators.runner import RunSummary, run_simulations

__all__ = ["simulate_from_config"]


def simulate_from_config(config, names: list[str] | None = None, source: str = "config", *, comm=None, progress: bool = True, chunk: tuple[int, int] | None = None) -> dict[str, RunSummary]:
    """Simulate the config's datasets (all, or ``names``) into ``RUN_DIR/sims/NAME``.

    Resumes whatever an earlier run left; under MPI every rank must call it. ``chunk=(k, K)``
    simulates only block k of K of each dataset and leaves it unmerged (a job-array task). Returns
    {name: :class:`RunSummary`} (the same on every rank).
    """
    names = list(config.datasets) if names is None else list(names)
    unknown = [n for n in names if n not in config.datasets]
    if unknown:
        raise ValueError(f"{source}: no dataset {unknown[0]!r}; the config defines {list(config.datasets)}")
    summaries = {}
    for name in names:
        dataset = config.datasets[name]
        simulator = config.build_simulator(source, name)
        summaries[name] = run_simulations(
            simulator,
            dataset.n,
            config.dataset_dir(name),
            dataset.seed,
            theta=config.dataset_theta(name, simulator.prior, source),
            batch_size=config.batch_size,
            comm=comm,
            progress=progress,
            chunk=chunk,
            simulation_timeout_s=dataset.simulation_timeout_s,
        )
    return summaries
