"""Tomographic weak-lensing mock surveys on flat-sky square patches (simulator ``weak_lensing_flat``).

One simulation is a set of square convergence maps (and optionally shear maps), one per
tomographic bin, with the cross-bin correlations of the theory. The theory, spectra table,
lognormal shifts, intrinsic alignments, baryons, n(z), survey systematics and shape noise are
those of the HEALPix simulator (:class:`~cosmosbi.simulators.lensing_survey.TomographicLensingSurvey`);
only the geometry differs:

1. grid: a periodic square box of ``padding`` x ``n_pixels`` pixels a side with the patch's
   pixel size; the patch is its first ``n_pixels`` x ``n_pixels`` pixels (``padding = 1``:
   the patch is the whole periodic box; ``padding > 1`` adds the modes longer than the patch
   and makes the patch non-periodic, at padding^2 times the cost);
2. Gaussian fields: on each Fourier mode of wave vector ell (|ell| = 2 pi |n| / L_box) the
   bins get correlated complex Gaussian amplitudes with covariance G(|ell|) A_box (flat-sky
   convention: the 2D power spectrum at |ell| is the theory's C_ell at ell = |ell|, linearly
   interpolated between integer multipoles); modes with |ell| above the band limit
   ``lmax`` = pi / pixel size (the Nyquist frequency of the axes) are zero, so the field is
   isotropic; one inverse real FFT per bin;
3. lognormal transform kappa = lambda [exp(x - sigma^2 / 2) - 1] with sigma^2 the variance of
   the Gaussian field on the grid's modes (Gaussian fields use C_ell directly);
4. shear (optional) by Kaiser-Squires on the periodic box:
   gamma1 + i gamma2 = [(ell_x^2 - ell_y^2) + 2 i ell_x ell_y] / |ell|^2 kappa(ell);
5. shear bias: kappa and gamma of bin i times 1 + m_i; shape noise as in ``weak_lensing``:
   Gaussian, per pixel and component, variance sigma_e^2 / (2 N) with N = n_gal A_pix / n_bins
   (or Poisson counts).

Conventions: maps are arrays [bin, y, x] with x along the last axis and y along the one
before, both increasing with the index; gamma1 > 0 stretches along x, gamma2 > 0 along the
x = y diagonal, so positive convergence has tangential shear around it (gamma1 < 0 on the x
axis through it). The maps are point samples of the band-limited field at the pixel centres
(no pixel window): their FFT power is the theory's C_ell at |ell| < lmax (with
``padding = 1``: exactly, mode by mode, for Gaussian fields). In the flat-sky limit the shear
E-mode spectrum equals the convergence spectrum (the sphere's f_ell -> 1).

Cost of one survey: n_bins inverse FFTs of the box (plus one forward and two inverse FFTs
per bin for shear), the per-mode Cholesky amplitudes and the noise draws.

All randomness of simulation i comes from its own Generator (Fourier amplitudes, then the
noise), so datasets do not depend on batching or MPI ranks.
"""

from __future__ import annotations

import math

import numpy as np

from cosmosbi.simulators.base import OutputSpec, register_simulator, row_generators
from cosmosbi.simulators.lensing_survey import (
    ARCMIN2_PER_SR,
    TomographicLensingSurvey,
    cholesky_spectra,
    lognormal_transform,
)

__all__ = ["FlatWeakLensingSimulator", "flat_shear_from_convergence", "fourier_grid"]


def fourier_grid(n: int, pixel_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Wave vectors (ell_y, ell_x) of the real FFT (``numpy.fft.rfft2``) of an n x n grid of
    pixel size ``pixel_rad`` radians. Returns two (n, n // 2 + 1) arrays in radians^-1."""
    ell_y = 2 * np.pi * np.fft.fftfreq(n, d=pixel_rad)
    ell_x = 2 * np.pi * np.fft.rfftfreq(n, d=pixel_rad)
    return np.broadcast_to(ell_y[:, None], (n, ell_x.size)), np.broadcast_to(ell_x[None, :], (n, ell_x.size))


def flat_shear_from_convergence(kappa: np.ndarray, pixel_rad: float) -> np.ndarray:
    """Kaiser-Squires shear of periodic convergence maps kappa: (..., n, n) (axes y, x).

    gamma1 + i gamma2 = [(ell_x^2 - ell_y^2) + 2 i ell_x ell_y] / |ell|^2 kappa(ell); the mean
    (ell = 0) carries no shear. Returns (..., 2, n, n) float64.
    """
    n = kappa.shape[-1]
    if kappa.shape[-2] != n:
        raise ValueError(f"convergence maps must be square, got shape {kappa.shape}")
    ell_y, ell_x = fourier_grid(n, pixel_rad)
    ell2 = ell_x**2 + ell_y**2
    with np.errstate(divide="ignore", invalid="ignore"):
        c2 = np.where(ell2 > 0, (ell_x**2 - ell_y**2) / ell2, 0.0)
        s2 = np.where(ell2 > 0, 2 * ell_x * ell_y / ell2, 0.0)
    k = np.fft.rfft2(kappa)
    g1 = np.fft.irfft2(k * c2, s=(n, n))
    g2 = np.fft.irfft2(k * s2, s=(n, n))
    return np.stack([g1, g2], axis=-3)


def hermitian_white_noise(rng: np.random.Generator, n_fields: int, n: int) -> np.ndarray:
    """White noise in the half plane of ``rfft2`` of n x n grids: the rfft2 of real unit-variance
    white noise in distribution (E|W|^2 = n^2, W(-k) = conj W(k)). Returns (n_fields, n, n // 2 + 1) complex."""
    half = n // 2 + 1
    w = rng.standard_normal((n_fields, n, 2 * half)).view(np.complex128) * (n / math.sqrt(2.0))
    # columns that hold both k and -k (ell_x = 0 and, for even n, the Nyquist column): symmetrise
    flip = (-np.arange(n)) % n
    columns = [0, n // 2] if n % 2 == 0 else [0]
    for c in columns:
        w[:, :, c] = (w[:, :, c] + np.conj(w[:, flip, c])) / math.sqrt(2.0)
    return w


@register_simulator("weak_lensing_flat")
class FlatWeakLensingSimulator(TomographicLensingSurvey):
    """Tomographic weak-lensing survey on flat-sky square patches (see the module docstring).

    Outputs (per simulation; N = ``n_pixels``): ``kappa``: (n_bins, N, N) float32;
    ``gamma`` (with ``shear=True``): (n_bins, 2, N, N) float32; ``counts`` (with
    ``galaxy_counts="poisson"``): (n_bins, N, N) float32; ``S_8``: (1,).

    Args:
        n_pixels: pixels per side of a patch.
        patch_deg: side of a patch in degrees (pixel size ``patch_deg / n_pixels``).
        padding: the periodic box is ``padding`` times the patch a side (integer >= 1).
        shear: also output shear maps (gamma1, gamma2) by Kaiser-Squires.

    The other options are those of :class:`~cosmosbi.simulators.weak_lensing.WeakLensingSimulator`
    (parameters including the systematics ``delta_z_i`` and ``m_i``, n(z), noise, field, shifts,
    baryons, emulator); the band limit is the Nyquist multipole pi / pixel size.
    """

    def __init__(
        self,
        n_pixels: int = 64,
        patch_deg: float = 10.0,
        padding: int = 1,
        n_bins: int | None = None,
        parameters: list[str] = ("Omega_m", "sigma_8"),
        fiducial: dict[str, float] | None = None,
        nz_z0: float = 0.11,
        nz_alpha: float = 0.68,
        photo_z_sigma: float = 0.05,
        z_max: float = 3.5,
        nz_file: str | None = None,
        galaxy_density: float = 27.0,
        shape_noise: float = 0.26,
        noise: bool = True,
        galaxy_counts: str = "mean",
        field: str = "lognormal",
        shift: str = "scaled_hilbert2011",
        shear: bool = False,
        baryon_model: str = "schneider15",
        transfer_function: str = "boltzmann_camb",
        emulator: bool = True,
        emulator_nodes: int = 7,
        cache_dir: str | None = None,
    ):
        if not isinstance(n_pixels, (int, np.integer)) or n_pixels < 8:
            raise ValueError(f"n_pixels must be an integer >= 8, got {n_pixels!r}")
        if not 0 < patch_deg <= 30:
            raise ValueError(f"patch_deg must be in (0, 30] degrees for the flat-sky approximation, got {patch_deg}")
        if not isinstance(padding, (int, np.integer)) or padding < 1:
            raise ValueError(f"padding must be an integer >= 1, got {padding!r}")
        self.n_pixels = int(n_pixels)
        self.patch_deg = float(patch_deg)
        self.padding = int(padding)
        self.pixel_rad = math.radians(self.patch_deg) / self.n_pixels
        self.box_pixels = self.padding * self.n_pixels
        super().__init__(
            lmax=math.floor(math.pi / self.pixel_rad),
            pixel_area_arcmin2=self.pixel_rad**2 * ARCMIN2_PER_SR,
            n_bins=n_bins,
            parameters=parameters,
            fiducial=fiducial,
            nz_z0=nz_z0,
            nz_alpha=nz_alpha,
            photo_z_sigma=photo_z_sigma,
            z_max=z_max,
            nz_file=nz_file,
            galaxy_density=galaxy_density,
            shape_noise=shape_noise,
            noise=noise,
            galaxy_counts=galaxy_counts,
            field=field,
            shift=shift,
            baryon_model=baryon_model,
            transfer_function=transfer_function,
            emulator=emulator,
            emulator_nodes=emulator_nodes,
            cache_dir=cache_dir,
        )
        self.shear = bool(shear)
        # per rfft2 mode of the box: |ell|, and where it falls between integer multipoles
        ell_y, ell_x = fourier_grid(self.box_pixels, self.pixel_rad)
        ell = np.hypot(ell_x, ell_y)
        self._inside = (ell <= self.lmax) & (ell >= 2)  # modes carried (ell < 2: no theory)
        self._ell = ell[self._inside]
        self._ell_floor = np.minimum(np.floor(self._ell).astype(int), self.lmax - 1)
        self._ell_frac = self._ell - self._ell_floor
        # weight of each half-plane mode in sums over the full plane (the columns holding k and -k count once)
        weight = np.full(ell.shape, 2.0)
        weight[:, 0] = 1.0
        if self.box_pixels % 2 == 0:
            weight[:, -1] = 1.0
        self._mode_weight = weight[self._inside]
        self.box_area_sr = (self.box_pixels * self.pixel_rad) ** 2
        self._amplitudes: tuple[np.ndarray, np.ndarray] | None = None  # (spectra, mode_amplitudes) of the last call

        shape = (self.n_bins, self.n_pixels, self.n_pixels)
        self.output_spec = {"kappa": OutputSpec(shape, "float32")}
        if self.shear:
            self.output_spec["gamma"] = OutputSpec((self.n_bins, 2, self.n_pixels, self.n_pixels), "float32")
        if self.poisson_counts:
            self.output_spec["counts"] = OutputSpec(shape, "float32")
        self.output_spec["S_8"] = OutputSpec((1,), "float32")

    @property
    def pixel_arcmin(self) -> float:
        """Side of a pixel in arcminutes."""
        return math.degrees(self.pixel_rad) * 60

    def mode_spectra(self, spectra: np.ndarray) -> np.ndarray:
        """Spectra (n_spectra, lmax + 1) linearly interpolated at the |ell| of the box's carried
        modes. Returns (n_spectra, M) for the M modes with 2 <= |ell| <= lmax."""
        lo, frac = self._ell_floor, self._ell_frac
        return spectra[:, lo] * (1 - frac) + spectra[:, lo + 1] * frac

    def mode_amplitudes(self, spectra: np.ndarray) -> np.ndarray:
        """Lower Cholesky factors of the bin covariance at the |ell| of the carried modes, linearly
        interpolated between integer multipoles and divided by the pixel size (numpy's unnormalised
        forward FFT has |X_k|^2 = B^2 C / pixel^2). spectra: (n_spectra, lmax + 1). Returns (n, n, M)."""
        chol = cholesky_spectra(spectra, self.pairs, self.n_bins) / self.pixel_rad  # (lmax + 1, n, n)
        step = np.diff(chol, axis=0)
        lo = self._ell_floor
        return np.moveaxis(chol[lo] + self._ell_frac[:, None, None] * step[lo], 0, -1)

    def gaussian_fields(self, spectra: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Correlated Gaussian fields on the periodic box with spectra C_ell^{ij}.

        spectra: (n_spectra, lmax + 1) in GLASS order. Returns (n_bins, B, B), B = ``box_pixels``.
        The amplitudes of the last spectra are kept (runs at one fixed theta compute them once).
        """
        b = self.box_pixels
        if self._amplitudes is None or not np.array_equal(self._amplitudes[0], spectra):
            self._amplitudes = (np.array(spectra), self.mode_amplitudes(spectra))
        amp = self._amplitudes[1]
        white = hermitian_white_noise(rng, self.n_bins, b)
        carried = white[:, self._inside]  # (n_bins, M)
        modes = np.zeros_like(white)
        for i in range(self.n_bins):  # lower-triangular mixing of the bins' white noise
            mixed = amp[i, 0] * carried[0]
            for j in range(1, i + 1):
                mixed += amp[i, j] * carried[j]
            modes[i][self._inside] = mixed
        return np.fft.irfft2(modes, s=(b, b))

    def field_variance(self, spectra: np.ndarray) -> np.ndarray:
        """Variance of each bin's Gaussian field on the box grid, sum over its modes of C / A_box.

        spectra: (n_spectra, lmax + 1). Returns (n_bins,)."""
        auto = np.array([spectra[self.pairs.index((i, i))] for i in range(self.n_bins)])
        return self.mode_spectra(auto) @ self._mode_weight / self.box_area_sr

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, D) -> {"kappa": (N, n_bins, n, n), ["gamma": (N, n_bins, 2, n, n)],
        ["counts": (N, n_bins, n, n)], "S_8": (N, 1)} with n = ``n_pixels``."""
        theta = self.check_theta(theta)
        rngs = row_generators(rng, len(theta))
        out = {name: np.empty((len(theta), *spec.shape), dtype=np.float32) for name, spec in self.output_spec.items()}
        for i, (row, g) in enumerate(zip(theta, rngs, strict=True)):
            self._simulate_one(row, g, out, i)
        out["S_8"] = self.derived_parameters(theta)["S_8"].astype(np.float32)[:, None]
        return out

    def _simulate_one(self, theta_row: np.ndarray, rng: np.random.Generator, out: dict, i: int) -> None:
        th = self.theory_at(theta_row)
        spectra = th["gls"] if self.lognormal else th["cls"]
        fields = self.gaussian_fields(spectra, rng)
        if self.lognormal:
            for b, variance in enumerate(self.field_variance(spectra)):
                lognormal_transform(fields[b], float(variance), float(th["shifts"][b]))
        bias = self.shear_bias(theta_row)
        n = self.n_pixels
        kappa = fields[:, :n, :n] * bias[:, None, None]
        if self.shear:
            gamma = flat_shear_from_convergence(fields, self.pixel_rad)[:, :, :n, :n] * bias[:, None, None, None]
        sigma = self.noise_sigma
        if self.poisson_counts:
            counts = rng.poisson(self.galaxies_per_pixel, size=kappa.shape).astype(np.float32)
            out["counts"][i] = counts
            sigma = self.shape_noise / np.sqrt(2 * np.maximum(counts, 1))
        if self.noise and self.shape_noise > 0:
            kappa += rng.standard_normal(kappa.shape, dtype=np.float32) * sigma
            if self.shear:
                gamma_sigma = sigma[:, None] if self.poisson_counts else sigma
                gamma += rng.standard_normal(gamma.shape, dtype=np.float32) * gamma_sigma
        if self.poisson_counts:  # pixels without galaxies carry no measurement
            empty = out["counts"][i] == 0
            kappa = np.where(empty, 0.0, kappa)
            if self.shear:
                gamma = np.where(empty[:, None], 0.0, gamma)
        out["kappa"][i] = kappa
        if self.shear:
            out["gamma"][i] = gamma

    def __repr__(self) -> str:
        return (
            f"FlatWeakLensingSimulator(n_pixels={self.n_pixels}, patch_deg={self.patch_deg}, "
            f"pixel={self.pixel_arcmin:.2f} arcmin, padding={self.padding}, n_bins={self.n_bins}, "
            f"field={self.field!r}, parameters={list(self.parameter_names)})"
        )
