"""Explicit-likelihood baselines against the exact Gaussian-field posterior."""

import numpy as np
import pytest

from cosmosbi.estimators.baselines import GaussianBandpowerLikelihood, exact_posterior_samples
from cosmosbi.estimators.reference import PowerSpectrumProblem

FIDUCIAL = np.array([1.0, 2.0])


@pytest.fixture(scope="module")
def problem32():
    # 32 x 32: enough modes per bin for the bandpowers to be close to Gaussian
    return PowerSpectrumProblem(n_pixels=32)


@pytest.fixture(scope="module")
def fiducial_bandpowers(problem32):
    _, fields = problem32.simulate(2000, np.random.default_rng(20), np.tile(FIDUCIAL, (2000, 1)))
    return problem32.bandpowers(fields)


def test_theory_bandpowers_are_the_mean_of_simulated_bandpowers(problem32, fiducial_bandpowers):
    mean = fiducial_bandpowers.mean(0)
    se = fiducial_bandpowers.std(0) / np.sqrt(len(fiducial_bandpowers))
    z = (mean - problem32.theory_bandpowers(FIDUCIAL)[0]) / se
    from scipy import stats

    assert np.sum(z**2) < stats.chi2.ppf(0.999, len(z))


def test_gaussian_bandpower_posterior_means_agree_with_exact_within_a_fifth_sigma(problem32, fiducial_bandpowers):
    _, obs = problem32.simulate(1, np.random.default_rng(21), FIDUCIAL[None])
    exact = exact_posterior_samples(problem32.simulator, obs[0], 4000, np.random.default_rng(22))
    like = GaussianBandpowerLikelihood(problem32.theory_bandpowers, fiducial_bandpowers, correction="hartlap")
    result = like.sample(problem32.bandpowers(obs)[0], problem32.prior, 4000, np.random.default_rng(23))
    sd = exact.samples.std(0)
    offset = np.abs(result.samples.mean(0) - exact.samples.mean(0)) / sd
    assert np.all(offset < 0.2), offset
    assert result.burn_in > 0 and result.thin >= 1


def test_corrections_follow_their_formulas(problem32, fiducial_bandpowers):
    n, b = fiducial_bandpowers.shape
    d = fiducial_bandpowers[0]
    theta = np.array([[1.1, 2.1], [0.9, 1.8]])
    hartlap = GaussianBandpowerLikelihood(problem32.theory_bandpowers, fiducial_bandpowers, "hartlap")
    sh = GaussianBandpowerLikelihood(problem32.theory_bandpowers, fiducial_bandpowers, "sellentin-heavens")
    plain = GaussianBandpowerLikelihood(problem32.theory_bandpowers, fiducial_bandpowers, "none")
    chi2 = plain.chi2(theta, d)
    r = d - problem32.theory_bandpowers(theta)
    np.testing.assert_allclose(chi2, np.einsum("ni,ij,nj->n", r, np.linalg.inv(np.cov(fiducial_bandpowers.T)), r))
    np.testing.assert_allclose(hartlap.log_likelihood(theta, d), -0.5 * (n - b - 2) / (n - 1) * chi2)
    np.testing.assert_allclose(sh.log_likelihood(theta, d), -0.5 * n * np.log1p(chi2 / (n - 1)))
    np.testing.assert_allclose(plain.log_likelihood(theta, d), -0.5 * chi2)


def test_baseline_rejects_too_few_simulations_and_unknown_corrections(problem32, fiducial_bandpowers):
    with pytest.raises(ValueError, match="more fiducial simulations"):
        GaussianBandpowerLikelihood(problem32.theory_bandpowers, fiducial_bandpowers[:10])
    with pytest.raises(ValueError, match="correction"):
        GaussianBandpowerLikelihood(problem32.theory_bandpowers, fiducial_bandpowers, correction="anderson")
