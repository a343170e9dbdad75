"""Tomographic weak-lensing mock surveys on the HEALPix sphere (simulator ``weak_lensing``).

One simulation is a set of convergence maps (and optionally shear maps), one per tomographic
bin, with the correct cross-bin correlations:

1. theory: the convergence spectra C_ell^{ij} (pyccl, Limber, NLA intrinsic alignments,
   baryonic feedback), the lognormal shifts lambda_i, and the spectra G_ell^{ij} of the
   Gaussian fields whose lognormal transforms have spectra C_ell^{ij} (GLASS solver), read
   from a Chebyshev interpolation table over the prior box (built once, cached on disk;
   see :class:`~cosmosbi.simulators.lensing_theory.SpectraTable`) or computed directly;
2. fields: correlated Gaussian a_lm per bin from the Cholesky factor of G_ell (Gaussian
   fields use C_ell directly), one ``healpy.alm2map`` per bin, then the lognormal transform
   kappa = lambda [exp(x - sigma_G^2 / 2) - 1] (the transform of ``glass.grf.Lognormal``);
3. shear (optional): E-mode a_lm = sqrt(f_ell) kappa_lm with f_ell = (ell + 2)(ell - 1) / (ell (ell + 1)),
   no B mode, spin-2 synthesis (``healpy.alm2map_spin``); the shear sign convention is below;
4. shape noise: Gaussian, per pixel and per component (kappa, gamma1, gamma2) with variance
   sigma_e^2 / (2 N), where sigma_e is the rms of the total ellipticity (sigma_e / sqrt(2)
   per component) and N the pixel's galaxy count in the bin: its mean n_gal A_pix
   (``galaxy_counts="mean"``) or a Poisson draw (``"poisson"``, output ``counts``; pixels
   without galaxies hold 0 in every map);
5. footprint: maps restricted to the footprint pixels, NESTED ordering, float32.

Maps are band-limited at ``lmax`` and sampled at the pixel centres (no pixel window function
is applied): their spectra are the theory's ``C^kappa-kappa`` without a pixel window.

Spectra: the convergence maps carry C_ell^kappa-kappa; the shear's E-mode spectrum is
f_ell C_ell^kappa-kappa, which is pyccl's shear spectrum (``WeakLensingTracer``).

Shear sign conventions (``shear_convention``):

- ``"healpix"`` (default): the HEALPix/healpy polarisation convention. gamma1 > 0 stretches
  along the meridian (north-south, e_theta), gamma2 > 0 along the diagonal between e_theta and
  e_phi, as for healpy's Q and U; the E mode that ``healpy.map2alm`` (``pol=True``) or
  ``healpy.map2alm_spin`` returns from (gamma1, gamma2) is +sqrt(f_ell) kappa_lm, so healpy's
  kappa x E cross-spectrum is +sqrt(f_ell) C^kappa-kappa, and a positive convergence blob has
  tangential shear around it (gamma1 < 0 to its north and south, > 0 to its east and west).
- ``"glass"``: GLASS's convention (``glass.lensing.from_convergence``), the negative of both
  components: E = -sqrt(f_ell) kappa_lm in healpy's transforms.

All randomness of simulation i comes from its own Generator (the a_lm draws, then the
noise), so datasets do not depend on batching or MPI ranks.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from cosmosbi.simulators.base import OutputSpec, register_simulator, row_generators
from cosmosbi.simulators.lensing_survey import (
    ARCMIN2_PER_SR,
    TomographicLensingSurvey,
    cholesky_spectra,
    lognormal_transform,
)
from cosmosbi.simulators.lensing_theory import shear_e_mode_factor

__all__ = [
    "SHEAR_CONVENTIONS",
    "WeakLensingSimulator",
    "footprint_mask",
    "gaussian_alm",
    "shear_from_convergence",
]


def footprint_mask(
    nside: int, mask: str = "full", cap_area_deg2: float = 5000.0, cap_center_deg=(0.0, 90.0)
) -> np.ndarray:
    """Boolean footprint in NESTED ordering. Returns (12 nside^2,).

    Args:
        nside: HEALPix resolution.
        mask: ``"full"`` (whole sky), ``"cap"`` (a spherical cap of ``cap_area_deg2`` square
            degrees centred at ``cap_center_deg`` = (longitude, latitude) in degrees), or the path
            of a HEALPix mask file: FITS (ordering from its header) or ``.npy`` (NESTED
            ordering). A file mask is resampled to ``nside`` and pixels with value > 0.5 kept.
    """
    import healpy as hp

    npix = hp.nside2npix(nside)
    if mask == "full":
        return np.ones(npix, dtype=bool)
    if mask == "cap":
        if not 0 < cap_area_deg2 <= 4 * math.pi * (180 / math.pi) ** 2:
            raise ValueError(f"cap_area_deg2 must be in (0, 41253], got {cap_area_deg2}")
        area_sr = cap_area_deg2 * (math.pi / 180) ** 2
        radius = math.acos(max(-1.0, 1 - area_sr / (2 * math.pi)))
        lon, lat = (float(v) for v in cap_center_deg)
        vec = hp.ang2vec(lon, lat, lonlat=True)
        out = np.zeros(npix, dtype=bool)
        out[hp.query_disc(nside, vec, radius, nest=True)] = True
        return out
    path = Path(mask)
    if not path.exists():
        raise ValueError(f"mask: expected 'full', 'cap' or the path of a HEALPix mask file; {mask!r} does not exist")
    if path.suffix == ".npy":
        values = np.load(path, allow_pickle=False).astype(float)
    else:
        values = hp.read_map(str(path), nest=True, dtype=np.float64)
    if values.ndim != 1 or not hp.isnpixok(values.size):
        raise ValueError(f"mask file {mask!r} is not a HEALPix map (got shape {values.shape})")
    if hp.npix2nside(values.size) != nside:
        values = hp.ud_grade(values, nside, order_in="NESTED", order_out="NESTED")
    out = values > 0.5
    if not out.any():
        raise ValueError(f"mask file {mask!r} has no pixel inside the footprint at nside {nside}")
    return out


def gaussian_alm(spectra: np.ndarray, pairs, n_bins: int, lmax: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Correlated Gaussian a_lm (healpy ordering) with spectra C_ell^{ij} between bins.

    spectra: (n_spectra, lmax + 1) in GLASS order (``pairs``). Returns n_bins complex arrays.
    """
    import healpy as hp

    chol = cholesky_spectra(spectra, pairs, n_bins)
    n_alm = hp.Alm.getsize(lmax)
    # complex unit-variance white noise: real and imaginary parts N(0, 1/2); m = 0 modes real N(0, 1)
    white = rng.standard_normal((n_bins, 2 * n_alm)).view(np.complex128)
    white *= math.sqrt(0.5)
    white[:, : lmax + 1] = white[:, : lmax + 1].real * math.sqrt(2.0)
    alms = []
    for i in range(n_bins):
        alm = hp.almxfl(white[i], chol[:, i, i])
        for j in range(i):
            alm += hp.almxfl(white[j], chol[:, i, j])
        alms.append(alm)
    return alms


def _alm2map(alm: np.ndarray, nside: int, lmax: int) -> np.ndarray:
    """RING map of one a_lm array (``alm`` is overwritten), without healpy's per-call INFO logs."""
    import healpy as hp

    logger = logging.getLogger("healpy")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        return hp.alm2map(alm, nside, lmax=lmax, inplace=True)
    finally:
        logger.setLevel(level)


SHEAR_CONVENTIONS = {"healpix": 1.0, "glass": -1.0}  # sign of E_lm / (sqrt(f_ell) kappa_lm) in healpy's transforms


def shear_from_convergence(kappa_ring: np.ndarray, lmax: int, convention: str = "healpix") -> np.ndarray:
    """Shear (gamma1, gamma2) of a RING-ordered convergence map. Returns (2, npix), RING.

    E_lm = s sqrt(f_ell) kappa_lm, B_lm = 0, with s = +1 in the HEALPix convention and -1 in
    GLASS's (``convention``; see the module docstring).
    """
    import healpy as hp

    if convention not in SHEAR_CONVENTIONS:
        raise ValueError(f"shear_convention: expected one of {list(SHEAR_CONVENTIONS)}, got {convention!r}")
    nside = hp.npix2nside(kappa_ring.size)
    alm = hp.map2alm(kappa_ring, lmax=lmax, iter=1, use_weights=True)
    factor = SHEAR_CONVENTIONS[convention] * np.sqrt(shear_e_mode_factor(np.arange(lmax + 1)))
    elm = hp.almxfl(alm, factor)
    return np.asarray(hp.alm2map_spin([elm, np.zeros_like(elm)], nside, 2, lmax))


@register_simulator("weak_lensing")
class WeakLensingSimulator(TomographicLensingSurvey):
    """Tomographic weak-lensing survey: convergence (and shear) maps on the HEALPix sphere.

    Outputs (per simulation; P = number of footprint pixels, NESTED order ``self.pixels``):
    ``kappa``: (n_bins, P) float32; ``gamma`` (with ``shear=True``): (n_bins, 2, P) float32;
    ``S_8``: (1,) the derived parameter sigma_8 sqrt(Omega_m / 0.3).

    ``kappa`` carries the convergence spectrum C^kappa-kappa (plus shape noise); ``gamma`` has the
    E-mode spectrum f_ell C^kappa-kappa and the sign of ``shear_convention``: by default the
    HEALPix/healpy convention (healpy's kappa x E cross-spectrum is +sqrt(f_ell) C^kappa-kappa,
    tangential shear around positive convergence); ``"glass"`` gives GLASS's, the negative.

    Args:
        nside: HEALPix resolution (power of two).
        lmax: band limit of the maps (default 2 nside; at most 3 nside - 1).
        n_bins: number of tomographic bins of the Smail n(z) (default 4; with ``nz_file``, the
            file's number of bins, which a given value must match).
        parameters: the varied parameters (columns of theta), a subset of
            Omega_m, sigma_8, Omega_b, h, n_s, w0, A_IA, the baryon model's parameter
            (log10_Mc for ``schneider15``, log10_T_AGN for ``hmcode2020``) and the survey
            systematics of bin i = 1..n_bins: photo-z shift ``delta_z_i`` and shear bias ``m_i``
            (see :mod:`cosmosbi.simulators.lensing_survey`).
        fiducial: values of the parameters that are not varied (defaults in
            ``lensing_theory.FIDUCIAL``; the systematics 0).
        nz_z0, nz_alpha: Smail n(z) ~ z^2 exp(-(z / z0)^alpha) (LSST-Y10 defaults).
        photo_z_sigma: Gaussian photo-z scatter sigma_z (1 + z) of the tomographic split.
        z_max: upper end of the redshift grid of the Smail n(z).
        nz_file: user n(z) (see :func:`~cosmosbi.simulators.lensing_survey.load_nz`) instead of the Smail bins.
        galaxy_density: galaxies per arcmin^2 over all bins (split equally between bins).
        shape_noise: sigma_e, rms of the total intrinsic ellipticity.
        noise: add shape noise.
        galaxy_counts: ``"mean"`` (every pixel holds n_gal A_pix galaxies per bin) or
            ``"poisson"`` (Poisson counts per pixel and bin, output as ``counts``).
        field: ``"lognormal"`` or ``"gaussian"``.
        shift: lognormal shift model (see :class:`~cosmosbi.simulators.lensing_theory.LensingTheory`).
        shear: also output shear maps (gamma1, gamma2).
        shear_convention: ``"healpix"`` (default) or ``"glass"``: the sign convention of the
            shear maps (see the module docstring).
        mask: ``"full"``, ``"cap"`` or a mask file path (see :func:`footprint_mask`).
        cap_area_deg2, cap_center_deg: size and centre (lon, lat) of the ``"cap"`` footprint.
        baryon_model: ``"schneider15"`` (pyccl), ``"hmcode2020"`` (CAMB) or ``"none"``.
        transfer_function: pyccl transfer function.
        emulator: use the cached spectra table (else pyccl and the GLASS solver per new theta);
            the table has an axis per varied parameter except the m_i, which act on the maps.
        emulator_nodes: Chebyshev nodes per varied parameter (the table has nodes^D entries).
        cache_dir: folder of the spectra tables (default
            :func:`~cosmosbi.simulators.chebyshev.default_cache_dir`).
    """

    # version 2: convergence maps carry C^kappa-kappa (not C^EE); shear in the healpy sign convention
    model_version = 2

    def __init__(
        self,
        nside: int = 64,
        lmax: int | None = None,
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
        shear_convention: str = "healpix",
        mask: str = "full",
        cap_area_deg2: float = 5000.0,
        cap_center_deg: tuple[float, float] = (0.0, 90.0),
        baryon_model: str = "schneider15",
        transfer_function: str = "boltzmann_camb",
        emulator: bool = True,
        emulator_nodes: int = 7,
        cache_dir: str | None = None,
    ):
        import healpy as hp

        if not isinstance(nside, (int, np.integer)) or nside < 1 or nside & (nside - 1):
            raise ValueError(f"nside must be a power of two, got {nside!r}")
        self.nside = int(nside)
        lmax = 2 * self.nside if lmax is None else int(lmax)
        if not 2 <= lmax <= 3 * self.nside - 1:
            raise ValueError(f"lmax must be in [2, 3 nside - 1] = [2, {3 * self.nside - 1}], got {lmax}")
        if shear_convention not in SHEAR_CONVENTIONS:
            raise ValueError(f"shear_convention must be one of {list(SHEAR_CONVENTIONS)}, got {shear_convention!r}")
        super().__init__(
            lmax=lmax,
            pixel_area_arcmin2=hp.nside2pixarea(self.nside) * ARCMIN2_PER_SR,
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
        self.shear_convention = shear_convention
        footprint = footprint_mask(self.nside, mask, cap_area_deg2, cap_center_deg)
        self.pixels = np.flatnonzero(footprint)  # NESTED indices of the footprint
        self._ring_index = hp.nest2ring(self.nside, self.pixels)
        self.output_spec = {"kappa": OutputSpec((self.n_bins, self.pixels.size), "float32")}
        if self.shear:
            self.output_spec["gamma"] = OutputSpec((self.n_bins, 2, self.pixels.size), "float32")
        if self.poisson_counts:
            self.output_spec["counts"] = OutputSpec((self.n_bins, self.pixels.size), "float32")
        self.output_spec["S_8"] = OutputSpec((1,), "float32")

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, D) -> {"kappa": (N, n_bins, P), ["gamma": (N, n_bins, 2, P)],
        ["counts": (N, n_bins, P)], "S_8": (N, 1)}."""
        theta = self.check_theta(theta)
        rngs = row_generators(rng, len(theta))
        n, P = len(theta), self.pixels.size
        out = {"kappa": np.empty((n, self.n_bins, P), dtype=np.float32)}
        if self.shear:
            out["gamma"] = np.empty((n, self.n_bins, 2, P), dtype=np.float32)
        if self.poisson_counts:
            out["counts"] = np.empty((n, self.n_bins, P), dtype=np.float32)
        for i, (row, g) in enumerate(zip(theta, rngs, strict=True)):
            self._simulate_one(row, g, out, i)
        out["S_8"] = self.derived_parameters(theta)["S_8"].astype(np.float32)[:, None]
        return out

    def _simulate_one(self, theta_row: np.ndarray, rng: np.random.Generator, out: dict, i: int) -> None:
        th = self.theory_at(theta_row)
        bias = self.shear_bias(theta_row)
        spectra = th["gls"] if self.lognormal else th["cls"]
        alms = gaussian_alm(spectra, self.pairs, self.n_bins, self.lmax, rng)
        ell = np.arange(self.lmax + 1)
        sigma = np.float32(self.noise_sigma)
        if self.poisson_counts:
            counts = rng.poisson(self.galaxies_per_pixel, size=(self.n_bins, self.pixels.size)).astype(np.float32)
            empty = counts == 0
            sigma = np.float32(self.shape_noise) / np.sqrt(2 * np.maximum(counts, 1))  # (n_bins, P)
            out["counts"][i] = counts
        for b, alm in enumerate(alms):
            x = _alm2map(alm, self.nside, self.lmax)
            if self.lognormal:
                var = float(np.sum((2 * ell + 1) * spectra[self.pairs.index((b, b))]) / (4 * math.pi))
                lognormal_transform(x, var, float(th["shifts"][b]))
            if bias[b] != 1.0:
                x *= bias[b]
            kappa = x[self._ring_index].astype(np.float32)
            if self.shear:
                gamma = shear_from_convergence(x, self.lmax, self.shear_convention)[:, self._ring_index]
                gamma = gamma.astype(np.float32)
            if self.noise and self.shape_noise > 0:
                s_b = sigma[b] if self.poisson_counts else sigma
                kappa += rng.standard_normal(kappa.shape, dtype=np.float32) * s_b
                if self.shear:
                    gamma += rng.standard_normal(gamma.shape, dtype=np.float32) * s_b
            if self.poisson_counts:  # pixels without galaxies carry no measurement
                kappa[empty[b]] = 0.0
                if self.shear:
                    gamma[:, empty[b]] = 0.0
            out["kappa"][i, b] = kappa
            if self.shear:
                out["gamma"][i, b] = gamma

    def __repr__(self) -> str:
        return (
            f"WeakLensingSimulator(nside={self.nside}, lmax={self.lmax}, n_bins={self.n_bins}, field={self.field!r}, "
            f"parameters={list(self.parameter_names)}, pixels={self.pixels.size})"
        )
