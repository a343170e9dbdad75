"""Affine-invariant ensemble MCMC (emcee) with burn-in and thinning chosen from the chain.

:func:`sample_emcee` runs a vectorised log-density over all walkers at once, estimates the
integrated autocorrelation time from a pilot run, discards ``burn_factor`` autocorrelation
times as burn-in, thins by half an autocorrelation time, and reports what it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["MCMCResult", "sample_emcee", "sample_stretch_batched"]


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


def sample_stretch_batched(
    log_prob: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    *,
    scale: np.ndarray | float = 1e-3,
    n_walkers: int | None = None,
    pilot_steps: int = 500,
    burn_factor: float = 5.0,
    max_steps: int = 20_000,
    stretch: float = 2.0,
) -> list[MCMCResult]:
    """Sample M independent densities at once with the affine-invariant stretch move.

    This is emcee's default move (Goodman & Weare 2010, stretch scale ``stretch``) run for M
    walker ensembles in lock-step, so that each step makes one vectorised call of
    ``log_prob`` for all M x W walkers: the way to sample thousands of posteriors (one per
    observation) with a neural likelihood. Burn-in and thinning are chosen per density from
    the autocorrelation time of a pilot run, as in :func:`sample_emcee`.

    Args:
        log_prob: theta: (M, K, D) -> (M, K); density m is evaluated on theta[m] (K is W or
            W / 2); -inf outside the support.
        x0: (M, D) starting points (walkers start in a ball around them).
        n_samples: thinned samples per density.
        rng: numpy Generator.
        scale: (M, D), (D,) or scalar standard deviation of the initial balls.
        n_walkers: walkers per density (even; default max(32, 4 D)).
        pilot_steps, burn_factor, max_steps: as for :func:`sample_emcee`.
        stretch: scale parameter a of the stretch distribution g(z) ~ 1/sqrt(z) on [1/a, a].

    Returns:
        M :class:`MCMCResult` records (``samples``: (n_samples, D) each).
    """
    from emcee.autocorr import integrated_time

    x0 = np.atleast_2d(np.asarray(x0, dtype=float))
    m_obs, ndim = x0.shape
    n_walkers = n_walkers or max(32, 4 * ndim)
    n_walkers += n_walkers % 2
    half = n_walkers // 2
    scale = (
        np.broadcast_to(np.asarray(scale, dtype=float), (m_obs, ndim))
        if np.ndim(scale)
        else np.full((m_obs, ndim), float(scale))
    )
    pos = x0[:, None, :] + scale[:, None, :] * rng.standard_normal((m_obs, n_walkers, ndim))
    lp = np.asarray(log_prob(pos), dtype=float)
    for _ in range(100):  # pull walkers that started outside the support back toward x0
        bad = ~np.isfinite(lp)
        if not bad.any():
            break
        pos[bad] = (x0[:, None, :] + 0.5 * (pos - x0[:, None, :]))[bad]
        lp = np.where(bad, log_prob(pos), lp)
    if not np.all(np.isfinite(lp)):
        m = int(np.nonzero(~np.isfinite(lp).all(1))[0][0])
        raise ValueError(f"log_prob is not finite near the starting point x0[{m}]={x0[m].tolist()}")

    chain: list[np.ndarray] = []
    logps: list[np.ndarray] = []
    accepted = np.zeros((m_obs, n_walkers))
    rows = np.arange(m_obs)[:, None]

    def step():
        nonlocal pos, lp
        for first in (True, False):
            active = slice(0, half) if first else slice(half, n_walkers)
            other = slice(half, n_walkers) if first else slice(0, half)
            z = ((stretch - 1.0) * rng.random((m_obs, half)) + 1.0) ** 2 / stretch
            partners = pos[:, other][rows, rng.integers(half, size=(m_obs, half))]
            proposal = partners + z[..., None] * (pos[:, active] - partners)
            lp_new = np.asarray(log_prob(proposal), dtype=float)  # (M, W/2): only the moving half
            log_ratio = (ndim - 1) * np.log(z) + lp_new - lp[:, active]
            accept = np.log(rng.random((m_obs, half))) < log_ratio
            block = pos[:, active]
            block[accept] = proposal[accept]
            pos[:, active] = block
            lp_block = lp[:, active]
            lp_block[accept] = lp_new[accept]
            lp[:, active] = lp_block
            accepted[:, active] += accept
        chain.append(pos.copy())
        logps.append(lp.copy())

    for _ in range(pilot_steps):
        step()
    taus = [np.atleast_1d(integrated_time(np.stack(chain)[:, m], tol=0)) for m in range(m_obs)]  # (steps, W, D) each
    tau_max = np.array([float(np.nanmax(t)) if np.all(np.isfinite(t)) else float(pilot_steps) for t in taus])
    burn = np.ceil(burn_factor * tau_max).astype(int)
    thin = np.maximum(1, (tau_max / 2).astype(int))
    needed = burn + (int(np.ceil(n_samples / n_walkers)) + 1) * thin
    total = int(min(max(needed.max(), pilot_steps), max_steps))
    for _ in range(total - pilot_steps):
        step()
    full = np.stack(chain)  # (steps, M, W, D)
    full_lp = np.stack(logps)  # (steps, M, W)
    results = []
    for m in range(m_obs):
        kept = full[burn[m] :: thin[m], m].reshape(-1, ndim)
        kept_lp = full_lp[burn[m] :: thin[m], m].reshape(-1)
        if len(kept) < n_samples:
            raise RuntimeError(
                f"stretch sampler: density {m} has {len(kept)} samples after burn-in {burn[m]} and thinning {thin[m]}; "
                f"raise max_steps (now {max_steps})"
            )
        pick = rng.choice(len(kept), size=n_samples, replace=False)
        tau_final = np.atleast_1d(integrated_time(full[:, m], tol=0))
        results.append(
            MCMCResult(
                samples=kept[pick],
                log_prob=kept_lp[pick],
                autocorr_time=tau_final,
                burn_in=int(burn[m]),
                thin=int(thin[m]),
                acceptance=float(accepted[m].mean() / total),
                n_steps=total,
                converged=bool(total >= 50 * np.max(tau_final)),
            )
        )
    return results
