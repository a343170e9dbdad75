"""Posterior and likelihood estimators, MCMC samplers and explicit-likelihood baselines.

- :class:`NPE` / :class:`NLE`: neural posterior / likelihood estimators on sbi flows, both
  :class:`Posterior` (one ``sample`` / ``log_prob`` contract);
- :func:`fit_ensemble`, :class:`NPEEnsemble`, :class:`NLEEnsemble`: weighted mixtures;
- :func:`sample_emcee`, :func:`sample_stretch_batched`: MCMC;
- :class:`GaussianBandpowerLikelihood`, :func:`exact_posterior_samples`: baselines;
- :func:`save_estimator`, :func:`load_estimator`, :func:`save_samples_hdf5`,
  :func:`write_getdist_chain`: files.
"""

from cosmosbi.estimators.baselines import GaussianBandpowerLikelihood, exact_posterior_samples
from cosmosbi.estimators.ensemble import NLEEnsemble, NPEEnsemble, fit_ensemble, stacking_weights
from cosmosbi.estimators.io import (
    load_estimator,
    load_samples_hdf5,
    save_estimator,
    save_samples_hdf5,
    write_getdist_chain,
)
from cosmosbi.estimators.mcmc import MCMCResult, sample_emcee, sample_stretch_batched
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig, TrainingSummary
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.npe import NPE
from cosmosbi.estimators.posterior import Posterior, PosteriorWithLogDensities
from cosmosbi.estimators.reference import PowerSpectrumProblem

__all__ = [
    "NPE",
    "NLE",
    "Posterior",
    "PosteriorWithLogDensities",
    "FlowConfig",
    "TrainingConfig",
    "TrainingSummary",
    "NPEEnsemble",
    "NLEEnsemble",
    "fit_ensemble",
    "stacking_weights",
    "MCMCResult",
    "sample_emcee",
    "sample_stretch_batched",
    "GaussianBandpowerLikelihood",
    "exact_posterior_samples",
    "PowerSpectrumProblem",
    "save_estimator",
    "load_estimator",
    "save_samples_hdf5",
    "load_samples_hdf5",
    "write_getdist_chain",
]
