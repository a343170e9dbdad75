"""Tomographic weak-lensing theory: redshift distributions, pyccl convergence spectra,
lognormal shifts, and the cached interpolation table (emulator) of all three over a prior box.

Spectrum kinds: the tables and maps carry the convergence spectrum ``C^kappa-kappa``
(``SPECTRUM_KIND``). pyccl's ``WeakLensingTracer`` with ``angular_cl`` gives the spin-2 shear
E-mode spectrum ``C^EE`` (ell prefactor sqrt((ell + 2)! / (ell - 2)!)); the convergence spectrum
is C^kappa-kappa = C^EE / f_ell with f_ell = (ell + 2)(ell - 1) / (ell (ell + 1))
(:func:`shear_e_mode_factor`), which equals pyccl's lensing kernel with the convergence prefactor
ell (ell + 1) (``der_angles=1``). The intrinsic-alignment term is converted in the same way: the
convergence map is the one whose spin-2 transform gives the total (lensing + IA) E-mode shear.

Spectra are kept in GLASS order: for bins i = 0..n-1 and j = i, i-1, ..., 0 the pair
(i, j), i.e. (0,0), (1,1), (1,0), (2,2), (2,1), (2,0), ... (``spectrum_pairs``).

Parameters (``PARAMETERS``; those not varied take the values in ``FIDUCIAL``):

- ``Omega_m``, ``sigma_8``, ``Omega_b``, ``h``, ``n_s``, ``w0``: flat wCDM cosmology
  (Omega_c = Omega_m - Omega_b, massless neutrinos);
- ``A_IA``: amplitude of the non-linear alignment (NLA) intrinsic-alignment model
  (redshift-independent, pyccl's ``ia_bias`` with ``use_A_ia=True``);
- ``log10_Mc``: baryonic feedback of the Schneider & Teyssier (2015) model
  (``baryon_model="schneider15"``, pyccl ``BaryonsSchneider15``);
- ``log10_T_AGN``: AGN feedback temperature of HMCode2020 through CAMB
  (``baryon_model="hmcode2020"``);
- ``delta_z_1``, ..., ``delta_z_n`` (optional, 0 if absent): photo-z shifts of the bins,
  n_i(z) -> n_i(z - delta_z_i) (:meth:`LensingTheory.bin_nz`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from cosmosbi.simulators.chebyshev import (
    barycentric_weights,
    chebyshev_nodes,
    load_or_build,
    table_key,
    tabulate,
    tensor_points,
)

__all__ = [
    "DEFAULT_BOUNDS",
    "FIDUCIAL",
    "PARAMETERS",
    "SPECTRUM_KIND",
    "LensingTheory",
    "SpectraTable",
    "s8",
    "shear_e_mode_factor",
    "smail_nz",
    "spectra_relative_error",
    "spectrum_pairs",
    "tomographic_nz",
]

log = logging.getLogger(__name__)

FIDUCIAL = {
    "Omega_m": 0.3,
    "sigma_8": 0.8,
    "Omega_b": 0.045,
    "h": 0.7,
    "n_s": 0.96,
    "w0": -1.0,
    "A_IA": 0.0,
    "log10_Mc": 14.08,
    "log10_T_AGN": 7.8,
}
PARAMETERS = tuple(FIDUCIAL)
DEFAULT_BOUNDS = {
    "Omega_m": (0.2, 0.4),
    "sigma_8": (0.6, 1.0),
    "Omega_b": (0.03, 0.06),
    "h": (0.6, 0.8),
    "n_s": (0.9, 1.02),
    "w0": (-1.3, -0.7),
    "A_IA": (-1.0, 2.0),
    "log10_Mc": (13.0, 15.0),
    "log10_T_AGN": (7.3, 8.3),
}
BARYON_PARAMETER = {"none": None, "schneider15": "log10_Mc", "hmcode2020": "log10_T_AGN"}
SHIFTS = ("scaled_hilbert2011", "hilbert2011", "empty_beam")
C_KM_S = 299792.458
SPECTRUM_KIND = "C^kappa-kappa"
TABLE_FORMAT = 2  # 1: tables of the shear E-mode spectrum C^EE (before the convergence spectrum)
COSMOLOGY_PARAMETERS = ("Omega_m", "sigma_8", "Omega_b", "h", "n_s", "w0")


def s8(omega_m, sigma_8):
    """Derived S_8 = sigma_8 sqrt(Omega_m / 0.3) (arrays broadcast)."""
    return np.asarray(sigma_8) * np.sqrt(np.asarray(omega_m) / 0.3)


def smail_nz(z: np.ndarray, z0: float = 0.11, alpha: float = 0.68, beta: float = 2.0) -> np.ndarray:
    """Smail-type n(z) proportional to z^beta exp(-(z / z0)^alpha), normalised to unit integral.

    The defaults are the LSST-Y10 distribution of the DESC Science Requirements Document.
    z: (Z,). Returns (Z,).
    """
    z = np.asarray(z, dtype=float)
    nz = z**beta * np.exp(-((z / z0) ** alpha))
    return nz / np.trapezoid(nz, z)


def tomographic_nz(z: np.ndarray, nz: np.ndarray, n_bins: int, sigma_z: float = 0.05) -> np.ndarray:
    """Split n(z) into ``n_bins`` equal-number bins with Gaussian photo-z scatter.

    Bin edges are the quantiles of n(z); bin i is n(z) times the probability that a galaxy at
    true redshift z has its photometric redshift (Gaussian, standard deviation
    sigma_z (1 + z)) inside the edges of bin i. With sigma_z = 0 the bins are top hats.

    z: (Z,), nz: (Z,). Returns (n_bins, Z), each bin normalised to unit integral.
    """
    from scipy.special import ndtr

    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if sigma_z < 0:
        raise ValueError(f"photo_z_sigma must be non-negative, got {sigma_z}")
    z, nz = np.asarray(z, dtype=float), np.asarray(nz, dtype=float)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (nz[1:] + nz[:-1]) * np.diff(z))])
    cdf /= cdf[-1]
    edges = np.interp(np.linspace(0, 1, n_bins + 1), cdf, z)
    edges[0], edges[-1] = -np.inf, np.inf  # photo-z outside the range joins the end bins
    bins = []
    for lo, hi in itertools.pairwise(edges):
        if sigma_z > 0:
            s = sigma_z * (1 + z)
            prob = ndtr((hi - z) / s) - ndtr((lo - z) / s)
        else:
            prob = ((z >= lo) & (z < hi)).astype(float)
        b = nz * prob
        bins.append(b / np.trapezoid(b, z))
    return np.array(bins)


def shear_e_mode_factor(ell: np.ndarray) -> np.ndarray:
    """f_ell = (ell + 2)(ell - 1) / (ell (ell + 1)), the ratio C^EE / C^kappa-kappa (0 for ell < 2).

    The shear E-mode a_lm is sqrt(f_ell) times the convergence a_lm. ell: any shape. Returns the same shape.
    """
    ell = np.asarray(ell, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ell >= 2, (ell + 2) * (ell - 1) / (ell * (ell + 1)), 0.0)


def spectrum_pairs(n_bins: int) -> list[tuple[int, int]]:
    """Bin pairs (i, j) of the spectra in GLASS order."""
    return [(i, j) for i in range(n_bins) for j in range(i, -1, -1)]


def _hilbert2011(z):
    z = np.asarray(z, dtype=float)
    return z * (8e-3 + z * (2.9e-2 + z * (-7.9e-3 + z * 6.5e-4)))


class LensingTheory:
    """Convergence spectra (``C^kappa-kappa``) and lognormal shifts from pyccl for given tomographic bins.

    Args:
        z: (Z,) redshift grid of the bins (starting near 0).
        nz_bins: (n_bins, Z) redshift distributions.
        lmax: spectra are returned for 0 <= ell <= lmax (ell < 2 set to zero).
        baryon_model: ``"none"``, ``"schneider15"`` or ``"hmcode2020"``.
        transfer_function: pyccl transfer function (``"boltzmann_camb"``, ``"eisenstein_hu"``).
            ``"hmcode2020"`` always uses CAMB.
        shift: lognormal shift model: ``"scaled_hilbert2011"`` (the Hilbert et al. 2011 fit,
            scaled by the ratio of the empty-beam convergence in the cosmology to that in the
            fit's Millennium cosmology, Omega_m = 0.25, h = 0.73), ``"hilbert2011"`` (no
            cosmology dependence) or ``"empty_beam"`` (minus the convergence of an empty
            beam). All are averaged over each bin's n(z).
        n_ell: number of log-spaced multipoles above ell = 20 at which pyccl is evaluated
            (Limber integrals with pyccl's ``"spline"`` method, which is smooth in the
            parameters; its adaptive ``"qag_quad"`` method jumps by up to ~0.5% at isolated
            multipoles and parameter values);
            all 2 <= ell < 20 are evaluated, and a cubic spline in ln ell of
            ell (ell + 1) C_ell fills the rest.
    """

    def __init__(
        self,
        z: np.ndarray,
        nz_bins: np.ndarray,
        lmax: int,
        baryon_model: str = "schneider15",
        transfer_function: str = "boltzmann_camb",
        shift: str = "scaled_hilbert2011",
        n_ell: int = 40,
    ):
        if baryon_model not in BARYON_PARAMETER:
            raise ValueError(f"baryon_model: expected one of {sorted(BARYON_PARAMETER)}, got {baryon_model!r}")
        if shift not in SHIFTS:
            raise ValueError(f"shift: expected one of {list(SHIFTS)}, got {shift!r}")
        self.z = np.asarray(z, dtype=float)
        self.nz_bins = np.atleast_2d(np.asarray(nz_bins, dtype=float))
        if self.nz_bins.shape[1] != self.z.size:
            raise ValueError(f"n(z) arrays have {self.nz_bins.shape[1]} entries but the z grid has {self.z.size}")
        self.n_bins = len(self.nz_bins)
        self.lmax = int(lmax)
        self.baryon_model = baryon_model
        self.transfer_function = transfer_function
        self.shift = shift
        ell_low = np.arange(2, min(20, self.lmax + 1))
        ell_high = np.geomspace(20, self.lmax, n_ell) if self.lmax >= 20 else np.array([])
        self.ell_sampled = np.unique(np.concatenate([ell_low, np.round(ell_high)])).astype(float)
        self.n_ell = n_ell
        self.pairs = spectrum_pairs(self.n_bins)
        self._cosmology_cache: tuple[tuple, object] | None = None  # (key, cosmology without baryons)
        self._millennium_beam: np.ndarray | None = None

    def fingerprint(self) -> dict:
        """Everything the theory's output depends on (for cache keys)."""
        import pyccl

        return {
            "z": hashlib.sha256(self.z.tobytes()).hexdigest(),
            "nz": hashlib.sha256(self.nz_bins.tobytes()).hexdigest(),
            "lmax": self.lmax,
            "baryon_model": self.baryon_model,
            "transfer_function": self.transfer_function,
            "shift": self.shift,
            "n_ell": self.n_ell,
            "spectrum": SPECTRUM_KIND,
            "limber_integration": "spline",
            "pyccl": pyccl.__version__,
        }

    def _cosmology_key(self, params: dict) -> tuple:
        names = COSMOLOGY_PARAMETERS + (("log10_T_AGN",) if self.baryon_model == "hmcode2020" else ())
        return tuple(float(params[n]) for n in names)

    def cosmology(self, params: dict):
        """A ``pyccl.Cosmology`` for a full parameter dict (without the Schneider15 baryons, which
        :meth:`matter_power` applies). The last one is reused while the cosmological parameters
        repeat (as along the baryon and intrinsic-alignment axes of a spectra table)."""
        import pyccl as ccl

        key = self._cosmology_key(params)
        if self._cosmology_cache is not None and self._cosmology_cache[0] == key:
            return self._cosmology_cache[1]
        om, ob = float(params["Omega_m"]), float(params["Omega_b"])
        if not 0 < ob < om:
            raise ValueError(f"need 0 < Omega_b < Omega_m, got Omega_b={ob}, Omega_m={om}")
        kwargs = {
            "Omega_c": om - ob,
            "Omega_b": ob,
            "h": float(params["h"]),
            "n_s": float(params["n_s"]),
            "sigma8": float(params["sigma_8"]),
            "w0": float(params["w0"]),
            "transfer_function": self.transfer_function,
        }
        if self.baryon_model == "hmcode2020":
            kwargs["transfer_function"] = "boltzmann_camb"
            kwargs["matter_power_spectrum"] = "camb"
            kwargs["extra_parameters"] = {
                "camb": {"halofit_version": "mead2020_feedback", "HMCode_logT_AGN": float(params["log10_T_AGN"])}
            }
        cosmo = ccl.Cosmology(**kwargs)
        cosmo.compute_nonlin_power()
        self._cosmology_cache = (key, cosmo)
        return cosmo

    def matter_power(self, params: dict, cosmo=None):
        """Non-linear matter power (``pyccl.Pk2D``) with the baryon model's feedback applied.

        Schneider15 multiplies the non-linear power by its boost, as ``pyccl.Cosmology`` does with
        ``baryonic_effects``; HMCode2020 feedback is already in CAMB's power.
        """
        import pyccl as ccl

        cosmo = cosmo or self.cosmology(params)
        pk = cosmo.get_nonlin_power()
        if self.baryon_model == "schneider15":
            pk = ccl.BaryonsSchneider15(log10Mc=float(params["log10_Mc"])).include_baryonic_effects(cosmo, pk)
        return pk

    def bin_nz(self, params: dict) -> np.ndarray:
        """Redshift distributions with the photo-z shifts ``delta_z_i`` of ``params`` (0 if absent):
        n_i(z - delta_z_i) on the z grid (linear interpolation; the part moved below the grid is
        dropped), normalised to unit integral. Returns (n_bins, Z)."""
        out = np.array(self.nz_bins)
        for i, nz in enumerate(self.nz_bins):
            dz = float(params.get(f"delta_z_{i + 1}", 0.0))
            if dz != 0.0:
                shifted = np.interp(self.z - dz, self.z, nz, left=0.0, right=0.0)
                out[i] = shifted / np.trapezoid(shifted, self.z)
        return out

    def shear_spectra(self, params: dict, ell: np.ndarray) -> np.ndarray:
        """Shear E-mode spectra ``C^EE`` (lensing + NLA intrinsic alignments) from pyccl's
        ``WeakLensingTracer`` for the n(z) of :meth:`bin_nz` at multipoles ell: (L,).
        Returns (n_spectra, L) in GLASS order."""
        import pyccl as ccl

        cosmo = self.cosmology(params)
        pk = self.matter_power(params, cosmo)
        ia = (self.z, np.full_like(self.z, float(params["A_IA"])))
        tracers = [ccl.WeakLensingTracer(cosmo, dndz=(self.z, nz), ia_bias=ia) for nz in self.bin_nz(params)]
        return np.array(
            [
                ccl.angular_cl(cosmo, tracers[i], tracers[j], ell, p_of_k_a=pk, limber_integration_method="spline")
                for i, j in self.pairs
            ]
        )

    def spectra(self, params: dict) -> np.ndarray:
        """Convergence spectra ``C^kappa-kappa`` (lensing + IA) for one parameter dict.

        C^kappa-kappa = C^EE / f_ell at the sampled multipoles, then a cubic spline in ln ell of
        ell (ell + 1) C_ell fills the others. Returns (n_spectra, lmax + 1), zero at ell < 2.
        """
        from scipy.interpolate import CubicSpline

        ell = self.ell_sampled
        cl = self.shear_spectra(params, ell) / shear_e_mode_factor(ell)
        out = np.zeros((len(self.pairs), self.lmax + 1))
        all_ell = np.arange(2, self.lmax + 1, dtype=float)
        if ell.size == all_ell.size:
            out[:, 2:] = cl
        else:
            spline = CubicSpline(np.log(ell), ell * (ell + 1) * cl, axis=1)
            out[:, 2:] = spline(np.log(all_ell)) / (all_ell * (all_ell + 1))
        return out

    def _empty_beam(self, omega_m: float, h: float, chi: np.ndarray) -> np.ndarray:
        """Minus the convergence of an empty beam for sources at each z of the grid. Returns (Z,)."""
        # kappa_empty(z_s) = 3/2 Omega_m (H0/c)^2 int_0^chi_s dchi (1 + z) chi (chi_s - chi) / chi_s
        zl, cl_ = self.z[:, None], chi[:, None]
        cs = chi[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            kernel = np.where((cl_ < cs) & (cs > 0), (1 + zl) * cl_ * (cs - cl_) / cs, 0.0)
        integral = np.trapezoid(kernel, chi, axis=0)
        return 1.5 * omega_m * (100 * h / C_KM_S) ** 2 * integral

    def _millennium_empty_beam(self) -> np.ndarray:
        """:meth:`_empty_beam` in the Millennium cosmology of the Hilbert et al. fit (computed once). Returns (Z,)."""
        import pyccl as ccl

        if self._millennium_beam is None:
            ref = ccl.Cosmology(
                Omega_c=0.205, Omega_b=0.045, h=0.73, n_s=1.0, sigma8=0.9, transfer_function="eisenstein_hu"
            )
            chi_ref = ccl.comoving_radial_distance(ref, 1.0 / (1.0 + self.z))
            self._millennium_beam = self._empty_beam(0.25, 0.73, chi_ref)
        return self._millennium_beam

    def shifts(self, params: dict, cosmo=None) -> np.ndarray:
        """Lognormal shift parameter of each bin. Returns (n_bins,)."""
        import pyccl as ccl

        if self.shift == "hilbert2011":
            lam = _hilbert2011(self.z)
        else:
            cosmo = cosmo or self.cosmology(params)
            chi = ccl.comoving_radial_distance(cosmo, 1.0 / (1.0 + self.z))
            lam = self._empty_beam(float(params["Omega_m"]), float(params["h"]), chi)
            if self.shift == "scaled_hilbert2011":
                lam_ref = self._millennium_empty_beam()
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(lam_ref > 0, lam / lam_ref, 1.0)
                lam = _hilbert2011(self.z) * ratio
        return np.trapezoid(self.bin_nz(params) * lam[None, :], self.z, axis=1)

    def gaussian_spectra(self, cls: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Spectra of the Gaussian fields whose lognormal transforms have spectra ``cls``.

        Solved with GLASS (Tessore et al. 2023); monopole and dipole are set to zero.
        cls: (n_spectra, lmax + 1), shifts: (n_bins,). Returns (n_spectra, lmax + 1).
        """
        import glass

        fields = [glass.grf.Lognormal(float(s)) for s in shifts]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GLASS divides 0/0 at ell < 2
            gls = glass.solve_gaussian_spectra(fields, [np.asarray(c) for c in cls])
        gls = np.array(gls)
        gls[:, :2] = 0.0
        return gls

    def evaluate(self, params: dict, lognormal: bool = True) -> dict[str, np.ndarray]:
        """Convergence spectra ``cls`` (``C^kappa-kappa``, (n_spectra, lmax + 1)), lognormal ``shifts``
        (n_bins,) and (for lognormal fields) the Gaussian fields' spectra ``gls`` (else ``cls``)."""
        cosmo = self.cosmology(params)
        cls = self.spectra(params)
        shifts = self.shifts(params, cosmo)
        gls = self.gaussian_spectra(cls, shifts) if lognormal else cls
        return {"cls": cls, "gls": gls, "shifts": shifts}


# --------------------------------------------------------------------------- emulator


class SpectraTable:
    """Tensor-product Chebyshev interpolation of theory outputs over a box of parameters.

    The table holds ``cls``, ``gls`` (for lognormal fields) and ``shifts`` at n^D Chebyshev
    nodes of the box of the D varied parameters (the other parameters are fixed to ``fiducial``) and interpolates
    them with a polynomial of degree n - 1 per parameter.

    Args:
        theory: the :class:`LensingTheory` to tabulate.
        names: the D varied parameter names.
        low, high: (D,) bounds of the box.
        fiducial: values of all parameters (varied ones are overwritten).
        nodes: n, the number of nodes per parameter.
    """

    def __init__(self, theory: LensingTheory, names, low, high, fiducial: dict, nodes: int = 7):
        self.theory = theory
        self.names = tuple(names)
        self.low = np.asarray(low, dtype=float)
        self.high = np.asarray(high, dtype=float)
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)) and np.all(self.high > self.low)):
            raise ValueError(
                f"emulator: the spectra table needs a prior with finite bounds (high > low), got "
                f"low={self.low.tolist()}, high={self.high.tolist()}; use a bounded prior or emulator: false"
            )
        self.fiducial = {k: float(v) for k, v in fiducial.items()}
        self.nodes = int(nodes)
        if self.nodes < 1:
            raise ValueError(f"emulator_nodes must be at least 1, got {nodes}")
        self.grid = [chebyshev_nodes(lo, hi, self.nodes) for lo, hi in zip(self.low, self.high)]
        self.data: dict[str, np.ndarray] | None = None
        self._interp = None

    @property
    def n_points(self) -> int:
        return self.nodes ** len(self.names)

    def key(self) -> str:
        """Hash of everything the table depends on."""
        blob = {
            "format": TABLE_FORMAT,
            "theory": self.theory.fingerprint(),
            "names": list(self.names),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "fiducial": {k: self.fiducial[k] for k in sorted(self.fiducial)},
            "nodes": self.nodes,
        }
        return table_key(blob)

    def params_at(self, theta: np.ndarray) -> dict:
        """Full parameter dict for one row theta: (D,)."""
        params = dict(self.fiducial)
        params.update({n: float(v) for n, v in zip(self.names, theta)})
        return params

    def build(
        self,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
        poll_seconds: float = 2.0,
        stale_seconds: float = 900.0,
    ) -> SpectraTable:
        """Load the table from ``cache_dir`` if present, else compute it (and save it there).

        Processes that share ``cache_dir`` (MPI ranks, concurrent jobs) build a table once:
        the first one holds a lock file next to the table while it computes and touches it
        after every cosmology; the others wait for the table to appear. A lock untouched for
        ``stale_seconds`` (its builder died) is taken over.
        """
        if cache_dir is None:
            self.data = self._compute(progress)
            return self
        path = Path(cache_dir) / f"weak_lensing_table_{self.key()}.npz"

        def compute(heartbeat):
            return self._compute(progress, heartbeat)

        self.data = load_or_build(path, compute, poll_seconds=poll_seconds, stale_seconds=stale_seconds)
        return self

    def _compute(self, progress: bool = False, heartbeat=None) -> dict[str, np.ndarray]:
        points = tensor_points(self.grid)
        # visit the nodes with the cosmological parameters varying slowest, so that the theory
        # computes one matter power spectrum per cosmology and reuses it along the other axes
        cosmological = [k for k, n in enumerate(self.names) if n in COSMOLOGY_PARAMETERS or n == "log10_T_AGN"]
        order = np.lexsort([points[:, k] for k in cosmological[::-1]]) if cosmological else None
        log.info("building weak-lensing spectra table: %d parameter points", len(points))

        def evaluate(p):
            out = self.theory.evaluate(self.params_at(p), lognormal=True)
            return {k: out[k] for k in ("cls", "gls", "shifts")}

        shape = (self.nodes,) * len(self.names)
        return tabulate(
            points, evaluate, shape, order=order, progress=progress, heartbeat=heartbeat, description="spectra table"
        )

    def contains(self, theta: np.ndarray) -> np.ndarray:
        """Whether rows of theta: (N, D) lie in the box. Returns (N,) bool."""
        theta = np.atleast_2d(theta)
        tol = 1e-12 * (self.high - self.low)
        return np.all((theta >= self.low - tol) & (theta <= self.high + tol), axis=1)

    def __call__(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Interpolated ``cls``, ``gls`` and ``shifts`` at one row theta: (D,)."""
        if self.data is None:
            raise RuntimeError("the spectra table is not built yet; call build() first")
        if self._interp is None or self._interp[0] is not self.data:
            self._interp = (
                self.data,
                {k: _to_smooth(v, self.theory.pairs) if k != "shifts" else np.log(v) for k, v in self.data.items()},
            )
        weights = [barycentric_weights(g, float(t)) for g, t in zip(self.grid, theta)]
        out = {}
        for key, table in self._interp[1].items():
            value = table
            for w in weights:  # contract one parameter axis at a time
                value = np.tensordot(w, value, axes=(0, 0))
            out[key] = np.exp(value) if key == "shifts" else _from_smooth(value, self.theory.pairs)
        return out


def _to_smooth(spectra: np.ndarray, pairs) -> np.ndarray:
    """Spectra (..., S, L) -> the smoothly varying quantities the table interpolates.

    For ell >= 2: ln C_ii for auto-spectra (where every tabulated value is positive) and the
    correlation coefficient C_ij / sqrt(C_ii C_jj) for cross-spectra.
    """
    out = np.array(spectra, dtype=float)
    auto = {i: spectra[..., k, 2:] for k, (i, j) in enumerate(pairs) if i == j}
    positive = {i: bool(np.all(a > 0)) for i, a in auto.items()}
    for k, (i, j) in enumerate(pairs):
        if i == j and positive[i]:
            out[..., k, 2:] = np.log(auto[i])
        elif i != j and positive[i] and positive[j]:
            out[..., k, 2:] = spectra[..., k, 2:] / np.sqrt(auto[i] * auto[j])
    out[..., :, :2] = 0.0
    # remember which spectra were transformed (the last axis of ell 0 holds the flag)
    for k, (i, j) in enumerate(pairs):
        out[..., k, 0] = float(positive[i] and positive[j])
    return out


def _from_smooth(values: np.ndarray, pairs) -> np.ndarray:
    """Inverse of :func:`_to_smooth` for one interpolated row (S, L)."""
    transformed = values[:, 0] > 0.5
    out = np.array(values, dtype=float)
    auto = {}
    for k, (i, j) in enumerate(pairs):
        if i == j:
            out[k, 2:] = np.exp(values[k, 2:]) if transformed[k] else values[k, 2:]
            auto[i] = out[k, 2:]
    for k, (i, j) in enumerate(pairs):
        if i != j and transformed[k]:
            out[k, 2:] = values[k, 2:] * np.sqrt(auto[i] * auto[j])
    out[:, :2] = 0.0
    return out


def spectra_relative_error(test: np.ndarray, reference: np.ndarray, pairs) -> np.ndarray:
    """Relative error of spectra, cross-spectra measured against sqrt(C_ii C_jj).

    Auto-spectra: |test - ref| / ref. Cross-spectra (which may cross zero when intrinsic
    alignments are strong): |test - ref| / sqrt(ref_ii ref_jj). Multipoles ell >= 2.
    test, reference: (n_spectra, lmax + 1). Returns (n_spectra,), the maximum over ell.
    """
    auto = {i: reference[k, 2:] for k, (i, j) in enumerate(pairs) if i == j}
    err = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs):
        scale = np.sqrt(auto[i] * auto[j])
        err[k] = np.max(np.abs(test[k, 2:] - reference[k, 2:]) / scale)
    return err
