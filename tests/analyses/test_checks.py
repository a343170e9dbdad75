"""Posterior predictive checks: rank and distance p-values, predictive simulations, map spectra."""

import numpy as np
import pytest

from cosmosbi.analyses.checks import distance_pvalue, map_spectrum, predictive_check, rank_pvalues, simulate_predictive
from cosmosbi.simulators.base import make_simulator


def test_rank_pvalues_are_two_sided_ranks():
    draws = np.arange(1.0, 100.0)[:, None] * np.ones((1, 3))  # 1 ... 99 in every column
    p = rank_pvalues(np.array([50.0, 1000.0, -5.0]), draws)
    np.testing.assert_allclose(p, [1.0, 2 / 100, 2 / 100])


def test_the_distance_pvalue_is_uniform_for_an_exchangeable_observation():
    """Under exchangeability P(p <= a) = floor(a (n + 1)) / (n + 1): 5/51 for a = 0.1, n = 50."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 2.0]])
    pvalues = []
    for _ in range(300):
        observed, draws = np.split(rng.multivariate_normal(np.ones(3), cov, 51), [1])
        pvalues.append(distance_pvalue(observed[0], draws)[2])
    pvalues = np.array(pvalues)
    # 300 draws of a Bernoulli(0.098): mean 29.4, sd 5.2; the bounds are 3.7 sd away
    assert 10 <= np.sum(pvalues <= 0.1) <= 49
    assert np.all((pvalues >= 1 / 51) & (pvalues <= 1))


def test_a_far_observation_gets_the_smallest_pvalues():
    rng = np.random.default_rng(1)
    draws = rng.standard_normal((100, 4))
    check = predictive_check(np.full(4, 8.0), draws, ["a", "b", "c", "d"])  # 8 sigma in every statistic
    assert check.pvalue == pytest.approx(1 / 101) and check.distance > check.distances.max()
    np.testing.assert_allclose(check.pvalues, 2 / 101)
    # correlated draws: a point off the correlation is far although each statistic is typical
    x = rng.standard_normal(200)
    draws = np.stack([x, x + 0.05 * rng.standard_normal(200)], axis=1)
    check = predictive_check(np.array([1.0, -1.0]), draws)
    assert check.pvalue == pytest.approx(1 / 201) and np.all(check.pvalues > 0.1)
    assert set(check.to_dict()["statistics"]) == {"t0", "t1"}


def test_checks_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected observed \(d,\) and draws \(n >= 2, d\)"):
        predictive_check(np.zeros(3), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="must be finite"):
        rank_pvalues(np.array([np.nan]), np.zeros((10, 1)))


def test_predictive_simulations_are_reproducible_and_independent_of_the_batch_size():
    simulator = make_simulator("gaussian_field", {"n_pixels": 8})
    samples = np.column_stack([np.linspace(0.6, 1.9, 30), np.linspace(1.1, 2.9, 30)])
    theta, x = simulate_predictive(simulator, samples, 12, "field", 7, batch_size=5)
    theta2, x2 = simulate_predictive(simulator, samples, 12, "field", 7, batch_size=64)
    assert x.shape == (12, 8, 8) and len(set(map(tuple, theta))) == 12  # rows drawn without replacement
    np.testing.assert_array_equal(theta, theta2)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, simulate_predictive(simulator, samples, 12, "field", 8)[1])


def test_map_spectrum_of_flat_fields_and_none_for_other_outputs():
    simulator = make_simulator("gaussian_field", {"n_pixels": 16})
    x = simulator.simulate(np.array([[1.0, 2.0], [1.5, 2.5]]), np.random.default_rng(0))["field"]
    spectrum, names = map_spectrum(x, simulator)
    assert spectrum.shape == (2, 8) and len(names) == 8 and names[0] == "log P(k=1)"
    assert map_spectrum(np.zeros((2, 5)), simulator) is None


def test_map_spectrum_of_healpix_maps_matches_healpy():
    import types

    import healpy as hp

    simulator = types.SimpleNamespace(nside=4, pixels=None)  # full sky; default bands over 2 <= ell <= 8
    maps = np.random.default_rng(2).standard_normal((3, 2, 12 * 4**2))  # 3 simulations of 2 tomographic maps
    spectrum, names = map_spectrum(maps, simulator)
    assert spectrum.shape == (3, 3 * 7) and len(names) == 21 and names[0] == "log C(0,0) ell 2-2"
    for pair, (i, j) in enumerate([(0, 0), (0, 1), (1, 1)]):
        for n in range(3):
            a, b = (hp.reorder(maps[n, k], n2r=True) for k in (i, j))
            cl = hp.anafast(a, b, lmax=8, iter=0)[2:9]  # bands of one multipole each
            expected = np.log(cl) if i == j else cl
            np.testing.assert_allclose(spectrum[n, pair * 7 : (pair + 1) * 7], expected, rtol=1e-8, atol=1e-12)
    assert map_spectrum(np.zeros((2, 100)), simulator) is None  # not a map of this resolution
