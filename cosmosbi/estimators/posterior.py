"""The posterior contract every estimator keeps (NPE, NLE and their ensembles).

Code that samples or evaluates a posterior (validation, the baseline comparison, the sample
stage) calls these methods and never asks which estimator it holds.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Posterior", "PosteriorWithLogDensities"]


@runtime_checkable
class Posterior(Protocol):
    """A posterior p(theta | x) over the D parameters of ``prior``."""

    prior: object

    def sample(self, n: int, x, rng: np.random.Generator) -> np.ndarray:
        """n samples per observation: (n, D) for one observation x, (M, n, D) for M observations (M, ...)."""
        ...

    def log_prob(self, theta, x) -> np.ndarray:
        """log p(theta | x) (up to a constant for likelihood estimators) for theta (N, D) and x: one
        observation or N of them. Returns (N,); -inf outside the prior's support."""
        ...


@runtime_checkable
class PosteriorWithLogDensities(Posterior, Protocol):
    """A :class:`Posterior` that also returns the log-densities of its samples in one pass (NPE)."""

    def sample_and_log_prob(self, n: int, x, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Samples as :meth:`sample` and their log-densities, (n,) or (M, n)."""
        ...
