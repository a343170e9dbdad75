import numpy as np
import pytest

from cosmosbi.estimators.mcmc import sample_emcee

MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.8], [0.8, 2.0]])
PRECISION = np.linalg.inv(COV)


def log_gauss(theta):
    d = np.atleast_2d(theta) - MEAN
    return -0.5 * np.einsum("ni,ij,nj->n", d, PRECISION, d)


def test_emcee_recovers_a_correlated_gaussian():
    result = sample_emcee(log_gauss, MEAN + 0.5, 4000, np.random.default_rng(0))
    assert result.samples.shape == (4000, 2) and result.log_prob.shape == (4000,)
    assert result.burn_in > 0 and result.thin >= 1 and 0.3 < result.acceptance < 0.9
    # thinned by half an autocorrelation time: ~2000 effective samples; 5 standard errors
    n_eff = len(result.samples) / 2
    se_mean = np.sqrt(np.diag(COV) / n_eff)
    assert np.all(np.abs(result.samples.mean(0) - MEAN) < 5 * se_mean)
    np.testing.assert_allclose(np.cov(result.samples.T), COV, rtol=0.15, atol=0.1)


def test_emcee_is_reproducible_and_rejects_bad_start():
    a = sample_emcee(log_gauss, MEAN, 500, np.random.default_rng(3))
    b = sample_emcee(log_gauss, MEAN, 500, np.random.default_rng(3))
    np.testing.assert_array_equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="not finite near the starting point"):
        sample_emcee(lambda t: np.full(len(t), -np.inf), MEAN, 100, np.random.default_rng(0))


def test_batched_stretch_sampler_recovers_several_gaussians_at_once():
    from cosmosbi.estimators.mcmc import sample_stretch_batched

    means = np.array([[0.0, 0.0], [1.0, -2.0], [5.0, 3.0]])

    def log_prob(theta):  # (M, K, D) -> (M, K), density m centred on means[m]
        d = theta - means[:, None, :]
        return -0.5 * np.einsum("mki,ij,mkj->mk", d, PRECISION, d)

    results = sample_stretch_batched(log_prob, means + 0.3, 2000, np.random.default_rng(0))
    assert len(results) == 3
    for result, mean in zip(results, means):
        assert result.samples.shape == (2000, 2) and result.burn_in > 0 and 0.3 < result.acceptance < 0.9
        # thinned by half an autocorrelation time: ~1000 effective samples; 5 standard errors
        se_mean = np.sqrt(np.diag(COV) / (len(result.samples) / 2))
        assert np.all(np.abs(result.samples.mean(0) - mean) < 5 * se_mean)
        np.testing.assert_allclose(np.cov(result.samples.T), COV, rtol=0.2, atol=0.15)


def test_batched_stretch_sampler_respects_the_support():
    from cosmosbi.estimators.mcmc import sample_stretch_batched

    def log_prob(theta):  # uniform on [0, 1]^2 for every density
        return np.where(np.all((theta >= 0) & (theta <= 1), axis=-1), 0.0, -np.inf)

    (result,) = sample_stretch_batched(log_prob, np.array([[0.5, 0.5]]), 1000, np.random.default_rng(1), scale=0.1)
    assert np.all((result.samples >= 0) & (result.samples <= 1))
    with pytest.raises(ValueError, match="not finite"):
        sample_stretch_batched(
            lambda th: np.full(th.shape[:2], -np.inf), np.zeros((2, 2)), 10, np.random.default_rng(0)
        )


def test_batched_stretch_sampler_handles_more_densities_than_walkers():
    from cosmosbi.estimators.mcmc import sample_stretch_batched

    means = np.arange(24.0).reshape(12, 2)

    def log_prob(theta):  # (M, K, D) -> (M, K): unit normal m centred on means[m]
        return -0.5 * np.sum((theta - means[:, None, :]) ** 2, axis=-1)

    results = sample_stretch_batched(log_prob, means, 400, np.random.default_rng(2), n_walkers=8, pilot_steps=300)
    assert len(results) == 12
    for result, mean in zip(results, means):
        # each density's burn-in and thinning come from its own chain; ~200 effective samples, 5 standard errors
        assert np.all(np.abs(result.samples.mean(0) - mean) < 5 / np.sqrt(200))
