"""Posterior and likelihood estimators, MCMC samplers and explicit-likelihood baselines."""
