"""Survey systematics shared by the weak-lensing simulators: photo-z shifts delta_z_i (against pyccl
with the shifted n(z)) and multiplicative shear biases m_i (maps and spectra scale exactly)."""

import healpy as hp
import numpy as np
import pytest

from cosmosbi.simulators import make_simulator

COMMON = {"n_bins": 2, "transfer_function": "eisenstein_hu", "emulator": False, "field": "gaussian"}


def pyccl_convergence_spectra(sim, params, ell):
    """C^kappa-kappa from pyccl alone, each bin's n(z) given on the shifted grid z + delta_z_i
    (so N_i(z) = n_i(z - delta_z_i)); A_IA = 0. Returns (n_spectra, L) in GLASS order."""
    import pyccl as ccl

    cosmo = ccl.Cosmology(
        Omega_c=params["Omega_m"] - params["Omega_b"],
        Omega_b=params["Omega_b"],
        h=params["h"],
        n_s=params["n_s"],
        sigma8=params["sigma_8"],
        w0=params["w0"],
        transfer_function="eisenstein_hu",
        baryonic_effects=ccl.BaryonsSchneider15(log10Mc=params["log10_Mc"]),
    )
    tracers = []
    for i, nz in enumerate(sim.nz_bins):
        z = sim.z + params[f"delta_z_{i + 1}"]
        keep = z >= 0
        tracer = ccl.Tracer()
        tracer.add_tracer(
            cosmo, kernel=ccl.get_lensing_kernel(cosmo, dndz=(z[keep], nz[keep])), der_bessel=-1, der_angles=1
        )
        tracers.append(tracer)
    return np.array([ccl.angular_cl(cosmo, tracers[i], tracers[j], ell) for i, j in sim.pairs])


@pytest.mark.parametrize("name", ["weak_lensing", "weak_lensing_flat"])
def test_delta_z_shifts_the_spectra_as_pyccl_says(name, tmp_path):
    """delta_z = (+0.03, -0.02) changes the theory the simulator uses as pyccl's spectra of the shifted
    n(z) say: the spectra agree to 1e-3 and their change (0.5-10%) to 2% of itself."""
    options = {"nside": 32, "lmax": 64} if name == "weak_lensing" else {"n_pixels": 32, "patch_deg": 10.0}
    sim = make_simulator(
        name, {**COMMON, **options, "parameters": ["Omega_m", "delta_z_1", "delta_z_2"], "cache_dir": str(tmp_path)}
    )
    ell = np.unique(np.geomspace(2, sim.lmax, 25).astype(int)).astype(float)
    base, shifted = np.array([0.3, 0.0, 0.0]), np.array([0.3, 0.03, -0.02])
    ours = {key: sim.theory_at(theta)["cls"][:, ell.astype(int)] for key, theta in (("base", base), ("dz", shifted))}
    ref = {key: pyccl_convergence_spectra(sim, sim.params(t), ell) for key, t in (("base", base), ("dz", shifted))}
    np.testing.assert_allclose(ours["dz"], ref["dz"], rtol=1e-3)
    change_ours, change_ref = ours["dz"] / ours["base"] - 1, ref["dz"] / ref["base"] - 1
    print("relative change of the spectra at ell = 2 and lmax:", np.round(change_ref[:, [0, -1]], 4).tolist())
    assert np.all(np.abs(change_ref[:2]) > 0.005)  # the auto-spectra move by 0.5-10%
    np.testing.assert_allclose(change_ours, change_ref, atol=0.02 * np.abs(change_ref).max())


def test_delta_z_is_a_table_axis(tmp_path):
    """With the emulator a varied delta_z_i is an axis of the spectra table: exact at its nodes."""
    sim = make_simulator(
        "weak_lensing",
        {
            **COMMON,
            "nside": 16,
            "lmax": 32,
            "emulator": True,
            "emulator_nodes": 3,
            "cache_dir": str(tmp_path),
            "parameters": ["delta_z_2"],
        },
    )
    table = sim.table()
    assert table.names == ("delta_z_2",) and table.n_points == 3
    node = np.array([0.05])  # an end node of [-0.05, 0.05]
    direct = sim.theory.evaluate(sim.params(node))
    np.testing.assert_allclose(sim.theory_at(node)["cls"], direct["cls"], rtol=1e-7)
    assert not np.allclose(direct["cls"], sim.theory.evaluate(sim.params(np.array([0.0])))["cls"], rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", ["weak_lensing", "weak_lensing_flat"])
def test_shear_bias_scales_maps_and_spectra(name, tmp_path):
    """m_i multiplies bin i's convergence and shear by 1 + m_i (same seed, no noise), so every
    spectrum scales by (1 + m_i)(1 + m_j); the spectra table has no m_i axis."""
    options = {"nside": 16, "lmax": 32} if name == "weak_lensing" else {"n_pixels": 32, "patch_deg": 10.0}
    sim = make_simulator(
        name,
        {
            **COMMON,
            **options,
            "noise": False,
            "shear": True,
            "parameters": ["sigma_8", "m_1", "m_2"],
            "cache_dir": str(tmp_path),
        },
    )
    m = np.array([0.04, -0.03])
    plain = sim.simulate(np.array([[0.8, 0.0, 0.0]]), [np.random.default_rng(5)])
    biased = sim.simulate(np.array([[0.8, *m]]), [np.random.default_rng(5)])
    for key in ("kappa", "gamma"):
        for b in range(2):
            np.testing.assert_allclose(biased[key][0, b], (1 + m[b]) * plain[key][0, b], rtol=1e-5, atol=1e-9)
    for (i, j), factor in (((0, 0), (1 + m[0]) ** 2), ((1, 1), (1 + m[1]) ** 2), ((1, 0), (1 + m[0]) * (1 + m[1]))):
        before, after = map_spectrum(plain["kappa"][0], i, j), map_spectrum(biased["kappa"][0], i, j)
        carried = np.abs(before) > 1e-6 * np.abs(before).max()  # (flat: modes above the band limit hold round-off)
        np.testing.assert_allclose(after[carried] / before[carried], factor, rtol=1e-4)
    with_table = make_simulator(
        name,
        {
            **COMMON,
            **options,
            "emulator": True,
            "emulator_nodes": 3,
            "parameters": ["sigma_8", "m_1"],
            "cache_dir": str(tmp_path),
        },
    )
    assert with_table.table().names == ("sigma_8",)
    assert with_table.default_bounds("m_1") == (-0.05, 0.05)


def map_spectrum(kappa, i, j):
    """Cross-spectrum of bins i and j of (n_bins, P) NESTED HEALPix maps (anafast, ell >= 2) or of
    (n_bins, n, n) flat patches (FFT power of every nonzero mode)."""
    if kappa.ndim == 2:
        a, b = (hp.reorder(kappa[k].astype(float), n2r=True) for k in (i, j))
        return hp.anafast(a, b)[2:]
    a, b = (np.fft.rfft2(kappa[k].astype(float)) for k in (i, j))
    return (a * np.conj(b)).real.ravel()[1:]


def test_gaussian_priors_on_systematics_with_the_emulator(tmp_path):
    """Systematics take Gaussian priors from the config: m_i an unbounded normal (it is not a table
    axis), delta_z_i a truncated normal (its bounds are the table's box)."""
    from cosmosbi.simulators import prior_from_config

    sim = make_simulator(
        "weak_lensing",
        {
            **COMMON,
            "nside": 16,
            "lmax": 32,
            "emulator": True,
            "emulator_nodes": 3,
            "cache_dir": str(tmp_path),
            "parameters": ["sigma_8", "delta_z_1", "m_1"],
        },
    )
    sim.prior = prior_from_config(
        {
            "sigma_8": {"uniform": [0.7, 0.9]},
            "delta_z_1": {"normal": [0.0, 0.002], "bounds": [-0.01, 0.01]},
            "m_1": {"normal": [0.0, 0.005]},
        }
    )
    theta = sim.prior.sample(3, np.random.default_rng(2))
    out = sim.simulate(theta, np.random.default_rng(3))
    table = sim.table()
    assert table.names == ("sigma_8", "delta_z_1")
    np.testing.assert_allclose(table.low, [0.7, -0.01])
    np.testing.assert_allclose(table.high, [0.9, 0.01])
    assert np.all(np.isfinite(out["kappa"]))
