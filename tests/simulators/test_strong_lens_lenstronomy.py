"""The strong-lens simulator against lenstronomy (an independent code) and astropy.

Conventions shared by both sides (see :mod:`cosmosbi.simulators.lenstronomy_reference`): the
SIE's theta_E and (e1, e2) as lenstronomy's; external shear about the lens centre; truncated
NFW subhalos in lenstronomy's ``TNFW`` parameters from
:func:`cosmosbi.simulators.subhalos.lenstronomy_tnfw_kwargs`; lenstronomy's Sersic constant
b_n = 1.9992 n - 0.3271 on both sides; the PSF applied on the ray grid, then the pixel average.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmosbi.simulators.lens_profiles import (
    G_OVER_C2_MPC_PER_MSUN,
    LensDistances,
    ellipticity_to_q_phi,
    shear_deflection,
    sie_deflection,
    tnfw_deflection,
)
from cosmosbi.simulators.lenstronomy_reference import (
    lenstronomy_image_model,
    lenstronomy_kwargs,
    lenstronomy_sersic_constant,
)
from cosmosbi.simulators.strong_lens import StrongLensSimulator
from cosmosbi.simulators.subhalos import (
    MassFunction,
    concentration_duffy08,
    draw_subhalo_population,
    lenstronomy_m200,
    lenstronomy_tnfw_kwargs,
)

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402


def column(value, dtype):
    return torch.tensor([[value]], dtype=dtype)


def our_sie_shear(x, y, kw_sie, kw_shear, dtype):
    t = lambda v: torch.as_tensor(np.asarray(v, dtype=float), dtype=dtype)  # noqa: E731
    q, phi = ellipticity_to_q_phi(column(kw_sie["e1"], dtype), column(kw_sie["e2"], dtype))
    centre = (column(kw_sie["center_x"], dtype), column(kw_sie["center_y"], dtype))
    ax, ay = sie_deflection(t(x)[None], t(y)[None], column(kw_sie["theta_E"], dtype), q, phi, *centre)
    sx, sy = shear_deflection(
        t(x)[None], t(y)[None], column(kw_shear["gamma1"], dtype), column(kw_shear["gamma2"], dtype), *centre
    )
    return (ax + sx)[0].double().numpy(), (ay + sy)[0].double().numpy()


@pytest.mark.parametrize("e1, e2", [(0.15, -0.08), (0.02, 0.01), (2.5e-3, 1e-5), (1e-4, 0.0), (3e-7, 2e-7), (0.0, 0.0)])
def test_sie_and_shear_deflections_match_lenstronomy(e1, e2):
    """float64 to 1e-7 theta_E (lenstronomy's SIE has a tiny core); float32 to 2e-6 theta_E at
    |x - centre| > 0.05 theta_E, with no jump as q -> 1 (the SIS at q = 1)."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-3, 3, 4000), rng.uniform(-3, 3, 4000)
    kw_sie = dict(theta_E=1.1, e1=e1, e2=e2, center_x=0.03, center_y=-0.02)
    kw_shear = dict(gamma1=0.04, gamma2=-0.03, ra_0=0.03, dec_0=-0.02)
    keep = np.hypot(x - 0.03, y + 0.02) > 0.05 * 1.1
    x, y = x[keep], y[keep]
    ref = LensModel(["SIE", "SHEAR"]).alpha(x, y, [kw_sie, kw_shear])
    for dtype, tol in ((torch.float64, 1e-7), (torch.float32, 2e-6)):
        ax, ay = our_sie_shear(x, y, kw_sie, kw_shear, dtype)
        assert np.abs(ax - ref[0]).max() < tol * 1.1, dtype
        assert np.abs(ay - ref[1]).max() < tol * 1.1, dtype


def test_truncated_nfw_subhalo_deflection_matches_lenstronomy_tnfw():
    dist = LensDistances(0.5, 2.0)
    pop = draw_subhalo_population(
        np.random.default_rng(1),
        normalisation="sigma_sub",
        value=0.0,
        mass_function=MassFunction(1e7, 1e10, -1.9),
        theta_e=1.0,
        center=(0.0, 0.0),
        distances=dist,
        n_subhalos=20,
    )
    kwargs = lenstronomy_tnfw_kwargs(pop)
    rng = np.random.default_rng(2)
    for k, kw in enumerate(kwargs):
        r = np.geomspace(1e-3, 30.0, 200) * pop.r_s[k]
        angle = rng.uniform(0, 2 * np.pi, r.size)
        dx, dy = r * np.cos(angle), r * np.sin(angle)
        ref = LensModel(["TNFW"]).alpha(kw["center_x"] + dx, kw["center_y"] + dy, [kw])
        t = lambda v: torch.as_tensor(np.asarray(v, dtype=float), dtype=torch.float64)  # noqa: E731
        ax, ay = tnfw_deflection(t(dx), t(dy), t(pop.theta_e2[k]), t(pop.r_s[k]), t(pop.tau[k]))
        scale = np.hypot(*ref).max()
        np.testing.assert_allclose(ax.numpy(), ref[0], rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(ay.numpy(), ref[1], rtol=1e-5, atol=1e-6 * scale)


def test_subhalo_mass_conversion_to_lenstronomy_m200():
    """lenstronomy's nfw_physical2angle(M200, c') of lenstronomy_m200 gives the subhalos' Rs and
    alpha_Rs (to the 1e-4 that lenstronomy's own constants differ from astropy's)."""
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    dist = LensDistances(0.5, 2.0)
    pop = draw_subhalo_population(
        np.random.default_rng(3),
        normalisation="sigma_sub",
        value=0.0,
        mass_function=MassFunction(1e7, 1e10, -1.9),
        theta_e=1.0,
        center=(0.0, 0.0),
        distances=dist,
        n_subhalos=30,
    )
    m200, c200 = lenstronomy_m200(pop.mass, concentration_duffy08(pop.mass, 0.5, 0.7), pop.tau)
    lens_cosmo = LensCosmo(0.5, 2.0, cosmo=FlatLambdaCDM(H0=70.0, Om0=0.3, Tcmb0=0.0))
    rs, alpha_rs = lens_cosmo.nfw_physical2angle(m200, c200)
    ours = lenstronomy_tnfw_kwargs(pop)
    np.testing.assert_allclose(rs, [kw["Rs"] for kw in ours], rtol=3e-4)
    np.testing.assert_allclose(alpha_rs, [kw["alpha_Rs"] for kw in ours], rtol=3e-4)
    assert np.all(np.abs(m200 / pop.mass - 1) > 0.01)  # the two mass conventions do differ


def test_physical_constants_and_distances_match_astropy():
    from astropy import constants, units
    from astropy.cosmology import FlatLambdaCDM

    g_over_c2 = (constants.G * constants.M_sun / constants.c**2).to_value(units.Mpc)
    assert G_OVER_C2_MPC_PER_MSUN == pytest.approx(g_over_c2, rel=1e-12)
    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3, Tcmb0=0.0)
    dist = LensDistances(0.5, 2.0)
    assert dist.d_l == pytest.approx(cosmo.angular_diameter_distance(0.5).to_value(units.Mpc), rel=1e-7)
    assert dist.d_ls == pytest.approx(cosmo.angular_diameter_distance(0.5, 2.0).to_value(units.Mpc), rel=1e-7)
    sigma_crit = (
        constants.c**2
        / (4 * np.pi * constants.G)
        * cosmo.angular_diameter_distance(2.0)
        / (cosmo.angular_diameter_distance(0.5) * cosmo.angular_diameter_distance(0.5, 2.0))
    )
    assert dist.sigma_crit == pytest.approx(sigma_crit.to_value(units.M_sun / units.kpc**2), rel=1e-7)
    rho_crit = cosmo.critical_density(0.5).to_value(units.M_sun / units.Mpc**3)
    assert dist.rho_crit_lens == pytest.approx(rho_crit, rel=1e-7)


@pytest.mark.parametrize("n_subhalos", [0, 10, 100])
def test_images_with_psf_match_lenstronomy(n_subhalos):
    """Noiseless euclid_like images with PSF and the default fast settings: within 1 % of the
    background noise sigma of lenstronomy's at every pixel."""
    sim = StrongLensSimulator(device="cpu")
    n_images = 2
    rngs = [np.random.default_rng([7, n_subhalos, i]) for i in range(n_images)]
    nuisance, pops = sim.draw_parameters(np.tile([[0.1, -1.9]], (n_images, 1)), rngs, n_subhalos=n_subhalos)
    model = lenstronomy_image_model(sim, n_subhalos)
    ref = np.stack([model.image(*lenstronomy_kwargs(sim, nuisance, pops[i], i)) for i in range(n_images)])
    with lenstronomy_sersic_constant():
        ours = sim.render(nuisance, pops).double().numpy()
    sigma = sim.instrument.background_sigma
    assert np.abs(ours - ref).max() < 0.01 * sigma
    assert ref.max() > 20 * sigma  # bright arcs: the comparison is not trivial
