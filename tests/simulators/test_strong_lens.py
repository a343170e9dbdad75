"""Tests of the strong-lens simulator against analytic results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.lens_profiles import (
    FFTConvolver,
    LensDistances,
    epl_deflection,
    gaussian_psf_kernel,
    sie_deflection,
    tnfw_far_field_coefficients,
    tnfw_mass_fraction,
)
from cosmosbi.simulators.strong_lens import StrongLensSimulator
from cosmosbi.simulators.subhalos import MassFunction, draw_subhalo_population, expected_count

F64 = dict(dtype=torch.float64)


def t64(x):
    return torch.as_tensor(np.asarray(x, dtype=float), **F64)


# --------------------------------------------------------------------------- main deflector


def sie_closed_form(x, y, theta_e, q, phi, x0, y0):
    """Kormann et al. (1994) SIE deflection for kappa = theta_E / (2 sqrt(q x^2 + y^2 / q))."""
    c, s = math.cos(phi), math.sin(phi)
    xr = c * (x - x0) + s * (y - y0)
    yr = -s * (x - x0) + c * (y - y0)
    f = math.sqrt(1 - q * q)
    psi = np.sqrt(q * q * xr**2 + yr**2)
    ax = theta_e * math.sqrt(q) / f * np.arctan(f * xr / psi)
    ay = theta_e * math.sqrt(q) / f * np.arctanh(f * yr / psi)
    return c * ax - s * ay, s * ax + c * ay


def sie_convergence(x, y, theta_e, q, phi, x0, y0):
    c, s = math.cos(phi), math.sin(phi)
    xr = c * (x - x0) + s * (y - y0)
    yr = -s * (x - x0) + c * (y - y0)
    return theta_e / (2 * np.sqrt(q * xr**2 + yr**2 / q))


@pytest.mark.parametrize("q, phi", [(0.8, 0.3), (0.5, -1.1), (0.95, 2.0)])
def test_sie_deflection_matches_closed_form(q, phi):
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-2, 2, 500), rng.uniform(-2, 2, 500)
    args = (1.2, q, phi, 0.1, -0.05)
    ax, ay = sie_deflection(t64(x), t64(y), *(t64(a) for a in args))
    ex, ey = sie_closed_form(x, y, *args)
    np.testing.assert_allclose(ax.numpy(), ex, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ay.numpy(), ey, rtol=1e-10, atol=1e-12)
    # the closed form is the deflection of the stated convergence: div alpha = 2 kappa
    h = 1e-5
    keep = np.hypot(x - 0.1, y + 0.05) > 0.1
    xk, yk = x[keep], y[keep]
    dax = (sie_closed_form(xk + h, yk, *args)[0] - sie_closed_form(xk - h, yk, *args)[0]) / (2 * h)
    day = (sie_closed_form(xk, yk + h, *args)[1] - sie_closed_form(xk, yk - h, *args)[1]) / (2 * h)
    np.testing.assert_allclose(dax + day, 2 * sie_convergence(xk, yk, *args), rtol=1e-5)


def test_epl_with_isothermal_slope_is_the_sie():
    rng = np.random.default_rng(2)
    x, y = t64(rng.uniform(-2, 2, 300)), t64(rng.uniform(-2, 2, 300))
    args = [t64(v) for v in (1.0, 0.7, 0.4)]
    centre = [t64(0.05), t64(0.02)]
    ax, ay = epl_deflection(x, y, *args, t64(2.0), *centre, n_iter=60)
    sx, sy = sie_deflection(x, y, *args, *centre)
    np.testing.assert_allclose(ax.numpy(), sx.numpy(), atol=1e-6)
    np.testing.assert_allclose(ay.numpy(), sy.numpy(), atol=1e-6)


def radial_profile_peak(image, scale):
    n = image.shape[0]
    c = (np.arange(n) - (n - 1) / 2) * scale
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    edges = np.arange(0, r.max(), scale / 2)
    which = np.digitize(r.ravel(), edges)
    prof = np.bincount(which, weights=image.ravel(), minlength=len(edges) + 1) / np.maximum(
        np.bincount(which, minlength=len(edges) + 1), 1
    )
    k = int(np.argmax(prof[1:])) + 1
    return 0.5 * (edges[k - 1] + edges[k]) if k < len(edges) else edges[-1]


def test_sis_forms_an_einstein_ring_at_theta_e():
    scale = 0.02
    sim = StrongLensSimulator(
        n_pixels=160,
        pixel_scale_arcsec=scale,
        supersampling=3,
        psf_kernel=[[1.0]],
        device="cpu",
        dtype="float64",
        nuisance_priors={
            "theta_E": {"uniform": [1.1, 1.1 + 1e-9]},
            **{k: {"uniform": [0.0, 1e-9]} for k in ("lens_e1", "lens_e2", "lens_x", "lens_y", "shear_g1", "shear_g2")},
            **{k: {"uniform": [0.0, 1e-9]} for k in ("src_x", "src_y", "src_e1", "src_e2")},
            "src_R_e": {"uniform": [0.03, 0.03 + 1e-9]},
            "src_n": {"uniform": [1.0, 1.0 + 1e-9]},
        },
    )
    nuisance, pops = sim.draw_parameters(np.array([[0.0, -1.9]]), [np.random.default_rng(0)])
    assert len(pops[0]) == 0
    image = sim.render(nuisance, pops)[0].numpy()
    peak = radial_profile_peak(image, scale)
    assert abs(peak - 1.1) <= scale  # the ring lies at theta_E to within one pixel
    # and the image is a ring: equal brightness around it (within 2 percent)
    n = image.shape[0]
    c = (np.arange(n) - (n - 1) / 2) * scale
    yy, xx = np.meshgrid(c, c, indexing="ij")
    on_ring = np.abs(np.hypot(xx, yy) - 1.1) < scale
    angle = np.arctan2(yy, xx)[on_ring]
    quadrants = [
        image[on_ring][(angle >= a) & (angle < a + np.pi / 2)].mean() for a in (-np.pi, -np.pi / 2, 0, np.pi / 2)
    ]
    assert np.ptp(quadrants) / np.mean(quadrants) < 0.02


# --------------------------------------------------------------------------- subhalos


def tnfw_density(r, tau):
    """Baltz et al. (2009) truncated NFW (r in units of r_s, rho_s = 1)."""
    return 1.0 / (r * (1 + r) ** 2) * tau**2 / (tau**2 + r**2)


def cylinder_mass(R, tau):
    """Mass within the cylinder of radius R: integral of rho 4 pi r^2 times the fraction of the
    shell of radius r inside the cylinder (1 for r < R, 1 - sqrt(1 - R^2 / r^2) beyond)."""
    inner = integrate.quad(lambda r: tnfw_density(r, tau) * 4 * np.pi * r**2, 0, R, limit=200)[0]
    outer = integrate.quad(
        lambda r: tnfw_density(r, tau) * 4 * np.pi * r**2 * (1 - np.sqrt(1 - R**2 / r**2)), R, np.inf, limit=200
    )[0]
    return inner + outer


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0, 15.0])
def test_tnfw_enclosed_mass_matches_the_projected_density_integral(tau):
    total = integrate.quad(lambda r: tnfw_density(r, tau) * 4 * np.pi * r**2, 0, np.inf, limit=200)[0]
    radii = np.array([0.05, 0.3, 0.999, 1.0, 1.001, 2.5, 10.0, 60.0])
    expected = np.array([cylinder_mass(R, tau) for R in radii]) / total
    got = tnfw_mass_fraction(t64(radii), t64(1.0), t64(tau)).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_tnfw_far_field_coefficients_match_the_projected_mass_outside(tau):
    """1 - F(R) = c2 / R^2 + c3 / R^3 + O(R^-4): with the right (c2, c3) the remainder of
    R^2 (1 - F) - c2 - c3 / R falls by 4 when R doubles (by 1 with a wrong c2, by 2 with a wrong c3)."""
    total = integrate.quad(lambda r: tnfw_density(r, tau) * 4 * np.pi * r**2, 0, np.inf, limit=400, epsrel=1e-12)[0]

    def outside(R):  # mass outside the cylinder of radius R over the total
        f = lambda r: tnfw_density(r, tau) * 4 * np.pi * r**2 * np.sqrt(1 - R**2 / r**2)
        return integrate.quad(f, R, np.inf, limit=400, epsabs=0, epsrel=1e-12)[0] / total

    c2, c3 = (float(v) for v in tnfw_far_field_coefficients(t64(1.0), t64(tau)))
    radii = np.array([20.0, 40.0, 80.0]) * max(1.0, tau)
    rest = np.array([outside(R) * R**2 - c2 - c3 / R for R in radii])
    np.testing.assert_allclose(rest[1:] / rest[:-1], 0.25, atol=0.03)
    assert np.all(np.abs(rest) < 0.1 * np.abs(c3) / radii)


def test_subhalo_counts_follow_the_poisson_expectation():
    dist = LensDistances(0.5, 2.0)
    mf = MassFunction(1e7, 1e10, -1.9)
    sigma_sub, theta_e, n_draws = 0.08, 1.0, 2000
    area_kpc2 = math.pi * (1.5**2 - 0.5**2) * theta_e**2 * dist.kpc_per_arcsec**2
    lam = sigma_sub * area_kpc2
    assert expected_count("sigma_sub", sigma_sub, mf, theta_e, 0.5, 1.5, dist) == pytest.approx(lam, rel=1e-12)
    rng = np.random.default_rng(3)
    counts = np.array(
        [
            len(
                draw_subhalo_population(
                    rng,
                    normalisation="sigma_sub",
                    value=sigma_sub,
                    mass_function=mf,
                    theta_e=theta_e,
                    center=(0, 0),
                    distances=dist,
                )
            )
            for _ in range(n_draws)
        ]
    )
    # mean within 4 standard errors; variance/mean (dispersion) within 4 sigma of 1
    assert abs(counts.mean() - lam) < 4 * math.sqrt(lam / n_draws)
    assert abs(counts.var(ddof=1) / lam - 1) < 4 * math.sqrt(2 / (n_draws - 1))
    # and the count distribution is Poisson (chi^2 over bins with >= 5 expected)
    values = np.arange(counts.max() + 1)
    expected = stats.poisson.pmf(values, lam) * n_draws
    keep = expected >= 5
    observed = np.bincount(counts, minlength=len(values))
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert chi2 < stats.chi2.ppf(0.999, keep.sum() - 1)


def test_subhalo_masses_and_positions_follow_their_distributions():
    dist = LensDistances(0.5, 2.0)
    mf = MassFunction(1e7, 1e10, -1.8)
    pop = draw_subhalo_population(
        np.random.default_rng(4),
        normalisation="sigma_sub",
        value=0.0,
        mass_function=mf,
        theta_e=1.2,
        center=(0.1, 0.0),
        distances=dist,
        n_subhalos=4000,
    )
    p = -0.8
    cdf = lambda m: (m**p - 1e7**p) / (1e10**p - 1e7**p)  # noqa: E731
    assert stats.kstest(pop.mass, cdf).pvalue > 1e-3
    r = np.hypot(pop.x - 0.1, pop.y)
    assert r.min() >= 0.6 - 1e-12 and r.max() <= 1.8 + 1e-12
    area_cdf = lambda rr: (rr**2 - 0.6**2) / (1.8**2 - 0.6**2)  # noqa: E731
    assert stats.kstest(r, area_cdf).pvalue > 1e-3
    assert np.all(pop.tau > 0) and np.all(pop.r_s > 0)


def test_warm_dark_matter_suppression_integral():
    mf = MassFunction(1e7, 1e10, -1.9, log10_m_hm=8.0)
    dens = lambda lnm: np.exp(lnm * (-1.9 + 1)) * (1 + 2.7e8 / np.exp(lnm)) ** -0.99  # noqa: E731
    cdm = lambda lnm: np.exp(lnm * (-1.9 + 1))  # noqa: E731
    lo, hi = math.log(1e7), math.log(1e10)
    expected = integrate.quad(dens, lo, hi)[0] / integrate.quad(cdm, lo, hi)[0]
    assert mf.suppressed_fraction() == pytest.approx(expected, rel=1e-5)
    assert expected < 0.5  # a half-mode mass of 1e8 removes most of the low-mass subhalos


# --------------------------------------------------------------------------- instrument


def test_psf_convolution_conserves_flux_and_has_the_stated_width():
    kernel = gaussian_psf_kernel(0.18, 0.1)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    half = kernel.shape[0] // 2
    offsets = np.arange(-half, half + 1)
    var = (kernel.sum(axis=0) * offsets**2).sum()
    sigma_pix = 0.18 / (2 * math.sqrt(2 * math.log(2))) / 0.1
    assert var == pytest.approx(sigma_pix**2 + 1 / 12, rel=2e-3)  # pixel integration adds 1/12
    conv = FFTConvolver(kernel, (64, 64), "cpu", torch.float64)
    rng = np.random.default_rng(5)
    image = np.zeros((3, 64, 64))
    image[:, 20:44, 20:44] = rng.random((3, 24, 24))
    out = conv(t64(image)).numpy()
    np.testing.assert_allclose(out.sum(axis=(1, 2)), image.sum(axis=(1, 2)), rtol=1e-12)
    # a point source becomes the kernel, centred
    point = np.zeros((1, 64, 64))
    point[0, 32, 32] = 1.0
    np.testing.assert_allclose(
        conv(t64(point)).numpy()[0, 32 - half : 33 + half, 32 - half : 33 + half], kernel, atol=1e-12
    )


def test_pixels_are_area_averages_of_the_psf_convolved_brightness():
    """An unlensed round Gaussian source (Sersic n = 1/2) through a Gaussian PSF: each pixel is the
    area average of a Gaussian of variance sigma_src^2 + sigma_psf^2, a product of normal CDF
    differences. The pixel box enters once (with it twice the peak would be 4 % lower)."""
    from scipy.special import ndtr

    from cosmosbi.simulators.subhalos import SubhaloPopulation

    scale, fwhm, r_e = 0.1, 0.18, 0.15
    sim = StrongLensSimulator(n_pixels=32, supersampling=8, device="cpu", dtype="float64")
    nuisance = {k: np.zeros(1) for k in sim.nuisance_prior.names}
    nuisance.update(src_R_e=np.array([r_e]), src_n=np.array([0.5]), src_mag=np.array([22.0]))
    empty = SubhaloPopulation(*(np.zeros(0) for _ in range(6)), expected_count=0.0)
    image = sim.render(nuisance, [empty])[0].numpy()
    sigma = math.sqrt(r_e**2 / (2 * math.log(2)) + (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2)
    centres = (np.arange(32) - 15.5) * scale
    along = ndtr((centres + scale / 2) / sigma) - ndtr((centres - scale / 2) / sigma)
    expected = float(sim.instrument.counts(22.0)) * np.outer(along, along)
    assert np.abs(image - expected).max() < 2e-3 * expected.max()


def test_a_user_psf_kernel_is_sampled_at_the_ray_spacing():
    """psf_kernel is given at pixel_scale / supersampling: the Gaussian kernel at that sampling
    reproduces the default Gaussian PSF's images."""
    kernel = gaussian_psf_kernel(0.18, 0.1 / 2)
    default = StrongLensSimulator(device="cpu", dtype="float64")
    user = StrongLensSimulator(device="cpu", dtype="float64", psf_kernel=kernel.tolist())
    rngs = [np.random.default_rng(60 + i) for i in range(2)]
    nuisance, pops = default.draw_parameters(np.array([[0.05, -1.9]] * 2), rngs, n_subhalos=5)
    np.testing.assert_allclose(user.render(nuisance, pops).numpy(), default.render(nuisance, pops).numpy(), atol=1e-9)


def test_noise_variance_matches_the_instrument_model():
    sim = make_simulator("strong_lens", {"device": "cpu", "return_noiseless": True})
    theta = np.array([[0.05, -1.9]] * 6)
    out = sim.simulate(theta, np.random.default_rng(6))
    resid = (out["image"].astype(float) - out["image_noiseless"]).ravel()
    model_var = (
        out["image_noiseless"].astype(float) + sim.instrument.sky_counts
    ).ravel() + sim.instrument.read_noise_e**2
    z = resid / np.sqrt(model_var)
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    # the background pixels alone: sigma^2 = sky + read_noise^2
    assert sim.instrument.background_sigma**2 == pytest.approx(
        sim.instrument.sky_counts + sim.instrument.read_noise_e**2
    )


# --------------------------------------------------------------------------- simulator


def test_simulator_protocol_shapes_and_reproducibility():
    sim = make_simulator("strong_lens", {"device": "cpu", "return_noiseless": True})
    assert sim.parameter_names == ("Sigma_sub", "beta")
    theta = sim.prior.sample(4, np.random.default_rng(7))
    rngs = [np.random.default_rng(100 + i) for i in range(4)]
    out = sim.simulate(theta, rngs)
    assert out["image"].shape == (4, 64, 64) and out["image"].dtype == np.float32
    assert np.all(np.isfinite(out["image"]))
    # row i depends only on rngs[i]: the same rows simulated one at a time agree
    for i in (0, 3):
        single = sim.simulate(theta[i : i + 1], [np.random.default_rng(100 + i)])
        np.testing.assert_allclose(single["image_noiseless"][0], out["image_noiseless"][i], rtol=1e-4, atol=1e-3)
        same = np.isclose(single["image"][0], out["image"][i], atol=1e-2)
        assert same.mean() > 0.999


def test_fast_path_matches_the_exact_computation():
    sim = StrongLensSimulator(device="cpu")
    exact = StrongLensSimulator(device="cpu", dtype="float64")
    rngs = [np.random.default_rng(10 + i) for i in range(3)]
    nuisance, pops = sim.draw_parameters(np.array([[0.1, -1.9]] * 3), rngs, n_subhalos=40)
    fast = sim.render(nuisance, pops).double()
    ref = exact.render(nuisance, pops, exact=True)
    assert float((fast - ref).abs().max()) < 0.01 * sim.instrument.background_sigma
    # the subhalos do change the image (the comparison is not trivial)
    nosub = exact.render(
        nuisance,
        [p.__class__(*(getattr(p, f)[:0] for f in ("x", "y", "mass", "theta_e2", "r_s", "tau")), 0.0) for p in pops],
    )
    assert float((nosub - ref).abs().max()) > 0.1 * sim.instrument.background_sigma


def test_grids_that_are_not_whole_tiles():
    """30 pixels (7.5 tiles of 4) and 3 x 3 rays per pixel: the exact image is the middle of the
    exact 32-pixel image (the same pixel centres, no PSF), and the fast path stays within 1 % sigma."""
    opts = dict(psf_kernel=[[1.0]], supersampling=3, device="cpu")
    sim = StrongLensSimulator(n_pixels=30, **opts)
    rngs = [np.random.default_rng(40 + i) for i in range(2)]
    nuisance, pops = sim.draw_parameters(np.array([[0.1, -1.9]] * 2), rngs, n_subhalos=30)
    exact30 = StrongLensSimulator(n_pixels=30, dtype="float64", **opts).render(nuisance, pops, exact=True)
    exact32 = StrongLensSimulator(n_pixels=32, dtype="float64", **opts).render(nuisance, pops, exact=True)
    np.testing.assert_allclose(exact30.numpy(), exact32[:, 1:-1, 1:-1].numpy(), rtol=1e-9, atol=1e-9)
    fast = sim.render(nuisance, pops).double()
    assert float((fast - exact30).abs().max()) < 0.01 * sim.instrument.background_sigma
    assert float(exact30.max()) > 10 * sim.instrument.background_sigma  # the arcs are in the frame


def test_tile_expansions_reproduce_the_far_field():
    """The local expansions of a tile equal the far field theta_e2 (1 - c2 / r^2 - c3 / r^3) / r
    at the tile's rays to within their truncation bounds, and far more closely than the c3 term."""
    from cosmosbi.simulators.deflection_engine import CORRECTION_ORDER, EXPANSION_ORDER, DeflectionEngine, c3_remainder

    sim = DeflectionEngine(64, 0.1, 2, "cpu", torch.float64)
    tile = 100
    tx, ty = float(sim.tile_x[0, 0, tile]), float(sim.tile_y[0, 0, tile])
    h = sim.tile_halfdiag
    rng = np.random.default_rng(5)
    n = 6
    dist = h / rng.uniform(0.2, 0.45, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    sub = {
        "x": t64(tx + dist * np.cos(angle))[None, :, None],
        "y": t64(ty + dist * np.sin(angle))[None, :, None],
        "theta_e2": t64(rng.uniform(1e-4, 1e-2, n))[None, :, None],
        "r_s": t64(rng.uniform(0.1, 0.3, n))[None, :, None],  # large halos: c2 and c3 terms of several percent
        "tau": t64(rng.uniform(0.5, 2.0, n))[None, :, None],
    }
    c_far = sim.far_field_coefficients(sub)
    t_row, t_tile = torch.tensor([0]), torch.tensor([tile])
    direct, coeff = sim.local_expansions(sub, c_far, torch.zeros((1, n), **F64), t64([1.0]), t_row, t_tile)
    assert not direct.any()
    alpha = (coeff @ sim.expansion_basis)[0]
    z = torch.complex(tx + sim.ray_offset_x, ty + sim.ray_offset_y)[:, None]
    w = z - torch.complex(sub["x"][0, :, 0], sub["y"][0, :, 0])
    r = w.abs()
    e2, c2, c3 = sub["theta_e2"][0, :, 0], c_far[0, :, 0], c_far[0, :, 1]
    far = (e2 * (1 - c2 / r**2 - c3 / r**3) / w.conj()).sum(dim=1)
    without_c3 = (e2 * (1 - c2 / r**2) / w.conj()).sum(dim=1)
    d, q = t64(dist), t64(h / dist)
    K, L = EXPANSION_ORDER, CORRECTION_ORDER
    bound = e2 / d * q ** (K + 1) / (1 - q) + e2 * c2 / d**3 * (L + 2) * q ** (L + 1) / (1 - q) ** 3
    bound = float((bound + e2 * c3.abs() / d**4 * c3_remainder(q, L)).sum())
    error = float((alpha - far).abs().max())
    assert error <= bound
    assert error < 0.05 * float((far - without_c3).abs().max())  # the c3 term is expanded, not left out


def test_epl_lens_light_hst_and_half_mode_mass_options():
    sim = make_simulator(
        "strong_lens",
        {
            "preset": "hst_like",
            "main_deflector": "epl",
            "lens_light": True,
            "infer_half_mode_mass": True,
            "device": "cpu",
        },
    )
    assert sim.parameter_names == ("Sigma_sub", "beta", "log10_m_hm")
    out = sim.simulate(np.array([[0.05, -1.9, 7.5]]), np.random.default_rng(8))
    assert out["image"].shape == (1, 128, 128) and np.all(np.isfinite(out["image"]))
    fsub = make_simulator("strong_lens", {"normalisation": "f_sub", "device": "cpu"})
    assert fsub.parameter_names == ("f_sub", "beta")


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="preset"):
        make_simulator("strong_lens", {"preset": "jwst"})
    with pytest.raises(ValueError, match="nuisance_priors"):
        make_simulator("strong_lens", {"nuisance_priors": {"lens_gamma": {"uniform": [1.8, 2.2]}}})  # SIE has no slope
    with pytest.raises(ValueError, match="main_deflector"):
        make_simulator("strong_lens", {"main_deflector": "nfw"})
    with pytest.raises(ValueError, match="psf_kernel"):
        make_simulator("strong_lens", {"psf_kernel": [[0.5, 0.5]]})
    with pytest.raises(ValueError, match="device"):
        make_simulator("strong_lens", {"device": "tpu"})
    sim = make_simulator("strong_lens", {"device": "cpu"})
    with pytest.raises(ValueError, match="columns"):
        sim.simulate(np.zeros((2, 3)), np.random.default_rng(0))


def test_runs_through_the_runner_and_the_example_config(tmp_path):
    from pathlib import Path

    from cosmosbi.config import load_config
    from cosmosbi.simulators.runner import run_simulations
    from cosmosbi.simulators.store import SimulationDataset

    config = load_config(Path(__file__).parents[2] / "examples" / "strong_lens.yaml")
    sim = config.build_simulator()
    assert sim.parameter_names == ("Sigma_sub", "beta")
    summary = run_simulations(sim, 5, tmp_path / "lens", seed=3, batch_size=2, progress=False)
    assert (summary.simulated, summary.failed) == (5, 0)
    ds = SimulationDataset(tmp_path / "lens")
    images = ds.read("image")
    assert len(ds) == 5 and ds.theta.shape == (5, 2) and images.shape == (5, 64, 64)
    assert np.all(np.isfinite(images)) and images.std() > 0
    # the same simulations with another batch size are identical
    run_simulations(sim, 5, tmp_path / "lens3", seed=3, batch_size=3, progress=False)
    np.testing.assert_allclose(SimulationDataset(tmp_path / "lens3").read("image"), images, atol=1e-2)


def test_simulator_subhalo_counts_include_the_wdm_suppression():
    sim = StrongLensSimulator(
        infer_half_mode_mass=True, device="cpu", nuisance_priors={"theta_E": {"uniform": [1.0, 1.0 + 1e-9]}}
    )
    theta = np.tile([[0.1, -1.9, 8.0]], (600, 1))
    rngs = [np.random.default_rng([21, i]) for i in range(len(theta))]
    _, pops = sim.draw_parameters(theta, rngs)
    counts = np.array([len(p) for p in pops])
    area_kpc2 = math.pi * (1.5**2 - 0.5**2) * sim.distances.kpc_per_arcsec**2
    lam = 0.1 * area_kpc2 * MassFunction(1e7, 1e10, -1.9, 8.0).suppressed_fraction()
    assert lam < 0.5 * 0.1 * area_kpc2  # the suppression matters here
    assert abs(counts.mean() - lam) < 4 * math.sqrt(lam / len(counts))
