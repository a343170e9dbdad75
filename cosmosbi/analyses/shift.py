"""Domain shift: is the target data like the training simulations, and does the posterior survive?

- :func:`mmd_test`: kernel two-sample test (maximum mean discrepancy, Gaussian kernel with
  the median-distance bandwidth) with a permutation p-value, between training summaries and
  target summaries (another simulator variant, or observations).
- :func:`ood_scores`: per-observation out-of-distribution p-value: how unusual the distance
  from an observation to its k nearest training summaries is, compared with the same
  distance for the training summaries themselves.
- :func:`cross_variant_check`: a posterior trained on variant A, evaluated on test
  simulations of A and of B side by side: bias in units of posterior sigma, central-interval
  coverage and SBC, and a robustness verdict per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cosmosbi.analyses.calibration import CALIBRATED, sbc

__all__ = ["MMDResult", "mmd_test", "ood_scores", "cross_variant_check"]


@dataclass
class MMDResult:
    """MMD^2 (unbiased), its permutation p-value and null distribution, and the kernel bandwidth."""

    mmd2: float
    pvalue: float
    null: np.ndarray
    bandwidth: float

    def to_dict(self) -> dict:
        return {"mmd2": self.mmd2, "pvalue": self.pvalue, "bandwidth": self.bandwidth, "n_permutations": len(self.null)}


def mmd_test(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_permutations: int = 500, bandwidth: float | None = None
) -> MMDResult:
    """Two-sample test of x: (n, d) against y: (m, d).

    Both samples are standardised with the pooled mean and standard deviation; the Gaussian
    kernel bandwidth is the median pairwise distance of the pooled sample unless given. The
    p-value is (1 + #{null >= observed}) / (1 + n_permutations).
    """
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"expected two samples (n >= 2, d) and (m >= 2, d) with the same d, got {x.shape} and {y.shape}"
        )
    pooled = np.vstack([x, y])
    pooled = (pooled - pooled.mean(0)) / np.maximum(pooled.std(0), 1e-12)
    sq = np.sum(pooled**2, axis=1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0)
    if bandwidth is None:
        upper = dist2[np.triu_indices(len(pooled), 1)]
        bandwidth = float(np.sqrt(np.median(upper))) or 1.0
    K = np.exp(-dist2 / (2 * bandwidth**2))
    n, m = len(x), len(y)
    labels = np.zeros((1 + n_permutations, n + m), dtype=bool)
    labels[0, :n] = True
    for p in range(1, n_permutations + 1):
        labels[p, rng.permutation(n + m)[:n]] = True
    mmd2 = _mmd2_unbiased(K, labels, n, m)
    return MMDResult(
        float(mmd2[0]), float((1 + np.sum(mmd2[1:] >= mmd2[0])) / (1 + n_permutations)), mmd2[1:], bandwidth
    )


def _mmd2_unbiased(K: np.ndarray, is_x: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD^2 for each row of the boolean assignment matrix is_x (P, n + m)."""
    wx, wy = is_x.astype(float), (~is_x).astype(float)
    diag = np.diag(K)
    kx, ky = K @ wx.T, K @ wy.T  # (n + m, P)
    sxx = np.einsum("pi,ip->p", wx, kx) - wx @ diag
    syy = np.einsum("pi,ip->p", wy, ky) - wy @ diag
    sxy = np.einsum("pi,ip->p", wx, ky)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def ood_scores(train: np.ndarray, targets: np.ndarray, k: int = 10) -> np.ndarray:
    """Out-of-distribution p-value of each target summary. train: (n, d); targets: (m, d). Returns (m,).

    The statistic is the mean distance to the k nearest training summaries (standardised by
    the training mean and spread); the p-value is the fraction of training summaries whose own
    (leave-one-out) statistic is at least as large. Small p-values mark observations unlike
    anything the network was trained on.
    """
    from scipy.spatial import cKDTree

    train, targets = np.atleast_2d(train).astype(float), np.atleast_2d(targets).astype(float)
    if train.shape[1] != targets.shape[1] or len(train) <= k:
        raise ValueError(
            f"expected train (n > k={k}, d) and targets (m, d) with the same d, got {train.shape} and {targets.shape}"
        )
    shift, scale = train.mean(0), np.maximum(train.std(0), 1e-12)
    tree = cKDTree((train - shift) / scale)
    own = tree.query((train - shift) / scale, k=k + 1)[0][:, 1:].mean(1)  # skip the point itself
    stat = tree.query((targets - shift) / scale, k=k)[0].reshape(len(targets), k).mean(1)
    return (1 + np.sum(own[None, :] >= stat[:, None], axis=1)) / (1 + len(own))


def cross_variant_check(
    sample: Callable[[np.ndarray, int], np.ndarray],
    variants: dict[str, tuple[np.ndarray, np.ndarray]],
    names: list[str],
    n_samples: int = 500,
    alpha: float = 0.01,
    max_bias: float = 0.3,
) -> dict:
    """Evaluate one posterior on test simulations of several variants, side by side.

    Args:
        sample: ``sample(x, n) -> (M, n, D)`` posterior samples for observations x: (M, d).
        variants: name -> (theta (M, D), x (M, d)); the first is the training variant.
        names: parameter names (D,).
        n_samples: posterior samples per observation.
        alpha: significance level of the SBC tests.
        max_bias: largest mean bias (in posterior sigma) still called robust.

    Returns:
        {"variants": {name: {parameter: {bias_sigma, bias_se, coverage_68, coverage_95,
        sbc_verdict, sbc_reason}}}, "robustness": {parameter: {verdict, reason}}}: a parameter
        is "robust" when on every variant its SBC is calibrated and its mean bias is below
        ``max_bias`` sigma; otherwise "shifted", with the worst variant's numbers.
    """
    table: dict[str, dict] = {}
    for variant, (theta, x) in variants.items():
        samples = np.asarray(sample(x, n_samples))
        theta = np.asarray(theta, dtype=float)
        z = (samples.mean(1) - theta) / np.maximum(samples.std(1), 1e-12)  # (M, D)
        result = sbc(samples, theta, names=names, alpha=alpha)
        normalised = (result.ranks + 0.5) / (n_samples + 1)
        table[variant] = {
            name: {
                "bias_sigma": float(z[:, j].mean()),
                "bias_se": float(z[:, j].std() / np.sqrt(len(z))),
                "coverage_68": float(np.mean(np.abs(normalised[:, j] - 0.5) <= 0.34)),
                "coverage_95": float(np.mean(np.abs(normalised[:, j] - 0.5) <= 0.475)),
                "sbc_verdict": result.verdicts[j],
                "sbc_reason": result.reasons[j],
            }
            for j, name in enumerate(names)
        }
    robustness = {}
    for name in names:
        problems = [
            f"{variant}: bias {row[name]['bias_sigma']:+.2f} sigma, "
            f"68% coverage {row[name]['coverage_68']:.2f}, SBC {row[name]['sbc_verdict']}"
            for variant, row in table.items()
            if row[name]["sbc_verdict"] != CALIBRATED or abs(row[name]["bias_sigma"]) > max_bias
        ]
        robustness[name] = (
            {"verdict": "shifted", "reason": "; ".join(problems)}
            if problems
            else {"verdict": "robust", "reason": f"calibrated with |bias| <= {max_bias} sigma on every variant"}
        )
    return {"variants": table, "robustness": robustness}
