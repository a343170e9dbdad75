"""The power-spectrum baseline: bandpower vectors, the polynomial mean, the posterior comparison
(area and width ratios, calibration)."""

import numpy as np
import pytest

from cosmosbi.analyses.baseline import PolynomialMean, bandpower_vector, compare_posteriors, pair_area


def test_polynomial_mean_recovers_a_quadratic_and_refuses_too_few_simulations():
    rng = np.random.default_rng(0)
    theta = rng.uniform(-1, 2, size=(200, 3))
    truth = np.stack([1 + theta[:, 0] - 2 * theta[:, 1] * theta[:, 2], theta[:, 2] ** 2 + 0.5 * theta[:, 0]], axis=1)
    mean = PolynomialMean(theta, truth, degree=2)
    new = rng.uniform(-1, 2, size=(10, 3))
    expected = np.stack([1 + new[:, 0] - 2 * new[:, 1] * new[:, 2], new[:, 2] ** 2 + 0.5 * new[:, 0]], axis=1)
    np.testing.assert_allclose(mean(new), expected, atol=1e-9)
    assert len(mean.terms) == 10  # 1 + 3 + 6 monomials
    with pytest.raises(ValueError, match="at least 20 simulations"):
        PolynomialMean(theta[:15], truth[:15], degree=2)
    with pytest.raises(ValueError, match="mean_degree"):
        PolynomialMean(theta, truth, degree=0)


def test_bandpower_vector_logs_only_auto_spectra():
    from cosmosbi.compressors.summaries import healpix_bandpowers
    from cosmosbi.simulators.weak_lensing import footprint_mask

    class Survey:  # what bandpower_vector reads of a HEALPix simulator
        nside, lmax = 8, 16
        pixels = np.flatnonzero(footprint_mask(8, "cap", 10000.0))

    rng = np.random.default_rng(1)
    maps = rng.standard_normal((3, 2, Survey.pixels.size))
    edges = [2, 6, 10, 17]
    raw = bandpower_vector(maps, "healpix_bandpowers", edges, simulator=Survey, transform="none")
    logged = bandpower_vector(maps, "healpix_bandpowers", edges, simulator=Survey)
    _, power, pairs = healpix_bandpowers(maps, 8, Survey.pixels, np.array(edges))
    assert pairs == [(0, 0), (0, 1), (1, 1)] and raw.shape == logged.shape == (3, 9)
    np.testing.assert_allclose(raw, power.reshape(3, -1))
    np.testing.assert_allclose(logged[:, :3], np.log(raw[:, :3]))  # (0, 0)
    np.testing.assert_allclose(logged[:, 3:6], raw[:, 3:6])  # (0, 1): cross spectra stay linear
    np.testing.assert_allclose(logged[:, 6:], np.log(raw[:, 6:]))  # (1, 1)
    with pytest.raises(ValueError, match="transform"):
        bandpower_vector(maps, "healpix_bandpowers", edges, simulator=Survey, transform="sqrt")
    with pytest.raises(ValueError, match="HEALPix simulator"):
        bandpower_vector(maps, "healpix_bandpowers", edges)


def test_compare_posteriors_measures_known_ratios_and_calibration():
    """Gaussian posteriors N(x, s^2 I) of theta given x = theta + N(0, I): calibrated for s = 1,
    too wide for s = 2, whose (0, 1) area is 4 times larger and S_8-like widths 2 times."""
    rng = np.random.default_rng(2)
    K, n = 150, 800
    theta = rng.standard_normal((K, 3))
    x = theta + rng.standard_normal((K, 3))
    full = [xi + rng.standard_normal((n, 3)) for xi in x]
    wide = [xi + 2 * rng.standard_normal((n, 3)) for xi in x]
    out = compare_posteriors(full, wide, theta, ["a", "b", "c"], ("a", "b"), {"sum": lambda t: t[..., 0] + t[..., 2]})
    s = out["summary"]
    # the sample covariance of n draws: det to ~ 2 sqrt(2 / n) = 10% per observation, so the
    # mean ratio of two to ~ 1.2% (4% is > 3 sigma); std to 2.5% per observation
    assert s["area_ratio_mean"] == pytest.approx(4.0, rel=0.04)
    assert s["sum_std_ratio_mean"] == pytest.approx(2.0, rel=0.01)
    assert s["c_std_ratio_median"] == pytest.approx(2.0, rel=0.01)
    assert pair_area(full[0], 0, 1) == pytest.approx(np.pi, rel=0.1)
    calibrated, too_wide = out["calibration"]["full_field"], out["calibration"]["power_spectrum"]
    for name in ["a", "b", "c", "(a, b) joint"]:
        row = calibrated[name]
        assert abs(row["coverage_68"] - 0.68) < 4 * row["coverage_68_error"]
        assert abs(row["coverage_95"] - 0.95) < 4 * row["coverage_95_error"]
        assert row["ks_pvalue"] > 1e-3
        # an interval twice too wide holds the truth at 68% nominal with probability P(|z| < 2 * 0.994) = 0.953
        assert too_wide[name]["coverage_68"] > 0.68 + 4 * too_wide[name]["coverage_68_error"]
        assert too_wide[name]["ks_pvalue"] < 1e-3
    assert len(out["observations"]) == K


@pytest.mark.slow
def test_power_spectrum_baseline_is_calibrated_and_no_tighter_than_the_exact_posterior():
    """On the flat Gaussian field, the log-bandpower Gaussian likelihood (polynomial mean,
    fiducial covariance) covers the truth at the nominal rate and is at least as wide as
    the exact field posterior, which uses all the information."""
    from cosmosbi.analyses.baseline import default_bin_edges
    from cosmosbi.estimators.baselines import GaussianBandpowerLikelihood, exact_posterior_samples
    from cosmosbi.simulators.gaussian_field import GaussianField2D

    sim = GaussianField2D(n_pixels=16)
    rng = np.random.default_rng(0)
    edges = default_bin_edges("power_spectrum", sim)
    theta = sim.prior.sample(3000, rng)
    mean = PolynomialMean(theta, bandpower_vector(sim.simulate(theta, rng)["field"], "power_spectrum", edges), 2)
    fiducial = bandpower_vector(sim.simulate(np.tile([1.2, 2.0], (300, 1)), rng)["field"], "power_spectrum", edges)
    likelihood = GaussianBandpowerLikelihood(mean, fiducial, "hartlap")
    K = 40
    theta_test = sim.prior.sample(K, rng)
    fields = sim.simulate(theta_test, rng)["field"]
    data = bandpower_vector(fields, "power_spectrum", edges)
    baseline = [likelihood.sample(d, sim.prior, 1000, rng).samples for d in data]
    exact = [exact_posterior_samples(sim, f, 1000, rng).samples for f in fields]
    out = compare_posteriors(exact, baseline, theta_test, ["A", "B"], ("A", "B"))
    # areas from 1000 samples scatter by ~ 2 sqrt(2 / 1000) = 9% per observation
    assert out["summary"]["area_ratio_mean"] > 0.9
    for name, row in out["calibration"]["power_spectrum"].items():
        assert abs(row["coverage_68"] - 0.68) < 3.5 * row["coverage_68_error"], name
        assert row["ks_pvalue"] > 1e-3, name
