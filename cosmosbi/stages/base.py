"""What a stage is: the declaration each module of :mod:`cosmosbi.stages` makes, and the planned stage.

A stage module ends with ``STAGE = StageType(...)``: its kind, a ``declare`` function that yields
the stages of a config (name, the config part its key hashes, the artifacts it writes, the
stages it reads) and a ``run`` function that does the work. :func:`cosmosbi.pipeline.plan_stages`
turns the declarations into :class:`Stage` objects with keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["Declaration", "Stage", "StageType", "data_stages"]


@dataclass(frozen=True)
class Declaration:
    """One stage of a config as its module declares it.

    ``part``: the config part its key hashes (besides the kind and the keys of ``needs``);
    ``paths``: the artifacts it writes (under the run directory); ``needs``: the names of the
    stages whose artifacts it reads.
    """

    name: str
    part: dict
    paths: tuple[Path, ...]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageType:
    """A kind of stage, as one module of :mod:`cosmosbi.stages` defines it.

    Attributes:
        name: the module's name (``summarise``).
        kind: the kind its stages have: part of their keys, selected by ``cosmosbi run --stage``
            and grouped into one SLURM job (``summarise`` stages are of kind ``compress``).
        declare: ``declare(config, dump, layout) -> iterable of Declaration`` (``dump``: the
            config as JSON data; ``layout``: the :class:`~cosmosbi.layout.RunLayout`).
        run: ``run(stage, config, layout, source, comm=..., progress=...) -> str``: does the
            work of one stage and returns a one-line description of what it produced.
        all_ranks: whether every MPI rank runs it (else rank 0 does while the others wait).
        progress: ``progress(stage, layout) -> str | None``: what an unfinished stage has
            done so far, for ``cosmosbi status``.
        unchecked: globs (relative to each artifact folder) of files left out of the stage's
            fingerprint, e.g. a manifest that later commands append to.
        refuse_damaged: a finished stage whose artifacts changed stops the run with an error
            naming the file (its data can no longer be trusted, and rerunning would hide it)
            instead of rerunning.
    """

    name: str
    kind: str
    declare: Callable[..., Iterable[Declaration]]
    run: Callable[..., str]
    all_ranks: bool = False
    progress: Callable[..., str | None] | None = None
    unchecked: tuple[str, ...] = ()
    refuse_damaged: bool = False


@dataclass(frozen=True)
class Stage:
    """One planned stage: its name (``simulate:train``, ``compress``, ...), kind, key, the config
    part the key hashes, its artifact paths and the stages it needs."""

    name: str
    kind: str
    key: str
    part: dict = field(repr=False)
    paths: tuple[Path, ...]
    needs: tuple[str, ...]
    type: StageType = field(repr=False, compare=False)

    @property
    def file_name(self) -> str:
        return self.name.replace(":", "-")

    @property
    def target(self) -> str:
        """What the stage is about after the colon (the dataset of ``simulate:train``), or ''."""
        return self.name.partition(":")[2]


def data_stages(config, names) -> list[str]:
    """The stages that make datasets ``names`` as the estimator reads them: their summaries
    (``summarise:NAME``) when the estimator uses the compressor, else their simulations."""
    kind = "summarise" if config.estimator is not None and config.estimator.summary == "compressor" else "simulate"
    return [f"{kind}:{n}" for n in names]
