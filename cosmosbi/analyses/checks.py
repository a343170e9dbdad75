"""Checks on an observation: is it like the training simulations, and does the posterior reproduce it?

- :func:`rank_pvalues`: two-sided p-value of each observed statistic from its rank among
  draws of a predictive distribution.
- :func:`distance_pvalue`: one p-value for all statistics together: the Mahalanobis distance
  of the observation from the draws, ranked among the draws' own leave-one-out distances.
- :func:`predictive_check`: both for one set of statistics (a :class:`PredictiveCheck`).
- :func:`simulate_predictive`: simulator outputs at posterior draws (the posterior predictive
  distribution).
- :func:`map_spectrum`: log power spectrum of flat or HEALPix map outputs, a statistic to check
  beside the estimator's summaries.

A posterior predictive p-value below a small level (e.g. 0.01) says the model, at the
parameters the posterior allows, rarely makes data like the observation: the observation is
from another model (misspecification), or the posterior is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PredictiveCheck",
    "rank_pvalues",
    "distance_pvalue",
    "predictive_check",
    "simulate_predictive",
    "map_spectrum",
]


@dataclass
class PredictiveCheck:
    """Observed statistics against their posterior predictive distribution.

    Attributes:
        names: names of the d statistics.
        observed: (d,) the observation's statistics.
        predictive: (n, d) the statistics of n predictive simulations.
        pvalues: (d,) two-sided rank p-value of each statistic (:func:`rank_pvalues`).
        distance: Mahalanobis distance of the observation from the predictive draws.
        distances: (n,) each draw's distance from the other draws and the observation.
        pvalue: fraction of the n + 1 distances at least as large as the observation's.
    """

    names: list[str]
    observed: np.ndarray
    predictive: np.ndarray
    pvalues: np.ndarray
    distance: float
    distances: np.ndarray
    pvalue: float

    def to_dict(self) -> dict:
        return {
            "pvalue": self.pvalue,
            "distance": self.distance,
            "n_draws": len(self.predictive),
            "statistics": {
                name: {
                    "observed": float(o),
                    "predictive_mean": float(m),
                    "predictive_std": float(s),
                    "pvalue": float(p),
                }
                for name, o, m, s, p in zip(
                    self.names, self.observed, self.predictive.mean(0), self.predictive.std(0), self.pvalues
                )
            },
        }


def _check_shapes(observed: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    observed, draws = np.asarray(observed, dtype=float).ravel(), np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] != observed.size or len(draws) < 2:
        raise ValueError(f"expected observed (d,) and draws (n >= 2, d), got {observed.shape} and {draws.shape}")
    if not (np.all(np.isfinite(observed)) and np.all(np.isfinite(draws))):
        raise ValueError("observed statistics and predictive draws must be finite")
    return observed, draws


def rank_pvalues(observed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Two-sided p-value of each observed statistic among n draws. observed: (d,); draws: (n, d).

    p = min(1, 2 min(1 + #{draws <= observed}, 1 + #{draws >= observed}) / (n + 1)): valid
    (P(p <= a) <= a) when the observation and the draws are exchangeable; the smallest value
    is 2 / (n + 1).
    """
    observed, draws = _check_shapes(observed, draws)
    below = 1 + np.sum(draws <= observed, axis=0)
    above = 1 + np.sum(draws >= observed, axis=0)
    return np.minimum(1.0, 2 * np.minimum(below, above) / (len(draws) + 1))


def distance_pvalue(observed: np.ndarray, draws: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Combined p-value of d statistics. observed: (d,); draws: (n, d).

    Each of the n + 1 points (the observation and the draws) gets its Mahalanobis distance from
    the other n, with their mean and covariance (of the statistics standardised by the draws'
    spread; the diagonal only when n <= d + 2, where the covariance is singular). The p-value
    is the fraction of the n + 1 distances at least as large as the observation's, exact when
    the observation is exchangeable with the draws; the smallest value is 1 / (n + 1).

    Returns:
        (the observation's distance, the draws' distances (n,), the p-value).
    """
    observed, draws = _check_shapes(observed, draws)
    scale = draws.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    points = np.vstack([observed, draws]) / scale
    n, d = len(draws), points.shape[1]
    means = (points.sum(0) - points) / n  # (n + 1, d): the mean of the other n points
    deltas = points - means
    if n > d + 2:
        total = points.T @ points
        outer = points[:, :, None] * points[:, None, :]
        covs = (total - outer - n * means[:, :, None] * means[:, None, :]) / (n - 1)  # (n + 1, d, d)
        inverses = np.linalg.pinv(covs, hermitian=True)
        squared = np.einsum("id,ide,ie->i", deltas, inverses, deltas)
    else:
        variances = ((points**2).sum(0) - points**2 - n * means**2) / (n - 1)
        squared = np.sum(np.where(variances > 1e-12, deltas**2 / np.maximum(variances, 1e-12), 0.0), axis=1)
    distances = np.sqrt(np.maximum(squared, 0.0))
    pvalue = float(np.sum(distances >= distances[0]) / (n + 1))
    return float(distances[0]), distances[1:], pvalue


def predictive_check(observed: np.ndarray, draws: np.ndarray, names: list[str] | None = None) -> PredictiveCheck:
    """Rank p-values and the combined distance p-value of observed (d,) against draws (n, d)."""
    observed, draws = _check_shapes(observed, draws)
    names = list(names) if names is not None else [f"t{j}" for j in range(observed.size)]
    if len(names) != observed.size:
        raise ValueError(f"expected {observed.size} statistic names, got {len(names)}")
    distance, distances, pvalue = distance_pvalue(observed, draws)
    return PredictiveCheck(names, observed, draws, rank_pvalues(observed, draws), distance, distances, pvalue)


def simulate_predictive(
    simulator, samples: np.ndarray, n: int, output: str, seed: int | np.random.SeedSequence, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Simulator output ``output`` at n posterior draws: the posterior predictive distribution.

    The draws are n rows of ``samples`` (m, D) taken without replacement (with replacement
    when m < n); simulation i uses ``SeedSequence([seed, i])`` (after the choice of rows), so
    the result does not depend on ``batch_size``.

    Returns:
        (theta (n, D), outputs (n, *output shape)).
    """
    from cosmosbi.simulators.base import simulate_rows

    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or len(samples) == 0 or n < 1:
        raise ValueError(f"expected posterior samples (m >= 1, D) and n >= 1 draws, got {samples.shape} and n = {n}")
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    choose, *rows = root.spawn(n + 1)
    theta = samples[np.random.default_rng(choose).choice(len(samples), size=n, replace=len(samples) < n)]
    outputs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rngs = [np.random.default_rng(s) for s in rows[start:stop]]
        result = simulate_rows(simulator, theta[start:stop], rngs)
        if output not in result:
            raise ValueError(f"the simulator returned outputs {list(result)}, not {output!r}")
        outputs.append(np.asarray(result[output]))
    return theta, np.concatenate(outputs)


def map_spectrum(x: np.ndarray, simulator) -> tuple[np.ndarray, list[str]] | None:
    """Log power spectrum (N, B) of map outputs x and the names of its bands, or None if x are not maps.

    Square flat fields (N, n, n): the isotropic spectrum in unit-width wavenumber bins up to
    the Nyquist frequency; HEALPix maps (N, C, P) or (N, P) on the footprint of a simulator with
    ``nside`` (and ``pixels``): the tomographic auto and cross pseudo-C_ell in the default bands of
    :func:`cosmosbi.analyses.baseline.default_bin_edges` (log of the auto spectra).
    """
    from cosmosbi.analyses.baseline import bandpower_vector, default_bin_edges

    x = np.asarray(x, dtype=float)
    if x.ndim == 3 and x.shape[1] == x.shape[2] and x.shape[1] >= 4 and not hasattr(simulator, "nside"):
        n = x.shape[-1]
        edges = np.arange(0.5, n // 2 + 1.0, 1.0)
        names = [f"log P(k={lo + 0.5:g})" for lo in edges[:-1]]
        return bandpower_vector(x, "power_spectrum", edges), names
    if hasattr(simulator, "nside") and x.ndim in (2, 3):
        pixels = getattr(simulator, "pixels", None)
        if x.shape[-1] != (len(pixels) if pixels is not None else 12 * simulator.nside**2):
            return None
        edges = default_bin_edges("healpix_bandpowers", simulator)
        n_maps = 1 if x.ndim == 2 else x.shape[1]
        pairs = [(i, j) for i in range(n_maps) for j in range(i, n_maps)]
        names = [
            f"{'log ' if i == j else ''}C({i},{j}) ell {int(lo)}-{int(hi) - 1}"
            for i, j in pairs
            for lo, hi in zip(edges[:-1], edges[1:])
        ]
        return bandpower_vector(x, "healpix_bandpowers", edges, simulator=simulator), names
    return None
