"""Calibration of posteriors over many test simulations: SBC, HPD coverage and TARP.

All functions take posterior samples for M test simulations, ``samples`` (M, L, D), and the
true parameters ``theta`` (M, D); coverage of highest-posterior-density regions also needs
the posterior log-density at the samples and at the truth. Each analysis returns a small
result object with its statistics and a verdict, "calibrated", "overconfident" or
"conservative", with the statistic behind it.

- :func:`sbc`: ranks of the true value among the samples per parameter (Talts et al. 2018),
  a chi^2 test on the rank histogram and a KS test on the randomised normalised ranks, and
  the empirical coverage of central credible intervals (which decides over/under-confidence).
- :func:`hpd_coverage`: expected coverage of HPD regions at every credibility level.
- :func:`tarp`: Tests of Accuracy with Random Points (Lemos et al. 2023): ECP curve, ATC and
  a KS statistic.

Significance levels default to 0.01 so that a calibrated posterior is flagged in about one
test in a hundred.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = ["SBCResult", "CoverageResult", "TARPResult", "sbc", "hpd_coverage", "tarp", "central_coverage"]

CALIBRATED, OVERCONFIDENT, CONSERVATIVE = "calibrated", "overconfident", "conservative"


def _check(samples: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    samples, theta = np.asarray(samples, dtype=float), np.asarray(theta, dtype=float)
    if samples.ndim == 2:
        samples = samples[..., None]
    if theta.ndim == 1:
        theta = theta[:, None]
    if samples.ndim != 3 or theta.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(f"expected samples (M, L, D) and theta (M, D), got {samples.shape} and {theta.shape}")
    return samples, theta


def central_coverage(normalised_ranks: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Fraction of truths inside the central credible interval of each level. ranks: (M,) in [0, 1]."""
    return np.array([np.mean(np.abs(normalised_ranks - 0.5) <= level / 2) for level in levels])


@dataclass
class SBCResult:
    """Simulation-based calibration of each parameter (or derived quantity).

    Attributes:
        names: parameter names (D,).
        ranks: (M, D) rank of the truth among the L samples, in 0..L.
        n_samples: L.
        chi2, chi2_pvalue: chi^2 test of the rank histogram in ``n_bins`` bins, per parameter.
        ks, ks_pvalue: KS test of the randomised normalised ranks against U(0, 1).
        coverage_levels, coverage: central-interval coverage (D, K) at the levels (K,).
        mean_rank: mean normalised rank per parameter (0.5 when unbiased).
        verdicts: "calibrated" / "overconfident" / "conservative" per parameter.
        reasons: the statistic behind each verdict.
    """

    names: list[str]
    ranks: np.ndarray
    n_samples: int
    n_bins: int
    chi2: np.ndarray
    chi2_pvalue: np.ndarray
    ks: np.ndarray
    ks_pvalue: np.ndarray
    coverage_levels: np.ndarray
    coverage: np.ndarray
    mean_rank: np.ndarray
    verdicts: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            name: {
                "verdict": self.verdicts[j],
                "reason": self.reasons[j],
                "chi2": float(self.chi2[j]),
                "chi2_pvalue": float(self.chi2_pvalue[j]),
                "ks": float(self.ks[j]),
                "ks_pvalue": float(self.ks_pvalue[j]),
                "mean_normalised_rank": float(self.mean_rank[j]),
                "coverage": {f"{lvl:.2f}": float(c) for lvl, c in zip(self.coverage_levels, self.coverage[j])},
            }
            for j, name in enumerate(self.names)
        }


def sbc(
    samples: np.ndarray,
    theta: np.ndarray,
    names: list[str] | None = None,
    n_bins: int | None = None,
    alpha: float = 0.01,
    rng: np.random.Generator | None = None,
) -> SBCResult:
    """Simulation-based calibration from posterior samples.

    Args:
        samples: (M, L, D) posterior samples for M test simulations (or (M, L) for one quantity).
        theta: (M, D) true values.
        names: names of the D quantities.
        n_bins: rank-histogram bins (default: about M / 20, between 5 and 50, dividing L + 1
            as evenly as possible).
        alpha: significance level of the uniformity tests.
        rng: numpy Generator for the randomisation of tied ranks in the KS test.

    A parameter is "calibrated" unless a uniformity test rejects at level ``alpha``; then the
    mean coverage of central intervals (levels 0.1 ... 0.9) below / above nominal makes it
    "overconfident" / "conservative".
    """
    samples, theta = _check(samples, theta)
    M, L, D = samples.shape
    names = list(names) if names is not None else [f"theta_{j}" for j in range(D)]
    rng = rng or np.random.default_rng(0)
    ranks = np.sum(samples < theta[:, None, :], axis=1)  # (M, D) in 0..L
    n_bins = n_bins or int(np.clip(M // 20, 5, 50))
    n_bins = min(n_bins, L + 1)
    # equal-probability bins of the discrete uniform on 0..L
    bin_of_rank = np.floor(np.arange(L + 1) * n_bins / (L + 1)).astype(int)
    expected = np.bincount(bin_of_rank, minlength=n_bins) / (L + 1) * M
    normalised = (ranks + rng.random(ranks.shape)) / (L + 1)
    levels = np.linspace(0.1, 0.9, 9)
    result = SBCResult(
        names,
        ranks,
        L,
        n_bins,
        np.zeros(D),
        np.zeros(D),
        np.zeros(D),
        np.zeros(D),
        levels,
        np.zeros((D, len(levels))),
        normalised.mean(0),
    )
    for j in range(D):
        observed = np.bincount(bin_of_rank[ranks[:, j]], minlength=n_bins)
        result.chi2[j] = np.sum((observed - expected) ** 2 / expected)
        result.chi2_pvalue[j] = stats.chi2.sf(result.chi2[j], n_bins - 1)
        ks = stats.kstest(normalised[:, j], "uniform")
        result.ks[j], result.ks_pvalue[j] = ks.statistic, ks.pvalue
        result.coverage[j] = central_coverage(normalised[:, j], levels)
        verdict, reason = _verdict(
            min(result.chi2_pvalue[j], result.ks_pvalue[j]),
            float(np.mean(result.coverage[j] - levels)),
            alpha,
            f"chi2 p = {result.chi2_pvalue[j]:.3g}, KS p = {result.ks_pvalue[j]:.3g}",
        )
        z = (result.mean_rank[j] - 0.5) / np.sqrt(1 / 12 / M)  # mean of U(0, 1) ranks: sd sqrt(1/12/M)
        if verdict != CALIBRATED and abs(z) > 3:
            reason += (
                f"; mean normalised rank {result.mean_rank[j]:.3f} "
                f"({'posterior too high' if z < 0 else 'posterior too low'}: biased)"
            )
        result.verdicts.append(verdict)
        result.reasons.append(reason)
    return result


def _verdict(pvalue: float, coverage_excess: float, alpha: float, tests: str) -> tuple[str, str]:
    if pvalue >= alpha:
        return CALIBRATED, f"{tests} >= {alpha}"
    kind = OVERCONFIDENT if coverage_excess < 0 else CONSERVATIVE
    return kind, f"{tests} < {alpha}; credible intervals cover {coverage_excess:+.3f} vs nominal on average"


@dataclass
class CoverageResult:
    """Expected coverage of HPD regions.

    Attributes:
        levels: credibility levels (K,).
        coverage: fraction of truths inside the HPD region of each level (K,).
        credibility: (M,) the smallest credibility level whose HPD region holds each truth.
        area: mean of coverage - level over the levels (negative: overconfident).
        abs_area: mean |coverage - level|.
        ks_pvalue: KS test of ``credibility`` against U(0, 1).
        verdict, reason.
    """

    levels: np.ndarray
    coverage: np.ndarray
    credibility: np.ndarray
    area: float
    abs_area: float
    ks_pvalue: float
    verdict: str
    reason: str

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "area": self.area,
            "abs_area": self.abs_area,
            "ks_pvalue": self.ks_pvalue,
            "levels": self.levels.tolist(),
            "coverage": self.coverage.tolist(),
        }


def hpd_coverage(
    log_prob_samples: np.ndarray, log_prob_true: np.ndarray, alpha: float = 0.01, n_levels: int = 101
) -> CoverageResult:
    """Expected coverage of highest-posterior-density regions.

    Args:
        log_prob_samples: (M, L) posterior log-density at each test simulation's samples.
        log_prob_true: (M,) posterior log-density at each true parameter.
        alpha: significance level of the KS test behind the verdict.

    The truth of simulation i lies in the HPD region of credibility c_i = fraction of samples
    with higher density; a calibrated posterior has c ~ U(0, 1). Too many truths outside the
    regions (coverage below the diagonal) is "overconfident".
    """
    lp = np.asarray(log_prob_samples, dtype=float)
    lt = np.asarray(log_prob_true, dtype=float)
    if lp.ndim != 2 or lt.shape != (lp.shape[0],):
        raise ValueError(f"expected log_prob_samples (M, L) and log_prob_true (M,), got {lp.shape} and {lt.shape}")
    credibility = np.mean(lp > lt[:, None], axis=1)
    levels = np.linspace(0, 1, n_levels)
    coverage = np.array([np.mean(credibility <= a) for a in levels])
    area = float(np.mean(coverage - levels))
    pvalue = float(stats.kstest(credibility, "uniform").pvalue)
    verdict, reason = _verdict(pvalue, area, alpha, f"KS p = {pvalue:.3g}")
    return CoverageResult(
        levels, coverage, credibility, area, float(np.mean(np.abs(coverage - levels))), pvalue, verdict, reason
    )


@dataclass
class TARPResult:
    """TARP expected coverage probability (ECP) curve with its ATC and KS statistics.

    Attributes:
        levels, ecp: the ECP curve (K,).
        f: (M,) fraction of samples closer to the reference point than the truth.
        atc: area between the ECP curve and the diagonal for levels above 0.5 (sum over the
            grid, as in the TARP paper's code): negative means overconfident, positive
            conservative.
        ks, ks_pvalue: KS test of ``f`` against U(0, 1).
        verdict, reason.
    """

    levels: np.ndarray
    ecp: np.ndarray
    f: np.ndarray
    atc: float
    ks: float
    ks_pvalue: float
    verdict: str
    reason: str

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "atc": self.atc,
            "ks": self.ks,
            "ks_pvalue": self.ks_pvalue,
            "levels": self.levels.tolist(),
            "ecp": self.ecp.tolist(),
        }


def tarp(
    samples: np.ndarray,
    theta: np.ndarray,
    rng: np.random.Generator,
    references: np.ndarray | None = None,
    alpha: float = 0.01,
    n_levels: int = 101,
) -> TARPResult:
    """TARP test (Lemos et al. 2023).

    Parameters are standardised with the mean and spread of the true values; each test
    simulation gets a reference point drawn uniformly in the box spanned by the true values
    (or ``references`` (M, D)). f_i is the fraction of samples closer to the reference than
    the truth; a calibrated posterior has f ~ U(0, 1).

    Args:
        samples: (M, L, D); theta: (M, D); rng: numpy Generator for the reference points.
    """
    samples, theta = _check(samples, theta)
    shift, scale = theta.mean(0), np.maximum(theta.std(0), 1e-12)
    s, t = (samples - shift) / scale, (theta - shift) / scale
    if references is None:
        low, high = t.min(0), t.max(0)
        references = low + (high - low) * rng.random(t.shape)
    else:
        references = (np.asarray(references, dtype=float) - shift) / scale
    d_samples = np.linalg.norm(s - references[:, None, :], axis=2)
    d_true = np.linalg.norm(t - references, axis=1)
    f = np.mean(d_samples < d_true[:, None], axis=1)
    levels = np.linspace(0, 1, n_levels)
    ecp = np.array([np.mean(f < a) for a in levels])
    upper = levels >= 0.5
    atc = float(np.sum(ecp[upper] - levels[upper]))
    ks = stats.kstest(f, "uniform")
    verdict, reason = _verdict(ks.pvalue, atc, alpha, f"KS p = {ks.pvalue:.3g}, ATC = {atc:+.3f}")
    return TARPResult(levels, ecp, f, atc, float(ks.statistic), float(ks.pvalue), verdict, reason)
