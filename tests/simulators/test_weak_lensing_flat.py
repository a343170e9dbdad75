"""Tests of the flat-sky weak-lensing simulator against pyccl's own convergence spectra."""

import math

import numpy as np
import pytest
from scipy import stats

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.weak_lensing_flat import (
    FlatWeakLensingSimulator,
    flat_shear_from_convergence,
    fourier_grid,
)

# 10 x 10 deg patches of 64 pixels (9.4 arcmin, band limit ell = 1152), 2 bins, fast transfer function;
# direct theory (evaluated once per theta and kept), no spectra table
BASE = {
    "n_pixels": 64,
    "patch_deg": 10.0,
    "n_bins": 2,
    "transfer_function": "eisenstein_hu",
    "emulator": False,
}
NODE = np.array([0.25, 0.9])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("wl_flat_cache")


def make(cache_dir, **options):
    return make_simulator("weak_lensing_flat", {**BASE, "cache_dir": str(cache_dir), **options})


def pyccl_convergence_spectra(sim, params, ell):
    """C^kappa-kappa from pyccl alone: lensing kernel with the convergence prefactor (``der_angles=1``),
    A_IA = 0, n(z) shifted by the params' delta_z_i. Returns (n_spectra, L) in GLASS order."""
    import pyccl as ccl

    assert params["A_IA"] == 0.0
    cosmo = ccl.Cosmology(
        Omega_c=params["Omega_m"] - params["Omega_b"],
        Omega_b=params["Omega_b"],
        h=params["h"],
        n_s=params["n_s"],
        sigma8=params["sigma_8"],
        w0=params["w0"],
        transfer_function=BASE["transfer_function"],
        baryonic_effects=ccl.BaryonsSchneider15(log10Mc=params["log10_Mc"]),
    )
    tracers = []
    for i, nz in enumerate(sim.nz_bins):
        z = sim.z + params.get(f"delta_z_{i + 1}", 0.0)  # n_i(z - dz) on the shifted grid
        keep = z > 0
        tracer = ccl.Tracer()
        kernel = ccl.get_lensing_kernel(cosmo, dndz=(z[keep], nz[keep]))
        tracer.add_tracer(cosmo, kernel=kernel, der_bessel=-1, der_angles=1)
        tracers.append(tracer)
    return np.array([ccl.angular_cl(cosmo, tracers[i], tracers[j], ell) for i, j in sim.pairs])


def binned_mode_power(sim, maps, edges):
    """Binned FFT power of periodic maps (R, n_bins, n, n) over independent modes (0 < ell_x < Nyquist).

    Returns the per-mode |ell| (K,), bin index per mode (K,), and the per-realisation binned
    spectra (R, n_spectra, n_edges - 1): Re(X_i conj X_j) pixel^2 / n^2 averaged over the modes in a bin."""
    n = maps.shape[-1]
    ell_y, ell_x = fourier_grid(n, sim.pixel_rad)
    use = (ell_x > 0) & (np.arange(ell_x.shape[1])[None, :] < n // 2)
    ell = np.hypot(ell_x, ell_y)[use]
    which = np.digitize(ell, edges) - 1
    ok = (which >= 0) & (which < len(edges) - 1)
    fourier = np.fft.rfft2(maps.astype(float))[..., use][..., ok]  # (R, n_bins, K)
    norm = sim.pixel_rad**2 / n**2
    out = []
    for i, j in sim.pairs:
        power = (fourier[:, i] * np.conj(fourier[:, j])).real * norm
        out.append(np.stack([power[:, which[ok] == b].mean(axis=1) for b in range(len(edges) - 1)], axis=1))
    return ell[ok], which[ok], np.stack(out, axis=1)


def test_registered_outputs_shapes_and_batching(cache_dir):
    sim = make(cache_dir, shear=True, galaxy_counts="poisson", field="gaussian")
    assert isinstance(sim, FlatWeakLensingSimulator)
    theta = np.array([[0.25, 0.9], [0.25, 0.9], [0.35, 0.7]])
    out = sim.simulate(theta, [np.random.default_rng(s) for s in (1, 2, 3)])
    for name, spec in sim.output_spec.items():
        assert out[name].shape == (3, *spec.shape) and out[name].dtype == np.float32, name
    assert out["kappa"].shape == (3, 2, 64, 64) and out["gamma"].shape == (3, 2, 2, 64, 64)
    np.testing.assert_allclose(out["S_8"][:, 0], theta[:, 1] * np.sqrt(theta[:, 0] / 0.3), rtol=1e-6)
    alone = sim.simulate(theta[1:2], [np.random.default_rng(2)])
    assert not np.array_equal(out["kappa"][0], out["kappa"][1])
    np.testing.assert_array_equal(alone["kappa"][0], out["kappa"][1])
    assert sim.lmax == math.floor(math.pi / math.radians(10.0 / 64))


def test_gaussian_patch_spectra_match_pyccl_convergence_spectra(cache_dir):
    """Periodic patches (padding 1), Gaussian, no noise: the binned FFT power of 60 realisations
    matches pyccl's C^kappa-kappa averaged over the same modes. The maps are point samples of the
    band-limited field, so no pixel window enters; flat-sky convention P(|ell|) = C_ell at ell = |ell|.
    Each independent mode's power has variance P^2 (auto) or (P_ii P_jj + P_ij^2) / 2 (cross)."""
    sim = make(cache_dir, field="gaussian", noise=False)
    n_real = 60
    kappa = sim.simulate(np.tile(NODE, (n_real, 1)), np.random.default_rng(7))["kappa"]
    edges = np.linspace(2 * math.pi / math.radians(10.0), sim.lmax, 13)
    ell, which, measured = binned_mode_power(sim, kappa, edges)
    grid = np.arange(2, sim.lmax + 1, dtype=float)
    theory = pyccl_convergence_spectra(sim, sim.params(NODE), grid)
    per_mode = np.array([np.interp(ell, grid, t) for t in theory])  # (S, K)
    auto = {i: per_mode[k] for k, (i, j) in enumerate(sim.pairs) if i == j}
    n_bins = len(edges) - 1
    for k, (i, j) in enumerate(sim.pairs):
        var_mode = auto[i] ** 2 if i == j else (auto[i] * auto[j] + per_mode[k] ** 2) / 2
        expected = np.array([per_mode[k][which == b].mean() for b in range(n_bins)])
        var = np.array([var_mode[which == b].sum() / (which == b).sum() ** 2 for b in range(n_bins)]) / n_real
        chi2 = np.sum((measured[:, k].mean(axis=0) - expected) ** 2 / var)
        print(f"spectrum {(i, j)}: chi2 {chi2:.1f} for {n_bins} bins, 36 <= ell <= {sim.lmax}")
        alpha = 1e-3 / len(sim.pairs)
        assert stats.chi2.ppf(alpha, n_bins) < chi2 < stats.chi2.ppf(1 - alpha, n_bins), chi2


def test_lognormal_patch_moments_and_spectra(cache_dir):
    """Lognormal periodic patches, no noise: zero mean, variance lambda^2 (exp(sigma^2) - 1) of the
    lognormal transform, positive skewness, and binned spectra matching pyccl below ell = lmax / 2
    (sample variance of 40 realisations)."""
    sim = make(cache_dir, field="lognormal", noise=False)
    n_real = 40
    kappa = sim.simulate(np.tile(NODE, (n_real, 1)), np.random.default_rng(8))["kappa"].astype(float)
    th = sim.theory_at(NODE)
    variance_g = sim.field_variance(th["gls"])
    for b in range(sim.n_bins):
        values = kappa[:, b].reshape(n_real, -1)
        means, variances = values.mean(axis=1), values.var(axis=1)
        expected_var = th["shifts"][b] ** 2 * np.expm1(variance_g[b])
        assert abs(means.mean()) < 5 * means.std(ddof=1) / math.sqrt(n_real)
        assert abs(variances.mean() - expected_var) < 5 * variances.std(ddof=1) / math.sqrt(n_real)
        assert stats.skew(values, axis=1).mean() > 0
    edges = np.linspace(2 * math.pi / math.radians(10.0), sim.lmax / 2, 7)
    ell, which, measured = binned_mode_power(sim, kappa, edges)
    grid = np.arange(2, sim.lmax + 1, dtype=float)
    theory = pyccl_convergence_spectra(sim, sim.params(NODE), grid)
    for k in range(len(sim.pairs)):
        expected = np.array([np.interp(ell[which == b], grid, theory[k]).mean() for b in range(len(edges) - 1)])
        mean = measured[:, k].mean(axis=0)
        err = measured[:, k].std(axis=0, ddof=1) / math.sqrt(n_real)
        t_var = (n_real - 1) / (n_real - 3)
        chi2 = np.sum((mean - expected) ** 2 / err**2)
        print(f"lognormal spectrum {sim.pairs[k]}: chi2 {chi2:.1f} for {len(edges) - 1} bins")
        assert chi2 < stats.chi2.ppf(1 - 1e-3 / len(sim.pairs), len(edges) - 1) * t_var, chi2


def test_kaiser_squires_sign_and_e_mode(cache_dir):
    """A positive blob has tangential shear (gamma1 < 0 left and right of it along x, > 0 above and
    below); the simulator's shear is pure E mode with E(ell) = kappa(ell)."""
    n, pixel = 64, math.radians(10.0 / 64)
    y, x = np.mgrid[:n, :n] - n // 2
    kappa = np.exp(-(x**2 + y**2) / (2 * 3.0**2))
    g1, g2 = flat_shear_from_convergence(kappa, pixel)
    c = n // 2
    assert g1[c, c + 8] < 0 and g1[c, c - 8] < 0 and g1[c + 8, c] > 0 and g1[c - 8, c] > 0
    assert g2[c + 6, c + 6] < 0 and g2[c - 6, c - 6] < 0 and g2[c + 6, c - 6] > 0  # tangential at 45 degrees
    sim = make(cache_dir, field="lognormal", noise=False, shear=True)
    out = sim.simulate(NODE[None], [np.random.default_rng(9)])
    ell_y, ell_x = fourier_grid(n, pixel)
    ell2 = ell_x**2 + ell_y**2
    with np.errstate(invalid="ignore", divide="ignore"):
        c2, s2 = (ell_x**2 - ell_y**2) / ell2, 2 * ell_x * ell_y / ell2
    k = np.fft.rfft2(out["kappa"][0, 1].astype(float))
    g = np.fft.rfft2(out["gamma"][0, 1].astype(float))
    e_mode, b_mode = c2 * g[0] + s2 * g[1], -s2 * g[0] + c2 * g[1]
    # the Nyquist row and column hold modes whose sign of ell_x or ell_y a real map cannot tell apart
    nonzero = (ell2 > 0) & (np.abs(ell_x) < np.abs(ell_x).max()) & (np.arange(n)[:, None] != n // 2)
    scale = np.abs(k[nonzero]).max()
    np.testing.assert_allclose(e_mode[nonzero], k[nonzero], atol=1e-5 * scale)
    assert np.abs(b_mode[nonzero]).max() < 1e-5 * scale


def test_padding_keeps_the_pixel_variance(cache_dir):
    """With padding 2 the patch is cut from a box 4x larger in area: the Gaussian pixel variance is the
    sum over the box's modes, which matches the periodic patch's up to the added long modes."""
    small = make(cache_dir, field="gaussian", noise=False)
    padded = make(cache_dir, field="gaussian", noise=False, padding=2)
    th = small.theory_at(NODE)
    v1, v2 = small.field_variance(th["cls"]), padded.field_variance(th["cls"])
    assert np.all(v2 > v1) and np.all(v2 < 1.05 * v1)
    maps = padded.simulate(np.tile(NODE, (30, 1)), np.random.default_rng(10))["kappa"].astype(float)
    per_map = maps.reshape(30, 2, -1).var(axis=2)  # the long modes make per-patch variances scatter
    for b in range(2):
        assert abs(per_map[:, b].mean() - v2[b]) < 5 * per_map[:, b].std(ddof=1) / math.sqrt(30) + 0.02 * v2[b]


def test_noise_variance_per_pixel(cache_dir):
    options = {"galaxy_density": 10.0, "shape_noise": 0.3, "shear": True, "field": "gaussian"}
    noisy, clean = make(cache_dir, **options), make(cache_dir, **options, noise=False)
    theta = NODE[None]
    a, b = noisy.simulate(theta, [np.random.default_rng(4)]), clean.simulate(theta, [np.random.default_rng(4)])
    expected = 0.3**2 / (2 * 10.0 / 2 * (10.0 * 60 / 64) ** 2)
    assert noisy.noise_sigma**2 == pytest.approx(expected, rel=1e-9)
    for name in ("kappa", "gamma"):
        noise = (a[name] - b[name]).astype(float).ravel()
        assert abs(noise.var() / expected - 1) < 5 * math.sqrt(2 / noise.size), name


@pytest.mark.parametrize(
    "options, match",
    [
        ({"n_pixels": 4}, "n_pixels"),
        ({"patch_deg": 60.0}, "patch_deg"),
        ({"padding": 0}, "padding"),
        ({"parameters": ["Omega_m", "m_3"]}, "m_3"),
        ({"field": "poisson"}, "field"),
    ],
)
def test_bad_options_raise(options, match, cache_dir):
    with pytest.raises(ValueError, match=match):
        make(cache_dir, **options)
