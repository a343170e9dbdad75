"""Validate a posterior estimator on test simulations: SBC, coverage, TARP, exact comparison.

The posterior is any object with

- ``sample(n, x, rng) -> (M, n, D)``: n samples for each of M observations x (M, ...),
  batched over observations;
- ``log_prob(theta, x) -> (K,)``: log-density of K (theta, x) pairs (needed for HPD coverage
  only; without it that analysis is skipped);
- optionally ``sample_and_log_prob(n, x, rng) -> ((M, n, D), (M, n))``: samples with their
  log-densities from one pass (as :meth:`cosmosbi.estimators.NPE.sample_and_log_prob`); when
  present it replaces ``sample``, and HPD coverage needs ``log_prob`` only at the M truths
  instead of at all M x n samples.

:func:`validate_posterior` runs every calibration analysis from one batch of samples.
Derived quantities (e.g. S_8 = sigma_8 sqrt(Omega_m / 0.3)) are calibrated like parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cosmosbi.analyses.calibration import CoverageResult, SBCResult, TARPResult, hpd_coverage, sbc, tarp

__all__ = ["ValidationResult", "validate_posterior", "compare_with_exact", "posterior_widths"]


@dataclass
class ValidationResult:
    """Samples (M, L, D) and the SBC (parameters and derived quantities), HPD and TARP results."""

    samples: np.ndarray
    theta: np.ndarray
    sbc: SBCResult
    coverage: CoverageResult | None
    tarp: TARPResult
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "n_test": int(self.samples.shape[0]),
            "n_samples": int(self.samples.shape[1]),
            "sbc": self.sbc.to_dict(),
            "hpd_coverage": self.coverage.to_dict() if self.coverage is not None else None,
            "tarp": self.tarp.to_dict(),
            "seconds": self.seconds,
        }


def validate_posterior(
    posterior,
    theta: np.ndarray,
    x: np.ndarray,
    names: list[str],
    rng: np.random.Generator,
    n_samples: int = 1000,
    derived: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    alpha: float = 0.01,
) -> ValidationResult:
    """Calibration of ``posterior`` over test simulations (theta: (M, D), x: (M, ...)).

    Args:
        derived: name -> f(theta (..., D)) -> (...), calibrated alongside the parameters.
        alpha: significance level of the uniformity tests behind the verdicts.
    """
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 2:
        raise ValueError(f"theta must have shape (M, D), got {theta.shape}")
    started = time.perf_counter()
    lp_samples = None
    if hasattr(posterior, "sample_and_log_prob") and hasattr(posterior, "log_prob"):
        samples, lp_samples = posterior.sample_and_log_prob(n_samples, x, rng)
        samples, lp_samples = np.asarray(samples), np.asarray(lp_samples)
        if lp_samples.shape != samples.shape[:2]:
            raise ValueError(
                f"posterior.sample_and_log_prob returned log-densities {lp_samples.shape} for samples {samples.shape}"
            )
    else:
        samples = np.asarray(posterior.sample(n_samples, x, rng))
    if samples.shape != (len(theta), n_samples, theta.shape[1]):
        raise ValueError(
            f"posterior.sample returned {samples.shape}, expected {(len(theta), n_samples, theta.shape[1])}"
        )
    seconds = {"sampling": round(time.perf_counter() - started, 3)}
    started = time.perf_counter()
    all_samples, all_theta, all_names = samples, theta, list(names)
    for name, function in (derived or {}).items():
        all_samples = np.concatenate([all_samples, function(samples)[..., None]], axis=2)
        all_theta = np.concatenate([all_theta, function(theta)[:, None]], axis=1)
        all_names.append(name)
    sbc_result = sbc(all_samples, all_theta, names=all_names, alpha=alpha, rng=rng)
    seconds["sbc"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    coverage = None
    if hasattr(posterior, "log_prob"):
        M, L, D = samples.shape
        x_arr = np.asarray(x)
        if lp_samples is None:
            x_rep = np.repeat(x_arr, L, axis=0)
            lp_samples = np.asarray(posterior.log_prob(samples.reshape(M * L, D), x_rep)).reshape(M, L)
        lp_true = np.asarray(posterior.log_prob(theta, x_arr)).reshape(M)
        coverage = hpd_coverage(lp_samples, lp_true, alpha=alpha)
    seconds["hpd_coverage"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    tarp_result = tarp(samples, theta, rng, alpha=alpha)
    seconds["tarp"] = round(time.perf_counter() - started, 3)
    seconds["analyses"] = round(seconds["sbc"] + seconds["hpd_coverage"] + seconds["tarp"], 3)
    return ValidationResult(samples, theta, sbc_result, coverage, tarp_result, seconds)


def compare_with_exact(
    samples: np.ndarray, exact: np.ndarray, names: list[str], rng: np.random.Generator, c2st=None
) -> dict:
    """Compare posterior samples with exact-posterior samples of the same observation.

    Args:
        samples: (L, D) from the estimator; exact: (K, D) from the exact posterior.
        c2st: classifier two-sample test ``c2st(a, b, seed) -> accuracy`` (default:
            :func:`cosmosbi.analyses.metrics.c2st`); 0.5 means indistinguishable.

    Returns:
        {"c2st": accuracy, parameter: {"mean_shift_sigma", "width_ratio"}}: the difference of
        the means in units of the exact posterior's standard deviation, and the ratio of the
        standard deviations (estimator / exact).
    """
    samples, exact = np.asarray(samples, dtype=float), np.asarray(exact, dtype=float)
    if c2st is None:
        from cosmosbi.analyses.metrics import c2st
    out: dict = {"c2st": float(c2st(samples, exact, int(rng.integers(2**31))))}
    sd = exact.std(0)
    for j, name in enumerate(names):
        out[name] = {
            "mean_shift_sigma": float((samples[:, j].mean() - exact[:, j].mean()) / sd[j]),
            "width_ratio": float(samples[:, j].std() / sd[j]),
        }
    return out


def posterior_widths(samples: np.ndarray, prior, names: list[str], n_prior: int = 100_000) -> dict:
    """Posterior standard deviations of test simulations against the prior's.

    samples: (M, L, D) posterior samples of M test simulations; the prior's standard deviation
    is estimated from ``n_prior`` draws (fixed seed). Returns {parameter: {prior_std,
    posterior_std_median, posterior_std_16, posterior_std_84, ratio_median}}.
    """
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[2] != len(names):
        raise ValueError(f"samples must have shape (M, L, {len(names)}), got {samples.shape}")
    prior_std = prior.sample(n_prior, np.random.default_rng(0)).std(axis=0)
    posterior_std = samples.std(axis=1)  # (M, D)
    out = {}
    for j, name in enumerate(names):
        q16, q50, q84 = np.quantile(posterior_std[:, j], [0.16, 0.5, 0.84])
        out[name] = {
            "prior_std": float(prior_std[j]),
            "posterior_std_median": float(q50),
            "posterior_std_16": float(q16),
            "posterior_std_84": float(q84),
            "ratio_median": float(q50 / prior_std[j]),
        }
    return out
