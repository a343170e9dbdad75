"""The stages of an analysis: one module per kind of stage, each declaring what it reads, what it
writes, what its key hashes, and doing the work.

==================  ======================================  ==================================
stage (module)      writes (under RUN_DIR)                  its key hashes
==================  ======================================  ==================================
``simulate:NAME``   ``sims/NAME``                           simulator, prior, datasets.NAME
``compress``        ``compressor``                          compressor + its training dataset
``summarise:NAME``  ``summaries/NAME``                      the compressor + dataset NAME
``estimate``        ``estimator``                           estimator + its training data
``validate``        ``validation`` (metrics + HTML report)  validation + estimator + test data
``baseline``        ``baseline`` (metrics + triangle plot)  baseline + estimator + its datasets
``sample``          ``posterior``                           observations + estimator
==================  ======================================  ==================================

:data:`STAGE_TYPES` lists them in the order they run; :mod:`cosmosbi.pipeline` plans and runs
them. A new kind of stage is one module here (a ``STAGE = StageType(...)`` with its
``declare`` and ``run``), its line in :data:`STAGE_TYPES` and its config section.
"""

from cosmosbi.stages import baseline, compress, estimate, sample, simulate, summarise, validate
from cosmosbi.stages.base import Declaration, Stage, StageType

__all__ = ["STAGE_TYPES", "STAGE_KINDS", "Declaration", "Stage", "StageType"]

STAGE_TYPES: tuple[StageType, ...] = (
    simulate.STAGE,
    compress.STAGE,
    summarise.STAGE,
    estimate.STAGE,
    validate.STAGE,
    baseline.STAGE,
    sample.STAGE,
)
# the kinds, in order: what `cosmosbi run --stage` selects and what each SLURM job runs
STAGE_KINDS: tuple[str, ...] = tuple(dict.fromkeys(t.kind for t in STAGE_TYPES))
