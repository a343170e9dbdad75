"""Explicit-likelihood baselines that a full-field analysis is compared against.

- :func:`exact_posterior_samples`: the exact likelihood of a Gaussian-field reference simulator,
  sampled with emcee (the ground truth).
- :class:`GaussianBandpowerLikelihood`: a Gaussian likelihood for binned power spectra
  (bandpowers) d, with the mean from a theory model mu(theta) and the covariance C estimated
  from n simulations at a fiducial point. The inverse of the estimated covariance is biased;
  two corrections are offered:

  * ``"hartlap"`` (Hartlap, Simon & Schneider 2007): precision (n - B - 2) / (n - 1) C^-1 in
    a Gaussian, ln L = -chi^2 / 2 with chi^2 = r^T C^-1 r (B bins, r = d - mu);
  * ``"sellentin-heavens"`` (Sellentin & Heavens 2016): marginalising over the unknown
    covariance gives ln L = -(n / 2) ln(1 + chi^2 / (n - 1)).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from cosmosbi.estimators.mcmc import MCMCResult, sample_emcee
from cosmosbi.simulators.priors import Prior

__all__ = ["GaussianBandpowerLikelihood", "exact_posterior_samples"]


def exact_posterior_samples(
    simulator,
    x_obs: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    prior: Prior | None = None,
) -> MCMCResult:
    """Sample the exact posterior p(theta | x_obs) of a Gaussian-field simulator with emcee (the ground truth).

    The log-posterior is the prior's log-density plus the simulator's exact
    ``log_likelihood_from_shells``; emcee starts at the maximum found by Nelder-Mead, with
    walkers spread by the Fisher matrix there.

    Args:
        simulator: a :class:`~cosmosbi.simulators.GaussianField2D` or
            :class:`~cosmosbi.simulators.HealpixGaussianField`.
        x_obs: one observed map (the simulator's output for one row).
        n_samples: number of posterior samples.
        rng: numpy Generator.
        prior: prior (default: the simulator's).

    Returns:
        :class:`~cosmosbi.estimators.mcmc.MCMCResult` with ``samples``: (n_samples, D).
    """
    from scipy.optimize import minimize

    prior = prior or simulator.prior
    shells = simulator.shell_power(x_obs)[0]

    def log_post(theta):
        theta = np.atleast_2d(theta)
        lp = prior.log_prob(theta)
        out = np.full(len(theta), -np.inf)
        ok = np.isfinite(lp)
        if ok.any():
            out[ok] = lp[ok] + simulator.log_likelihood_from_shells(theta[ok], shells)
        return out

    # start the optimiser at the best of the prior's centre and a few prior draws
    centre = np.where(np.isfinite(prior.low + prior.high), 0.5 * (prior.low + prior.high), 0.0)
    candidates = np.vstack([centre, prior.sample(16, rng)])
    start = candidates[np.argmax(log_post(candidates))]

    def objective(theta):
        value = log_post(theta)[0]
        return -value if np.isfinite(value) else 1e300

    fit = minimize(objective, start, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-8, "maxiter": 5000})
    x0 = fit.x if objective(fit.x) < objective(start) else start
    fisher = simulator.fisher_matrix(x0)
    scale = 0.1 / np.sqrt(np.clip(np.diag(fisher), 1e-12, None))
    return sample_emcee(log_post, x0, n_samples, rng, scale=scale)


class GaussianBandpowerLikelihood:
    """Gaussian likelihood of bandpowers with a simulation-estimated covariance.

    Args:
        theory: theta: (N, D) -> mean bandpowers (N, B).
        fiducial_bandpowers: (n, B) bandpowers simulated at the fiducial parameters.
        correction: ``"hartlap"``, ``"sellentin-heavens"`` or ``"none"``.
    """

    CORRECTIONS = ("hartlap", "sellentin-heavens", "none")

    def __init__(
        self, theory: Callable[[np.ndarray], np.ndarray], fiducial_bandpowers: np.ndarray, correction: str = "hartlap"
    ):
        if correction not in self.CORRECTIONS:
            raise ValueError(f"correction: expected one of {list(self.CORRECTIONS)}, got {correction!r}")
        sims = np.asarray(fiducial_bandpowers, dtype=float)
        if sims.ndim != 2:
            raise ValueError(f"fiducial_bandpowers must have shape (n, B), got {sims.shape}")
        n, b = sims.shape
        if n < b + 3:
            raise ValueError(f"need more fiducial simulations than bins + 2 to invert the covariance: n={n}, B={b}")
        self.theory = theory
        self.correction = correction
        self.n_sims, self.n_bins = n, b
        self.covariance = np.cov(sims, rowvar=False)
        self.inverse_covariance = np.linalg.inv(self.covariance)
        self.hartlap_factor = (n - b - 2) / (n - 1)

    @property
    def precision(self) -> np.ndarray:
        """The precision matrix of the Gaussian (Hartlap-corrected when ``correction="hartlap"``)."""
        return self.inverse_covariance * (self.hartlap_factor if self.correction == "hartlap" else 1.0)

    def chi2(self, theta: np.ndarray, d_obs: np.ndarray) -> np.ndarray:
        """r^T C^-1 r with the uncorrected inverse, for theta: (N, D) and d_obs: (B,). Returns (N,)."""
        r = np.asarray(d_obs, dtype=float)[None, :] - self.theory(np.atleast_2d(theta))
        return np.einsum("ni,ij,nj->n", r, self.inverse_covariance, r)

    def log_likelihood(self, theta: np.ndarray, d_obs: np.ndarray) -> np.ndarray:
        """ln L(theta) up to a theta-independent constant. theta: (N, D), d_obs: (B,). Returns (N,)."""
        chi2 = self.chi2(theta, d_obs)
        if self.correction == "sellentin-heavens":
            return -0.5 * self.n_sims * np.log1p(chi2 / (self.n_sims - 1))
        factor = self.hartlap_factor if self.correction == "hartlap" else 1.0
        return -0.5 * factor * chi2

    def sample(
        self, d_obs: np.ndarray, prior: Prior, n_samples: int, rng: np.random.Generator, **emcee_options
    ) -> MCMCResult:
        """Sample the posterior prior x likelihood for observed bandpowers d_obs: (B,) with emcee."""
        from cosmosbi.estimators.nle import sample_posterior_emcee

        d_obs = np.asarray(d_obs, dtype=float).reshape(-1)
        if d_obs.size != self.n_bins:
            raise ValueError(f"d_obs must have {self.n_bins} bandpowers, got {d_obs.size}")

        def log_post(theta):
            theta = np.atleast_2d(theta)
            out = prior.log_prob(theta)
            ok = np.isfinite(out)
            if ok.any():
                out[ok] = out[ok] + self.log_likelihood(theta[ok], d_obs)
            return np.where(np.isfinite(out), out, -math.inf)

        return sample_posterior_emcee(log_post, prior, n_samples, rng, **emcee_options)
