import json
import math
import types

import numpy as np
import pytest

from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.estimators.sequential import (
    highest_probability_threshold,
    sequential_nle,
    sequential_npe,
    truncated_prior_sample,
)
from cosmosbi.simulators.base import FunctionSimulator
from cosmosbi.simulators.priors import BoxUniform

PRIOR = BoxUniform(["a", "b"], [-1.0, -1.0], [1.0, 1.0])
FAST_FLOW = FlowConfig(model="maf", hidden_features=16, num_transforms=1)
FAST_TRAINING = TrainingConfig(max_epochs=3, batch_size=64)


class GaussianDensity:
    """A stand-in posterior estimate: an isotropic normal of standard deviation sigma at the origin."""

    def __init__(self, sigma):
        self.prior, self.sigma = PRIOR, sigma

    def log_prob(self, theta, x):
        return -0.5 * np.sum(theta**2, 1) / self.sigma**2 - math.log(2 * math.pi * self.sigma**2)

    def sample_and_log_prob(self, n, x, rng):
        theta = self.sigma * rng.standard_normal((n, 2))
        return theta, self.log_prob(theta, x)


def shifted(theta, rng):
    return theta + 0.1 * rng.standard_normal(2)


class Killed(BaseException):
    """Stops a run the way a kill does: nothing catches it."""


def test_threshold_is_the_quantile_of_the_draws_log_densities():
    log_q = np.arange(1000.0)
    assert highest_probability_threshold(log_q, 0.1) == pytest.approx(99.9)
    with pytest.raises(ValueError, match="epsilon"):
        highest_probability_threshold(log_q, 1.0)
    with pytest.raises(ValueError, match="finite"):
        highest_probability_threshold(np.array([0.0, np.inf]), 0.1)


def test_truncated_prior_is_uniform_on_the_highest_probability_disc():
    # the 1 - eps region of N(0, s^2 I) in 2D is the disc r^2 <= 2 s^2 ln(1/eps): prior mass pi r^2 / 4
    sigma, eps = 0.2, 0.05
    rng = np.random.default_rng(0)
    theta, acceptance = truncated_prior_sample(
        GaussianDensity(sigma), np.zeros(1), 4000, rng, epsilon=eps, n_reference=20_000
    )
    r2 = 2 * sigma**2 * math.log(1 / eps)
    expected = math.pi * r2 / 4
    assert theta.shape == (4000, 2)
    assert np.all(np.sum(theta**2, 1) <= r2 * 1.02)
    # binomial error of the acceptance over >= 10^4 draws, plus the threshold's quantile error
    assert abs(acceptance - expected) < 5 * math.sqrt(expected * (1 - expected) / 10_000) + 0.02 * expected
    # uniform in the disc: r^2 is uniform on [0, r2], mean r2 / 2 with sd r2 / sqrt(12 n)
    assert abs(np.mean(np.sum(theta**2, 1)) - r2 / 2) < 5 * r2 / math.sqrt(12 * 4000)


def test_sequential_npe_writes_rounds_as_datasets_and_truncates(tmp_path):
    simulator = FunctionSimulator(shifted, PRIOR)
    result = sequential_npe(
        simulator,
        np.array([0.3, -0.2]),
        tmp_path,
        1,
        rounds=2,
        simulations_per_round=200,
        flow=FAST_FLOW,
        training=FAST_TRAINING,
    )
    assert [r["proposal"] for r in result.rounds] == ["prior", "truncated prior"]
    assert 0 < result.rounds[1]["acceptance"] < 1
    assert result.theta.shape == (400, 2) and result.x.shape == (400, 2)
    assert (tmp_path / "round-0" / "manifest.json").is_file() and (tmp_path / "round-1" / "manifest.json").is_file()
    record = json.loads((tmp_path / "rounds.json").read_text())
    assert record["x_obs"] == pytest.approx([0.3, -0.2]) and record["method"] == "npe"
    assert result.estimator.sample(10, np.array([0.3, -0.2]), np.random.default_rng(0)).shape == (10, 2)


def test_a_killed_round_resumes_with_the_same_simulations(tmp_path):
    # a counter object, not a list of the calls: a closure's plain values are part of the
    # simulator's identity, so a list that grows would make the resumed simulator another one
    calls = types.SimpleNamespace(n=0)

    def dies_in_round_two(theta, rng):
        calls.n += 1
        if calls.n > 260:  # round 0 and 1 take 200 calls; round 2 is killed partway
            raise Killed
        return shifted(theta, rng)

    options = {
        "rounds": 3,
        "simulations_per_round": 100,
        "flow": FAST_FLOW,
        "training": FAST_TRAINING,
        "batch_size": 20,
    }
    x_obs = np.array([0.3, -0.2])
    with pytest.raises(Killed):
        sequential_npe(FunctionSimulator(dies_in_round_two, PRIOR), x_obs, tmp_path / "killed", 4, **options)
    assert (tmp_path / "killed" / "proposals" / "round-2.npy").is_file()
    calls.n = 0
    resumed = sequential_npe(FunctionSimulator(dies_in_round_two, PRIOR), x_obs, tmp_path / "killed", 4, **options)
    assert calls.n == 40  # only round 2's rows not written before the kill (whole batches of 20)
    assert [r["proposal"] for r in resumed.rounds] == ["prior", "truncated prior", "truncated prior"]
    assert [r.get("resumed", False) for r in resumed.rounds] == [False, True, True]
    assert [r["trained"] for r in resumed.rounds] == [False, False, True]
    uninterrupted = sequential_npe(FunctionSimulator(shifted, PRIOR), x_obs, tmp_path / "whole", 4, **options)
    np.testing.assert_allclose(resumed.theta, uninterrupted.theta)
    np.testing.assert_allclose(resumed.x, uninterrupted.x)


def test_sequential_nle_proposes_from_its_posterior(tmp_path):
    x_obs = np.array([0.3, -0.2])
    result = sequential_nle(
        FunctionSimulator(shifted, PRIOR),
        x_obs,
        tmp_path,
        2,
        rounds=2,
        simulations_per_round=100,
        flow=FAST_FLOW,
        training=FAST_TRAINING,
        pilot_steps=100,
    )
    assert [r["proposal"] for r in result.rounds] == ["prior", "posterior (emcee)"]
    assert PRIOR.contains(result.theta).all()


def test_sequential_inputs_are_checked(tmp_path):
    simulator = FunctionSimulator(shifted, PRIOR)
    with pytest.raises(ValueError, match="rounds"):
        sequential_npe(simulator, np.zeros(2), tmp_path, 0, rounds=0)
    with pytest.raises(ValueError, match="simulations_per_round"):
        sequential_npe(simulator, np.zeros(2), tmp_path, 0, rounds=2, simulations_per_round=[100])
    with pytest.raises(ValueError, match="x_obs"):
        sequential_npe(simulator, np.zeros((2, 2)), tmp_path, 0)
    with pytest.raises(ValueError, match="seed"):
        sequential_npe(simulator, np.zeros(2), tmp_path, -1)
