"""The ``estimate`` stage: fit the configured NPE / NLE (or an ensemble of them) on the
estimator's dataset and save it to ``RUN_DIR/estimator`` (``cosmosbi train`` runs it alone).

The estimator reads the dataset as ``estimator.summary`` says: the compressor's summaries,
log-bandpowers of flat fields, or the flattened outputs (:mod:`cosmosbi.stages.data`). Key:
the estimator section (without the settings that change no result and ``n_samples``, which
the sample stage hashes) and the stages that make its data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cosmosbi.files import atomic_write_json, hashed_settings
from cosmosbi.stages.base import Declaration, StageType, data_stages
from cosmosbi.stages.data import estimator_data

__all__ = ["STAGE", "fit_estimator", "estimate"]


def declare(config, dump: dict, layout):
    if config.estimator is not None:
        part = {"estimator": hashed_settings(dump["estimator"], drop={"n_samples", "ppc_simulations"})}
        yield Declaration("estimate", part, (layout.estimator,), tuple(data_stages(config, [config.estimator.dataset])))


def fit_estimator(config, layout, source: str = "config", progress: bool = False):
    """Fit the configured estimator on its dataset and save it. Returns (estimator, directory)."""
    from cosmosbi.estimators.ensemble import fit_ensemble
    from cosmosbi.estimators.io import save_estimator
    from cosmosbi.estimators.nle import NLE
    from cosmosbi.estimators.npe import NPE

    settings = config.estimator
    if settings is None:
        raise ValueError(f"{source}: no estimator section; add one to train an estimator")
    if settings.dataset not in config.datasets:
        raise ValueError(
            f"{source}: estimator.dataset {settings.dataset!r} is not one of the datasets {list(config.datasets)}"
        )
    simulator = config.build_simulator(source)
    theta, t, _ = estimator_data(config, layout, settings.dataset, source)
    cls = NPE if settings.kind == "npe" else NLE
    try:  # the config's fields override the estimator's defaults
        flow = dataclasses.replace(cls.default_flow, **settings.flow)
        training = dataclasses.replace(cls.default_training, **settings.training)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: estimator: {err}") from None
    rng = np.random.default_rng(settings.seed)
    if settings.ensemble > 1:
        estimator = fit_ensemble(
            settings.kind,
            simulator.prior,
            theta,
            t,
            rng,
            n_members=settings.ensemble,
            flows=[flow],
            training=training,
            device=settings.device,
        )
    else:
        estimator = cls(simulator.prior, flow, training, device=settings.device).fit(theta, t, rng, progress=progress)
    directory = save_estimator(estimator, layout.estimator)
    atomic_write_json(directory / "config.json", config.model_dump(mode="json"))
    return estimator, directory


def estimate(config, layout, source: str = "config", *, progress: bool = True) -> str:
    """Fit and save the estimator; returns a one-line description."""
    estimator, directory = fit_estimator(config, layout, source, progress=progress)
    summaries = [m.summary for m in getattr(estimator, "members", [estimator])]
    seconds = sum(s.seconds for s in summaries)
    epochs = ", ".join(str(s.epochs) for s in summaries)
    kind = config.estimator.kind.upper()
    return f"trained {kind} ({len(summaries)} network(s), epochs {epochs}) in {seconds:.1f} s -> {directory}"


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    return estimate(config, layout, source, progress=progress)


STAGE = StageType("estimate", "estimate", declare, run)
