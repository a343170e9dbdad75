import numpy as np
import pytest
from scipy import stats

from cosmosbi.analyses.shift import cross_variant_check, mmd_test, ood_scores


def test_mmd_pvalues_are_uniform_for_the_same_distribution():
    rng = np.random.default_rng(0)
    pvalues = [
        mmd_test(rng.standard_normal((60, 3)), rng.standard_normal((50, 3)), rng, n_permutations=200).pvalue
        for _ in range(60)
    ]
    # permutation p-values are (super-)uniform under the null
    assert stats.kstest(pvalues, "uniform").pvalue > 0.001
    assert np.mean(np.array(pvalues) < 0.05) < 0.05 + 3 * np.sqrt(0.05 * 0.95 / 60)


def test_mmd_detects_a_shifted_variant():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200, 3))
    b = rng.standard_normal((200, 3)) + np.array([0.5, 0.0, 0.0])
    result = mmd_test(a, b, rng, n_permutations=300)
    assert result.pvalue < 0.01 and result.mmd2 > result.null.max()


def test_mmd_matches_the_direct_unbiased_estimator():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 2)), rng.standard_normal((5, 2)) + 1
    result = mmd_test(x, y, rng, n_permutations=10, bandwidth=1.3)
    pooled = np.vstack([x, y])
    pooled = (pooled - pooled.mean(0)) / pooled.std(0)
    k = lambda a, b: np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * 1.3**2))
    px, py = pooled[:7], pooled[7:]
    kxx, kyy = k(px, px), k(py, py)
    direct = (kxx.sum() - np.trace(kxx)) / 42 + (kyy.sum() - np.trace(kyy)) / 20 - 2 * k(px, py).mean()
    assert result.mmd2 == pytest.approx(direct, rel=1e-10)


def test_ood_scores():
    rng = np.random.default_rng(3)
    train = rng.standard_normal((1000, 2))
    inside = rng.standard_normal((400, 2))
    scores = ood_scores(train, inside)
    assert stats.kstest(scores, "uniform").pvalue > 0.001  # in-distribution: ~uniform
    assert ood_scores(train, np.array([[6.0, 6.0]]))[0] < 0.005


def test_cross_variant_check_flags_the_shifted_variant():
    rng = np.random.default_rng(4)
    s2 = 0.25  # x = theta + noise; the exact posterior of variant A; variant B adds an offset to x

    def sample(x, n):
        mean = x / (1 + s2)
        return mean[:, None, :] + np.sqrt(s2 / (1 + s2)) * rng.standard_normal((len(x), n, x.shape[1]))

    theta = rng.standard_normal((400, 2))
    x_a = theta + np.sqrt(s2) * rng.standard_normal(theta.shape)
    x_b = x_a + np.array([0.0, 0.6])  # the second parameter's summary is shifted in variant B
    report = cross_variant_check(sample, {"A": (theta, x_a), "B": (theta, x_b)}, ["p", "q"], n_samples=200)
    assert report["robustness"]["p"]["verdict"] == "robust"
    assert report["robustness"]["q"]["verdict"] == "shifted" and "B:" in report["robustness"]["q"]["reason"]
    assert abs(report["variants"]["A"]["q"]["bias_sigma"]) < 0.2 and report["variants"]["B"]["q"]["bias_sigma"] > 0.8
