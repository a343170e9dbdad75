"""The ``summarise:NAME`` stages: summaries ``t`` of dataset NAME by the trained compressor, into
``RUN_DIR/summaries/NAME``.

One per dataset of ``compressor.apply_to`` (default: all) and, when the estimator reads the
compressor's summaries, per dataset the estimator, the validation and the baseline read. They
are of kind ``compress`` (``cosmosbi run --stage compress`` and the SLURM compress job run
them). Key: the compressor's key and the dataset's.
"""

from __future__ import annotations

from cosmosbi.stages.base import Declaration, StageType
from cosmosbi.stages.data import open_dataset

__all__ = ["STAGE", "write_summaries"]


def declare(config, dump: dict, layout):
    if config.compressor is None:
        return
    targets = list(config.compressor.apply_to or config.datasets)
    if config.estimator is not None and config.estimator.summary == "compressor":
        v = config.validation
        targets += [
            config.estimator.dataset,
            *([v.test, *v.shift, *([v.exact_on] if v.exact_on else [])] if v is not None else []),
        ]
        targets += [config.baseline.test] if config.baseline is not None else []
    for name in dict.fromkeys(targets):
        yield Declaration(f"summarise:{name}", {}, (layout.summaries(name),), ("compress", f"simulate:{name}"))


def write_summaries(config, layout, names: list[str], source: str = "config", compressor=None) -> dict:
    """Write the summaries of datasets ``names`` with ``compressor`` (default: the trained one of
    ``RUN_DIR/compressor``). Returns {name: summaries dataset}."""
    from cosmosbi.compressors.trainer import compress_dataset, load_compressor
    from cosmosbi.stages.compress import section_of
    from cosmosbi.torch_runtime import torch_threads

    section = section_of(config, source)
    if compressor is None:
        if not (layout.compressor / "compressor.json").is_file():
            raise ValueError(
                f"{source}: no trained compressor in {layout.compressor}; run `cosmosbi compress {source}` first"
            )
        compressor, _ = load_compressor(layout.compressor)
    with torch_threads(section.train.num_threads):  # the training's thread setting applies here too
        return {
            name: compress_dataset(
                compressor, open_dataset(layout.sims(name), source), layout.summaries(name), device=section.train.device
            )
            for name in names
        }


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    written = write_summaries(config, layout, [stage.target], source)[stage.target]
    return f"{stage.target}: {len(written)} summaries of dimension {written.read('t').shape[1]} -> {written.path}"


STAGE = StageType("summarise", "compress", declare, run)
