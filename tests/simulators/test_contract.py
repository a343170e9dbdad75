"""The simulator contract, checked for every registered simulator.

For each name in the registry, with the smallest options that keep it fast: prior sample ->
simulate -> outputs named, shaped and typed as ``output_spec`` says; a row's output is a
function of its own generator only (repeatable, and independent of the other rows of the
batch); finite outputs at the prior's median; invalid options refused with a message naming
the option. A newly registered simulator fails here until it is given its options below.
"""

import numpy as np
import pytest

from cosmosbi.simulators import make_simulator, simulator_names

# name -> (small, fast options; an invalid option set and the word its error must contain)
CASES = {
    "gaussian_field": ({"n_pixels": 8}, ({"model": "cubic"}, "model")),
    "healpix_gaussian_field": ({"nside": 4}, ({"nside": 3}, "nside")),
    "lss_field": ({"n_grid": 8, "box_size": 100.0, "transfer_function": "eisenstein_hu"}, ({"n_grid": 33}, "even")),
    "camels_like": ({"n_grid": 16, "transfer_function": "eisenstein_hu"}, ({"n_grid": 31}, "even")),
    "strong_lens": ({"device": "cpu", "n_pixels": 32}, ({"main_deflector": "nfw"}, "main_deflector")),
    # an emulator table of 2 x 2 nodes (built once, into the test's cache directory)
    "weak_lensing": (
        {"nside": 8, "lmax": 16, "n_bins": 2, "transfer_function": "eisenstein_hu", "emulator_nodes": 2},
        ({"emulator_nodes": 1}, "emulator_nodes"),
    ),
    "weak_lensing_flat": (
        {"n_pixels": 16, "patch_deg": 5.0, "n_bins": 2, "transfer_function": "eisenstein_hu", "emulator_nodes": 2},
        ({"patch_deg": -1.0}, "patch_deg"),
    ),
}
ROWS = 3


def options_for(name: str, cache_dir) -> dict:
    if name not in CASES:
        pytest.fail(f"simulator {name!r} is registered but has no fast options in tests/simulators/test_contract.py")
    options = dict(CASES[name][0])
    if name in ("weak_lensing", "weak_lensing_flat"):
        options["cache_dir"] = str(cache_dir)
    return options


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("contract_cache")


@pytest.fixture(scope="module", params=simulator_names())
def simulator(request, cache_dir):
    return make_simulator(request.param, options_for(request.param, cache_dir))


def generators(seeds) -> list[np.random.Generator]:
    return [np.random.default_rng(seed) for seed in seeds]


def close(a: np.ndarray, b: np.ndarray, scale: float) -> bool:
    """Equal up to float rounding; a discrete noise draw (Poisson counts) may flip in one element in 1000."""
    return np.mean(np.isclose(a, b, rtol=1e-4, atol=1e-4 * scale)) >= 0.999


def test_outputs_match_the_output_spec(simulator):
    theta = simulator.prior.sample(ROWS, np.random.default_rng(0))
    assert theta.shape == (ROWS, len(simulator.parameter_names))
    out = simulator.simulate(theta, generators(range(ROWS)))
    spec = simulator.output_spec
    assert spec is not None and set(out) == set(spec), f"outputs {sorted(out)}, output_spec {sorted(spec or {})}"
    for name, value in out.items():
        assert isinstance(value, np.ndarray), name
        assert value.shape == (ROWS, *spec[name].shape), f"{name}: shape {value.shape}, spec {spec[name].shape}"
        assert value.dtype == np.dtype(spec[name].dtype), f"{name}: dtype {value.dtype}, spec {spec[name].dtype}"


def test_each_row_depends_on_its_own_generator_only(simulator):
    theta = simulator.prior.sample(ROWS, np.random.default_rng(1))
    first = simulator.simulate(theta, generators([10, 11, 12]))
    again = simulator.simulate(theta, generators([10, 11, 12]))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=f"{name}: same generators, different output")
    alone = simulator.simulate(theta[1:2], generators([11]))
    reordered = simulator.simulate(theta[[2, 1]], generators([12, 11]))
    for name, value in first.items():
        scale = float(np.std(value)) or 1.0
        assert close(alone[name][0], value[1], scale), f"{name}: row 1 changes when simulated alone"
        assert close(reordered[name][1], value[1], scale), f"{name}: row 1 changes with the other rows of the batch"
    other = simulator.simulate(theta[1:2], generators([99]))
    assert any(not np.array_equal(other[name][0], first[name][1]) for name in first), "the generator has no effect"


def test_outputs_are_finite_at_the_prior_median(simulator):
    median = np.array([marginal.icdf(np.array([0.5]))[0] for marginal in simulator.prior.marginals.values()])
    out = simulator.simulate(np.tile(median, (2, 1)), generators([5, 6]))
    for name, value in out.items():
        assert np.all(np.isfinite(value)), f"{name}: {np.size(value) - np.isfinite(value).sum()} non-finite values"


@pytest.mark.parametrize("name", simulator_names())
def test_invalid_options_are_refused_naming_the_option(name, cache_dir):
    options = options_for(name, cache_dir)
    bad, word = CASES[name][1]
    with pytest.raises(ValueError, match=word):
        make_simulator(name, {**options, **bad})
    with pytest.raises(ValueError, match="no_such_option"):
        make_simulator(name, {**options, "no_such_option": 1})
