import math

import numpy as np
import pytest
import torch

from cosmosbi.analyses.calibration import sbc
from cosmosbi.analyses.metrics import c2st
from cosmosbi.estimators.joint import (
    DeepSetEmbedding,
    deep_set_npe,
    joint_log_posterior,
    pad_sets,
    sample_joint_nle,
    sample_joint_nle_many,
    set_sizes,
    simulate_sets,
)
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.toy_problems import GaussianPopulation, TwoMoons

N_MAX = 12


@pytest.fixture(scope="module")
def population():
    return GaussianPopulation()


@pytest.fixture(scope="module")
def tiny_nle(population):
    rng = np.random.default_rng(0)
    theta = population.prior.sample(300, rng)
    x = population.simulate(theta, rng)["x"]
    flow = FlowConfig(model="maf", hidden_features=16, num_transforms=1)
    return NLE(population.prior, flow, TrainingConfig(max_epochs=2), device="cpu").fit(theta, x, rng)


def test_pad_sets_marks_observations_and_padding():
    padded = pad_sets([np.ones((2, 3)), 2 * np.ones((1, 3))], 4)
    assert padded.shape == (2, 4, 4) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, :, -1], [[1, 1, 0, 0], [1, 0, 0, 0]])
    assert np.all(padded[0, 2:] == 0) and np.all(padded[1, 0, :3] == 2)
    with pytest.raises(ValueError, match=r"sets\[0\]"):
        pad_sets([np.ones((5, 3))], 4)
    with pytest.raises(ValueError, match=r"sets\[1\]"):
        pad_sets([np.ones((2, 3)), np.ones((2, 2))], 4)


def test_deep_set_embedding_ignores_order_and_padding():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    observations = rng.normal(size=(5, 3))
    embedding = DeepSetEmbedding.from_padded(pad_sets([observations], 8))
    shuffled = observations[rng.permutation(5)]
    batch = torch.as_tensor(np.concatenate([pad_sets([observations], 8), pad_sets([shuffled], 8)]))
    moved = batch[1:].clone()
    moved[0] = torch.roll(moved[0], 3, dims=0)  # padding rows first, observations after
    with torch.no_grad():
        out = embedding(torch.cat([batch, moved]))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0], out[2], atol=1e-5, rtol=0)
    with torch.no_grad():
        smaller = embedding(torch.as_tensor(pad_sets([observations[:3]], 8)))
    assert not torch.allclose(out[0], smaller[0])


def test_joint_log_posterior_is_the_prior_plus_the_sum_over_observations(population, tiny_nle):
    rng = np.random.default_rng(2)
    x_set = population.simulate(np.zeros((4, 2)), rng)["x"]
    theta = np.array([[0.1, 0.2], [-1.0, 1.5], [3.0, 0.0]])
    value = joint_log_posterior(tiny_nle, x_set)(theta)
    expected = population.prior.log_prob(theta[:2]) + sum(tiny_nle.log_likelihood(theta[:2], row) for row in x_set)
    np.testing.assert_allclose(value[:2], expected, rtol=1e-5)
    assert value[2] == -np.inf  # outside the prior box
    with pytest.raises(ValueError, match="x_set"):
        joint_log_posterior(tiny_nle, np.zeros((3, 5)))


def test_batched_joint_sampling_matches_the_single_population_density(population, tiny_nle):
    rng = np.random.default_rng(3)
    x_sets = np.stack([population.simulate(np.full((3, 2), m - 0.5), rng)["x"] for m in range(2)])
    results = sample_joint_nle_many(tiny_nle, x_sets, 50, rng, pilot_steps=60, max_steps=400)
    for x_set, result in zip(x_sets, results):
        assert result.samples.shape == (50, 2)
        np.testing.assert_allclose(
            result.log_prob, joint_log_posterior(tiny_nle, x_set)(result.samples), rtol=1e-5, atol=1e-5
        )


def test_simulate_sets_draws_each_observation_afresh(population):
    theta = np.array([[0.0, 0.0], [1.0, 1.0]])
    sets = simulate_sets(population, theta, [3, 1], np.random.default_rng(4))
    assert [s.shape for s in sets] == [(3, 2), (1, 2)]
    assert len(np.unique(sets[0][:, 0])) == 3
    with pytest.raises(ValueError, match="counts"):
        simulate_sets(population, theta, [3, 0], np.random.default_rng(4))
    sizes = set_sizes(1000, 10, np.random.default_rng(5))
    assert sizes.min() == 1 and sizes.max() == 10


def test_reference_posteriors_are_exact():
    rng = np.random.default_rng(6)
    population = GaussianPopulation()
    x_set = np.array([[0.1, -0.3], [0.5, 0.2], [-0.2, 0.4], [0.0, 0.1]])
    draws = population.reference_posterior(x_set, 20_000, rng)
    np.testing.assert_allclose(draws.mean(0), x_set.mean(0), atol=5 * population.scale / 2 / math.sqrt(20_000))
    np.testing.assert_allclose(draws.std(0), population.scale / 2, rtol=0.03)
    # two moons: the likelihood of x given theta integrates to one over x
    moons = TwoMoons()
    grid = np.linspace(-1.0, 1.0, 1601)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    theta = np.array([0.2, -0.4])
    density = np.exp(moons.log_likelihood(np.broadcast_to(theta, points.shape), points))
    assert np.sum(density) * (grid[1] - grid[0]) ** 2 == pytest.approx(1.0, abs=0.01)
    # and the simulator's draws land where the likelihood is positive
    x = moons.simulate(np.repeat(theta[None], 100, 0), rng)["x"]
    assert np.all(np.isfinite(moons.log_likelihood(np.broadcast_to(theta, x.shape), x)))


def population_sets(population, n, rng, n_obs=None):
    theta = population.prior.sample(n, rng)
    counts = np.full(n, n_obs) if n_obs else set_sizes(n, N_MAX, rng)
    return theta, simulate_sets(population, theta, counts, rng)


@pytest.fixture(scope="module")
def trained_routes(population):
    """NLE on 4000 single observations and deep-set NPE on 20000 sets of 1 to 12 observations."""
    rng = np.random.default_rng(10)
    theta = population.prior.sample(4000, rng)
    nle = NLE(population.prior, device="cpu").fit(theta, population.simulate(theta, rng)["x"], rng)
    theta, sets = population_sets(population, 20_000, rng)
    padded = pad_sets(sets, N_MAX)
    npe = deep_set_npe(population.prior, padded).fit(theta, padded, rng)
    return nle, npe


@pytest.mark.slow
def test_joint_routes_match_the_exact_posterior_at_ten_observations(population, trained_routes):
    nle, npe = trained_routes
    rng = np.random.default_rng(11)
    for mu in ([0.5, -0.7], [-1.2, 1.0]):
        x_set = population.simulate(np.repeat([mu], 10, 0), rng)["x"]
        exact = population.reference_posterior(x_set, 1000, rng)
        assert c2st(sample_joint_nle(nle, x_set, 1000, rng).samples, exact) <= 0.6
        assert c2st(npe.sample(1000, pad_sets([x_set], N_MAX)[0], rng), exact) <= 0.6


@pytest.mark.slow
def test_joint_routes_are_calibrated_over_populations(population, trained_routes):
    nle, npe = trained_routes
    rng = np.random.default_rng(12)
    truth, test_sets = population_sets(population, 200, rng, n_obs=10)
    nle_samples = np.stack([r.samples for r in sample_joint_nle_many(nle, np.stack(test_sets), 200, rng)])
    npe_samples = npe.sample(200, pad_sets(test_sets, N_MAX), rng)
    for samples in (nle_samples, npe_samples):
        assert sbc(samples, truth, list(population.prior.names)).verdicts == ["calibrated", "calibrated"]
