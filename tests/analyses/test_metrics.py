import numpy as np
import pytest
from scipy import stats

from cosmosbi.analyses.metrics import c2st, c2st_null_std


def test_c2st_is_chance_for_one_distribution():
    rng = np.random.default_rng(0)
    n = 500
    a, b = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    acc = c2st(a, b, seed=0)
    assert abs(acc - 0.5) < 4 * c2st_null_std(n), acc


def test_c2st_detects_a_shift_up_to_the_bayes_accuracy():
    # two unit Gaussians 1 sd apart: the best classifier has accuracy Phi(1/2) = 0.691
    rng = np.random.default_rng(1)
    n = 500
    a = rng.normal(size=(n, 1))
    b = rng.normal(size=(n, 1)) + 1.0
    acc = c2st(a, b, seed=0)
    bayes = stats.norm.cdf(0.5)
    assert 0.5 + 4 * c2st_null_std(n) < acc < bayes + 4 * c2st_null_std(n), acc


def test_c2st_separates_disjoint_sets_and_accepts_random_forest():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, size=(300, 2))
    b = rng.uniform(2, 3, size=(300, 2))
    assert c2st(a, b, seed=0, classifier="rf") > 0.99


def test_c2st_rejects_bad_input():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match="dimensions"):
        c2st(a, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="classifier"):
        c2st(a, a, classifier="svm")
    with pytest.raises(ValueError, match="non-finite"):
        c2st(a, np.full((10, 2), np.nan))
