"""Galaxy-galaxy strong-lens images with a population of dark-matter subhalos (``strong_lens``).

Each image: a main deflector (SIE or EPL) with external shear and optional Sersic lens light,
a population of truncated-NFW subhalos (see :mod:`cosmosbi.simulators.subhalos`), a Sersic
source, ray shooting on a supersampled grid, a PSF (Gaussian FWHM or a user kernel, FFT
convolution), sky, Poisson and Gaussian read noise. Output ``image``: (n, n) float32 in
electrons (counts over the exposure, sky subtracted).

Parameters to infer (theta columns): ``Sigma_sub`` (kpc^-2; or ``f_sub`` with
``normalisation="f_sub"``), ``beta`` (mass-function slope) and, with
``infer_half_mode_mass=True``, ``log10_m_hm``. Lens and source parameters are nuisance
parameters drawn inside the simulator, per image, from the ``nuisance_priors`` option
(defaults in :data:`DEFAULT_NUISANCE_PRIORS`); they are not columns of theta.

All randomness of image i (nuisance parameters, subhalo count, masses and positions, noise)
comes from its Generator ``rngs[i]``; the ray tracing is batched in torch (CUDA with
``device="auto"`` when available).

Speed. Three controlled approximations, each of which can be switched off:

- ``dtype="float32"`` for the ray tracing;
- rays only where subhalos matter (``ray_tolerance``): the rays are grouped in tiles of 4 x 4
  pixels, and a tile is traced through the subhalos only if the source brightness at one of
  its rays could change by more than ``ray_tolerance`` times the background noise sigma of a
  pixel. The bound uses |alpha_sub| <= sum_s theta_E,s^2 min(1 / d, max_r F_s(r) / r) per tile
  and the largest Sersic gradient within that deflection of the macro-model source position;
  elsewhere the macro-model brightness is kept (its error is below the bound);
- a far field for subhalos (``far_field_tolerance``): beyond the radius where the
  truncated-NFW deflection differs by less than tol = ``far_field_tolerance`` sigma / G
  (arcsec; G the largest source-brightness slope the tile's rays can see, rounded to one of
  six levels) from theta_E^2 (1 - c2 / r^2 - c3 / r^3) / r (a point mass with the first two
  terms of the large-radius expansion of the truncated NFW, in closed form), the far field is
  used, summed per tile as a local (Taylor) expansion in complex coordinates whose truncation
  error is also below tol. The subhalos closer to a tile are summed over its rays as dense
  (tile, subhalo, ray) blocks, with the far field beyond the far-field radius and the exact
  profile within it. A tile's rays sit at the same offsets from its centre for every tile, so
  the expansions are evaluated at all of them by one matrix product.

``benchmarks/strong_lens.py`` measures the effect of all three against the exact
computation (float64, every ray, exact truncated NFW everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from cosmosbi.simulators.base import OutputSpec, register_simulator, row_generators
from cosmosbi.simulators.lens_profiles import (
    FFTConvolver,
    LensDistances,
    ellipticity_to_q_phi,
    epl_deflection,
    gaussian_psf_kernel,
    sersic_amplitude,
    sersic_b,
    sersic_brightness,
    sersic_radius,
    shear_deflection,
    sie_deflection,
    tnfw_far_field_coefficients,
    tnfw_mass_fraction,
    tnfw_constants,
)
from cosmosbi.simulators.priors import Prior, Uniform, marginal_from_config
from cosmosbi.simulators.subhalos import MassFunction, draw_subhalo_population, pad_populations
from cosmosbi.torch_runtime import resolve_device

__all__ = ["Instrument", "INSTRUMENT_PRESETS", "DEFAULT_NUISANCE_PRIORS", "StrongLensSimulator"]


@dataclass(frozen=True)
class Instrument:
    """Detector and observation: pixel grid, PSF, exposure, sky, zero point and read noise.

    ``zero_point_mag`` is the AB magnitude giving 1 electron per second; ``sky_mag_arcsec2``
    the sky surface brightness; ``read_noise_e`` the total read-noise sigma per pixel
    (electrons); ``supersampling`` the rays per pixel side.
    """

    n_pixels: int
    pixel_scale_arcsec: float
    psf_fwhm_arcsec: float
    exposure_time_s: float
    sky_mag_arcsec2: float
    zero_point_mag: float
    read_noise_e: float
    supersampling: int = 2

    def counts(self, mag):
        """Electrons over the exposure from an AB magnitude."""
        return self.exposure_time_s * 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - self.zero_point_mag))

    @property
    def sky_counts(self) -> float:
        """Sky electrons per pixel over the exposure."""
        return float(self.counts(self.sky_mag_arcsec2)) * self.pixel_scale_arcsec**2

    @property
    def background_sigma(self) -> float:
        """Noise sigma of an empty pixel (electrons): sqrt(sky + read_noise^2)."""
        return math.sqrt(self.sky_counts + self.read_noise_e**2)


INSTRUMENT_PRESETS = {
    # Euclid VIS-like: 4 x 565 s, PSF FWHM 0.18 arcsec
    "euclid_like": Instrument(64, 0.1, 0.18, 2260.0, 22.35, 24.0, 4.2 * 2, 2),
    # HST ACS/F814W-like
    "hst_like": Instrument(128, 0.04, 0.08, 2000.0, 22.3, 25.9, 5.0, 2),
}

DEFAULT_NUISANCE_PRIORS: dict[str, dict[str, Any]] = {
    "theta_E": {"normal": [1.0, 0.1], "bounds": [0.7, 1.4]},  # arcsec
    "lens_e1": {"normal": [0.0, 0.05], "bounds": [-0.2, 0.2]},
    "lens_e2": {"normal": [0.0, 0.05], "bounds": [-0.2, 0.2]},
    "lens_x": {"normal": [0.0, 0.02], "bounds": [-0.1, 0.1]},
    "lens_y": {"normal": [0.0, 0.02], "bounds": [-0.1, 0.1]},
    "lens_gamma": {"normal": [2.0, 0.1], "bounds": [1.7, 2.3]},  # EPL slope (main_deflector="epl")
    "shear_g1": {"normal": [0.0, 0.03], "bounds": [-0.1, 0.1]},
    "shear_g2": {"normal": [0.0, 0.03], "bounds": [-0.1, 0.1]},
    "src_x": {"uniform": [-0.2, 0.2]},
    "src_y": {"uniform": [-0.2, 0.2]},
    "src_e1": {"normal": [0.0, 0.1], "bounds": [-0.3, 0.3]},
    "src_e2": {"normal": [0.0, 0.1], "bounds": [-0.3, 0.3]},
    "src_R_e": {"uniform": [0.1, 0.3]},  # arcsec
    "src_n": {"uniform": [0.7, 2.0]},
    "src_mag": {"uniform": [21.5, 23.0]},
    "light_R_e": {"uniform": [0.5, 1.5]},  # lens light (lens_light=True)
    "light_n": {"uniform": [3.0, 5.0]},
    "light_mag": {"uniform": [19.5, 21.0]},
}

DEFAULT_PRIORS = {
    "Sigma_sub": Uniform(0.0, 0.2),
    "f_sub": Uniform(0.0, 0.05),
    "beta": Uniform(-2.1, -1.7),
    "log10_m_hm": Uniform(6.0, 9.0),
}

TILE_PIXELS = 4  # side of the tiles of the deflection bound and the local expansions
EXPANSION_ORDER = 10  # K: order of the point-mass local expansion
CORRECTION_ORDER = 3  # L: order of the far-field correction expansion
PAIR_BLOCK = 1 << 18  # (tile, subhalo, ray) triples per block of the direct sum
TOLERANCE_LEVELS = 6  # far-field tolerance levels tol_min 4^k, chosen per tile from the source gradient there


def _binomial(a: float, j: int) -> float:
    """Generalised binomial coefficient binom(a, j)."""
    out = 1.0
    for i in range(j):
        out *= (a - i) / (i + 1)
    return out


@lru_cache(maxsize=None)
def _correction_signs(order: int):
    """The factors of the correction coefficients C_jk (j, k <= order): (-1)^(j+k+1) (k+1) of the
    c2 term, -theta_e2 c2 w^-1 conj(w)^-2, and -binom(-3/2, j) binom(-5/2, k) of the c3 term,
    -theta_e2 c3 w^(-3/2) conj(w)^(-5/2)."""
    n = order + 1
    sign2 = np.array([[(-1) ** (j + k + 1) * (k + 1) for k in range(n)] for j in range(n)], dtype=float)
    sign3 = np.array([[-_binomial(-1.5, j) * _binomial(-2.5, k) for k in range(n)] for j in range(n)])
    return sign2, sign3


def _int_power(x, n: int):
    """x^n for a whole n >= 1 by repeated squaring (multiplications only)."""
    out, base = None, x
    while n:
        if n & 1:
            out = base if out is None else out * base
        n >>= 1
        if n:
            base = base * base
    return out


def _c3_remainder(q, order: int, q_n=None, u=None):
    """Bound on sum |binom(-3/2, j) binom(-5/2, k)| q^(j+k) over (j, k) outside [0, order]^2 (q < 0.6).

    With S_a = sum_j |binom(-a, j)| q^j = (1 - q)^-a and the tail T_a beyond ``order``, bounded by
    its first term over 1 - q (a + order + 1) / (order + 2) (the ratio of consecutive terms
    decreases towards q), the sum is at most T_3/2 S_5/2 + S_3/2 T_5/2. ``q_n`` = q^(order+1) and
    ``u`` = 1 / (1 - q), if at hand.
    """
    n = order + 1
    q_n = _int_power(q, n) if q_n is None else q_n
    u = 1.0 / (1.0 - q) if u is None else u

    def tail(a):
        return abs(_binomial(-a, n)) / (1 - q * (a + n) / (n + 1))

    return q_n * torch.sqrt(u) * u * (tail(1.5) * u + tail(2.5))


@register_simulator("strong_lens")
class StrongLensSimulator:
    """Strong-lens images with subhalos (see the module docstring).

    Args:
        preset: ``"euclid_like"`` (64 x 64 at 0.1 arcsec, PSF FWHM 0.18 arcsec) or ``"hst_like"``
            (128 x 128 at 0.04 arcsec); the instrument options below override its fields.
        n_pixels, pixel_scale_arcsec, psf_fwhm_arcsec, exposure_time_s, sky_mag_arcsec2,
            zero_point_mag, read_noise_e, supersampling: instrument overrides (None: preset).
        psf_kernel: a user PSF kernel (odd-sided 2D list, normalised to sum 1), replacing the Gaussian.
        main_deflector: ``"sie"`` or ``"epl"``.
        lens_light: add the main deflector's Sersic light.
        z_lens, z_source: redshifts (flat LambdaCDM, h = 0.7, Omega_m = 0.3).
        normalisation: ``"sigma_sub"`` (parameter ``Sigma_sub``, kpc^-2) or ``"f_sub"``.
        infer_half_mode_mass: add ``log10_m_hm`` (WDM half-mode mass) to the parameters.
        log10_m_hm: a fixed half-mode mass when it is not inferred (None: cold dark matter).
        m_min, m_max: subhalo mass range (M_sun).
        region_inner, region_outer: the annulus of subhalo positions, in units of theta_E.
        nuisance_priors: overrides of :data:`DEFAULT_NUISANCE_PRIORS`, name -> marginal config
            (``{uniform: [a, b]}``, ``{normal: [m, s], bounds: [a, b]}``, ...).
        ray_tolerance: tolerance (fraction of the background sigma) of the ray selection;
            None traces every ray through the subhalos.
        far_field_tolerance: tolerance (fraction of sigma) of the point-mass far field; None
            uses the truncated NFW at every ray.
        dtype: ``"float32"`` or ``"float64"`` ray tracing.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        return_noiseless: also return ``image_noiseless`` (expected counts).
    """

    def __init__(
        self,
        preset: str = "euclid_like",
        n_pixels: int | None = None,
        pixel_scale_arcsec: float | None = None,
        psf_fwhm_arcsec: float | None = None,
        psf_kernel: list[list[float]] | None = None,
        exposure_time_s: float | None = None,
        sky_mag_arcsec2: float | None = None,
        zero_point_mag: float | None = None,
        read_noise_e: float | None = None,
        supersampling: int | None = None,
        main_deflector: str = "sie",
        lens_light: bool = False,
        z_lens: float = 0.5,
        z_source: float = 2.0,
        normalisation: str = "sigma_sub",
        infer_half_mode_mass: bool = False,
        log10_m_hm: float | None = None,
        m_min: float = 1e7,
        m_max: float = 1e10,
        region_inner: float = 0.5,
        region_outer: float = 1.5,
        nuisance_priors: dict[str, dict[str, Any]] | None = None,
        ray_tolerance: float | None = 2e-3,
        far_field_tolerance: float | None = 5e-3,
        dtype: str = "float32",
        device: str = "auto",
        return_noiseless: bool = False,
    ):
        if preset not in INSTRUMENT_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(INSTRUMENT_PRESETS)}, got {preset!r}")
        overrides = {
            k: v
            for k, v in dict(
                n_pixels=n_pixels,
                pixel_scale_arcsec=pixel_scale_arcsec,
                psf_fwhm_arcsec=psf_fwhm_arcsec,
                exposure_time_s=exposure_time_s,
                sky_mag_arcsec2=sky_mag_arcsec2,
                zero_point_mag=zero_point_mag,
                read_noise_e=read_noise_e,
                supersampling=supersampling,
            ).items()
            if v is not None
        }
        self.instrument = replace(INSTRUMENT_PRESETS[preset], **overrides)
        inst = self.instrument
        for name in ("n_pixels", "supersampling"):
            if int(getattr(inst, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(inst, name)}")
        for name in ("pixel_scale_arcsec", "exposure_time_s"):
            if not getattr(inst, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(inst, name)}")
        if inst.read_noise_e < 0:
            raise ValueError(f"read_noise_e must be >= 0, got {inst.read_noise_e}")
        if main_deflector not in ("sie", "epl"):
            raise ValueError(f"main_deflector: expected 'sie' or 'epl', got {main_deflector!r}")
        if normalisation not in ("sigma_sub", "f_sub"):
            raise ValueError(f"normalisation: expected 'sigma_sub' or 'f_sub', got {normalisation!r}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        if not 0 <= region_inner < region_outer:
            raise ValueError(f"region_inner, region_outer: expected 0 <= inner < outer, got {region_inner}, {region_outer}")
        if not 0 < m_min < m_max:
            raise ValueError(f"m_min, m_max: expected 0 < m_min < m_max, got {m_min}, {m_max}")
        for name, value in (("ray_tolerance", ray_tolerance), ("far_field_tolerance", far_field_tolerance)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        self.main_deflector = main_deflector
        self.lens_light = bool(lens_light)
        self.distances = LensDistances(z_lens, z_source)
        self.normalisation = normalisation
        self.infer_half_mode_mass = bool(infer_half_mode_mass)
        self.log10_m_hm = log10_m_hm
        self.m_min, self.m_max = float(m_min), float(m_max)
        self.region = (float(region_inner), float(region_outer))
        self.ray_tolerance = ray_tolerance
        self.far_field_tolerance = far_field_tolerance
        self.device = resolve_device(device)
        self.torch_dtype = torch.float32 if dtype == "float32" else torch.float64
        self.complex_dtype = torch.complex64 if dtype == "float32" else torch.complex128
        self.return_noiseless = bool(return_noiseless)

        first = "Sigma_sub" if normalisation == "sigma_sub" else "f_sub"
        names = (first, "beta") + (("log10_m_hm",) if self.infer_half_mode_mass else ())
        self.parameter_names = names
        self.prior = Prior({n: DEFAULT_PRIORS[n] for n in names})
        self.nuisance_prior = self._nuisance_prior(nuisance_priors or {})
        n = inst.n_pixels
        self.output_spec = {"image": OutputSpec((n, n), "float32")}
        if self.return_noiseless:
            self.output_spec["image_noiseless"] = OutputSpec((n, n), "float32")

        if psf_kernel is not None:
            kernel = np.asarray(psf_kernel, dtype=float)
            if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0 or not kernel.sum() > 0:
                raise ValueError(f"psf_kernel: expected an odd-sided 2D kernel with positive sum, got shape {kernel.shape}")
            kernel = kernel / kernel.sum()
        else:
            kernel = gaussian_psf_kernel(inst.psf_fwhm_arcsec, inst.pixel_scale_arcsec)
        self.psf_kernel = kernel
        self._build_grids()

    # ------------------------------------------------------------------ configuration

    def _nuisance_prior(self, overrides: dict[str, dict[str, Any]]) -> Prior:
        names = ["theta_E", "lens_e1", "lens_e2", "lens_x", "lens_y", "shear_g1", "shear_g2"]
        if self.main_deflector == "epl":
            names.append("lens_gamma")
        names += ["src_x", "src_y", "src_e1", "src_e2", "src_R_e", "src_n", "src_mag"]
        if self.lens_light:
            names += ["light_R_e", "light_n", "light_mag"]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"nuisance_priors: unknown parameter {unknown[0]!r} for this configuration; expected some of {names}")
        specs = {k: overrides.get(k, DEFAULT_NUISANCE_PRIORS[k]) for k in names}
        return Prior({k: marginal_from_config(v, f"nuisance_priors.{k}") for k, v in specs.items()})

    def _build_grids(self) -> None:
        inst = self.instrument
        n, ss, scale = inst.n_pixels, inst.supersampling, inst.pixel_scale_arcsec
        sub = (np.arange(n * ss) + 0.5) / ss - 0.5 - (n - 1) / 2  # ray positions in pixel units
        y, x = np.meshgrid(sub * scale, sub * scale, indexing="ij")
        kw = dict(device=self.device, dtype=self.torch_dtype)
        self.ray_x = torch.as_tensor(x.ravel(), **kw)[None]
        self.ray_y = torch.as_tensor(y.ravel(), **kw)[None]
        # tiles for the subhalo-deflection bound
        n_tiles = -(-n // TILE_PIXELS)
        pix_row = np.minimum(np.arange(n * ss) // ss // TILE_PIXELS, n_tiles - 1)
        tile_of_ray = (pix_row[:, None] * n_tiles + pix_row[None, :]).ravel()
        centre = ((np.arange(n_tiles) + 0.5) * TILE_PIXELS - 0.5 - (n - 1) / 2) * scale
        ty, tx = np.meshgrid(centre, centre, indexing="ij")
        self.tile_x = torch.as_tensor(tx.ravel(), **kw)[None, None]
        self.tile_y = torch.as_tensor(ty.ravel(), **kw)[None, None]
        self.tile_halfdiag = math.sqrt(2) * TILE_PIXELS * scale / 2
        self.tile_of_ray = torch.as_tensor(tile_of_ray, device=self.device)
        # the rays of each tile (row-major within the tile), n_rays for rays beyond the frame, and
        # their offsets from the tile centre, the same for every tile
        side = TILE_PIXELS * ss
        local = np.arange(side)
        iy = np.arange(n_tiles)[:, None, None, None] * side + local[None, None, :, None]
        ix = np.arange(n_tiles)[None, :, None, None] * side + local[None, None, None, :]
        inside = (iy < n * ss) & (ix < n * ss)
        ray_of_tile = np.where(inside, iy * (n * ss) + ix, (n * ss) ** 2)
        self.ray_of_tile = torch.as_tensor(ray_of_tile.reshape(n_tiles * n_tiles, side * side), device=self.device)
        self.tile_rays = side * side
        offset = ((local + 0.5) / ss - TILE_PIXELS / 2) * scale
        oy, ox = np.meshgrid(offset, offset, indexing="ij")
        self.ray_offset_x = torch.as_tensor(ox.ravel(), **kw)
        self.ray_offset_y = torch.as_tensor(oy.ravel(), **kw)
        # basis of the local expansions at the rays of a tile: conj(d)^k (k <= K), then d^j conj(d)^k (j, k <= L)
        d = ox.ravel() + 1j * oy.ravel()
        rows = [np.conj(d) ** k for k in range(EXPANSION_ORDER + 1)]
        rows += [d**j * np.conj(d) ** k for j in range(CORRECTION_ORDER + 1) for k in range(CORRECTION_ORDER + 1)]
        self.expansion_basis = torch.as_tensor(np.stack(rows), device=self.device, dtype=self.complex_dtype)
        self.convolve = FFTConvolver(self.psf_kernel, (n, n), self.device, self.torch_dtype)

    # ------------------------------------------------------------------ drawing

    def draw_parameters(self, theta: np.ndarray, rngs, n_subhalos: int | None = None):
        """Nuisance parameters and subhalo populations of each row.

        Returns (nuisance: dict name -> (N,), populations: list of SubhaloPopulation). Uses
        only ``rngs[i]`` for row i; ``n_subhalos`` fixes the count (benchmarks, tests).
        """
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        nuisance = {k: np.empty(len(theta)) for k in self.nuisance_prior.names}
        populations = []
        for i, (row, g) in enumerate(zip(theta, rngs)):
            values = self.nuisance_prior.sample(1, g)[0]
            for k, v in zip(self.nuisance_prior.names, values):
                nuisance[k][i] = v
            m_hm = row[2] if self.infer_half_mode_mass else self.log10_m_hm
            mf = MassFunction(self.m_min, self.m_max, row[1], m_hm)
            populations.append(
                draw_subhalo_population(
                    g,
                    normalisation=self.normalisation,
                    value=row[0],
                    mass_function=mf,
                    theta_e=nuisance["theta_E"][i],
                    center=(nuisance["lens_x"][i], nuisance["lens_y"][i]),
                    distances=self.distances,
                    r_in=self.region[0],
                    r_out=self.region[1],
                    n_subhalos=n_subhalos,
                )
            )
        return nuisance, populations

    # ------------------------------------------------------------------ simulation

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, D) -> {"image": (N, n, n)} float32 electrons (and ``image_noiseless``)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        if theta.shape[1] != len(self.parameter_names):
            raise ValueError(f"theta must have {len(self.parameter_names)} columns {self.parameter_names}, got shape {theta.shape}")
        rngs = row_generators(rng, len(theta))
        nuisance, populations = self.draw_parameters(theta, rngs)
        expected = self.render(nuisance, populations).cpu().numpy().astype(np.float64)
        images = self.add_noise(expected, rngs)
        out = {"image": images.astype(np.float32)}
        if self.return_noiseless:
            out["image_noiseless"] = expected.astype(np.float32)
        return out

    def add_noise(self, expected: np.ndarray, rngs) -> np.ndarray:
        """Poisson noise on (signal + sky), sky subtracted, plus Gaussian read noise. expected: (N, n, n)."""
        sky = self.instrument.sky_counts
        out = np.empty_like(expected)
        for i, g in enumerate(rngs):
            lam = np.clip(expected[i] + sky, 0.0, None)
            out[i] = g.poisson(lam) - sky + g.normal(0.0, self.instrument.read_noise_e, lam.shape)
        return out

    def render(self, nuisance: dict[str, np.ndarray], populations, exact: bool = False, batch_pairs: int = 4_000_000) -> torch.Tensor:
        """Expected (noiseless, sky-subtracted) electrons per pixel. Returns (N, n, n) on the device.

        ``exact=True`` ignores ``ray_tolerance`` and ``far_field_tolerance`` (every ray, exact
        truncated NFW everywhere). ``batch_pairs`` bounds the (tile, subhalo, ray) triples summed
        at once (on CPU also PAIR_BLOCK, which keeps the blocks in the cache).
        """
        n_rows = len(populations)
        inst = self.instrument
        n, ss = inst.n_pixels, inst.supersampling
        if n_rows == 0:
            return torch.zeros((0, n, n), device=self.device, dtype=self.torch_dtype)
        kw = dict(device=self.device, dtype=self.torch_dtype)

        def col(values):
            return torch.as_tensor(np.asarray(values, dtype=float), **kw)[:, None]

        p = {k: col(v) for k, v in nuisance.items()}
        x, y = self.ray_x, self.ray_y
        q, phi = ellipticity_to_q_phi(p["lens_e1"], p["lens_e2"])
        if self.main_deflector == "sie":
            ax, ay = sie_deflection(x, y, p["theta_E"], q, phi, p["lens_x"], p["lens_y"])
        else:
            ax, ay = epl_deflection(x, y, p["theta_E"], q, phi, p["lens_gamma"], p["lens_x"], p["lens_y"])
        sx, sy = shear_deflection(x, y, p["shear_g1"], p["shear_g2"], p["lens_x"], p["lens_y"])
        bx, by = x - ax - sx, y - ay - sy  # (B, P) macro-model source-plane positions

        # source
        qs, phis = ellipticity_to_q_phi(p["src_e1"], p["src_e2"])
        src_n = nuisance["src_n"]
        area = inst.pixel_scale_arcsec**2
        amp = col(sersic_amplitude(inst.counts(nuisance["src_mag"]), nuisance["src_R_e"], src_n) * area)
        b_n = col(sersic_b(src_n))
        src = dict(amplitude=amp, r_e=p["src_R_e"], n=p["src_n"], b=b_n)
        radius = sersic_radius(bx, by, qs, phis, p["src_x"], p["src_y"])
        brightness = sersic_brightness(radius, **src)

        padded = pad_populations(list(populations))
        if padded["mask"].any():
            brightness = self._subhalo_brightness(brightness, bx, by, radius, qs, phis, p, src, padded, exact, batch_pairs)

        if self.lens_light:
            ql, phil = ellipticity_to_q_phi(p["lens_e1"], p["lens_e2"])
            lamp = col(sersic_amplitude(inst.counts(nuisance["light_mag"]), nuisance["light_R_e"], nuisance["light_n"]) * area)
            lr = sersic_radius(x, y, ql, phil, p["lens_x"], p["lens_y"])
            brightness = brightness + sersic_brightness(lr, lamp, p["light_R_e"], p["light_n"], col(sersic_b(nuisance["light_n"])))

        pixels = brightness.reshape(n_rows, n, ss, n, ss).mean(dim=(2, 4))
        return self.convolve(pixels)

    def _subhalo_brightness(self, brightness, bx, by, radius, qs, phis, p, src, padded, exact, batch_pairs):
        """Source brightness with the subhalo deflections, on the tiles where they matter.

        The work is organised by tiles of TILE_PIXELS x TILE_PIXELS pixels: every ray of a tile
        holding at least one selected ray is traced through the subhalos; a tile's rays sit at
        fixed offsets from its centre, so the local expansions are evaluated by one matrix
        product and the subhalos summed directly form dense (tile, subhalo, ray) blocks.
        """
        kw = dict(device=self.device, dtype=self.torch_dtype)
        sub = {k: torch.as_tensor(v, **kw)[:, :, None] for k, v in padded.items() if k != "mask"}
        n_rows, n_rays = brightness.shape
        n_tiles = self.tile_x.shape[2]
        sigma = self.instrument.background_sigma
        profile = None if exact else self._profile_on_grid(sub)
        if not exact and (self.ray_tolerance is not None or self.far_field_tolerance is not None):
            bound = self._deflection_bound(sub, profile)  # (B, P)
            grad = self._max_slope_within(radius, bound / torch.sqrt(qs), src) / torch.sqrt(qs)  # (B, P)
        if exact or self.ray_tolerance is None:
            used = torch.ones((n_rows, n_tiles), dtype=torch.bool, device=self.device)
        else:
            active = grad * bound > self.ray_tolerance * sigma
            counts = torch.zeros((n_rows, n_tiles), **kw).index_add_(1, self.tile_of_ray, active.to(self.torch_dtype))
            used = counts > 0  # the tiles holding a selected ray
        t_row, t_tile = used.nonzero(as_tuple=True)  # (M,) the tiles traced through the subhalos
        n_sub = sub["x"].shape[1]
        if exact or self.far_field_tolerance is None:
            direct = (sub["theta_e2"][:, :, 0] > 0)[t_row]  # (M, S)
            alpha = torch.zeros((len(t_row), self.tile_rays), device=self.device, dtype=self.complex_dtype)
            far = None
        else:
            # deflection tolerance (arcsec) per tile: far_field_tolerance sigma / max |grad I| in the tile,
            # rounded down to one of TOLERANCE_LEVELS levels tol_min 4^k
            grad_max = self._sersic_max_slope(src) / torch.sqrt(qs)  # (B, 1)
            tile_grad = torch.zeros((n_rows, n_tiles), **kw).scatter_reduce(
                1, self.tile_of_ray.expand(n_rows, -1), grad, reduce="amax", include_self=True
            )
            level = torch.clamp(torch.floor(torch.log(grad_max / torch.clamp(tile_grad, min=1e-30)) / math.log(4.0)), 0, TOLERANCE_LEVELS - 1).long()
            tol_levels = self.far_field_tolerance * sigma / grad_max * 4.0 ** torch.arange(TOLERANCE_LEVELS, **kw)  # (B, NL)
            c_far = self._far_field_coefficient(sub)  # (B, S, 1)
            r_far = self._far_field_radius(sub, c_far, tol_levels[:, None, :], profile)  # (B, S, NL)
            lvl = level[t_row, t_tile]  # (M,)
            r_far_tile = r_far[t_row].gather(2, lvl[:, None, None].expand(-1, n_sub, 1))[:, :, 0]  # (M, S)
            direct, coeff = self._local_expansions(sub, c_far, r_far_tile, tol_levels[t_row, lvl], t_row, t_tile)
            alpha = coeff @ self.expansion_basis  # (M, rays per tile)
            far = (r_far_tile, c_far)
        alpha = alpha + self._direct_deflection(t_row, t_tile, sub, direct, batch_pairs, far)
        # flat indices of the tiles' rays in (B, P + 1) arrays whose last column takes the padding rays
        index = (t_row[:, None] * (n_rays + 1) + self.ray_of_tile.index_select(0, t_tile)).view(-1)
        sink = torch.zeros((n_rows, 1), **kw)

        def at_rays(values):
            return torch.cat([values.expand(n_rows, -1), sink], dim=1).view(-1).index_select(0, index).view(alpha.shape)

        gbx, gby = at_rays(bx) - alpha.real, at_rays(by) - alpha.imag
        src_rows = {k: v[t_row] for k, v in src.items()}  # (M, 1)
        radius_new = sersic_radius(gbx, gby, qs[t_row], phis[t_row], p["src_x"][t_row], p["src_y"][t_row])
        out = torch.cat([brightness, sink], dim=1)
        out.view(-1).index_copy_(0, index, sersic_brightness(radius_new, **src_rows).view(-1))
        return out[:, :n_rays]

    def _direct_deflection(self, t_row, t_tile, sub, direct, batch_pairs, far=None):
        """Deflection (complex, (M, rays per tile)) of the subhalos marked direct for each tile.

        The direct subhalos of each tile are gathered into a padded list and summed over the
        tile's rays as dense (tiles, subhalos, rays) blocks, the tiles sorted by the length of
        their list so that the padding stays small. ``far``: None (exact truncated NFW for
        every pair) or (r_far (M, S), c_far (B, S, 2)): then a pair farther than the tile's
        far-field radius uses the far field theta_e2 (1 - c2 / r^2 - c3 / r^3) / r, and only the
        nearer pairs the exact profile.
        """
        n_tiles_used, n_sub = direct.shape
        n_r = self.tile_rays
        alpha = torch.zeros((n_tiles_used, n_r), device=self.device, dtype=self.complex_dtype)
        counts = direct.sum(dim=1)
        if not n_tiles_used or int(counts.max()) == 0:
            return alpha
        # tiles by decreasing count; each tile's direct subhalos first
        order = torch.argsort(counts, descending=True)
        counts = counts[order]
        n_busy = int((counts > 0).sum())
        order, counts = order[:n_busy], counts[:n_busy]
        k_max = int(counts[0])
        # slot of each direct subhalo in its tile's list: the running count of direct subhalos
        chosen = direct[order]
        slot = torch.where(chosen, chosen.cumsum(dim=1) - 1, k_max)  # k_max: not listed
        which = torch.zeros((n_busy, k_max + 1), dtype=torch.long, device=self.device)
        which.scatter_(1, slot, torch.arange(n_sub, device=self.device).expand(n_busy, -1))
        which = which[:, :k_max]  # (M', K) subhalo index of each list entry
        valid = torch.arange(k_max, device=self.device)[None, :] < counts[:, None]
        lin = (t_row[order][:, None] * n_sub + which).view(-1)
        lin = torch.where(valid.view(-1), lin, 0)  # list padding points at subhalo 0 with theta_e2 = 0 below
        # one row per subhalo: x, y, theta_e2, r_s, tau, the constants of the exact profile, and c2, c3;
        # gathered once per list entry, and again at the near (tile, subhalo, ray) triples
        flat = {k: v[:, :, 0].reshape(-1) for k, v in sub.items()}
        columns = [flat["x"], flat["y"], flat["theta_e2"], flat["r_s"], flat["tau"], *tnfw_constants(flat["tau"])]
        if far is not None:
            columns += [far[1][:, :, 0].reshape(-1), far[1][:, :, 1].reshape(-1)]
        table = torch.stack(columns, dim=1)  # (B S, columns)
        entry = table.index_select(0, lin).view(n_busy, k_max, -1)
        e2 = torch.where(valid, entry[:, :, 2], torch.zeros((), dtype=self.torch_dtype))
        r_s, tau = entry[:, :, 3], entry[:, :, 4]
        wx = self.tile_x[0, 0, t_tile[order]][:, None] - entry[:, :, 0]  # (M', K) tile centre minus subhalo
        wy = self.tile_y[0, 0, t_tile[order]][:, None] - entry[:, :, 1]
        if far is not None:
            c, c3 = entry[:, :, 9], entry[:, :, 10]
            r_far2 = torch.where(valid, far[0][order].gather(1, which), torch.zeros((), dtype=self.torch_dtype)) ** 2
        ox, oy = self.ray_offset_x, self.ray_offset_y  # (rays per tile,)
        shift = n_r.bit_length() - 1 if n_r & (n_r - 1) == 0 else None
        block = batch_pairs if self.device.type == "cuda" else min(batch_pairs, PAIR_BLOCK)
        out = torch.empty((n_busy, n_r), device=self.device, dtype=self.complex_dtype)
        lo = 0
        while lo < n_busy:
            k = int(counts[lo])
            hi = min(n_busy, lo + max(1, block // (k * n_r)))
            sl = slice(lo, hi)
            dx = wx[sl, :k, None] + ox  # (m, k, r)
            dy = wy[sl, :k, None] + oy
            r2 = torch.addcmul(dx * dx, dy, dy)
            if far is None:
                pair = (sl, slice(0, k), None)
                frac = tnfw_mass_fraction(torch.sqrt(r2), r_s[pair], tau[pair])
                scale = e2[pair] * frac / torch.maximum(r2, (1e-4 * r_s[pair]) ** 2)
            else:
                inv = 1.0 / torch.clamp(r2, min=1e-30)
                # far field theta_e2 (1 - c / r^2 - c3 / r^3) / r^2 (times the offset), exact profile within r_far
                scale = e2[sl, :k, None] * inv * (1.0 - inv * (c[sl, :k, None] + c3[sl, :k, None] * torch.rsqrt(r2)))
                near = (r2 < r_far2[sl, :k, None]).view(-1).nonzero().view(-1)  # flat indices in the block
                if near.numel():
                    # their pairs' flat indices in the (M', K) lists, through a table of the block's pairs
                    in_block = near >> shift if shift is not None else near.div(n_r, rounding_mode="floor")
                    entries = ((torch.arange(lo, hi, device=self.device) * k_max)[:, None] + torch.arange(k, device=self.device)).view(-1)
                    q = table.index_select(0, lin.index_select(0, entries.index_select(0, in_block)))  # (N, columns)
                    r2n = r2.view(-1).index_select(0, near)
                    frac = tnfw_mass_fraction(torch.sqrt(r2n), q[:, 3], q[:, 4], tuple(q[:, 5:9].unbind(1)))
                    value = q[:, 2] * frac / torch.maximum(r2n, (1e-4 * q[:, 3]) ** 2)
                    scale.view(-1).index_copy_(0, near, value)
            out[sl] = torch.complex((scale * dx).sum(dim=1), (scale * dy).sum(dim=1))
            lo = hi
        alpha[order] = out
        return alpha

    def _local_expansions(self, sub, c_far, r_far, tol, t_row, t_tile):
        """Tile-wise local expansions of the far field of the subhalos far enough from each tile.

        In complex notation the far-field deflection of subhalo s at z is
        theta_e2 (1 / conj(w) - c / (w conj(w)^2)), w = z - z_s. About a tile centre z_t,
        with W = z_t - z_s and d = z - z_t,

            1 / conj(w)          = sum_k (-conj(d))^k / conj(W)^(k+1)                (k <= K)
            1 / (w conj(w)^2)    = sum_jk (-d)^j (k+1) (-conj(d))^k / (W^(j+1) conj(W)^(k+2))  (j, k <= L)

        A pair (tile, subhalo) is expanded when every ray of the tile is beyond the far-field
        radius ``r_far`` (M, S) and the truncation error bound is below the tile's tolerance
        ``tol`` (M,); otherwise it is direct. The tiles are (``t_row``, ``t_tile``).
        Returns direct (M, S) bool and the coefficients (M, K + 1 + (L + 1)^2) (complex) of
        the basis :attr:`expansion_basis`: the deflection at the tile's rays is coeff @ basis.
        """
        K, L = EXPANSION_ORDER, CORRECTION_ORDER
        n_sub = r_far.shape[1]
        flat = {k: v[:, :, 0][t_row] for k, v in sub.items()}  # (M, S)
        h = self.tile_halfdiag
        wx = self.tile_x[0, 0, t_tile][:, None] - flat["x"]
        wy = self.tile_y[0, 0, t_tile][:, None] - flat["y"]
        dist = torch.sqrt(wx * wx + wy * wy)
        q = h / dist
        e2, c, c3 = flat["theta_e2"], c_far[:, :, 0][t_row], c_far[:, :, 1][t_row]
        # bounds on the truncation errors of the three series
        u = 1.0 / (1.0 - q)
        q_l = _int_power(q, L + 1)
        inv_d = 1.0 / dist
        inv_d2 = inv_d * inv_d
        err = _int_power(q, K + 1) * u + c * inv_d2 * (L + 2) * q_l * u * u * u + c3.abs() * inv_d2 * inv_d * _c3_remainder(q, L, q_l, u)
        err = err * e2 * inv_d
        expand = (q < 0.6) & (dist - h >= r_far) & (err < 0.5 * tol[:, None]) & (e2 > 0)
        direct = ~expand & (e2 > 0)
        # 1 / conj(W) = W / |W|^2; pairs that are not expanded get weight 0
        inv_d2 = torch.where(expand, inv_d2, torch.zeros_like(dist))
        inv_wc = torch.complex(wx * inv_d2, wy * inv_d2)  # (M, S)
        weight = torch.where(expand, e2, torch.zeros_like(e2))
        m = len(t_row)
        coeff = torch.empty((m, K + 1 + (L + 1) ** 2), dtype=inv_wc.dtype, device=self.device)
        # A_k = (-1)^k sum_s theta_e2 conj(W)^-(k+1), accumulated power by power; the powers
        # k = 1 .. L+1 also make the corrections' right factors theta_e2 conj(W)^-(k+2) times c2 and c3 / |W|
        n_c = L + 1
        right = torch.empty((m, 4 * n_c, n_sub), dtype=self.torch_dtype, device=self.device)  # real, imaginary parts
        left = torch.empty((m, 2 * n_c, n_sub), dtype=self.torch_dtype, device=self.device)
        c3_abs = c3 * inv_d2 * dist  # c3 / |W| (0 where not expanded)
        term = inv_wc * weight
        for k in range(K + 1):
            coeff[:, k] = term.sum(dim=1) if k % 2 == 0 else -term.sum(dim=1)
            if 1 <= k <= n_c:
                re, im = term.real, term.imag
                torch.mul(re, c, out=right[:, k - 1])
                torch.mul(im, c, out=right[:, n_c + k - 1])
                torch.mul(re, c3_abs, out=right[:, 2 * n_c + k - 1])
                torch.mul(im, c3_abs, out=right[:, 3 * n_c + k - 1])
            if k < K:
                term = term * inv_wc
        # C_jk = sum_s W^-(j+1) (left) times the right factors, with the binomial coefficients of the
        # two corrections: (-1)^(j+k+1) (k+1) for c2 and -binom(-3/2, j) binom(-5/2, k) for c3 (both
        # with their minus sign), as one real batched product of real and imaginary parts
        inv_w = inv_wc.conj()
        power = inv_w
        for j in range(n_c):
            left[:, j].copy_(power.real)
            left[:, n_c + j].copy_(power.imag)
            if j < L:
                power = power * inv_w
        prod = torch.bmm(left, right.transpose(1, 2))  # (M, 2(L+1), 4(L+1))
        sign2, sign3 = (torch.as_tensor(v, device=self.device, dtype=self.torch_dtype) for v in _correction_signs(L))
        total = 0
        for block, sign in ((prod[:, :, : 2 * n_c], sign2), (prod[:, :, 2 * n_c :], sign3)):
            re = block[:, :n_c, :n_c] - block[:, n_c:, n_c:]
            im = block[:, :n_c, n_c:] + block[:, n_c:, :n_c]
            total = total + torch.complex(re * sign, im * sign)
        coeff[:, K + 1 :] = total.reshape(m, -1)
        return direct, coeff

    def _deflection_bound(self, sub, profile) -> torch.Tensor:
        """Upper bound (B, P) on |alpha_sub| at every ray, from per-tile distances."""
        r, frac = profile
        g_max = (1.1 * (frac / r).max(dim=2, keepdim=True).values).to(self.torch_dtype)  # (B, S, 1): max_r F(r)/r
        d = torch.sqrt((self.tile_x - sub["x"]) ** 2 + (self.tile_y - sub["y"]) ** 2)  # (B, S, T)
        d_lo = torch.clamp(d - self.tile_halfdiag, min=0.0)
        per_tile = (sub["theta_e2"] * torch.minimum(1.0 / torch.clamp(d_lo, min=1e-12), g_max)).sum(dim=1)
        return per_tile[:, self.tile_of_ray]

    @staticmethod
    def _radius_grid(sub, n: int = 48):
        """Log-spaced radii (B, S, n) from 1e-3 r_s to 1e4 max(r_s, r_t), float64."""
        rs = sub["r_s"].double()
        top = 1e4 * torch.clamp(sub["tau"].double(), min=1.0)
        u = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=rs.device)
        return rs * 1e-3 * (top / 1e-3) ** u

    def _profile_on_grid(self, sub):
        """Radii (B, S, n) and the enclosed-mass fraction F there, float64."""
        r = self._radius_grid(sub)
        return r, tnfw_mass_fraction(r, sub["r_s"].double(), sub["tau"].double())

    def _far_field_coefficient(self, sub) -> torch.Tensor:
        """(c2, c3) of 1 - F(r) = c2 / r^2 + c3 / r^3 + ..., in arcsec^2 and arcsec^3 (B, S, 2) (closed form)."""
        c2, c3 = tnfw_far_field_coefficients(sub["r_s"].double(), sub["tau"].double())
        return torch.cat([c2, c3], dim=2).to(self.torch_dtype)

    def _far_field_radius(self, sub, c_far, tol, profile) -> torch.Tensor:
        """Radii (B, S, NL) beyond which the far-field deflection is within tol (B, 1, NL) (arcsec) of the truncated NFW."""
        r, frac = profile
        c_far = c_far.double()
        far = 1.0 - c_far[:, :, :1] / (r * r) - c_far[:, :, 1:] / (r * r * r)
        err = sub["theta_e2"].double() * (far - frac).abs() / r  # (B, S, n)
        k = torch.arange(r.shape[2], device=r.device)
        out = []
        for level in range(tol.shape[2]):
            bad = err > tol[:, :, level : level + 1].double()
            last = torch.where(bad, k, torch.full_like(k, -1)).max(dim=2, keepdim=True).values
            r_next = r.gather(2, torch.clamp(last + 1, max=r.shape[2] - 1))
            out.append(torch.where(last < 0, torch.zeros_like(r_next), r_next))
        return torch.cat(out, dim=2).to(self.torch_dtype)

    @staticmethod
    def _sersic_slope(radius, src):
        """|dI/dR| of the Sersic profile at elliptical radius R."""
        radius = torch.clamp(radius, min=1e-6)
        value = sersic_brightness(radius, **src)
        return value * src["b"] / src["n"] * torch.pow(radius / src["r_e"], 1.0 / src["n"]) / radius

    def _max_slope_within(self, radius, delta, src):
        """max |dI/dR| of the Sersic profile over elliptical radii [R - delta, R + delta].

        |dI/dR| decreases with R beyond its peak, at R = 0 for n >= 1 (where the cusp is cut at
        half a ray spacing, as in :meth:`_sersic_max_slope`) and at R_e ((1 - n) / b)^n < R_e
        for n < 1; the maximum over an interval is at the peak clamped into the interval.
        """
        n, r_e, b = src["n"], src["r_e"], src["b"]
        peak = torch.where(n < 1, r_e * torch.pow(torch.clamp((1 - n) / b, min=1e-12), n), torch.zeros_like(n))
        r_min = 0.5 * self.instrument.pixel_scale_arcsec / self.instrument.supersampling
        at = torch.maximum(torch.minimum(torch.maximum(peak, radius - delta), radius + delta), torch.full_like(radius, r_min))
        return self._sersic_slope(at, src)

    def _sersic_max_slope(self, src):
        """max over R of |dI/dR| (B, 1) on radii from half a ray spacing to 10 R_e (times 1.1).

        The cusp of a Sersic profile with n > 1 (infinite slope at R = 0) is not resolved by
        the rays, so the slope is taken from half a ray spacing outwards.
        """
        r_min = 0.5 * self.instrument.pixel_scale_arcsec / self.instrument.supersampling
        u = torch.linspace(0.0, 1.0, 200, device=self.device, dtype=self.torch_dtype)[None]
        grid = r_min * (10 * src["r_e"] / r_min) ** u
        return 1.1 * self._sersic_slope(grid, src).max(dim=1, keepdim=True).values
