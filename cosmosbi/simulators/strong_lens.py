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
(defaults in :data:`DEFAULT_NUISANCE_PRIORS`); they are not columns of theta. Subhalo masses
(``m_min``, ``m_max``) are total masses of the truncated halos, also used as their M200c for
the concentration (see :mod:`cosmosbi.simulators.subhalos` for the conversion to
lenstronomy's M200).

All randomness of image i (nuisance parameters, subhalo count, masses and positions, noise)
comes from its Generator ``rngs[i]``; the ray tracing is batched in torch (CUDA with
``device="auto"`` when available).

Pixels and PSF. A pixel's value is the average over its area of the PSF-convolved surface
brightness. The rays sit at the centres of ``supersampling`` x ``supersampling`` equal cells
of each pixel; the image on the ray grid is convolved with the PSF integrated over one such
cell (the Gaussian of ``psf_fwhm_arcsec``, or the user's ``psf_kernel``, which must be given
at that sampling: pixel_scale_arcsec / supersampling per kernel pixel), then averaged over the
cells of each pixel. This applies the pixel box once and is exact for a brightness uniform
within each cell; what remains is the quadrature error of the rays (below). With
``supersampling=1`` a ``psf_kernel`` is the usual pixel-integrated ("effective") PSF sampled
at pixel centres, applied to the brightness at the pixel centres.

Approximations. The rays sample the brightness at cell centres: this quadrature error falls
as supersampling^-2 where the lensed source is smooth, more slowly at a Sersic cusp, and is
the largest of the approximations at the default ``supersampling=2`` (figures against 16 x 16
rays per pixel in ``benchmarks/RESULTS.md``). The subhalo deflections are computed by
:class:`~cosmosbi.simulators.deflection_engine.DeflectionEngine` with three controlled
approximations, each of which can be switched off: ``dtype="float32"``, the ray selection
(``ray_tolerance``) and the far field (``far_field_tolerance``); ``render(exact=True)`` and
``dtype="float64"`` give the exact computation. ``benchmarks/strong_lens.py`` measures their
effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from cosmosbi.simulators.base import OutputSpec, register_simulator, row_generators
from cosmosbi.simulators.deflection_engine import DeflectionEngine
from cosmosbi.simulators.lens_profiles import (
    FFTConvolver,
    LensDistances,
    SersicSource,
    ellipticity_to_q_phi,
    epl_deflection,
    gaussian_psf_kernel,
    sersic_amplitude,
    sersic_b,
    sersic_brightness,
    sersic_radius,
    shear_deflection,
    sie_deflection,
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


@register_simulator("strong_lens")
class StrongLensSimulator:
    """Strong-lens images with subhalos (see the module docstring).

    Args:
        preset: ``"euclid_like"`` (64 x 64 at 0.1 arcsec, PSF FWHM 0.18 arcsec) or ``"hst_like"``
            (128 x 128 at 0.04 arcsec); the instrument options below override its fields.
        n_pixels, pixel_scale_arcsec, psf_fwhm_arcsec, exposure_time_s, sky_mag_arcsec2,
            zero_point_mag, read_noise_e, supersampling: instrument overrides (None: preset).
        psf_kernel: a user PSF kernel replacing the Gaussian: odd-sided 2D list, normalised to sum 1,
            sampled at the ray spacing pixel_scale_arcsec / supersampling (the PSF integrated
            over cells of that size; see the module docstring).
        main_deflector: ``"sie"`` or ``"epl"``.
        lens_light: add the main deflector's Sersic light.
        z_lens, z_source: redshifts (flat LambdaCDM, h = 0.7, Omega_m = 0.3).
        normalisation: ``"sigma_sub"`` (parameter ``Sigma_sub``, kpc^-2) or ``"f_sub"``.
        infer_half_mode_mass: add ``log10_m_hm`` (WDM half-mode mass) to the parameters.
        log10_m_hm: a fixed half-mode mass when it is not inferred (None: cold dark matter).
        m_min, m_max: subhalo mass range (M_sun): total masses of the truncated halos, also taken
            as M200c for the concentration (lenstronomy's M200: see :mod:`cosmosbi.simulators.subhalos`).
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

    # version 2: the PSF is applied on the supersampled grid (the pixel box counted once); unclamped SIE
    model_version = 2

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
            raise ValueError(
                f"region_inner, region_outer: expected 0 <= inner < outer, got {region_inner}, {region_outer}"
            )
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
                raise ValueError(
                    f"psf_kernel: expected an odd-sided 2D kernel with positive sum, got shape {kernel.shape}"
                )
            kernel = kernel / kernel.sum()
        else:
            kernel = gaussian_psf_kernel(inst.psf_fwhm_arcsec, inst.pixel_scale_arcsec / inst.supersampling)
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
            raise ValueError(
                f"nuisance_priors: unknown parameter {unknown[0]!r} for this configuration; expected some of {names}"
            )
        specs = {k: overrides.get(k, DEFAULT_NUISANCE_PRIORS[k]) for k in names}
        return Prior({k: marginal_from_config(v, f"nuisance_priors.{k}") for k, v in specs.items()})

    def _build_grids(self) -> None:
        inst = self.instrument
        n, ss = inst.n_pixels, inst.supersampling
        self.engine = DeflectionEngine(n, inst.pixel_scale_arcsec, ss, self.device, self.torch_dtype)
        self.convolve = FFTConvolver(self.psf_kernel, (n * ss, n * ss), self.device, self.torch_dtype)

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
            raise ValueError(
                f"theta must have {len(self.parameter_names)} columns {self.parameter_names}, got shape {theta.shape}"
            )
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

    def render(
        self, nuisance: dict[str, np.ndarray], populations, exact: bool = False, batch_pairs: int = 4_000_000
    ) -> torch.Tensor:
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
        x, y = self.engine.ray_x, self.engine.ray_y
        q, phi = ellipticity_to_q_phi(p["lens_e1"], p["lens_e2"])
        if self.main_deflector == "sie":
            ax, ay = sie_deflection(x, y, p["theta_E"], q, phi, p["lens_x"], p["lens_y"])
        else:
            ax, ay = epl_deflection(x, y, p["theta_E"], q, phi, p["lens_gamma"], p["lens_x"], p["lens_y"])
        sx, sy = shear_deflection(x, y, p["shear_g1"], p["shear_g2"], p["lens_x"], p["lens_y"])
        bx, by = x - ax - sx, y - ay - sy  # (B, P) macro-model source-plane positions

        # source: brightness in electrons per pixel area (a ray's value is the pixel value of a uniform brightness)
        qs, phis = ellipticity_to_q_phi(p["src_e1"], p["src_e2"])
        area = inst.pixel_scale_arcsec**2
        amp = col(sersic_amplitude(inst.counts(nuisance["src_mag"]), nuisance["src_R_e"], nuisance["src_n"]) * area)
        source = SersicSource(
            p["src_x"], p["src_y"], qs, phis, amp, p["src_R_e"], p["src_n"], col(sersic_b(nuisance["src_n"]))
        )
        brightness = source.brightness(source.radius(bx, by))

        padded = pad_populations(list(populations))
        if padded["mask"].any():
            brightness = self.engine.subhalo_brightness(
                brightness,
                bx,
                by,
                source,
                padded,
                inst.background_sigma,
                None if exact else self.ray_tolerance,
                None if exact else self.far_field_tolerance,
                exact,
                batch_pairs,
            )

        if self.lens_light:
            ql, phil = ellipticity_to_q_phi(p["lens_e1"], p["lens_e2"])
            lamp = col(
                sersic_amplitude(inst.counts(nuisance["light_mag"]), nuisance["light_R_e"], nuisance["light_n"]) * area
            )
            lr = sersic_radius(x, y, ql, phil, p["lens_x"], p["lens_y"])
            brightness = brightness + sersic_brightness(
                lr, lamp, p["light_R_e"], p["light_n"], col(sersic_b(nuisance["light_n"]))
            )

        # the PSF on the ray grid (kernel integrated over the rays' cells), then the average over each pixel
        blurred = self.convolve(brightness.reshape(n_rows, n * ss, n * ss))
        return blurred.reshape(n_rows, n, ss, n, ss).mean(dim=(2, 4))
