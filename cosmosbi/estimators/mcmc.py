"""Affine-invariant ensemble MCMC (emcee) with burn-in and thinning chosen from the chain.

:func:`sample_emcee` runs a vectorised log-density over all walkers at once, estimates the
integrated autocorrelation time from a pilot run, discards ``burn_factor`` autocorrelation
times as burn-in, thins by half an autocorrelation time, and reports what it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["MCMCResult", "sample_emcee"]


@dataclass
class MCMCResult:
    """Samples and diagnostics of an emcee run.

    Attributes:
        samples: (n_samples, D) independent-ish draws after burn-in and thinning.
        log_prob: (n_samples,) log-density of each sample.
        autocorr_time: (D,) integrated autocorrelation time per parameter, in steps.
        burn_in: steps discarded per walker.
        thin: thinning factor.
        acceptance: mean acceptance fraction over walkers.
        n_steps: total steps run per walker.
        converged: whether the chain is at least 50 autocorrelation times long.
    """

    samples: np.ndarray
    log_prob: np.ndarray
    autocorr_time: np.ndarray
    burn_in: int
    thin: int
    acceptance: float
    n_steps: int
    converged: bool


def sample_emcee(
    log_prob: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    *,
    scale: np.ndarray | float = 1e-3,
    n_walkers: int | None = None,
    pilot_steps: int = 500,
    burn_factor: float = 5.0,
    max_steps: int = 200_000,
) -> MCMCResult:
    """Sample a density with emcee.

    Args:
        log_prob: vectorised log-density, theta: (W, D) -> (W,); -inf outside the support.
        x0: (D,) starting point, ideally near the mode (walkers start in a small ball around it).
        n_samples: number of thinned samples to return.
        rng: numpy Generator for the initial ball and emcee's moves.
        scale: (D,) or scalar standard deviation of the initial ball.
        n_walkers: number of walkers (default max(32, 4 D)).
        pilot_steps: steps of the pilot run that fixes burn-in and thinning.
        burn_factor: burn-in in units of the autocorrelation time.
        max_steps: upper bound on the total steps per walker.

    Returns:
        :class:`MCMCResult`.
    """
    import emcee

    x0 = np.asarray(x0, dtype=float)
    ndim = x0.size
    n_walkers = n_walkers or max(32, 4 * ndim)
    start = x0 + np.asarray(scale) * rng.standard_normal((n_walkers, ndim))
    lp = log_prob(start)
    for _ in range(100):  # pull walkers that started outside the support back toward x0
        bad = ~np.isfinite(lp)
        if not bad.any():
            break
        start[bad] = x0 + 0.5 * (start[bad] - x0)
        lp[bad] = log_prob(start[bad])
    if not np.all(np.isfinite(lp)):
        raise ValueError(f"log_prob is not finite near the starting point x0={x0.tolist()}")

    sampler = emcee.EnsembleSampler(n_walkers, ndim, log_prob, vectorize=True)
    sampler.random_state = np.random.RandomState(rng.integers(2**32 - 1)).get_state()
    sampler.run_mcmc(start, pilot_steps, progress=False)
    tau = np.atleast_1d(sampler.get_autocorr_time(tol=0))
    tau_max = float(np.nanmax(tau)) if np.all(np.isfinite(tau)) else float(pilot_steps)
    burn = int(np.ceil(burn_factor * tau_max))
    thin = max(1, int(tau_max / 2))
    needed = burn + (int(np.ceil(n_samples / n_walkers)) + 1) * thin
    total = min(max(needed, pilot_steps), max_steps)
    if total > pilot_steps:
        sampler.run_mcmc(None, total - pilot_steps, progress=False)
    chain = sampler.get_chain(discard=burn, thin=thin, flat=True)
    logp = sampler.get_log_prob(discard=burn, thin=thin, flat=True)
    if len(chain) < n_samples:
        raise RuntimeError(
            f"emcee produced {len(chain)} samples after burn-in {burn} and thinning {thin}; "
            f"raise max_steps (now {max_steps})"
        )
    pick = rng.choice(len(chain), size=n_samples, replace=False)
    tau_final = np.atleast_1d(sampler.get_autocorr_time(tol=0))
    return MCMCResult(
        samples=chain[pick],
        log_prob=logp[pick],
        autocorr_time=tau_final,
        burn_in=burn,
        thin=thin,
        acceptance=float(np.mean(sampler.acceptance_fraction)),
        n_steps=total,
        converged=bool(total >= 50 * np.max(tau_final)),
    )
