"""NPE and NLE trained and sampled on the device, against the exact posterior (marked ``gpu``;
the CPU case is tests/estimators/test_npe_nle.py, the same checks with device="cpu")."""

import numpy as np
import pytest
import torch

from cosmosbi.analyses.metrics import c2st, c2st_null_std
from cosmosbi.estimators import NLE, NPE, load_estimator, save_estimator

pytestmark = pytest.mark.gpu
# as in test_npe_nle.py: the acceptance bound 0.6 plus 3 null standard deviations at 1000 samples
FAST_BOUND = 0.6 + 3 * c2st_null_std(1000)


@pytest.fixture(scope="module")
def npe(problem, small_data):
    theta, t = small_data
    return NPE(problem.prior, device="cuda").fit(theta, t, np.random.default_rng(2))


@pytest.fixture(scope="module")
def nle(problem, small_data):
    theta, t = small_data
    return NLE(problem.prior, device="cuda").fit(theta, t, np.random.default_rng(2))


def test_npe_on_the_device_matches_the_exact_posterior(npe, observation):
    _, t_obs, exact = observation
    assert next(npe.network.parameters()).device.type == "cuda"
    samples = npe.sample(1000, t_obs, np.random.default_rng(3))
    assert samples.shape == (1000, 2) and c2st(samples, exact, seed=0) <= FAST_BOUND


def test_npe_batched_sampling_on_the_device(npe, problem, small_data):
    theta, t = small_data
    samples, log_prob = npe.sample_and_log_prob(200, t[:50], np.random.default_rng(7))
    assert samples.shape == (50, 200, 2) and problem.prior.contains(samples.reshape(-1, 2)).all()
    np.testing.assert_array_equal(samples, npe.sample(200, t[:50], np.random.default_rng(7)))
    # the log-densities of the batched pass are those of log_prob (float32 on the device)
    np.testing.assert_allclose(log_prob[0], npe.log_prob(samples[0], t[0]), rtol=1e-4, atol=1e-4)
    assert np.corrcoef(samples.mean(1)[:, 1], theta[:50, 1])[0, 1] > 0.8


def test_nle_batched_sampling_on_the_device(nle, observation, small_data):
    _, t_obs, exact = observation
    assert next(nle.network.parameters()).device.type == "cuda"
    x = np.vstack([t_obs[None], small_data[1][:5]])
    samples = nle.sample(1000, x, np.random.default_rng(8), method="batched")
    assert samples.shape == (6, 1000, 2) and nle.prior.contains(samples.reshape(-1, 2)).all()
    assert c2st(samples[0], exact, seed=0) <= FAST_BOUND


def test_a_device_estimator_reloads_on_the_cpu(npe, small_data, tmp_path):
    save_estimator(npe, tmp_path / "npe")
    on_cpu = load_estimator(tmp_path / "npe", device="cpu")
    theta, t = small_data
    assert next(on_cpu.network.parameters()).device == torch.device("cpu")
    np.testing.assert_allclose(
        on_cpu.log_prob(theta[:20], t[:20]), npe.log_prob(theta[:20], t[:20]), rtol=1e-4, atol=1e-4
    )
