"""What the tomographic weak-lensing simulators share: varied parameters, redshift bins, theory
and spectra table, survey systematics, shape noise and the lognormal transform.

:class:`TomographicLensingSurvey` is the base of the HEALPix simulator ``weak_lensing``
(:mod:`cosmosbi.simulators.weak_lensing`) and of the flat-sky simulator ``weak_lensing_flat``
(:mod:`cosmosbi.simulators.weak_lensing_flat`); they differ only in the geometry of the maps.

Survey systematics (per tomographic bin i = 1..n_bins, names ``m_i`` and ``delta_z_i``):

- ``m_i``: multiplicative shear bias. The simulated convergence and shear of bin i (before
  shape noise) are multiplied by 1 + m_i, so the spectra become (1 + m_i)(1 + m_j) C_ell^{ij}.
  Applied to the maps, exactly: the spectra table does not depend on m_i.
- ``delta_z_i``: shift of the redshift distribution, n_i(z) -> n_i(z - delta_z_i). The theory
  evaluates the shifted n(z) (pyccl); with the emulator, the spectra table gets one axis per
  varied delta_z_i, like any other parameter.

Both take their fiducial value 0 when not varied (set ``fiducial`` to fix them elsewhere).
Their default prior boxes are delta_z_i in [-0.05, 0.05] and m_i in [-0.05, 0.05]; current
cosmic-shear analyses use Gaussian priors (e.g. sigma(delta_z) = 0.001 (1 + z) for LSST-Y10,
sigma(m) = 0.005-0.01), which the config's ``prior`` section sets like any other parameter.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from cosmosbi.simulators.chebyshev import default_cache_dir
from cosmosbi.simulators.lensing_theory import (
    BARYON_PARAMETER,
    DEFAULT_BOUNDS,
    FIDUCIAL,
    PARAMETERS,
    LensingTheory,
    SpectraTable,
    s8,
    smail_nz,
    tomographic_nz,
)
from cosmosbi.simulators.priors import BoxUniform

__all__ = [
    "ARCMIN2_PER_SR",
    "SYSTEMATICS_BOUNDS",
    "TomographicLensingSurvey",
    "cholesky_spectra",
    "load_nz",
    "lognormal_transform",
]

log = logging.getLogger(__name__)

ARCMIN2_PER_SR = (180 * 60 / math.pi) ** 2
SYSTEMATICS_BOUNDS = {"m": (-0.05, 0.05), "delta_z": (-0.05, 0.05)}
SYSTEMATIC_NAME = re.compile(r"^(m|delta_z)_([1-9][0-9]*)$")


def load_nz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read user n(z): an ``.npz`` with arrays ``z`` (Z,) and ``nz`` (n_bins, Z), or a text
    file whose first column is z and whose other columns are the bins. Returns (z, nz)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"nz_file: {path!r} does not exist")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as f:
            if "z" not in f or "nz" not in f:
                raise ValueError(f"nz_file {path!r} must hold arrays 'z' and 'nz', has {sorted(f.files)}")
            z, nz = np.asarray(f["z"], float), np.atleast_2d(np.asarray(f["nz"], float))
    else:
        table = np.loadtxt(p, ndmin=2)
        z, nz = table[:, 0], table[:, 1:].T
    if nz.shape[-1] != z.size or nz.shape[0] < 1:
        raise ValueError(f"nz_file {path!r}: n(z) shape {nz.shape} does not match {z.size} redshifts")
    if np.any(np.diff(z) <= 0) or np.any(nz < 0):
        raise ValueError(f"nz_file {path!r}: z must increase and n(z) must be non-negative")
    return z, nz / np.trapezoid(nz, z, axis=1)[:, None]


def cholesky_spectra(spectra: np.ndarray, pairs, n_bins: int) -> np.ndarray:
    """Lower Cholesky factors of the bin covariance per ell. spectra: (n_spectra, L). Returns (L, n, n).

    Multipoles whose matrix is not positive definite (ell < 2, where everything is zero) use
    the symmetric square root with negative eigenvalues clipped to zero.
    """
    L = spectra.shape[1]
    cov = np.zeros((L, n_bins, n_bins))
    for k, (i, j) in enumerate(pairs):
        cov[:, i, j] = cov[:, j, i] = spectra[k]
    out = np.zeros_like(cov)
    for ell in range(L):
        if ell == 2:
            try:  # all multipoles >= 2 at once in the usual, positive-definite case
                out[ell:] = np.linalg.cholesky(cov[ell:])
                return out
            except np.linalg.LinAlgError:
                pass  # some multipole is not positive definite: factor them one at a time below
        try:
            out[ell] = np.linalg.cholesky(cov[ell])
        except np.linalg.LinAlgError:
            vals, vecs = np.linalg.eigh(cov[ell])
            out[ell] = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    return out


def lognormal_transform(x: np.ndarray, variance: float, shift: float) -> np.ndarray:
    """kappa = shift [exp(x - variance / 2) - 1] in place (the transform of ``glass.grf.Lognormal``):
    a zero-mean Gaussian x of that variance gives a zero-mean lognormal field. Returns x."""
    x -= variance / 2
    np.expm1(x, out=x)
    x *= shift
    return x


class TomographicLensingSurvey:
    """Shared state of the tomographic weak-lensing simulators (see the module docstring).

    Subclasses call ``__init__`` with the options they share (documented on
    :class:`~cosmosbi.simulators.weak_lensing.WeakLensingSimulator`) and the band limit
    ``lmax`` and pixel area of their maps, then simulate with :meth:`theory_at`,
    :meth:`shear_bias` and :meth:`noise_sigma`.
    """

    def __init__(
        self,
        *,
        lmax: int,
        pixel_area_arcmin2: float,
        n_bins: int | None,
        parameters,
        fiducial: dict[str, float] | None,
        nz_z0: float,
        nz_alpha: float,
        photo_z_sigma: float,
        z_max: float,
        nz_file: str | None,
        galaxy_density: float,
        shape_noise: float,
        noise: bool,
        galaxy_counts: str,
        field: str,
        shift: str,
        baryon_model: str,
        transfer_function: str,
        emulator: bool,
        emulator_nodes: int,
        cache_dir: str | None,
    ):
        if field not in ("lognormal", "gaussian"):
            raise ValueError(f"field must be 'lognormal' or 'gaussian', got {field!r}")
        if baryon_model not in BARYON_PARAMETER:
            raise ValueError(f"baryon_model must be one of {sorted(BARYON_PARAMETER)}, got {baryon_model!r}")
        if galaxy_density <= 0:
            raise ValueError(f"galaxy_density must be positive (galaxies per arcmin^2), got {galaxy_density}")
        if galaxy_counts not in ("mean", "poisson"):
            raise ValueError(f"galaxy_counts must be 'mean' or 'poisson', got {galaxy_counts!r}")
        if shape_noise < 0:
            raise ValueError(f"shape_noise must be non-negative, got {shape_noise}")

        if nz_file is not None:
            z, nz_bins = load_nz(nz_file)
            if n_bins is not None and n_bins != len(nz_bins):
                raise ValueError(f"n_bins={n_bins} but nz_file {nz_file!r} has {len(nz_bins)} bins")
        else:
            n_bins = 4 if n_bins is None else int(n_bins)
            if n_bins < 1:
                raise ValueError(f"n_bins must be at least 1, got {n_bins}")
            z = np.linspace(0.0, float(z_max), 351)
            nz_bins = tomographic_nz(z, smail_nz(z, nz_z0, nz_alpha), n_bins, photo_z_sigma)
        self.z, self.nz_bins = z, nz_bins
        self.n_bins = len(nz_bins)

        systematics = [f"{kind}_{i + 1}" for kind in ("delta_z", "m") for i in range(self.n_bins)]
        cosmology = [
            p for p in PARAMETERS if p not in ("log10_Mc", "log10_T_AGN") or p == BARYON_PARAMETER[baryon_model]
        ]
        allowed = cosmology + systematics
        parameters = tuple(parameters)
        for name in parameters:
            if name not in allowed:
                raise ValueError(
                    f"parameters: {name!r} cannot vary with baryon_model={baryon_model!r} and {self.n_bins} bins; "
                    f"expected names from {allowed}"
                )
        if len(set(parameters)) != len(parameters) or not parameters:
            raise ValueError(f"parameters must be a non-empty list of distinct names, got {list(parameters)}")
        self.fiducial = {**FIDUCIAL, **dict.fromkeys(systematics, 0.0)}
        for key, value in (fiducial or {}).items():
            if key not in self.fiducial:
                raise ValueError(f"fiducial: unknown parameter {key!r}; expected names from {list(self.fiducial)}")
            self.fiducial[key] = float(value)

        self.theory = LensingTheory(z, nz_bins, lmax, baryon_model, transfer_function, shift)
        self.lmax = self.theory.lmax
        self.pairs = self.theory.pairs
        self.parameter_names = parameters
        bounds = [self.default_bounds(p) for p in parameters]
        self.prior = BoxUniform(parameters, [b[0] for b in bounds], [b[1] for b in bounds])
        self.lognormal = field == "lognormal"
        self.field = field
        self.noise = bool(noise)
        self.poisson_counts = galaxy_counts == "poisson"
        self.shape_noise = float(shape_noise)
        self.galaxy_density = float(galaxy_density)
        self.pixel_area_arcmin2 = float(pixel_area_arcmin2)
        self.emulator = bool(emulator)
        self.emulator_nodes = int(emulator_nodes)
        if self.emulator_nodes < 2:
            raise ValueError(f"emulator_nodes must be at least 2, got {emulator_nodes}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._table: SpectraTable | None = None
        self._direct: tuple[tuple, dict] | None = None  # (parameter values, theory) of the last direct evaluation

    @staticmethod
    def default_bounds(name: str) -> tuple[float, float]:
        """Default prior box of a parameter (systematics: ``SYSTEMATICS_BOUNDS``)."""
        match = SYSTEMATIC_NAME.match(name)
        return SYSTEMATICS_BOUNDS[match.group(1)] if match else DEFAULT_BOUNDS[name]

    # ------------------------------------------------------------------ parameters and theory

    @property
    def galaxies_per_pixel(self) -> float:
        """Mean galaxy count per pixel and bin, n_gal A_pix / n_bins."""
        return self.galaxy_density / self.n_bins * self.pixel_area_arcmin2

    @property
    def noise_sigma(self) -> float:
        """Standard deviation of the shape noise per pixel and component for the mean count:
        sigma_e / sqrt(2 n_gal A_pix / n_bins)."""
        return self.shape_noise / math.sqrt(2 * self.galaxies_per_pixel)

    def params(self, theta_row: np.ndarray) -> dict:
        """Full parameter dict for one row theta: (D,)."""
        params = dict(self.fiducial)
        params.update({n: float(v) for n, v in zip(self.parameter_names, theta_row, strict=True)})
        return params

    def shear_bias(self, theta_row: np.ndarray) -> np.ndarray:
        """The factors 1 + m_i that multiply each bin's convergence and shear. Returns (n_bins,)."""
        params = self.params(theta_row)
        return np.array([1.0 + params[f"m_{i + 1}"] for i in range(self.n_bins)])

    def derived_parameters(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Derived parameters (S_8) for theta: (N, D). Returns name -> (N,)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        rows = [self.params(t) for t in theta]
        return {"S_8": s8([r["Omega_m"] for r in rows], [r["sigma_8"] for r in rows])}

    def table(self) -> SpectraTable:
        """The spectra table over the current prior's box (built or loaded on first use).

        Its axes are the varied parameters except the shear biases m_i, which act on the maps.
        """
        names = [n for n in self.parameter_names if not n.startswith("m_")]
        columns = [self.parameter_names.index(n) for n in names]
        low = np.asarray(self.prior.low, float)[columns]
        high = np.asarray(self.prior.high, float)[columns]
        if self._table is not None and np.array_equal(self._table.low, low) and np.array_equal(self._table.high, high):
            return self._table
        fiducial = {k: v for k, v in self.fiducial.items() if not k.startswith("m_")}
        table = SpectraTable(self.theory, names, low, high, fiducial, self.emulator_nodes)
        self._table = table.build(self.cache_dir)
        return self._table

    def theory_at(self, theta_row: np.ndarray) -> dict[str, np.ndarray]:
        """``cls``, ``gls`` (n_spectra, lmax + 1) and ``shifts`` (n_bins,) for one row theta: (D,).

        The convergence field's theory without the shear biases m_i (see :meth:`shear_bias`),
        from the spectra table when theta is inside its box, else from pyccl directly (the last
        direct evaluation is kept, so runs at one fixed theta evaluate the theory once).
        """
        theta_row = np.asarray(theta_row, dtype=float)
        params = self.params(theta_row)
        if self.emulator:
            table = self.table()
            point = np.array([params[n] for n in table.names])
            if table.contains(point[None])[0]:
                return table(point)
            log.warning("theta %s is outside the spectra table's box; using pyccl directly", theta_row)
        key = tuple(v for k, v in sorted(params.items()) if not k.startswith("m_"))
        if self._direct is None or self._direct[0] != key:
            self._direct = (key, self.theory.evaluate(params, self.lognormal))
        return self._direct[1]

    def check_theta(self, theta: np.ndarray) -> np.ndarray:
        """theta as a float (N, D) array; a ValueError names the expected columns."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        if theta.shape[1] != len(self.parameter_names):
            raise ValueError(
                f"theta has {theta.shape[1]} columns; "
                f"expected {len(self.parameter_names)} ({list(self.parameter_names)})"
            )
        return theta
