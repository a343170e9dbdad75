"""Tests of the weak-lensing simulator: spectra, lognormal moments, noise, emulator, cache."""

import math

import healpy as hp
import numpy as np
import pytest
from scipy import stats

from cosmosbi.simulators import Gaussian, make_simulator, prior_from_config
from cosmosbi.simulators.lensing_theory import (
    FIDUCIAL,
    LensingTheory,
    SpectraTable,
    smail_nz,
    spectra_relative_error,
    tomographic_nz,
)
from cosmosbi.simulators.weak_lensing import WeakLensingSimulator, footprint_mask

# small, fast configuration shared by the tests (the spectra table is built once per session)
BASE = {
    "nside": 32,
    "lmax": 64,
    "n_bins": 2,
    "transfer_function": "eisenstein_hu",
    "emulator_nodes": 4,
}
NODE = np.array([0.25, 0.9])  # a node of the 4-point Chebyshev grid over [0.2, 0.4] x [0.6, 1.0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("wl_cache")


def make(cache_dir, **options):
    return make_simulator("weak_lensing", {**BASE, "cache_dir": str(cache_dir), **options})


def measured_spectra(kappa_nest, lmax, pairs):
    """anafast auto/cross spectra of (n_bins, npix) NESTED maps in GLASS order. Returns (S, lmax + 1)."""
    maps = [hp.reorder(m.astype(float), n2r=True) for m in kappa_nest]
    cls = hp.anafast(maps, lmax=lmax, pol=False)  # healpy order: diagonals
    # healpy order for n maps: (0,0),(1,1),...,(0,1),(1,2),...,(0,2),...
    n = len(maps)
    index, k = {}, 0
    for d in range(n):
        for i in range(n - d):
            index[(i + d, i)] = k
            k += 1
    return np.array([cls[index[(i, j)]] for i, j in pairs])


def spectra_chi2(sim, theta, n_real, rng, use_sample_variance):
    """chi^2 of the mean measured spectra against pyccl's spectra, one value per spectrum."""
    target = sim.theory.evaluate(sim.params(theta), lognormal=False)["cls"]
    thetas = np.tile(theta, (n_real, 1))
    kappa = sim.simulate(thetas, rng)["kappa"]
    measured = np.stack([measured_spectra(k, sim.lmax, sim.pairs) for k in kappa])  # (R, S, L)
    ell = np.arange(sim.lmax + 1)[2:]
    mean = measured[:, :, 2:].mean(axis=0)
    if use_sample_variance:
        var = measured[:, :, 2:].var(axis=0, ddof=1) / n_real
    else:
        auto = {i: target[k, 2:] for k, (i, j) in enumerate(sim.pairs) if i == j}
        var = (
            np.array([(auto[i] * auto[j] + target[k, 2:] ** 2) / (2 * ell + 1) for k, (i, j) in enumerate(sim.pairs)])
            / n_real
        )
    chi2 = np.sum((mean - target[:, 2:]) ** 2 / var, axis=1)
    print(f"chi2 per spectrum {np.round(chi2, 1)} for {ell.size} multipoles")
    return chi2, ell.size


def pyccl_convergence_spectra(sim, params, ell):
    """Convergence spectra C^kappa-kappa from pyccl alone (no cosmosbi theory code): a ``pyccl.Tracer``
    with the lensing kernel of each bin and the convergence prefactor ell (ell + 1) (``der_angles=1``).

    No intrinsic alignments (A_IA = 0). Returns (n_spectra, L) in GLASS order."""
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
    for nz in sim.nz_bins:
        tracer = ccl.Tracer()
        tracer.add_tracer(cosmo, kernel=ccl.get_lensing_kernel(cosmo, dndz=(sim.z, nz)), der_bessel=-1, der_angles=1)
        tracers.append(tracer)
    return np.array([ccl.angular_cl(cosmo, tracers[i], tracers[j], ell) for i, j in sim.pairs])


def f_ell(ell):
    """(ell + 2)(ell - 1) / (ell (ell + 1)): shear E-mode over convergence spectrum."""
    ell = np.asarray(ell, dtype=float)
    return (ell + 2) * (ell - 1) / (ell * (ell + 1))


def test_gaussian_map_spectra_match_pyccl_convergence_spectra(cache_dir):
    """Full-sky Gaussian maps without noise at nside 32: the mean anafast spectra over 200
    realisations match pyccl's convergence spectra over ell = 2..9 and ell = 2..64, and not the
    shear E-mode spectra. The maps are band-limited point samples (no pixel window), so the
    target is C^kappa-kappa itself. Variance of the mean from the target: (C_ii C_jj + C_ij^2) / (2 ell + 1) / R."""
    sim = make(cache_dir, field="gaussian", noise=False)
    n_real = 200
    kappa = sim.simulate(np.tile(NODE, (n_real, 1)), np.random.default_rng(31))["kappa"]
    measured = np.stack([measured_spectra(k, sim.lmax, sim.pairs) for k in kappa])[:, :, 2:].mean(axis=0)
    ell = np.arange(2, sim.lmax + 1)
    target = pyccl_convergence_spectra(sim, sim.params(NODE), ell.astype(float))
    auto = {i: target[k] for k, (i, j) in enumerate(sim.pairs) if i == j}
    var = (
        np.array([(auto[i] * auto[j] + target[k] ** 2) / (2 * ell + 1) for k, (i, j) in enumerate(sim.pairs)]) / n_real
    )
    alpha = 1e-3 / (2 * len(sim.pairs))  # two ranges of ell, one test per spectrum, overall false-alarm rate 1e-3
    for n_ell in (8, ell.size):  # ell = 2..9, then ell = 2..64
        chi2 = np.sum(((measured - target) ** 2 / var)[:, :n_ell], axis=1)
        print(f"ell = 2..{n_ell + 1}: chi2 {np.round(chi2, 1)} for {n_ell} dof against C^kappa-kappa")
        assert np.all(chi2 < stats.chi2.ppf(1 - alpha, n_ell)), chi2
        assert np.all(chi2 > stats.chi2.ppf(alpha, n_ell)), chi2
    # the shear E-mode spectrum (what WeakLensingTracer gives) is rejected at ell = 2..9
    chi2_ee = np.sum(((measured - f_ell(ell) * target) ** 2 / var)[:, :8], axis=1)
    print(f"ell = 2..9: chi2 {np.round(chi2_ee, 1)} for 8 dof against C^EE")
    assert np.all(chi2_ee > stats.chi2.ppf(1 - alpha, 8)), chi2_ee


def convergence_blob(nside, lmax, lon=90.0, lat=0.0):
    """RING map of a smooth positive convergence blob (a 5-degree disc smoothed in harmonic space)."""
    blob = np.zeros(hp.nside2npix(nside))
    blob[hp.query_disc(nside, hp.ang2vec(lon, lat, lonlat=True), np.radians(5.0))] = 1.0
    ell = np.arange(lmax + 1)
    return hp.alm2map(hp.almxfl(hp.map2alm(blob, lmax=lmax), np.exp(-ell * (ell + 1) * 2e-3)), nside, lmax=lmax)


def test_shear_sign_healpix_convention_and_glass_option():
    """healpy's spin-2 analysis of the shear gives E = +sqrt(f_ell) kappa_lm (HEALPix convention):
    a positive blob has tangential shear (gamma1 < 0 north and south, > 0 east and west); the
    ``glass`` convention is GLASS's own ``from_convergence`` shear."""
    import glass.lensing

    from cosmosbi.simulators.weak_lensing import shear_from_convergence

    nside, lmax = 32, 64
    kappa = convergence_blob(nside, lmax)
    gamma = shear_from_convergence(kappa, lmax)
    values = {}
    for name, lon, lat in (("north", 90, 12), ("south", 90, -12), ("east", 102, 0), ("west", 78, 0)):
        values[name] = gamma[:, hp.ang2pix(nside, lon, lat, lonlat=True)]
    assert values["north"][0] < -0.1 and values["south"][0] < -0.1
    assert values["east"][0] > 0.1 and values["west"][0] > 0.1
    # healpy's own transforms of (gamma1, gamma2): spin-2 and polarisation (T, Q, U) E modes
    kappa_lm = hp.map2alm(kappa, lmax=lmax, iter=3)
    e_spin, b_spin = hp.map2alm_spin(gamma, 2, lmax=lmax)
    e_pol = hp.map2alm([kappa, gamma[0], gamma[1]], lmax=lmax, pol=True, iter=3)[1]
    ell, _m = hp.Alm.getlm(lmax)
    strong = (ell >= 2) & (np.abs(kappa_lm) > 1e-2 * np.abs(kappa_lm).max())
    for e in (e_spin, e_pol):
        ratio = (e[strong] / kappa_lm[strong]).real
        np.testing.assert_allclose(ratio, np.sqrt(f_ell(ell[strong])), rtol=2e-2)
    assert np.abs(b_spin).max() < 1e-2 * np.abs(e_spin).max()
    glass_gamma = glass.lensing.from_convergence(kappa, lmax=lmax, shear=True, discretized=False)[0]
    ours = shear_from_convergence(kappa, lmax, convention="glass")
    scale = np.abs(glass_gamma).max()
    np.testing.assert_allclose(ours[0], glass_gamma.real, atol=2e-2 * scale)
    np.testing.assert_allclose(ours[1], glass_gamma.imag, atol=2e-2 * scale)
    np.testing.assert_allclose(ours, -gamma, rtol=1e-12)


def test_simulated_shear_cross_spectrum_with_convergence(cache_dir):
    """Simulated maps, healpy's spin-2 analysis: kappa x E = +sqrt(f_ell) C^kappa-kappa, EE = f_ell C^kappa-kappa
    (ratios per realisation, which cancel the sample variance), and the mean kappa x E over 100
    realisations matches sqrt(f_ell) times pyccl's convergence spectrum over ell = 2..9."""
    sim = make(cache_dir, field="gaussian", noise=False, shear=True)
    n_real = 100
    out = sim.simulate(np.tile(NODE, (n_real, 1)), np.random.default_rng(41))
    ell = np.arange(2, sim.lmax + 1)
    cross, bin_ = [], 1
    for r in range(n_real):
        kappa = hp.reorder(out["kappa"][r, bin_].astype(float), n2r=True)
        gamma = np.array([hp.reorder(g.astype(float), n2r=True) for g in out["gamma"][r, bin_]])
        kappa_lm = hp.map2alm(kappa, lmax=sim.lmax, iter=3)
        e_lm, _ = hp.map2alm_spin(gamma, 2, lmax=sim.lmax)
        kk, ke, ee = hp.alm2cl(kappa_lm)[2:], hp.alm2cl(kappa_lm, e_lm)[2:], hp.alm2cl(e_lm)[2:]
        np.testing.assert_allclose(ke / kk, np.sqrt(f_ell(ell)), rtol=1e-2)
        np.testing.assert_allclose(ee / kk, f_ell(ell), rtol=2e-2)
        cross.append(ke)
    target = pyccl_convergence_spectra(sim, sim.params(NODE), ell.astype(float))[sim.pairs.index((bin_, bin_))]
    mean = np.mean(cross, axis=0)[:8]
    # Var(kappa x E) = f_ell Var(C^kk) for fully correlated fields
    var = f_ell(ell[:8]) * 2 * target[:8] ** 2 / (2 * ell[:8] + 1) / n_real
    chi2 = np.sum((mean - np.sqrt(f_ell(ell[:8])) * target[:8]) ** 2 / var)
    print(f"kappa x E, ell = 2..9: chi2 {chi2:.1f} for 8 dof")
    assert stats.chi2.ppf(1e-3 / 2, 8) < chi2 < stats.chi2.ppf(1 - 1e-3 / 2, 8)
    assert np.all(mean > 0)


def test_registered_outputs_and_derived_parameter(cache_dir):
    sim = make(cache_dir, shear=True, mask="cap", cap_area_deg2=5000.0)
    assert isinstance(sim, WeakLensingSimulator)
    theta = np.array([[0.25, 0.9], [0.35, 0.7]])
    out = sim.simulate(theta, np.random.default_rng(0))
    P = sim.pixels.size
    assert out["kappa"].shape == (2, 2, P) and out["kappa"].dtype == np.float32
    assert out["gamma"].shape == (2, 2, 2, P) and out["gamma"].dtype == np.float32
    for name, spec in sim.output_spec.items():
        assert out[name].shape == (2, *spec.shape)
    np.testing.assert_allclose(out["S_8"][:, 0], theta[:, 1] * np.sqrt(theta[:, 0] / 0.3), rtol=1e-6)
    # the cap covers 5000 deg^2 up to one ring of pixels; its pixels are in NESTED order
    area = P * hp.nside2pixarea(32, degrees=True)
    assert abs(area - 5000.0) < 2 * math.pi * math.sqrt(5000 / math.pi) * hp.nside2resol(32, arcmin=True) / 60
    assert np.all(np.diff(sim.pixels) > 0)
    _lon, lat = hp.pix2ang(32, sim.pixels, nest=True, lonlat=True)
    assert lat.min() > 90 - np.degrees(math.acos(1 - 5000 * (math.pi / 180) ** 2 / (2 * math.pi))) - 2


def test_rows_do_not_depend_on_batching(cache_dir):
    sim = make(cache_dir)
    theta = np.array([[0.25, 0.9], [0.35, 0.7], [0.3, 0.8]])
    rngs = [np.random.default_rng(s) for s in (5, 6, 7)]
    together = sim.simulate(theta, rngs)["kappa"]
    alone = sim.simulate(theta[1:2], [np.random.default_rng(6)])["kappa"]
    np.testing.assert_array_equal(together[1], alone[0])


def test_gaussian_spectra_match_pyccl_chi2(cache_dir):
    """Full sky, no noise: mean anafast spectra of Gaussian maps vs pyccl, analytic variance."""
    sim = make(cache_dir, field="gaussian", noise=False)
    chi2, dof = spectra_chi2(sim, NODE, 60, np.random.default_rng(11), use_sample_variance=False)
    # three independent chi^2 tests (auto, auto, cross), overall false-alarm rate 1e-3
    assert np.all(chi2 < stats.chi2.ppf(1 - 1e-3 / 3, dof)), chi2
    assert np.all(chi2 > stats.chi2.ppf(1e-3 / 3, dof)), chi2


def test_lognormal_spectra_match_pyccl_chi2(cache_dir):
    """Lognormal maps reproduce the target spectra; variance of the mean from the sample.

    lmax = nside keeps most of the lognormal power above lmax (quadratic term up to 2 lmax)
    below the HEALPix quadrature limit, so anafast measures the realised spectrum without aliasing.
    """
    sim = make(cache_dir, nside=64, lmax=64, field="lognormal", noise=False)
    n_real = 40
    chi2, dof = spectra_chi2(sim, NODE, n_real, np.random.default_rng(12), use_sample_variance=True)
    # with a sample variance the statistic is a sum of squared t(n_real - 1) variables
    t_var = (n_real - 1) / (n_real - 3)
    limit = stats.chi2.ppf(1 - 1e-3 / 3, dof) * t_var
    assert np.all(chi2 < limit), chi2


def test_lognormal_mean_variance_skewness(cache_dir):
    sim = make(cache_dir, nside=64, lmax=64, field="lognormal", noise=False)
    theta = np.array([0.3, 0.8])
    th = sim.theory_at(theta)
    kappa = sim.simulate(np.tile(theta, (6, 1)), np.random.default_rng(3))["kappa"].astype(float)  # (R, B, P)
    ell = np.arange(sim.lmax + 1)
    for b in range(sim.n_bins):
        k = sim.pairs.index((b, b))
        var_g = np.sum((2 * ell + 1) * th["gls"][k]) / (4 * math.pi)
        lam = th["shifts"][b]
        expected_var = lam**2 * np.expm1(var_g)
        expected_skew = (np.exp(var_g) + 2) * np.sqrt(np.expm1(var_g))
        # per-realisation moments; their scatter over realisations gives the error bars
        means = kappa[:, b].mean(axis=1)
        variances = kappa[:, b].var(axis=1)
        skews = stats.skew(kappa[:, b], axis=1)
        R = len(kappa)
        for value, target, spread in (
            (means.mean(), 0.0, means.std(ddof=1)),
            (variances.mean(), expected_var, variances.std(ddof=1)),
            (skews.mean(), expected_skew, skews.std(ddof=1)),
        ):
            assert abs(value - target) < 5 * spread / math.sqrt(R) + 1e-12, (b, value, target, spread)
        assert skews.mean() > 5 * skews.std(ddof=1) / math.sqrt(R)  # positive skewness
        # the lognormal variance matches the target spectrum's variance (to the power above lmax)
        target_var = np.sum((2 * ell + 1) * th["cls"][k]) / (4 * math.pi)
        assert abs(expected_var / target_var - 1) < 0.02


def test_noise_variance_per_pixel(cache_dir):
    """Noise = (map with noise) - (same seed without noise): variance sigma_e^2 / (2 n_gal A_pix)."""
    options = {"shear": True, "mask": "cap", "cap_area_deg2": 10000.0, "galaxy_density": 10.0, "shape_noise": 0.3}
    noisy = make(cache_dir, **options)
    clean = make(cache_dir, **options, noise=False)
    theta = np.array([[0.3, 0.8]])
    a = noisy.simulate(theta, [np.random.default_rng(9)])
    b = clean.simulate(theta, [np.random.default_rng(9)])
    n_gal_pix = 10.0 / 2 * hp.nside2pixarea(32, degrees=True) * 3600
    expected = 0.3**2 / (2 * n_gal_pix)
    assert noisy.noise_sigma**2 == pytest.approx(expected, rel=1e-12)
    for name in ("kappa", "gamma"):
        noise = (a[name] - b[name]).astype(float).ravel()
        n = noise.size
        # sample variance of n Gaussian values: relative standard error sqrt(2 / n)
        assert abs(noise.var() / expected - 1) < 5 * math.sqrt(2 / n), name
        assert abs(noise.mean()) < 5 * math.sqrt(expected / n), name


def test_poisson_counts_set_the_noise_per_pixel(cache_dir):
    """With Poisson counts N per pixel, noise * sqrt(2 N) / sigma_e is standard normal; empty pixels are 0."""
    options = {"galaxy_density": 0.001, "shape_noise": 0.3, "galaxy_counts": "poisson"}
    noisy = make(cache_dir, **options)
    clean = make(cache_dir, **options, noise=False)
    theta = np.array([[0.3, 0.8]])
    a = noisy.simulate(theta, [np.random.default_rng(8)])
    b = clean.simulate(theta, [np.random.default_rng(8)])
    counts = a["counts"][0]
    np.testing.assert_array_equal(counts, b["counts"][0])
    mean = noisy.galaxies_per_pixel  # about 1.7 galaxies per pixel and bin at nside 32
    assert abs(counts.mean() - mean) < 5 * math.sqrt(mean / counts.size)
    empty = counts == 0
    assert empty.any() and np.all(a["kappa"][0][empty] == 0) and np.all(b["kappa"][0][empty] == 0)
    z = ((a["kappa"][0] - b["kappa"][0])[~empty] * np.sqrt(2 * counts[~empty]) / 0.3).astype(float)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / z.size)


def test_emulator_error_below_one_percent(cache_dir):
    sim = make(cache_dir)
    rng = np.random.default_rng(21)
    table = sim.table()
    errors = []
    for theta in sim.prior.sample(4, rng):
        direct = sim.theory.evaluate(sim.params(theta))
        emulated = table(theta)
        errors.append(spectra_relative_error(emulated["cls"], direct["cls"], sim.pairs).max())
        errors.append(spectra_relative_error(emulated["gls"], direct["gls"], sim.pairs).max())
        errors.append(np.max(np.abs(emulated["shifts"] / direct["shifts"] - 1)))
    print("max relative emulator errors (cls, gls, shifts per point):", np.round(errors, 5))
    assert max(errors) < 0.01, errors
    # the interpolated quantities (log auto-spectra, correlation coefficients) invert exactly
    from cosmosbi.simulators.lensing_theory import _from_smooth, _to_smooth

    np.testing.assert_allclose(_from_smooth(_to_smooth(direct["gls"], sim.pairs), sim.pairs), direct["gls"], rtol=1e-12)
    # at a node the table is exact
    node = table(NODE)["cls"]
    np.testing.assert_allclose(node, sim.theory.evaluate(sim.params(NODE))["cls"], rtol=1e-7)


def test_table_is_cached_on_disk_and_keyed(cache_dir, monkeypatch):
    sim = make(cache_dir)
    sim.table()
    files = sorted(p.name for p in cache_dir.glob("weak_lensing_table_*.npz"))
    assert files and not list(cache_dir.glob("*.tmp"))
    # a new simulator with the same configuration loads the table without computing spectra
    again = make(cache_dir)
    monkeypatch.setattr(again.theory, "evaluate", lambda *a, **k: pytest.fail("table was recomputed"))
    np.testing.assert_array_equal(again.table().data["cls"], sim.table().data["cls"])
    # anything the table depends on changes its key
    t0 = SpectraTable(sim.theory, sim.parameter_names, [0.2, 0.6], [0.4, 1.0], FIDUCIAL, 5)
    assert t0.key() != SpectraTable(sim.theory, sim.parameter_names, [0.2, 0.6], [0.4, 1.1], FIDUCIAL, 5).key()
    assert t0.key() != SpectraTable(sim.theory, sim.parameter_names, [0.2, 0.6], [0.4, 1.0], FIDUCIAL, 4).key()
    assert (
        t0.key()
        != SpectraTable(sim.theory, sim.parameter_names, [0.2, 0.6], [0.4, 1.0], {**FIDUCIAL, "h": 0.6}, 5).key()
    )


def test_table_lock_waits_for_a_live_builder_and_takes_over_a_stale_one(tmp_path):
    import os
    import threading
    import time

    from cosmosbi.simulators.chebyshev import atomic_savez

    z = np.linspace(0, 3.5, 351)
    theory = LensingTheory(z, tomographic_nz(z, smail_nz(z), 1), 32, transfer_function="eisenstein_hu")

    def table():
        return SpectraTable(theory, ["sigma_8"], [0.7], [0.9], FIDUCIAL, 2)

    path = tmp_path / f"weak_lensing_table_{table().key()}.npz"
    lock = path.with_name(path.name + ".lock")
    data = table().build(None).data
    lock.touch()  # another process is building
    result = {}
    waiter = threading.Thread(target=lambda: result.update(t=table().build(tmp_path, poll_seconds=0.02)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not path.exists()
    atomic_savez(path, data)
    lock.unlink()
    waiter.join(10)
    np.testing.assert_array_equal(result["t"].data["cls"], data["cls"])
    # a lock whose builder died (untouched for longer than stale_seconds) is taken over
    path.unlink()
    lock.touch()
    os.utime(lock, (time.time() - 1000, time.time() - 1000))
    rebuilt = table().build(tmp_path, stale_seconds=900)
    assert path.exists() and not lock.exists()
    np.testing.assert_allclose(rebuilt.data["cls"], data["cls"], rtol=1e-10)


def test_outside_box_uses_pyccl(cache_dir):
    sim = make(cache_dir)
    theta = np.array([0.45, 0.8])  # outside the default prior box
    direct = sim.theory.evaluate(sim.params(theta))
    np.testing.assert_allclose(sim.theory_at(theta)["cls"], direct["cls"])


def test_shear_e_mode_spectrum(cache_dir):
    """Shear of a Gaussian convergence: EE = (ell+2)(ell-1) / (ell(ell+1)) C_kk and no B mode."""
    sim = make(cache_dir, field="gaussian", noise=False, shear=True, n_bins=2)
    out = sim.simulate(NODE[None], [np.random.default_rng(4)])
    kappa = hp.reorder(out["kappa"][0, 1].astype(float), n2r=True)
    g1, g2 = (hp.reorder(g.astype(float), n2r=True) for g in out["gamma"][0, 1])
    cl = hp.anafast([kappa, g1, g2], lmax=sim.lmax, pol=True)
    tt, ee, bb = cl[0][2:], cl[1][2:], cl[2][2:]
    ell = np.arange(2, sim.lmax + 1)
    factor = (ell + 2) * (ell - 1) / (ell * (ell + 1))
    np.testing.assert_allclose(ee, factor * tt, rtol=2e-2)
    assert np.all(bb < 1e-3 * ee)


def test_theory_ingredients():
    z = np.linspace(0, 3.5, 351)
    nz = smail_nz(z)
    bins = tomographic_nz(z, nz, 3, sigma_z=0.0)
    np.testing.assert_allclose(np.trapezoid(bins, z, axis=1), 1.0, rtol=1e-6)
    # top-hat equal-number bins: each holds a third of the galaxies
    masses = [np.trapezoid(nz * (b > 0), z) for b in bins]
    np.testing.assert_allclose(masses, 1 / 3, atol=0.01)
    theory = LensingTheory(z, tomographic_nz(z, nz, 2), 200, transfer_function="eisenstein_hu")
    base = theory.spectra(FIDUCIAL)
    # intrinsic alignments (A_IA > 0) lower the lensing spectra (GI term)
    assert np.all(theory.spectra({**FIDUCIAL, "A_IA": 1.0})[0, 10:] < base[0, 10:])
    # stronger feedback (larger M_c) suppresses small-scale power more
    strong = theory.spectra({**FIDUCIAL, "log10_Mc": 15.0})
    ratio = strong[1, 2:] / base[1, 2:]  # ratio[k] is at ell = k + 2
    assert ratio[198] < ratio[8] - 0.01 and abs(ratio[8] - 1) < 0.01
    # shifts grow with source redshift and with Omega_m
    s = theory.shifts(FIDUCIAL)
    assert s[1] > s[0] > 0
    assert np.all(theory.shifts({**FIDUCIAL, "Omega_m": 0.35}) > s)


def test_mask_file_and_nz_file(tmp_path, cache_dir):
    mask = np.zeros(hp.nside2npix(16))
    mask[:100] = 1.0  # NESTED pixels 0..99 at nside 16 -> 400 pixels at nside 32
    np.save(tmp_path / "mask.npy", mask)
    fp = footprint_mask(32, str(tmp_path / "mask.npy"))
    assert fp.sum() == 400 and fp[:400].all()
    z = np.linspace(0.01, 2.0, 100)
    nz = np.stack([np.exp(-((z - 0.5) ** 2) / 0.02), np.exp(-((z - 1.0) ** 2) / 0.02)])
    np.savez(tmp_path / "nz.npz", z=z, nz=nz)
    sim = make(
        cache_dir, nz_file=str(tmp_path / "nz.npz"), n_bins=None, mask=str(tmp_path / "mask.npy"), emulator=False
    )
    assert sim.n_bins == 2 and sim.pixels.size == 400
    out = sim.simulate(NODE[None], [np.random.default_rng(0)])
    assert out["kappa"].shape == (1, 2, 400) and np.all(np.isfinite(out["kappa"]))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"nside": 48}, "nside"),
        ({"lmax": 200}, "lmax"),
        ({"field": "poisson"}, "field"),
        ({"parameters": ["Omega_m", "log10_T_AGN"]}, "log10_T_AGN"),
        ({"parameters": ["Omega_k"]}, "Omega_k"),
        ({"fiducial": {"Omega_x": 1.0}}, "Omega_x"),
        ({"baryon_model": "bacco"}, "baryon_model"),
        ({"mask": "/no/such/mask.fits"}, "mask"),
        ({"galaxy_density": -1.0}, "galaxy_density"),
        ({"shift": "constant"}, "shift"),
        ({"galaxy_counts": "fixed"}, "galaxy_counts"),
    ],
)
def test_bad_options_raise(options, match, cache_dir):
    with pytest.raises(ValueError, match=match):
        make(cache_dir, **options)


def test_unbounded_prior_needs_direct_theory(cache_dir):
    sim = make(cache_dir)
    sim.prior = Gaussian(["Omega_m", "sigma_8"], [0.3, 0.8], [0.02, 0.05])
    with pytest.raises(ValueError, match="emulator"):
        sim.simulate(NODE[None], np.random.default_rng(0))


def test_example_config_builds():
    import pathlib

    import yaml

    from cosmosbi.config import load_config

    path = pathlib.Path(__file__).parents[2] / "examples" / "weak_lensing.yaml"
    config = load_config(path)  # validates options and prior against the simulator
    assert config.simulator.name == "weak_lensing"
    sim = config.build_simulator()
    prior = prior_from_config(yaml.safe_load(path.read_text())["prior"])
    assert sim.prior == prior
    assert sim.output_spec["kappa"].shape == (4, sim.pixels.size)
    assert list(sim.parameter_names) == ["Omega_m", "sigma_8", "A_IA", "log10_Mc"]


@pytest.mark.slow
def test_four_bin_lognormal_spectra_chi2_many_realisations(cache_dir):
    """4 bins (10 spectra), 300 realisations at nside 64: every auto and cross spectrum matches."""
    sim = make(cache_dir, nside=64, lmax=64, n_bins=4, field="lognormal", noise=False)
    n_real = 300
    chi2, dof = spectra_chi2(sim, NODE, n_real, np.random.default_rng(13), use_sample_variance=True)
    t_var = (n_real - 1) / (n_real - 3)
    assert np.all(chi2 < stats.chi2.ppf(1 - 1e-3 / 10, dof) * t_var), chi2
    assert np.all(chi2 > stats.chi2.ppf(1e-3 / 10, dof)), chi2


@pytest.mark.slow
def test_hmcode2020_feedback_suppresses_small_scales():
    z = np.linspace(0, 3.5, 351)
    theory = LensingTheory(z, tomographic_nz(z, smail_nz(z), 1), 1000, baryon_model="hmcode2020")
    weak = theory.spectra({**FIDUCIAL, "log10_T_AGN": 7.3})[0, 2:]
    strong = theory.spectra({**FIDUCIAL, "log10_T_AGN": 8.3})[0, 2:]
    ratio = strong / weak  # ratio[k] is at ell = k + 2
    assert abs(ratio[8] - 1) < 0.005 and ratio[998] < ratio[98] - 0.05


def test_runs_through_the_runner_and_reads_back(cache_dir, tmp_path):
    from cosmosbi.simulators.runner import run_simulations, simulation_seeds
    from cosmosbi.simulators.store import SimulationDataset

    sim = make(cache_dir, mask="cap", cap_area_deg2=2000.0, shear=True)
    summary = run_simulations(sim, 5, tmp_path / "wl", seed=3, batch_size=2, progress=False)
    assert (summary.simulated, summary.failed) == (5, 0)
    ds = SimulationDataset(tmp_path / "wl")
    assert len(ds) == 5 and ds.parameter_names == ("Omega_m", "sigma_8")
    kappa, gamma = ds.read("kappa"), ds.read("gamma")
    assert kappa.shape == (5, 2, sim.pixels.size) and kappa.dtype == np.float32
    assert gamma.shape == (5, 2, 2, sim.pixels.size)
    np.testing.assert_allclose(ds.read("S_8")[:, 0], ds.theta[:, 1] * np.sqrt(ds.theta[:, 0] / 0.3), rtol=1e-6)
    # row 4 is reproducible from its own seed alone
    _, noise_seq = simulation_seeds(3, 4)
    again = sim.simulate(ds.theta[4:5], [np.random.default_rng(noise_seq)])
    np.testing.assert_array_equal(again["kappa"][0], kappa[4])


@pytest.mark.slow
def test_lognormal_map_spectra_match_pyccl_convergence_spectra_low_ell(cache_dir):
    """Lognormal maps without noise, 400 realisations at nside 32: mean anafast spectra against
    pyccl's own convergence spectra at ell = 2..9, variance of the mean from the sample."""
    sim = make(cache_dir, field="lognormal", noise=False)
    n_real = 400
    kappa = sim.simulate(np.tile(NODE, (n_real, 1)), np.random.default_rng(51))["kappa"]
    measured = np.stack([measured_spectra(k, sim.lmax, sim.pairs) for k in kappa])[:, :, 2:10]
    ell = np.arange(2, 10)
    target = pyccl_convergence_spectra(sim, sim.params(NODE), ell.astype(float))
    var = measured.var(axis=0, ddof=1) / n_real
    chi2 = np.sum((measured.mean(axis=0) - target) ** 2 / var, axis=1)
    chi2_ee = np.sum((measured.mean(axis=0) - f_ell(ell) * target) ** 2 / var, axis=1)
    print(f"lognormal, ell = 2..9: chi2 {np.round(chi2, 1)} (C^kappa-kappa), {np.round(chi2_ee, 1)} (C^EE) for 8 dof")
    t_var = (n_real - 1) / (n_real - 3)  # sum of squared t(n_real - 1) variables
    alpha = 1e-3 / len(sim.pairs)
    assert np.all(chi2 < stats.chi2.ppf(1 - alpha, 8) * t_var), chi2
    assert np.all(chi2_ee > stats.chi2.ppf(1 - alpha, 8) * t_var), chi2_ee


@pytest.mark.slow
def test_example_config_emulator_error_below_a_thousandth():
    """The spectra table of examples/weak_lensing.yaml against direct theory at random prior points.

    Builds the table in the default cache (``$COSMOSBI_CACHE`` or ``~/.cache/cosmosbi``) on first
    use, which the example run then reuses (``benchmarks/RESULTS.md`` gives the build time).
    """
    import pathlib

    from cosmosbi.config import load_config

    path = pathlib.Path(__file__).parents[2] / "examples" / "weak_lensing.yaml"
    sim = load_config(path).build_simulator()
    table = sim.table()
    errors = []
    for theta in sim.prior.sample(6, np.random.default_rng(61)):
        direct = sim.theory.evaluate(sim.params(theta))
        emulated = table(theta)
        errors.append(spectra_relative_error(emulated["cls"], direct["cls"], sim.pairs).max())
        errors.append(spectra_relative_error(emulated["gls"], direct["gls"], sim.pairs).max())
        errors.append(np.max(np.abs(emulated["shifts"] / direct["shifts"] - 1)))
    print("max relative emulator errors (cls, gls, shifts per point):", np.round(errors, 6))
    assert max(errors) < 1e-3, errors
