"""LSS fields: spectra within sampling error, lognormal transform, galaxy counts, runner round trip."""

import math

import numpy as np
import pytest
from scipy import stats

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.lss import (
    FourierGrid,
    LSSField,
    MatterPowerTable,
    gaussian_field,
    lognormal_power,
    make_cosmology,
    matter_power,
    power_spectrum,
)


def spectrum_chi2(grid: FourierGrid, fields: np.ndarray, power: np.ndarray) -> tuple[float, int]:
    """chi^2 of the summed power per |k| bin of R Gaussian fields against the input spectrum.

    For a Gaussian field the sum over the full-grid modes of a bin of P_hat_k has mean
    sum_k P_k and variance 2 sum_k P_k^2 (modes k and -k are the same mode, self-conjugate
    modes are real), independently between bins and realisations.
    """
    _, measured, counts = power_spectrum(fields, grid.box_size, grid.ndim)
    observed = (measured * counts).sum(axis=0)
    expected = len(fields) * grid.bin_sums(power)[0]
    variance = len(fields) * 2 * grid.bin_sums(power**2)[0]
    return float(np.sum((observed - expected) ** 2 / variance)), len(counts)


def chi2_limit(dof: int) -> float:
    return float(stats.chi2.ppf(0.999, dof))


def test_fourier_grid_counts_every_mode_once():
    for ndim in (2, 3):
        grid = FourierGrid(8, 100.0, ndim)
        assert grid.weights.sum() == 8**ndim
        edges = np.array([0.0, grid.k.max() * 1.001])
        _, counts = grid.bin_sums(np.ones_like(grid.k), edges)
        assert counts[0] == 8**ndim


def test_power_table_matches_pyccl():
    sim = LSSField(transfer_function="eisenstein_hu", n_grid=16, box_size=200.0)
    theta = np.array([0.31, 0.83])
    k = sim.grid.k[sim.grid.k > 0]
    cosmo = make_cosmology(0.31, 0.83, 0.6766, 0.9665, transfer_function="eisenstein_hu")
    direct = matter_power(cosmo, k)
    np.testing.assert_allclose(sim.power_grid(theta)[sim.grid.k > 0], direct, rtol=2e-3)
    # sigma_8 normalisation: P scales as sigma_8^2
    np.testing.assert_allclose(sim.power_table([0.31, 0.83 * 1.1]) / sim.power_table(theta), 1.21, rtol=1e-6)


def test_gaussian_box_spectrum_within_sampling_error():
    sim = LSSField(transfer_function="eisenstein_hu", n_grid=32, box_size=300.0, field="gaussian", outputs=("delta",))
    theta = np.array([[0.3, 0.8]] * 4)
    boxes = sim.simulate(theta, np.random.default_rng(1))["delta"]
    assert boxes.shape == (4, 32, 32, 32) and boxes.dtype == np.float32
    chi2, dof = spectrum_chi2(sim.grid, boxes, sim.power_grid(theta[0]))
    assert chi2 < chi2_limit(dof), (chi2, dof)
    # the test has power: a 10% amplitude error is far outside the sampling error
    chi2_wrong, _ = spectrum_chi2(sim.grid, boxes, 1.1 * sim.power_grid(theta[0]))
    assert chi2_wrong > chi2_limit(dof)


@pytest.mark.parametrize("slab_cells", [32, 8])
def test_projected_slab_spectrum_within_sampling_error(slab_cells):
    sim = LSSField(
        transfer_function="eisenstein_hu",
        n_grid=32,
        box_size=300.0,
        field="gaussian",
        slab_cells=slab_cells,
        outputs=("slab",),
    )
    theta = np.array([[0.3, 0.8]] * 6)
    slabs = sim.simulate(theta, np.random.default_rng(2))["slab"]
    assert slabs.shape == (6, 32, 32)
    grid2 = FourierGrid(32, 300.0, 2)
    p2 = sim.slab_power(theta[0])
    if slab_cells == 32:  # the whole box: P_2D = P_3D(k_perp, k_z = 0) / L
        np.testing.assert_allclose(p2, sim.power_grid(theta[0])[:, :17, 0] / 300.0, rtol=1e-12, atol=1e-20)
    chi2, dof = spectrum_chi2(grid2, slabs, p2)
    assert chi2 < chi2_limit(dof), (chi2, dof)


def test_lognormal_transform_reproduces_target_spectrum():
    grid = FourierGrid(16, 400.0, 3)
    cosmo = make_cosmology(0.3, 0.8, 0.6766, 0.9665, transfer_function="eisenstein_hu")
    target = np.zeros_like(grid.k)
    target[grid.k > 0] = matter_power(cosmo, grid.k[grid.k > 0])
    pg, sigma2 = lognormal_power(grid, target)
    # exp(xi_g) - 1 is the correlation function of the lognormal field; its spectrum is the target
    xi_g = np.fft.irfftn(pg / grid.cell_volume, s=grid.shape)
    achieved = np.fft.rfftn(np.expm1(xi_g)).real * grid.cell_volume
    np.testing.assert_allclose(achieved.ravel()[1:], target.ravel()[1:], rtol=1e-9, atol=1e-12 * target.max())
    assert sigma2 == pytest.approx(xi_g.flat[0], rel=1e-12)


def test_lognormal_boxes_match_input_spectrum_within_scatter():
    sim = LSSField(transfer_function="eisenstein_hu", n_grid=32, box_size=600.0, field="lognormal", outputs=("delta",))
    R = 10
    theta = np.array([[0.3, 0.8]] * R)
    boxes = sim.simulate(theta, np.random.default_rng(3))["delta"].astype(float)
    assert boxes.min() > -1.0
    edges = sim.grid.fundamental * np.array([0.5, 2.5, 5.5, 9.5, 16.0])  # four wide bands
    _, measured, counts = power_spectrum(boxes, 600.0, 3, edges)
    expected = sim.grid.bin_sums(sim.power_grid(theta[0]), edges)[0] / counts
    z = (measured.mean(axis=0) - expected) / (measured.std(axis=0, ddof=1) / math.sqrt(R))
    # Student-t with R - 1 dof per band; 4 bands at a two-sided 0.1% level
    assert np.all(np.abs(z) < stats.t.ppf(1 - 0.0005 / 4, R - 1)), z
    means = boxes.mean(axis=(1, 2, 3))
    assert abs(means.mean()) < 5 * means.std(ddof=1) / math.sqrt(R) + 1e-3


def test_galaxy_counts_mean_shot_noise_and_spectrum():
    # z = 3 and 19 Mpc/h cells: b delta < -1 (where the Poisson mean is clipped to 0) is rare
    nbar = 4e-3
    sim = LSSField(
        parameters=("Omega_m", "sigma_8", "bias"),
        transfer_function="eisenstein_hu",
        n_grid=32,
        box_size=600.0,
        redshift=3.0,
        field="gaussian",
        number_density=nbar,
        outputs=("delta", "counts"),
    )
    theta = np.array([[0.3, 0.8, 1.2]] * 4)
    out = sim.simulate(theta, np.random.default_rng(4))
    counts = out["counts"].astype(float)
    assert out["counts"].dtype == np.int32 and counts.min() >= 0
    lam = nbar * sim.grid.cell_volume * np.clip(1 + 1.2 * out["delta"].astype(float), 0, None)
    # mean: the total count is Poisson with mean sum(lambda)
    assert abs(counts.sum() - lam.sum()) < 4 * math.sqrt(lam.sum())
    # Poisson (shot-noise) variance about lambda: E (N - lambda)^2 = lambda, Var = lambda + 2 lambda^2
    resid = np.sum((counts - lam) ** 2)
    assert abs(resid - lam.sum()) < 4 * math.sqrt(np.sum(lam + 2 * lam**2))
    assert np.mean(1 + 1.2 * out["delta"] < 0) < 1e-3
    # excess variance over Poisson equals the variance of lambda, within the Poisson noise of
    # the three terms of var(N) - mean(N) - var(lambda) (4 sigma each)
    M, eps_sd = lam.size, math.sqrt(lam.sum())
    tol = (
        4
        / M
        * (
            math.sqrt(np.sum(lam + 2 * lam**2))
            + 2 * math.sqrt(np.sum((lam - lam.mean()) ** 2 * lam))
            + (1 + 2 * lam.mean()) * eps_sd
        )
    )
    assert abs(counts.var() - counts.mean() - lam.var()) < tol
    # galaxy spectrum b^2 P + 1 / nbar, chi^2 over k bins (Gaussian errors: lambda >> 1 per bin of modes)
    mean_count = nbar * sim.grid.cell_volume
    delta_g = counts / mean_count - 1
    expected = 1.2**2 * sim.power_grid(theta[0]) + 1.0 / nbar
    chi2, dof = spectrum_chi2(sim.grid, delta_g, expected)
    assert chi2 < chi2_limit(dof), (chi2, dof)
    chi2_no_shot, _ = spectrum_chi2(sim.grid, delta_g, 1.2**2 * sim.power_grid(theta[0]))
    assert chi2_no_shot > chi2_limit(dof)


def test_rows_independent_of_batching():
    sim = LSSField(transfer_function="eisenstein_hu", n_grid=8, box_size=100.0, outputs=("delta", "counts", "slab"))
    theta = np.array([[0.3, 0.8], [0.25, 0.9], [0.4, 0.7]])
    rngs = lambda: [np.random.default_rng(np.random.SeedSequence([7, i])) for i in range(3)]  # noqa: E731
    whole = sim.simulate(theta, rngs())
    g = rngs()
    parts = [sim.simulate(theta[:1], g[:1]), sim.simulate(theta[1:], g[1:])]
    for name in whole:
        np.testing.assert_array_equal(whole[name], np.concatenate([p[name] for p in parts]))


def test_gaussian_field_is_real_with_zero_mean():
    grid = FourierGrid(8, 50.0, 3)
    field = gaussian_field(grid, np.ones_like(grid.k), np.random.default_rng(0))
    assert field.dtype == np.float64 and field.shape == (8, 8, 8)
    assert abs(field.mean()) < 1e-12
    # white spectrum P = 1: cell variance sum_k P / V = (n^3 - 1) / V
    assert field.var() == pytest.approx((8**3 - 1) / grid.volume, rel=0.3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"parameters": ["Omega_m", "w0"]}, "parameters"),
        ({"field": "poisson"}, "field"),
        ({"n_grid": 33}, "even"),
        ({"outputs": ["delta", "kappa"]}, "outputs"),
        ({"fixed": {"sigma_8": 0.8}}, "free parameter"),
        ({"slab_cells": 100}, "slab_cells"),
        ({"number_density": 0.0}, "number_density"),
        ({"transfer_function": "class"}, "transfer_function"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        make_simulator("lss_field", options)


def test_rejects_omega_m_below_omega_b():
    sim = LSSField(transfer_function="eisenstein_hu", n_grid=8, box_size=100.0)
    with pytest.raises(ValueError, match="Omega_m"):
        sim.simulate(np.array([[0.03, 0.8]]), np.random.default_rng(0))


def test_runs_through_the_runner(tmp_path):
    from cosmosbi.simulators.runner import run_simulations
    from cosmosbi.simulators.store import SimulationDataset

    sim = make_simulator(
        "lss_field",
        {"n_grid": 8, "box_size": 100.0, "transfer_function": "eisenstein_hu", "outputs": ["counts", "slab"]},
    )
    run_simulations(sim, 3, tmp_path / "sims", seed=5, batch_size=2, progress=False)
    ds = SimulationDataset(tmp_path / "sims")
    assert len(ds) == 3 and ds.parameter_names == ("Omega_m", "sigma_8")
    again = sim.simulate(
        ds.theta, [np.random.default_rng(np.random.SeedSequence([5, i]).spawn(2)[1]) for i in range(3)]
    )
    np.testing.assert_array_equal(ds.read("counts"), again["counts"])
    np.testing.assert_array_equal(ds.read("slab"), again["slab"])


def test_example_config_builds():
    from pathlib import Path

    from cosmosbi.config import load_config

    path = Path(__file__).parents[2] / "examples" / "lss_field.yaml"
    config = load_config(path)
    sim = config.build_simulator(str(path))
    assert isinstance(sim, LSSField) and sim.parameter_names == ("Omega_m", "sigma_8", "bias")
    assert set(sim.output_spec) == {"counts", "slab"} and sim.slab_cells == 16
    assert config.dataset_theta("fiducial", sim.prior).shape == (100, 3)


# --------------------------------------------------------------------------- spectra emulator


def pyccl_linear_power(values: dict, k: np.ndarray, transfer_function: str) -> np.ndarray:
    """Linear P(k) in (Mpc/h)^3 straight from pyccl (independent of the simulator's helpers)."""
    import pyccl

    h = values["h"]
    cosmo = pyccl.Cosmology(
        Omega_c=values["Omega_m"] - 0.049,
        Omega_b=0.049,
        h=h,
        n_s=values["n_s"],
        sigma8=values["sigma_8"],
        transfer_function=transfer_function,
        matter_power_spectrum="linear",
    )
    return pyccl.linear_matter_power(cosmo, k * h, 1.0) * h**3


@pytest.mark.parametrize(
    "parameters", [("Omega_m", "sigma_8"), pytest.param(("Omega_m", "sigma_8", "h", "n_s"), marks=pytest.mark.slow)]
)
def test_emulator_matches_pyccl_over_the_prior(parameters):
    sim = LSSField(parameters, transfer_function="eisenstein_hu", n_grid=16, box_size=200.0)
    theta = sim.prior.sample(6, np.random.default_rng(11))
    for row in theta:
        direct = pyccl_linear_power(sim.values(row), sim._k_table, "eisenstein_hu")
        assert np.max(np.abs(sim.power_table(row) / direct - 1)) < 5e-3


def test_emulator_table_is_reused_and_rebuilt_when_its_inputs_change(tmp_path, monkeypatch):
    import cosmosbi.simulators.lss as lss

    options = dict(
        transfer_function="eisenstein_hu", n_grid=8, box_size=100.0, cache_dir=str(tmp_path), emulator_nodes=5
    )
    first = LSSField(**options)
    first.power_table([0.3, 0.8])
    files = list(tmp_path.glob("matter_power_table_*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.lock"))
    # a second simulator with the same options loads the table
    monkeypatch.setattr(lss, "direct_matter_power", lambda *a, **k: pytest.fail("the cached table was recomputed"))
    again = LSSField(**options)
    np.testing.assert_array_equal(again.power_table([0.33, 0.7]), first.power_table([0.33, 0.7]))
    monkeypatch.undo()
    # anything the table depends on changes its key (and so its file)
    base = dict(
        k=first._k_table,
        bounds={"Omega_m": (0.1, 0.5)},
        fixed={"sigma_8": 0.8, "h": 0.7, "n_s": 0.96, "Omega_b": 0.049},
    )
    key = MatterPowerTable(**base).key()
    changed = [
        dict(base, k=first._k_table * 1.01),
        dict(base, bounds={"Omega_m": (0.1, 0.45)}),
        dict(base, fixed=dict(base["fixed"], h=0.68)),
        dict(base, kinds=("nonlinear",)),
        dict(base, redshift=0.5),
        dict(base, transfer_function="bbks"),
        dict(base, nodes=7),
    ]
    assert len({key} | {MatterPowerTable(**c).key() for c in changed}) == len(changed) + 1
    # a changed prior box builds a new table
    narrower = LSSField(**options)
    narrower.prior = type(narrower.prior)({"Omega_m": stats_uniform(0.2, 0.4), "sigma_8": stats_uniform(0.6, 1.0)})
    narrower.power_table([0.3, 0.8])
    assert len(list(tmp_path.glob("matter_power_table_*.npz"))) == 2


def stats_uniform(low, high):
    from cosmosbi.simulators.priors import Uniform

    return Uniform(low, high)


def test_emulator_and_direct_spectra_give_nearly_the_same_boxes():
    options = dict(
        transfer_function="eisenstein_hu",
        n_grid=16,
        box_size=200.0,
        outputs=("delta", "counts", "slab"),
        number_density=0.05,
    )
    theta = LSSField().prior.sample(3, np.random.default_rng(2))
    emulated = LSSField(**options).simulate(theta, np.random.default_rng(4))
    direct = LSSField(spectra="direct", **options).simulate(theta, np.random.default_rng(4))
    # same white noise, spectra within 0.5%: the fields differ by well under 1% of their scatter
    for name in ("delta", "slab"):
        assert np.max(np.abs(emulated[name] - direct[name])) < 5e-3 * direct[name].std()
    # Poisson draws with nearly equal means (numpy's rejection sampler may draw different numbers
    # of variates once a mean changes, so the counts agree statistically): totals per box within
    # 4 sigma of two independent Poisson totals
    totals = [c.reshape(len(theta), -1).sum(axis=1) for c in (emulated["counts"], direct["counts"])]
    assert np.all(np.abs(totals[0] - totals[1]) < 4 * np.sqrt(2 * totals[1]))


def test_emulator_falls_back_to_pyccl_outside_its_box(caplog):
    sim = LSSField(transfer_function="eisenstein_hu", n_grid=8, box_size=100.0)
    row = [0.6, 0.8]  # Omega_m above the prior box
    direct = LSSField(transfer_function="eisenstein_hu", n_grid=8, box_size=100.0, spectra="direct").power_table(row)
    np.testing.assert_allclose(sim.power_table(row), direct, rtol=1e-12)
    assert "outside the matter power table" in caplog.text
