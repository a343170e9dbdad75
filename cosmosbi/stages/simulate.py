"""The ``simulate:NAME`` stages: one per dataset of the config, into ``RUN_DIR/sims/NAME``.

Key: the simulator (the dataset's own or the config's), the prior and the dataset's settings.
Under MPI every rank simulates; a rerun resumes from the part files a killed run left, and a
raised ``n`` adds the missing simulations (see :mod:`cosmosbi.pipeline`).
"""

from __future__ import annotations

from cosmosbi.files import hashed_settings, read_json
from cosmosbi.stages.base import Declaration, StageType

__all__ = ["STAGE", "simulate_datasets"]


def declare(config, dump: dict, layout):
    for name, dataset in dump["datasets"].items():
        part = {
            "simulator": dataset["simulator"] or dump["simulator"],
            "prior": dump["prior"],
            **hashed_settings({k: v for k, v in dataset.items() if k != "simulator"}),
        }
        yield Declaration(f"simulate:{name}", part, (layout.sims(name),))


def simulate_datasets(
    config,
    layout,
    names: list[str] | None = None,
    source: str = "config",
    *,
    comm=None,
    progress: bool = True,
    chunk: tuple[int, int] | None = None,
) -> str:
    """Simulate datasets ``names`` (default: all) of the config; under MPI every rank calls it.

    Resumes whatever an earlier run left. ``chunk=(k, K)`` simulates only block k of K of each
    dataset and leaves it unmerged (a job-array task; see ``run_simulations``). Returns one line
    per dataset ("; "-separated) with what it holds.
    """
    from cosmosbi.simulators.runner import run_simulations

    names = list(config.datasets) if names is None else list(names)
    unknown = [n for n in names if n not in config.datasets]
    if unknown:
        raise ValueError(f"{source}: no dataset {unknown[0]!r}; the config defines {list(config.datasets)}")
    lines = []
    for name in names:
        dataset = config.datasets[name]
        simulator = config.build_simulator(source, name)
        s = run_simulations(
            simulator,
            dataset.n,
            layout.sims(name),
            dataset.seed,
            theta=config.dataset_theta(name, simulator.prior, source),
            batch_size=config.batch_size,
            comm=comm,
            progress=progress,
            chunk=chunk,
            simulation_timeout_s=dataset.simulation_timeout_s,
        )
        lines.append(
            f"{name}: {s.simulated} of {s.n} simulations stored, {s.failed} failed, {s.new_this_run} run now "
            f"-> {s.path} [{s.status}]"
        )
    return "; ".join(lines)


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    return simulate_datasets(config, layout, [stage.target], source, comm=comm, progress=progress)


def progress(stage, layout) -> str | None:
    """Simulations stored and part files not merged yet of an unfinished dataset."""
    sims = stage.paths[0]
    parts = list((sims / "parts").glob("part-*.h5")) if (sims / "parts").is_dir() else []
    manifest = sims / "manifest.json"
    if not manifest.is_file():
        return None
    counts = read_json(manifest).get("counts", {})
    return (
        f"{counts.get('simulated', 0)} simulated, {counts.get('failed', 0)} failed, "
        f"{counts.get('missing', '?')} missing; "
        f"{len(parts)} part file(s) not merged yet"
    )


# the manifest records every later `cosmosbi simulate` of the dataset; the shards are the data
STAGE = StageType(
    "simulate",
    "simulate",
    declare,
    run,
    all_ranks=True,
    progress=progress,
    unchecked=("manifest.json", "parts/*", "*.tmp"),
    refuse_damaged=True,
)
