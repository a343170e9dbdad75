"""CAMELS-style maps: the two feedback models, their no-feedback limit, map spectra, runner round trip."""

import math

import numpy as np
import pytest
from scipy import stats

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.camels import (
    CAMELS_PARAMETERS,
    CamelsLike,
    baryonic_power,
    camels_prior,
    simba_like_amod,
    tng_like_parameters,
)
from cosmosbi.simulators.lss import make_cosmology, matter_power, power_spectrum
from cosmosbi.simulators.priors import Prior, Uniform

FAST = {"transfer_function": "eisenstein_hu"}
DIRECT = {**FAST, "spectra": "direct"}  # physics tests; the spectra emulator is tested at the end
NO_FEEDBACK = [0.3, 0.8, 0.0, 0.0, 0.0, 0.0]
FIDUCIAL = [0.3, 0.8, 1.0, 1.0, 1.0, 1.0]


def test_prior_is_the_camels_latin_hypercube():
    prior = camels_prior()
    assert prior.names == CAMELS_PARAMETERS
    np.testing.assert_allclose(prior.low, [0.1, 0.6, 0.25, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(prior.high, [0.5, 1.0, 4.0, 4.0, 2.0, 2.0])
    theta = prior.sample(4000, np.random.default_rng(0))
    # log-uniform: log A_SN1 is uniform on [log 0.25, log 4], mean 0
    assert abs(np.log(theta[:, 2]).mean()) < 4 * math.log(16) / math.sqrt(12 * 4000)


def test_feedback_mappings_at_fiducial_and_off():
    fid = tng_like_parameters(1, 1, 1, 1)
    assert (
        fid["log10Mc"] == pytest.approx(14.08)
        and fid["eta_b"] == pytest.approx(0.5)
        and fid["k_s"] == pytest.approx(55.0)
    )
    off = tng_like_parameters(0, 0, 0, 0)
    assert 0.105 * off["log10Mc"] - 1.27 == pytest.approx(0.0, abs=1e-12) and off["k_s"] == math.inf
    assert simba_like_amod(1, 1, 1, 1) == pytest.approx(0.7)
    assert simba_like_amod(0, 0, 0, 0) == 1.0
    # same names, different physics: A_AGN2 barely matters for tng_like's gas amplitude and dominates simba_like
    assert tng_like_parameters(1, 1, 1, 2)["log10Mc"] == fid["log10Mc"]
    assert simba_like_amod(1, 1, 1, 2) < simba_like_amod(2, 1, 1, 1) < 0.7


def test_both_models_reduce_to_the_dark_matter_only_spectrum():
    k = np.geomspace(0.05, 30.0, 50)
    cosmo = make_cosmology(0.3, 0.8, 0.6711, 0.9624, transfer_function="eisenstein_hu", nonlinear=True)
    dmo = matter_power(cosmo, k, nonlinear=True)
    for model in ("tng_like", "simba_like"):
        np.testing.assert_allclose(baryonic_power(model, NO_FEEDBACK, k, **FAST), dmo, rtol=1e-12)
    # and the maps are identical for the same seeds
    a = CamelsLike("tng_like", n_grid=32, **DIRECT).simulate(np.array([NO_FEEDBACK] * 2), np.random.default_rng(5))[
        "Mtot"
    ]
    b = CamelsLike("simba_like", n_grid=32, **DIRECT).simulate(np.array([NO_FEEDBACK] * 2), np.random.default_rng(5))[
        "Mtot"
    ]
    np.testing.assert_array_equal(a, b)


def test_feedback_suppresses_small_scale_power_and_spares_large_scales():
    k = np.array([0.05, 1.0, 5.0, 20.0])
    for model in ("tng_like", "simba_like"):
        ratio = baryonic_power(model, FIDUCIAL, k, **FAST) / baryonic_power(model, NO_FEEDBACK, k, **FAST)
        assert abs(ratio[0] - 1) < 0.01
        assert np.all(ratio[1:] < 0.95)


def band_power(sim: CamelsLike, maps: np.ndarray, theta_row):
    """Measured and expected power summed over the modes with k in [k_Nyquist / 2, k_Nyquist], and its sd."""
    grid = sim.grid
    delta = maps.astype(float) / sim.mean_surface_density(theta_row[0]) - 1
    edges = np.array([grid.nyquist / 2, grid.nyquist])
    _, measured, counts = power_spectrum(delta, grid.box_size, 2, edges)
    p = sim.power_2d(theta_row)
    expected = grid.bin_sums(p, edges)[0][0]
    sd = math.sqrt(2 * grid.bin_sums(p**2, edges)[0][0])  # Gaussian field: per map
    return (measured[:, 0] * counts[0]).sum(), len(maps) * expected, math.sqrt(len(maps)) * sd


def test_models_differ_measurably_on_small_scales_at_fiducial_feedback():
    theta = np.array([FIDUCIAL] * 2)
    results = {}
    for model, seed in (("tng_like", 11), ("simba_like", 12)):
        sim = CamelsLike(model, n_grid=64, field="gaussian", **DIRECT)
        results[model] = band_power(sim, sim.simulate(theta, np.random.default_rng(seed))["Mtot"], FIDUCIAL)
    (m_t, e_t, s_t), (m_s, e_s, s_s) = results["tng_like"], results["simba_like"]
    # each matches its own input spectrum within 4 sigma ...
    assert abs(m_t - e_t) < 4 * s_t and abs(m_s - e_s) < 4 * s_s
    # ... and the two differ by much more than the sampling error
    assert abs(m_t - m_s) > 5 * math.hypot(s_t, s_s)


@pytest.mark.parametrize("model", ["tng_like", "simba_like"])
def test_gaussian_maps_match_input_spectrum_within_sampling_error(model):
    sim = CamelsLike(model, n_grid=32, field="gaussian", **DIRECT)
    theta_row = [0.25, 0.85, 2.0, 0.5, 1.5, 0.7]
    maps = sim.simulate(np.array([theta_row] * 4), np.random.default_rng(3))["Mtot"]
    delta = maps.astype(float) / sim.mean_surface_density(0.25) - 1
    _, measured, counts = power_spectrum(delta, 25.0, 2)
    p = sim.power_2d(theta_row)
    observed = (measured * counts).sum(axis=0)
    expected = 4 * sim.grid.bin_sums(p)[0]
    variance = 4 * 2 * sim.grid.bin_sums(p**2)[0]
    chi2 = np.sum((observed - expected) ** 2 / variance)
    assert chi2 < stats.chi2.ppf(0.999, len(counts)), chi2


def test_lognormal_maps_are_positive_surface_densities():
    sim = CamelsLike("tng_like", n_grid=32, **DIRECT)
    theta = camels_prior().sample(3, np.random.default_rng(0))
    maps = sim.simulate(theta, np.random.default_rng(1))["Mtot"]
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert np.all(maps > 0) and np.all(np.isfinite(maps))
    # mean surface density Omega_m rho_crit depth: about 4e11 (M_sun/h)/(Mpc/h)^2 per 0.3 Omega_m per Mpc/h
    assert sim.mean_surface_density(0.3) == pytest.approx(0.3 * 2.775e11 * 5.0, rel=1e-3)


def test_projection_of_the_whole_box_keeps_only_kz_zero():
    sim = CamelsLike("tng_like", n_grid=16, slab_depth=25.0, **DIRECT)
    k = sim.grid.k[sim.grid.k > 0]
    expected = baryonic_power("tng_like", FIDUCIAL, k, **FAST) / 25.0
    np.testing.assert_allclose(sim.power_2d(FIDUCIAL)[sim.grid.k > 0], expected, rtol=5e-3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model": "eagle_like"}, "model"),
        ({"slab_depth": 30.0}, "slab_depth"),
        ({"field": "poisson"}, "field"),
        ({"n_grid": 31}, "even"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        make_simulator("camels_like", options)


def test_rejects_negative_feedback_amplitudes():
    with pytest.raises(ValueError, match="A_SN1"):
        CamelsLike(n_grid=8, **DIRECT).simulate(np.array([[0.3, 0.8, -1.0, 1, 1, 1]]), np.random.default_rng(0))


def test_runs_through_the_runner(tmp_path):
    from cosmosbi.simulators.runner import run_simulations
    from cosmosbi.simulators.store import SimulationDataset

    sim = make_simulator("camels_like", {"model": "simba_like", "n_grid": 16, **DIRECT})
    run_simulations(sim, 3, tmp_path / "sims", seed=9, batch_size=2, progress=False)
    ds = SimulationDataset(tmp_path / "sims")
    assert len(ds) == 3 and ds.parameter_names == CAMELS_PARAMETERS and ds.output_names == ("Mtot",)
    again = sim.simulate(
        ds.theta, [np.random.default_rng(np.random.SeedSequence([9, i]).spawn(2)[1]) for i in range(3)]
    )
    np.testing.assert_array_equal(ds.read("Mtot"), again["Mtot"])


def test_example_config_builds():
    from pathlib import Path

    from cosmosbi.config import load_config

    path = Path(__file__).parents[2] / "examples" / "camels_like.yaml"
    config = load_config(path)
    sim = config.build_simulator(str(path))
    assert isinstance(sim, CamelsLike) and sim.grid.n == 256 and sim.slab_depth == 5.0
    np.testing.assert_allclose(sim.prior.low, camels_prior().low)
    np.testing.assert_allclose(sim.prior.high, camels_prior().high)
    assert config.dataset_theta("fiducial", sim.prior).shape == (150, 6)


# --------------------------------------------------------------------------- spectra emulator

# a small box of the cosmological parameters keeps the default-suite table small (12 cosmologies)
SMALL_BOX = {"Omega_m": Uniform(0.25, 0.35), "sigma_8": Uniform(0.75, 0.85)}
SMALL_NODES = {"Omega_m": 4, "sigma_8": 3}


def emulated(model: str, box: dict, nodes=None, n_grid: int = 16) -> CamelsLike:
    sim = CamelsLike(model, n_grid=n_grid, emulator_nodes=nodes, **FAST)
    sim.prior = Prior({**camels_prior().marginals, **box})
    return sim


def pyccl_baryonic_power(row, k: np.ndarray) -> dict[str, np.ndarray]:
    """model -> P_bar(k) in (Mpc/h)^3 straight from pyccl (independent of the simulator's spectrum helpers)."""
    import pyccl

    h = 0.6711
    cosmo = pyccl.Cosmology(
        Omega_c=row[0] - 0.049,
        Omega_b=0.049,
        h=h,
        n_s=0.9624,
        sigma8=row[1],
        transfer_function="eisenstein_hu",
        matter_power_spectrum="halofit",
    )
    p_nl = pyccl.nonlin_matter_power(cosmo, k * h, 1.0) * h**3
    p_lin = pyccl.linear_matter_power(cosmo, k * h, 1.0) * h**3
    bcm = pyccl.baryons.BaryonsSchneider15(**tng_like_parameters(*row[2:]))
    return {
        "tng_like": p_nl * bcm.boost_factor(cosmo, k * h, 1.0),
        "simba_like": p_lin + simba_like_amod(*row[2:]) * (p_nl - p_lin),
    }


def check_emulator_against_pyccl(box: dict, nodes, n_points: int):
    sims = {model: emulated(model, box, nodes) for model in ("tng_like", "simba_like")}
    for row in sims["tng_like"].prior.sample(n_points, np.random.default_rng(21)):
        direct = pyccl_baryonic_power(row, sims["tng_like"]._k3_table)
        for model, sim in sims.items():
            assert np.max(np.abs(sim.power_3d(row) / direct[model] - 1)) < 5e-3, (model, row)


def test_emulator_matches_pyccl_with_feedback_in_a_small_box():
    check_emulator_against_pyccl(SMALL_BOX, SMALL_NODES, 3)


@pytest.mark.slow
def test_emulator_matches_pyccl_with_feedback_over_the_camels_prior():
    check_emulator_against_pyccl({}, None, 8)


def test_emulator_and_direct_spectra_give_nearly_the_same_maps():
    sim = emulated("simba_like", SMALL_BOX, SMALL_NODES)
    theta = sim.prior.sample(3, np.random.default_rng(8))
    maps = sim.simulate(theta, np.random.default_rng(9))["Mtot"].astype(float)
    direct = (
        CamelsLike("simba_like", n_grid=16, **DIRECT).simulate(theta, np.random.default_rng(9))["Mtot"].astype(float)
    )
    # same white noise, spectra within 0.5%: the maps differ by well under 1% of their scatter
    assert np.max(np.abs(maps - direct)) < 5e-3 * direct.std()
