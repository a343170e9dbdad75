"""Lens and light profiles for the strong-lens simulator, batched in torch.

Angles are in arcsec, masses in M_sun, distances in Mpc. Every function broadcasts: the
parameters are tensors shaped like ``(B, 1)`` (one value per image) or ``(B, S, 1)`` (one
per subhalo) and the ray coordinates like ``(B, P)`` or ``(1, P)``.

- Main deflectors: the singular isothermal ellipsoid (SIE, closed form of Kormann et al. 1994
  / Keeton 2001, with a series in 1 - q^2 for near-round lenses) and the elliptical power law
  (EPL, Tessore & Metcalf 2015, from ``caustics.func``), plus external shear. Convention (as
  lenstronomy's): the convergence of the SIE is kappa = theta_E / (2 sqrt(q x'^2 + y'^2 / q))
  with x' along the major axis; (e1, e2) -> (q, phi) as in lenstronomy.
- Subhalos: truncated NFW (Baltz, Marshall & Oguri 2009): the projected enclosed mass (their
  eq. A.11, as in ``caustics.func.mass_enclosed_2d_tnfw``, in an equivalent cheaper form)
  normalised to the total mass, and the closed-form coefficients of its large-radius expansion.
- Light: elliptical Sersic with R = sqrt(q x'^2 + y'^2 / q), normalised to a total flux
  (:class:`SersicSource` holds a batch of them with the slope bounds of the ray selection).
- Instrument: Gaussian PSF kernels integrated over the cells of a grid and zero-padded FFT
  convolution.
- Physical constants (G, c, M_sun, Mpc) from ``astropy.constants`` (CODATA 2018, IAU 2015).
"""

from __future__ import annotations

import math
from functools import lru_cache

import caustics.func as cf
import numpy as np
import torch
from astropy import constants, units
from scipy import integrate, special

__all__ = [
    "G_OVER_C2_MPC_PER_MSUN",
    "ARCSEC_PER_RAD",
    "angular_diameter_distance",
    "LensDistances",
    "ellipticity_to_q_phi",
    "sie_deflection",
    "SersicSource",
    "epl_deflection",
    "shear_deflection",
    "tnfw_constants",
    "tnfw_mass_fraction",
    "tnfw_deflection",
    "tnfw_far_field_coefficients",
    "sersic_b",
    "sersic_amplitude",
    "sersic_brightness",
    "sersic_radius",
    "gaussian_psf_kernel",
    "FFTConvolver",
]

G_OVER_C2_MPC_PER_MSUN = float(
    (constants.G * constants.M_sun / constants.c**2).to_value(units.Mpc)
)  # G M_sun / c^2 in Mpc
ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0
# critical density today over h^2, 3 (100 km/s/Mpc)^2 / (8 pi G), in M_sun / Mpc^3
RHO_CRIT0_H2 = float(
    (3 * (100 * units.km / units.s / units.Mpc) ** 2 / (8 * math.pi * constants.G)).to_value(units.M_sun / units.Mpc**3)
)
C_KM_S = float(constants.c.to_value(units.km / units.s))
SIE_SERIES_F2 = 1e-2  # the SIE uses its series in f^2 = 1 - q^2 below this


# --------------------------------------------------------------------------- cosmology


def _e_of_z(z, omega_m):
    return math.sqrt(omega_m * (1 + z) ** 3 + 1.0 - omega_m)


def angular_diameter_distance(z1: float, z2: float, h: float = 0.7, omega_m: float = 0.3) -> float:
    """Angular-diameter distance (Mpc) from redshift z1 to z2 > z1 in flat LambdaCDM."""
    if not z2 > z1 >= 0:
        raise ValueError(f"expected 0 <= z1 < z2, got z1={z1}, z2={z2}")
    chi, _ = integrate.quad(lambda z: 1.0 / _e_of_z(z, omega_m), z1, z2)
    return C_KM_S / (100.0 * h) * chi / (1.0 + z2)


class LensDistances:
    """Distances and derived scales of one lens-source configuration.

    Attributes: ``d_l``, ``d_s``, ``d_ls`` (Mpc); ``kpc_per_arcsec`` at the lens;
    ``sigma_crit`` (M_sun / kpc^2); ``rho_crit_lens`` (M_sun / Mpc^3 at z_lens).
    """

    def __init__(self, z_lens: float, z_source: float, h: float = 0.7, omega_m: float = 0.3):
        if not 0 < z_lens < z_source:
            raise ValueError(f"z_lens and z_source: expected 0 < z_lens < z_source, got {z_lens}, {z_source}")
        self.z_lens, self.z_source, self.h, self.omega_m = float(z_lens), float(z_source), h, omega_m
        self.d_l = angular_diameter_distance(0.0, z_lens, h, omega_m)
        self.d_s = angular_diameter_distance(0.0, z_source, h, omega_m)
        self.d_ls = angular_diameter_distance(z_lens, z_source, h, omega_m)
        self.kpc_per_arcsec = self.d_l * 1e3 / ARCSEC_PER_RAD
        sigma_crit_mpc2 = self.d_s / (4 * math.pi * G_OVER_C2_MPC_PER_MSUN * self.d_l * self.d_ls)
        self.sigma_crit = sigma_crit_mpc2 / 1e6
        self.rho_crit_lens = RHO_CRIT0_H2 * h**2 * _e_of_z(z_lens, omega_m) ** 2

    def point_mass_theta_e2(self, mass):
        """Squared Einstein radius (arcsec^2) of a point mass ``mass`` (M_sun, array-like)."""
        return 4 * G_OVER_C2_MPC_PER_MSUN * np.asarray(mass) * self.d_ls / (self.d_l * self.d_s) * ARCSEC_PER_RAD**2


# --------------------------------------------------------------------------- main deflector


def ellipticity_to_q_phi(e1, e2):
    """Axis ratio q and position angle phi (rad) from ellipticity components (lenstronomy's
    convention: phi = atan2(e2, e1) / 2, q = (1 - |e|) / (1 + |e|))."""
    c = torch.sqrt(e1**2 + e2**2) if isinstance(e1, torch.Tensor) else np.sqrt(e1**2 + e2**2)
    atan2 = torch.atan2 if isinstance(e1, torch.Tensor) else np.arctan2
    return (1 - c) / (1 + c), 0.5 * atan2(e2, e1)


def sie_deflection(x, y, theta_e, q, phi, x0, y0):
    """SIE deflection (alpha_x, alpha_y) at rays (x, y) (arcsec); closed form, no core, 0 < q <= 1.

    In the frame rotated by phi about (x0, y0), with f = sqrt(1 - q^2), psi = sqrt(q^2 x'^2 + y'^2):
    alpha_x' = theta_E sqrt(q) atan(f x' / psi) / f, alpha_y' = theta_E sqrt(q) atanh(f y' / psi) / f.
    For f^2 < SIE_SERIES_F2 the ratios atan(f u) / f and atanh(f v) / f are summed as their
    Taylor series in f^2 (to f^8, relative error < 1e-11), so q -> 1 is smooth and exact
    (the SIS at q = 1) in float32 and float64 alike. At the centre itself the deflection is 0.
    """
    c, s = torch.cos(phi), torch.sin(phi)
    dx, dy = x - x0, y - y0
    xr = c * dx + s * dy
    yr = -s * dx + c * dy
    f2 = (1.0 - q) * (1.0 + q)  # 1 - q^2 without cancellation
    series = f2 < SIE_SERIES_F2
    psi = torch.clamp(torch.sqrt(q * q * xr * xr + yr * yr), min=torch.finfo(xr.dtype).tiny ** 0.5)
    u, v = xr / psi, yr / psi
    if not bool(series.all()):
        f = torch.sqrt(torch.where(series, torch.ones_like(f2), f2))
        ax, ay = torch.atan(f * u) / f, torch.atanh(f * v) / f
    if bool(series.any()):
        # atan(f u) / f = u (1 - w/3 + w^2/5 - w^3/7 + w^4/9), w = f^2 u^2; atanh likewise with + signs
        fu2, fv2 = f2 * u * u, f2 * v * v
        atan_series = u * (1.0 - fu2 * (1.0 / 3 - fu2 * (1.0 / 5 - fu2 * (1.0 / 7 - fu2 / 9))))
        atanh_series = v * (1.0 + fv2 * (1.0 / 3 + fv2 * (1.0 / 5 + fv2 * (1.0 / 7 + fv2 / 9))))
        if bool(series.all()):
            ax, ay = atan_series, atanh_series
        else:
            ax, ay = torch.where(series, atan_series, ax), torch.where(series, atanh_series, ay)
    scale = theta_e * torch.sqrt(q)
    ax, ay = scale * ax, scale * ay
    return c * ax - s * ay, s * ax + c * ay


def epl_deflection(x, y, theta_e, q, phi, gamma, x0, y0, n_iter: int = 18):
    """EPL deflection for convergence kappa = (3 - gamma)/2 (theta_e / R)^(gamma - 1),
    R = sqrt(q x'^2 + y'^2 / q); gamma = 2 is the SIE. Series of Tessore & Metcalf (2015)
    truncated at ``n_iter`` terms."""
    return cf.reduced_deflection_angle_epl(x0, y0, q, phi, theta_e, gamma - 1.0, x, y, n_iter)


def shear_deflection(x, y, gamma1, gamma2, x0, y0):
    """External shear deflection about (x0, y0): (g1 x + g2 y, g2 x - g1 y)."""
    return cf.reduced_deflection_angle_external_shear(x0, y0, gamma1, gamma2, x, y)


# --------------------------------------------------------------------------- subhalos


def tnfw_constants(tau):
    """The r-independent parts of :func:`tnfw_mass_fraction`: (tau^2, (tau^2 - 1) / tau,
    pi tau + (tau^2 - 1) ln tau, 1 / D), D = (tau^2 - 1) ln tau + pi tau - (tau^2 + 1)."""
    t2 = tau * tau
    log_term = math.pi * tau + (t2 - 1.0) * torch.log(tau)
    return t2, (t2 - 1.0) / tau, log_term, 1.0 / (log_term - (t2 + 1.0))


def tnfw_mass_fraction(r, r_s, tau, constants=None):
    """Projected mass within radius r over the total mass of a truncated NFW halo.

    r, r_s in the same units; tau = r_t / r_s; ``constants``: :func:`tnfw_constants` (tau), if
    at hand. Baltz et al. (2009), eq. A.11 over eq. A.4, with g = r / r_s:

        F(r) = [(tau^2 - 1 + 2 g^2) f(g) + pi tau + (tau^2 - 1) ln tau
                - sqrt(tau^2 + g^2) (pi + (tau^2 - 1) / tau asinh(tau / g))] / D,

    f(g) = atanh(s) / s for g < 1, atan(s) / s for g > 1, s = sqrt(|g^2 - 1|) (1 at g = 1).
    Equals 1 - O((r_s / r)^2) far outside max(r_s, r_t). Radii below 1e-4 r_s count as 1e-4 r_s.
    """
    t2, a, log_term, inv_d = tnfw_constants(tau) if constants is None else constants
    g = torch.clamp(r / r_s, min=1e-4)
    g2 = g * g
    u = g2 - 1.0
    s = torch.sqrt(torch.clamp(u.abs(), min=1e-12))
    f = torch.where(u < 0, torch.log((1.0 + s) / g), torch.atan(s)) / s  # atanh(s) = ln((1 + s) / g) for g < 1
    root = torch.sqrt(t2 + g2)
    tail = root * (math.pi + a * torch.log((tau + root) / g))  # asinh(tau / g) = ln((tau + root) / g)
    return ((t2 - 1.0 + 2.0 * g2) * f + log_term - tail) * inv_d


def tnfw_far_field_coefficients(r_s, tau):
    """(c2, c3) of the large-radius expansion 1 - F(r) = c2 / r^2 + c3 / r^3 + O(r^-4) of a truncated NFW halo.

    From the enclosed mass of Baltz et al. (2009): c2 = (tau^2 + 1)^2 / (3 D) r_s^2,
    c3 = -pi (tau^2 + 1)^2 / (8 D) r_s^3, D = (tau^2 - 1) ln tau + pi tau - (tau^2 + 1); the
    series converges for r > r_s max(1, tau). Units: those of r_s^2 and r_s^3.
    """
    t2 = tau * tau
    d = (t2 - 1.0) * torch.log(tau) + math.pi * tau - (t2 + 1.0)
    a = (t2 + 1.0) ** 2 / d
    return a / 3.0 * r_s * r_s, -math.pi / 8.0 * a * r_s**3


def tnfw_deflection(dx, dy, theta_e2, r_s, tau, constants=None):
    """Truncated-NFW deflection at offsets (dx, dy) from the subhalo centre.

    theta_e2 is the squared Einstein radius of a point mass of the subhalo's total mass
    (arcsec^2): alpha = theta_e2 F(r) / r along the offset, F the enclosed mass fraction.
    """
    r2 = dx * dx + dy * dy
    r = torch.sqrt(r2)
    scale = theta_e2 * tnfw_mass_fraction(r, r_s, tau, constants) / torch.clamp(r2, min=(1e-4 * r_s) ** 2)
    return scale * dx, scale * dy


# --------------------------------------------------------------------------- light


def sersic_b(n):
    """The Sersic constant b_n (half the light within R_e): gammaincinv(2n, 1/2)."""
    return special.gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


def sersic_amplitude(flux, r_e, n):
    """Brightness at R_e (flux per arcsec^2) of a Sersic profile with total ``flux``."""
    n = np.asarray(n, dtype=float)
    b = sersic_b(n)
    total_over_ie = 2 * math.pi * n * np.asarray(r_e) ** 2 * np.exp(b) * b ** (-2 * n) * special.gamma(2 * n)
    return np.asarray(flux) / total_over_ie


def sersic_radius(x, y, q, phi, x0, y0):
    """Elliptical radius R = sqrt(q x'^2 + y'^2 / q) in the frame rotated by phi about (x0, y0)."""
    dx, dy = x - x0, y - y0
    c, s = torch.cos(phi), torch.sin(phi)
    xr = c * dx + s * dy
    yr = -s * dx + c * dy
    return torch.sqrt(q * xr * xr + yr * yr / q)


def sersic_brightness(radius, amplitude, r_e, n, b):
    """Sersic surface brightness I = amplitude exp(-b ((R / R_e)^(1/n) - 1))."""
    return amplitude * torch.exp(-b * (torch.pow(radius / r_e, 1.0 / n) - 1.0))


class SersicSource:
    """A batch of elliptical Sersic profiles, one per image, as (B, 1) tensors.

    Attributes: x0, y0 (centre, arcsec), q, phi (axis ratio, position angle), amplitude
    (brightness at R_e, in the caller's units per ray), r_e (arcsec), n, b (Sersic index and
    constant). Besides the brightness it gives the bounds on its slope that the subhalo ray
    selection uses (:mod:`cosmosbi.simulators.deflection_engine`).
    """

    def __init__(self, x0, y0, q, phi, amplitude, r_e, n, b):
        self.x0, self.y0, self.q, self.phi = x0, y0, q, phi
        self.amplitude, self.r_e, self.n, self.b = amplitude, r_e, n, b

    def radius(self, x, y):
        """Elliptical radius R (B, P) at positions (x, y) (arcsec)."""
        return sersic_radius(x, y, self.q, self.phi, self.x0, self.y0)

    def brightness(self, radius):
        """Surface brightness at elliptical radius R."""
        return sersic_brightness(radius, self.amplitude, self.r_e, self.n, self.b)

    def rows(self, index) -> "SersicSource":
        """The profiles of the images ``index`` (a LongTensor of rows, repeats allowed)."""
        return SersicSource(
            *(v[index] for v in (self.x0, self.y0, self.q, self.phi, self.amplitude, self.r_e, self.n, self.b))
        )

    def slope(self, radius):
        """|dI/dR| at elliptical radius R (radii below 1e-6 count as 1e-6)."""
        radius = torch.clamp(radius, min=1e-6)
        return self.brightness(radius) * self.b / self.n * torch.pow(radius / self.r_e, 1.0 / self.n) / radius

    def max_slope_within(self, radius, delta, r_min: float):
        """max |dI/dR| over elliptical radii [R - delta, R + delta], the cusp cut at ``r_min``.

        |dI/dR| decreases with R beyond its peak, at R = 0 for n >= 1 and at
        R_e ((1 - n) / b)^n < R_e for n < 1; the maximum over an interval is at the peak
        clamped into the interval (and not below ``r_min``, where the rays do not resolve a cusp).
        """
        n, r_e, b = self.n, self.r_e, self.b
        peak = torch.where(n < 1, r_e * torch.pow(torch.clamp((1 - n) / b, min=1e-12), n), torch.zeros_like(n))
        at = torch.maximum(
            torch.minimum(torch.maximum(peak, radius - delta), radius + delta), torch.full_like(radius, r_min)
        )
        return self.slope(at)

    def max_slope(self, r_min: float, n_grid: int = 200):
        """max over R of |dI/dR| (B, 1) on ``n_grid`` log-spaced radii from ``r_min`` to 10 R_e, times 1.1."""
        u = torch.linspace(0.0, 1.0, n_grid, device=self.r_e.device, dtype=self.r_e.dtype)[None]
        grid = r_min * (10 * self.r_e / r_min) ** u
        return 1.1 * self.slope(grid).max(dim=1, keepdim=True).values

    @property
    def gradient_factor(self):
        """1 / sqrt(q): the largest |grad R| per unit displacement, turning dI/dR into a bound on |grad I|."""
        return torch.rsqrt(self.q)


# --------------------------------------------------------------------------- instrument


def gaussian_psf_kernel(fwhm_arcsec: float, pixel_scale_arcsec: float, truncation_sigma: float = 5.0) -> np.ndarray:
    """Gaussian PSF kernel integrated over square cells of side ``pixel_scale_arcsec`` (odd side, sums
    to 1), truncated at ``truncation_sigma``. The strong-lens simulator builds it at its ray spacing
    (pixel scale / supersampling) and applies it before averaging the rays over each pixel."""
    if not fwhm_arcsec > 0:
        raise ValueError(f"psf_fwhm_arcsec must be positive, got {fwhm_arcsec}")
    sigma = fwhm_arcsec / (2 * math.sqrt(2 * math.log(2))) / pixel_scale_arcsec  # in pixels
    half = max(1, int(math.ceil(truncation_sigma * sigma)))
    edges = np.arange(-half - 0.5, half + 1.0)
    cdf = special.ndtr(edges / sigma)
    profile = np.diff(cdf)
    kernel = np.outer(profile, profile)
    return kernel / kernel.sum()


class FFTConvolver:
    """Linear (zero-padded) 2D convolution of (B, H, W) images with one fixed odd-sided kernel.

    The output has the input's shape and centring ("same" mode); light falling outside the
    frame is lost, as on a detector.
    """

    def __init__(self, kernel: np.ndarray, shape: tuple[int, int], device, dtype):
        kernel = np.asarray(kernel, dtype=float)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"psf kernel must be a 2D array with odd sides, got shape {kernel.shape}")
        self.shape = tuple(shape)
        kh, kw = kernel.shape
        self.pad = (kh // 2, kw // 2)
        self.fft_shape = (_fast_len(shape[0] + kh - 1), _fast_len(shape[1] + kw - 1))
        k = torch.as_tensor(kernel, dtype=dtype, device=device)
        self.kernel_fft = torch.fft.rfft2(k, s=self.fft_shape)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        h, w = self.shape
        full = torch.fft.irfft2(torch.fft.rfft2(images, s=self.fft_shape) * self.kernel_fft, s=self.fft_shape)
        return full[..., self.pad[0] : self.pad[0] + h, self.pad[1] : self.pad[1] + w]


@lru_cache(maxsize=None)
def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT sizes)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1
