"""Posterior and likelihood estimators, MCMC samplers and explicit-likelihood baselines."""

from cosmosbi.estimators.mcmc import MCMCResult, sample_emcee
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig, TrainingSummary
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.npe import NPE

__all__ = ["MCMCResult", "sample_emcee", "FlowConfig", "TrainingConfig", "TrainingSummary", "NPE", "NLE"]
