import numpy as np
import pytest

from cosmosbi.simulators import (
    BoxUniform,
    FunctionSimulator,
    as_simulator,
    make_simulator,
    row_generators,
    simulator_names,
)
from cosmosbi.simulators.base import simulate_rows

PRIOR = BoxUniform(["mu", "log_sigma"], [-1.0, -1.0], [1.0, 0.0])


def noisy_mean(theta, rng):
    return theta[0] + np.exp(theta[1]) * rng.standard_normal(5)


def test_plain_function_is_wrapped_and_called_per_row():
    sim = as_simulator(noisy_mean, prior=PRIOR)
    assert isinstance(sim, FunctionSimulator)
    assert sim.parameter_names == ("mu", "log_sigma")
    theta = PRIOR.sample(4, np.random.default_rng(0))
    rngs = [np.random.default_rng(i) for i in range(4)]
    out = sim.simulate(theta, rngs)
    assert list(out) == ["x"] and out["x"].shape == (4, 5)
    # row i depends only on its own generator
    expected = noisy_mean(theta[2], np.random.default_rng(2))
    np.testing.assert_array_equal(out["x"][2], expected)


def test_batched_function_and_dict_outputs():
    def batched(theta, rngs):
        return {"a": theta[:, :1] * 2, "b": np.stack([g.random(3) for g in rngs])}

    sim = as_simulator(batched, prior=PRIOR, batched=True)
    out = sim.simulate(np.zeros((3, 2)), np.random.default_rng(0))
    assert out["a"].shape == (3, 1) and out["b"].shape == (3, 3)


def test_as_simulator_errors():
    with pytest.raises(ValueError, match="needs a prior"):
        as_simulator(noisy_mean)
    with pytest.raises(TypeError, match="expected a simulator or a function"):
        as_simulator(42, prior=PRIOR)
    sim = make_simulator("gaussian_field")
    with pytest.raises(ValueError, match="do not match"):
        as_simulator(sim, prior=PRIOR)


def test_row_generators():
    assert len(row_generators(np.random.default_rng(0), 3)) == 3
    assert len(row_generators(5, 2)) == 2
    with pytest.raises(ValueError, match="expected 3 random generators"):
        row_generators([np.random.default_rng(0)], 3)
    with pytest.raises(TypeError, match="numpy Generator"):
        row_generators([1, 2], 2)


def test_registry_builds_and_validates_options():
    assert {"gaussian_field", "healpix_gaussian_field"} <= set(simulator_names())
    sim = make_simulator("gaussian_field", {"n_pixels": 16, "model": "running_noise"})
    assert sim.parameter_names == ("A", "B", "R", "N")
    assert sim.description == {"name": "gaussian_field", "options": {"n_pixels": 16, "model": "running_noise"}}
    with pytest.raises(ValueError, match="unknown simulator 'nope'.*gaussian_field"):
        make_simulator("nope")
    with pytest.raises(ValueError, match="has no option 'npix'.*n_pixels"):
        make_simulator("gaussian_field", {"npix": 16})
    with pytest.raises(ValueError, match="options.n_pixels"):
        make_simulator("gaussian_field", {"n_pixels": "big"})
    with pytest.raises(ValueError, match="unknown spectrum model"):
        make_simulator("gaussian_field", {"model": "cubic"})


def test_simulate_rows_checks_the_batch_axis():
    sim = as_simulator(lambda theta, rngs: {"x": np.zeros(2)}, prior=PRIOR, batched=True)
    with pytest.raises(ValueError, match="leading axis of 3 rows"):
        simulate_rows(sim, np.zeros((3, 2)), row_generators(0, 3))
    sim = as_simulator(lambda theta, rngs: {}, prior=PRIOR, batched=True)
    with pytest.raises(TypeError, match="non-empty dict"):
        simulate_rows(sim, np.zeros((3, 2)), row_generators(0, 3))
