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
- rays only where subhalos matter (``ray_tolerance``): a ray is traced through the subhalos
  only where the source brightness could change by more than ``ray_tolerance`` times the
  background noise sigma of a pixel. The bound uses |alpha_sub| <= sum_s theta_E,s^2
  min(1 / d, max_r F_s(r) / r) on tiles of 4 x 4 pixels and the largest Sersic gradient
  within that deflection of the macro-model source position; elsewhere the macro-model
  brightness is kept (its error is below the bound);
- a far field for subhalos (``far_field_tolerance``): beyond the radius where the
  truncated-NFW deflection differs by less than tol = ``far_field_tolerance`` sigma / G
  (arcsec; G the largest source-brightness slope the tile's rays can see, rounded to one of
  six levels) from theta_E^2 (1 - c / r^2) / r (a point mass with its leading finite-size
  correction, c = lim r^2 (1 - F(r))), the far field is used, summed per tile of 4 x 4 pixels
  as a local (Taylor) expansion in complex coordinates whose truncation error is also below
  tol; subhalos closer to a tile are summed ray by ray, with the far field beyond the
  far-field radius and the exact profile within it.

``benchmarks/strong_lens.py`` measures the effect of all three against the exact
computation (float64, every ray, exact truncated NFW everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
    tnfw_deflection,
    tnfw_mass_fraction,
    tnfw_norm,
)
from cosmosbi.simulators.priors import Prior, Uniform, marginal_from_config
from cosmosbi.simulators.subhalos import MassFunction, draw_subhalo_population, pad_populations

__all__ = ["Instrument", "INSTRUMENT_PRESETS", "DEFAULT_NUISANCE_PRIORS", "StrongLensSimulator", "resolve_device"]


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
TOLERANCE_LEVELS = 6  # far-field tolerance levels tol_min 4^k, chosen per tile from the source gradient there


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise the named torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


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
        truncated NFW everywhere). ``batch_pairs`` bounds the subhalo x ray pairs per chunk.
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
        """Source brightness with the subhalo deflections, on the rays where they matter."""
        kw = dict(device=self.device, dtype=self.torch_dtype)
        sub = {k: torch.as_tensor(v, **kw)[:, :, None] for k, v in padded.items() if k != "mask"}
        n_rows, n_rays = brightness.shape
        sigma = self.instrument.background_sigma
        profile = None if exact else self._profile_on_grid(sub)
        if not exact and (self.ray_tolerance is not None or self.far_field_tolerance is not None):
            bound = self._deflection_bound(sub, profile)  # (B, P)
            grad = self._max_slope_within(radius, bound / torch.sqrt(qs), src) / torch.sqrt(qs)  # (B, P)
        if exact or self.ray_tolerance is None:
            active = torch.ones_like(brightness, dtype=torch.bool)
        else:
            active = grad * bound > self.ray_tolerance * sigma
        rows, rays = active.nonzero(as_tuple=True)  # the active rays of all images, flattened
        tiles = self.tile_of_ray[rays]
        if exact or self.far_field_tolerance is None:
            direct = torch.ones((n_rows, self.tile_x.shape[2], sub["x"].shape[1]), dtype=torch.bool, device=self.device)
            alpha = torch.zeros(rows.shape, device=self.device, dtype=self.complex_dtype)
            far = None
        else:
            # deflection tolerance (arcsec) per tile: far_field_tolerance sigma / max |grad I| in the tile,
            # rounded down to one of TOLERANCE_LEVELS levels tol_min 4^k
            grad_max = self._sersic_max_slope(src) / torch.sqrt(qs)  # (B, 1)
            tile_grad = torch.zeros((n_rows, self.tile_x.shape[2]), **kw).scatter_reduce(
                1, self.tile_of_ray.expand(n_rows, -1), grad, reduce="amax", include_self=True
            )
            level = torch.clamp(torch.floor(torch.log(grad_max / torch.clamp(tile_grad, min=1e-30)) / math.log(4.0)), 0, TOLERANCE_LEVELS - 1).long()
            tol_levels = self.far_field_tolerance * sigma / grad_max * 4.0 ** torch.arange(TOLERANCE_LEVELS, **kw)  # (B, NL)
            c_far = self._far_field_coefficient(sub)  # (B, S, 1)
            r_far = self._far_field_radius(sub, c_far, tol_levels[:, None, :], profile)  # (B, S, NL)
            direct, slot, coeff_a, coeff_c = self._local_expansions(sub, c_far, r_far, tol_levels, level, rows, tiles)
            alpha = self._evaluate_expansions(rows, rays, tiles, slot, coeff_a, coeff_c)
            far = (r_far, c_far, level)
        alpha = alpha + self._direct_deflection(rows, rays, tiles, sub, direct, batch_pairs, far)
        gbx, gby = bx[rows, rays] - alpha.real, by[rows, rays] - alpha.imag
        src_rows = {k: v[rows, 0] for k, v in src.items()}
        radius_new = sersic_radius(gbx, gby, qs[rows, 0], phis[rows, 0], p["src_x"][rows, 0], p["src_y"][rows, 0])
        return brightness.index_put((rows, rays), sersic_brightness(radius_new, **src_rows))

    def _direct_deflection(self, rows, rays, tiles, sub, direct, batch_pairs, far=None):
        """Deflection (complex, (R,)) of the subhalos marked direct for each ray's tile, ray by ray.

        ``far``: None (exact truncated NFW for every pair) or (r_far, c_far, level): then a pair
        farther than the far-field radius of its tile's tolerance level uses the far field
        theta_e2 (1 - c / r^2) / r, and only the nearer pairs the exact profile.
        """
        alpha = torch.zeros(rows.shape, device=self.device, dtype=self.complex_dtype)
        n_rows, n_tiles, n_sub = direct.shape
        # per-subhalo tables: the far-field columns (x, y, theta_e2, c_far) for every pair and
        # the profile columns (r_s, tau, norm) for the pairs that need the exact profile
        zeros = torch.zeros_like(sub["x"][:, :, 0])
        far_cols = [sub["x"][:, :, 0], sub["y"][:, :, 0], sub["theta_e2"][:, :, 0], zeros if far is None else far[1][:, :, 0]]
        far_table = torch.stack(far_cols, dim=2).reshape(n_rows * n_sub, 4)
        near_table = torch.stack([sub["r_s"][:, :, 0], sub["tau"][:, :, 0], tnfw_norm(sub["tau"][:, :, 0])], dim=2).reshape(n_rows * n_sub, 3)
        if far is not None:
            r_far, _, level = far
            n_levels = r_far.shape[2]
            r_far_flat = r_far.reshape(-1)
            level_flat = level.reshape(-1)
        direct_flat = direct.reshape(n_rows * n_tiles, n_sub)
        ray_tile = rows * n_tiles + tiles
        chunk = max(1, batch_pairs // max(1, n_sub))
        for lo in range(0, len(rows), chunk):
            sl = slice(lo, lo + chunk)
            ray_i, sub_i = direct_flat.index_select(0, ray_tile[sl]).nonzero(as_tuple=True)  # pairs (ray, subhalo)
            if not ray_i.numel():
                continue
            lin = rows[sl].index_select(0, ray_i) * n_sub + sub_i
            pair = far_table.index_select(0, lin)  # (N, 4)
            ray_id = rays[sl].index_select(0, ray_i)
            dx = self.ray_x[0].index_select(0, ray_id) - pair[:, 0]
            dy = self.ray_y[0].index_select(0, ray_id) - pair[:, 1]
            e2 = pair[:, 2]
            if far is None:
                q = near_table.index_select(0, lin)
                fx, fy = tnfw_deflection(dx, dy, e2, q[:, 0], q[:, 1], q[:, 2])
            else:
                lvl = level_flat.index_select(0, ray_tile[sl].index_select(0, ray_i))
                r_far_pair = r_far_flat.index_select(0, lin * n_levels + lvl)
                r2 = dx * dx + dy * dy
                inv = 1.0 / torch.clamp(r2, min=1e-30)
                scale = e2 * inv * (1.0 - pair[:, 3] * inv)
                fx, fy = scale * dx, scale * dy
                near = (r2 < r_far_pair * r_far_pair).nonzero(as_tuple=True)[0]
                if near.numel():
                    q = near_table.index_select(0, lin.index_select(0, near))
                    tx, ty = tnfw_deflection(dx[near], dy[near], e2[near], q[:, 0], q[:, 1], q[:, 2])
                    fx = fx.index_put((near,), tx)
                    fy = fy.index_put((near,), ty)
            alpha[sl] += torch.zeros_like(alpha[sl]).index_add(0, ray_i, torch.complex(fx, fy))
        return alpha

    def _local_expansions(self, sub, c_far, r_far, tol_levels, level, rows, tiles):
        """Tile-wise local expansions of the far field of the subhalos far enough from each tile.

        In complex notation the far-field deflection of subhalo s at z is
        theta_e2 (1 / conj(w) - c / (w conj(w)^2)), w = z - z_s. About a tile centre z_t,
        with W = z_t - z_s and d = z - z_t,

            1 / conj(w)          = sum_k (-conj(d))^k / conj(W)^(k+1)                (k <= K)
            1 / (w conj(w)^2)    = sum_jk (-d)^j (k+1) (-conj(d))^k / (W^(j+1) conj(W)^(k+2))  (j, k <= L)

        A pair (tile, subhalo) is expanded when every ray of the tile is beyond the far-field
        radius and the truncation error bound is below the tile's tolerance (``tol_levels``
        (B, NL) indexed by ``level`` (B, T)); otherwise it is direct. Only the tiles holding
        active rays (``rows``, ``tiles``) are expanded.
        Returns direct (B, T, S) bool, the index (B, T) of each tile's coefficients, A (M, K+1)
        and C (M, L+1, L+1) complex.
        """
        K, L = EXPANSION_ORDER, CORRECTION_ORDER
        n_rows, n_tiles, n_sub = r_far.shape[0], self.tile_x.shape[2], r_far.shape[1]
        used = torch.zeros((n_rows, n_tiles), dtype=torch.bool, device=self.device)
        used[rows, tiles] = True
        t_row, t_tile = used.nonzero(as_tuple=True)  # (M,)
        slot = torch.full((n_rows, n_tiles), -1, dtype=torch.long, device=self.device)
        slot[t_row, t_tile] = torch.arange(len(t_row), device=self.device)
        flat = {k: v[:, :, 0][t_row] for k, v in sub.items()}  # (M, S)
        h = self.tile_halfdiag
        wx = self.tile_x[0, 0, t_tile][:, None] - flat["x"]
        wy = self.tile_y[0, 0, t_tile][:, None] - flat["y"]
        dist = torch.sqrt(wx * wx + wy * wy)
        q = h / dist
        e2, c = flat["theta_e2"], c_far[:, :, 0][t_row]
        err = e2 / dist * q ** (K + 1) / (1 - q) + e2 * c / dist**3 * (L + 2) * q ** (L + 1) / (1 - q) ** 3
        lvl = level[t_row, t_tile]  # (M,)
        tol = tol_levels[t_row, lvl][:, None]  # (M, 1)
        r_far_pair = r_far[t_row].gather(2, lvl[:, None, None].expand(-1, n_sub, 1))[:, :, 0]  # (M, S)
        expand = (q < 0.6) & (dist - h >= r_far_pair) & (err < 0.5 * tol) & (e2 > 0)
        direct = torch.zeros((n_rows, n_tiles, n_sub), dtype=torch.bool, device=self.device)
        direct[t_row, t_tile] = ~expand & (e2 > 0)
        # 1 / conj(W) = W / |W|^2; pairs that are not expanded get weight 0
        inv_d2 = torch.where(expand, 1.0 / (dist * dist), torch.zeros_like(dist))
        inv_wc = torch.complex(wx * inv_d2, wy * inv_d2)
        inv_w = inv_wc.conj()
        weight = (e2 * expand).to(self.torch_dtype)
        m = len(t_row)
        powers = torch.empty((m, K + 1, n_sub), dtype=inv_wc.dtype, device=self.device)  # conj(W)^-(k+1)
        powers[:, 0] = inv_wc
        for k in range(1, K + 1):
            torch.mul(powers[:, k - 1], inv_wc, out=powers[:, k])
        sign_a = torch.tensor([(-1) ** k for k in range(K + 1)], device=self.device).to(inv_wc.dtype)
        coeff_a = torch.bmm(powers, weight.to(inv_wc.dtype)[:, :, None])[:, :, 0] * sign_a  # (M, K+1)
        us = torch.empty((m, L + 1, n_sub), dtype=inv_wc.dtype, device=self.device)  # W^-(j+1)
        us[:, 0] = inv_w
        for j in range(1, L + 1):
            torch.mul(us[:, j - 1], inv_w, out=us[:, j])
        vs = powers[:, 1 : L + 2] * (e2 * c * expand).to(inv_wc.dtype)[:, None, :]  # conj(W)^-(k+2) c theta_e2
        sign = torch.tensor([[(-1) ** (j + k) * (k + 1) for k in range(L + 1)] for j in range(L + 1)], device=self.device).to(inv_wc.dtype)
        coeff_c = torch.bmm(us, vs.transpose(1, 2)) * sign  # (M, L+1, L+1)
        return direct, slot, coeff_a, coeff_c

    def _evaluate_expansions(self, rows, rays, tiles, slot, coeff_a, coeff_c):
        """Sum the local expansions at the active rays. Returns complex (R,)."""
        d = torch.complex(self.ray_x[0, rays] - self.tile_x[0, 0, tiles], self.ray_y[0, rays] - self.tile_y[0, 0, tiles])
        dc = d.conj()
        m = slot[rows, tiles]
        a = coeff_a[m]  # (R, K+1)
        total = a[:, -1]
        for k in range(a.shape[1] - 2, -1, -1):  # Horner in conj(d)
            total = total * dc + a[:, k]
        c = coeff_c[m]  # (R, L+1, L+1)
        n = c.shape[1]
        inner = c[:, :, -1]
        for k in range(n - 2, -1, -1):
            inner = inner * dc[:, None] + c[:, :, k]  # (R, L+1) over j
        corr = inner[:, -1]
        for j in range(n - 2, -1, -1):
            corr = corr * d + inner[:, j]
        return total - corr

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
        """C = lim (1 - F(r)) r^2 as r -> infinity, in arcsec^2 (B, S, 1) (evaluated at 1e5 max(r_s, r_t))."""
        rs, tau = sub["r_s"].double(), sub["tau"].double()
        r = 1e5 * rs * torch.clamp(tau, min=1.0)
        return ((1.0 - tnfw_mass_fraction(r, rs, tau)) * r * r).to(self.torch_dtype)

    def _far_field_radius(self, sub, c_far, tol, profile) -> torch.Tensor:
        """Radii (B, S, NL) beyond which the far-field deflection is within tol (B, 1, NL) (arcsec) of the truncated NFW."""
        r, frac = profile
        far = 1.0 - c_far.double() / (r * r)
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
