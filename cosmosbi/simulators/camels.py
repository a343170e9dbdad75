"""CAMELS-style projected total-matter maps with two baryonic-feedback models.

A map is the total surface density Sigma (in (M_sun/h) / (Mpc/h)^2) of a slab of depth
``slab_depth`` through a periodic (25 Mpc/h)^3 box, on an n x n grid, with the CAMELS
parameters Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2 (the other cosmological parameters
are CAMELS' fixed values Omega_b = 0.049, h = 0.6711, n_s = 0.9624). Output ``Mtot`` has the
name and units of the CAMELS Multifield Dataset's total-matter maps, so simulated and real
maps (:mod:`cosmosbi.simulators.camels_data`) share one schema.

Construction: P_bar(k) = P_DMO(k) S(k; A), with P_DMO the halofit nonlinear matter spectrum
(pyccl; by default from a cached :class:`~cosmosbi.simulators.lss.MatterPowerTable` over the
prior box of Omega_m and sigma_8, the only parameters it depends on) and S the baryonic
suppression of the chosen feedback model, computed exactly for each map; the slab-averaged
density contrast has the 2D spectrum

    P_2D(k) = (1 / L) sum_j P_bar(sqrt(k^2 + k_j^2)) sinc^2(k_j D / 2),   k_j = 2 pi j / L,

(D the slab depth, |j| <= 4 n); the map is a 2D lognormal (default) or Gaussian field with
that spectrum (conventions in :mod:`cosmosbi.simulators.lss`), Sigma = Omega_m rho_crit D
(1 + delta_2D). Modelling the projection directly as a 2D lognormal field is an approximation
of a projected 3D field: it reproduces the two-point statistics (up to the clipping below) but
the one-point statistics only roughly. The lognormal transform clips the few negative
Gaussian-field powers of these very nonlinear spectra, which raises the binned map spectrum by
at most 8% (n = 64) or 0.4% (n = 256) at the fiducial point; ``field="gaussian"`` reproduces P_2D exactly.

Feedback models (``model`` option). The same four names mean different physics in the two,
as in CAMELS' IllustrisTNG and SIMBA suites, so a network trained on one and applied to the
other meets a domain shift. Both reduce exactly to P_DMO at their no-feedback setting,
A_SN1 = A_AGN1 = A_SN2 = A_AGN2 = 0 (outside the CAMELS prior; A = 1 is each model's fiducial).

``tng_like``: baryonic correction model of Schneider & Teyssier (2015)
(``pyccl.baryons.BaryonsSchneider15``: gas-ejection amplitude B = 0.105 log10 M_c - 1.27,
ejection radius eta_b, stellar scale k_s). Supernova energy dominates, as CAMELS found for
IllustrisTNG:

    e      = (2 A_SN1 + A_AGN1) / 3                      (ejection strength, 1 at fiducial)
    B      = min(0.2084 sqrt(e), 0.95)                   (0.2084 <=> log10 M_c = 14.08)
    log10 M_c = (B + 1.27) / 0.105
    eta_b  = max(0.5 sqrt(A_SN2 A_AGN2), 0.05)           (wind and AGN speeds push gas further)
    k_s    = 55 / sqrt(e) h/Mpc                          (infinite, no stellar term, at e = 0)

``simba_like``: the A_mod interpolation of Amon & Efstathiou (2022),
P = P_lin + A_mod (P_DMO - P_lin), which suppresses all nonlinear power by one factor. AGN jets
(A_AGN2) dominate, as CAMELS found for SIMBA:

    s      = (6 A_AGN2 + 2 A_AGN1 + A_SN1 + A_SN2) / 10  (feedback strength, 1 at fiducial)
    A_mod  = max(1 - 0.3 s^0.7, 0)

so S(k) = [P_lin + A_mod (P_DMO - P_lin)] / P_DMO.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cosmosbi.simulators.base import OutputSpec, register_simulator, row_generators
from cosmosbi.simulators.chebyshev import default_cache_dir
from cosmosbi.simulators.lss import (
    SPECTRA,
    TRANSFER_FUNCTIONS,
    FourierGrid,
    LogLogInterpolator,
    MatterPowerTable,
    gaussian_field,
    lognormal_field,
    lognormal_power,
    make_cosmology,
    matter_power,
    prior_box,
)
from cosmosbi.simulators.priors import LogUniform, Prior, Uniform

__all__ = [
    "CAMELS_PARAMETERS",
    "CAMELS_COSMOLOGY",
    "FEEDBACK_MODELS",
    "camels_prior",
    "tng_like_parameters",
    "simba_like_amod",
    "baryonic_power",
    "feedback_power",
    "projection_matrix",
    "projected_power",
    "CamelsLike",
]

CAMELS_PARAMETERS = ("Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")
CAMELS_COSMOLOGY = {"Omega_b": 0.049, "h": 0.6711, "n_s": 0.9624}
FEEDBACK_MODELS = ("tng_like", "simba_like")
RHO_CRIT = 2.77536627e11  # critical density today, (M_sun/h) / (Mpc/h)^3


def camels_prior() -> Prior:
    """The CAMELS latin-hypercube prior: Omega_m U[0.1, 0.5], sigma_8 U[0.6, 1.0], A_SN1 and
    A_AGN1 log-uniform on [0.25, 4], A_SN2 and A_AGN2 log-uniform on [0.5, 2]."""
    return Prior(
        {
            "Omega_m": Uniform(0.1, 0.5),
            "sigma_8": Uniform(0.6, 1.0),
            "A_SN1": LogUniform(0.25, 4.0),
            "A_AGN1": LogUniform(0.25, 4.0),
            "A_SN2": LogUniform(0.5, 2.0),
            "A_AGN2": LogUniform(0.5, 2.0),
        }
    )


def tng_like_parameters(A_SN1: float, A_AGN1: float, A_SN2: float, A_AGN2: float) -> dict[str, float]:
    """Schneider & Teyssier (2015) parameters (log10Mc, eta_b, k_s) of the ``tng_like`` model."""
    e = (2.0 * A_SN1 + A_AGN1) / 3.0
    B = min((0.105 * 14.08 - 1.27) * math.sqrt(e), 0.95)
    return {
        "log10Mc": (B + 1.27) / 0.105,
        "eta_b": max(0.5 * math.sqrt(A_SN2 * A_AGN2), 0.05),
        "k_s": 55.0 / math.sqrt(e) if e > 0 else math.inf,
    }


def simba_like_amod(A_SN1: float, A_AGN1: float, A_SN2: float, A_AGN2: float) -> float:
    """A_mod of the ``simba_like`` model (1 = no suppression)."""
    s = (6.0 * A_AGN2 + 2.0 * A_AGN1 + A_SN1 + A_SN2) / 10.0
    return max(1.0 - 0.3 * s**0.7, 0.0)


def baryonic_power(
    model: str, theta_row, k: np.ndarray, redshift: float = 0.0, transfer_function: str = "boltzmann_camb"
) -> np.ndarray:
    """P_bar(k) in (Mpc/h)^3 at k: (K,) in h/Mpc for one CAMELS parameter row theta: (6,), from pyccl."""
    if model not in FEEDBACK_MODELS:
        raise ValueError(f"model must be one of {FEEDBACK_MODELS}, got {model!r}")
    Om, s8 = (float(v) for v in theta_row[:2])
    c = CAMELS_COSMOLOGY
    cosmo = make_cosmology(Om, s8, c["h"], c["n_s"], c["Omega_b"], transfer_function=transfer_function, nonlinear=True)
    k = np.asarray(k, dtype=float)
    p_dmo = matter_power(cosmo, k, redshift, nonlinear=True)
    p_lin = matter_power(cosmo, k, redshift, nonlinear=False) if model == "simba_like" else None
    return feedback_power(model, theta_row[2:], k, p_dmo, p_lin, cosmo, redshift)


def feedback_power(
    model: str, amplitudes, k: np.ndarray, p_dmo: np.ndarray, p_lin: np.ndarray | None, cosmo, redshift: float = 0.0
) -> np.ndarray:
    """P_bar(k) = P_DMO(k) S(k; A) in (Mpc/h)^3 of a feedback model (module docstring).

    amplitudes: (4,) A_SN1, A_AGN1, A_SN2, A_AGN2; k: (K,) in h/Mpc; p_dmo, p_lin: (K,) the
    halofit and linear spectra (p_lin is needed by ``simba_like`` only); cosmo: a pyccl
    Cosmology with the spectra's h (the Schneider & Teyssier boost depends on it only through h).
    """
    if model not in FEEDBACK_MODELS:
        raise ValueError(f"model must be one of {FEEDBACK_MODELS}, got {model!r}")
    a_sn1, a_agn1, a_sn2, a_agn2 = (float(v) for v in amplitudes)
    if min(a_sn1, a_agn1, a_sn2, a_agn2) < 0:
        raise ValueError(f"feedback amplitudes A_SN1, A_AGN1, A_SN2, A_AGN2 must be >= 0, got {list(amplitudes)}")
    if model == "tng_like":
        import pyccl

        bcm = pyccl.baryons.BaryonsSchneider15(**tng_like_parameters(a_sn1, a_agn1, a_sn2, a_agn2))
        return p_dmo * bcm.boost_factor(cosmo, k * cosmo["h"], 1.0 / (1.0 + redshift))
    amod = simba_like_amod(a_sn1, a_agn1, a_sn2, a_agn2)
    if amod == 1.0:
        return p_dmo
    return p_lin + amod * (p_dmo - p_lin)


def projection_matrix(
    k_table: np.ndarray, k_perp: np.ndarray, box_size: float, depth: float, n_terms: int
) -> np.ndarray:
    """Linear map from a tabulated 3D spectrum to the 2D spectrum of a slab through a periodic box.

    P_2D(k_perp) = (1 / L) sum_{|j| <= n_terms} P(sqrt(k_perp^2 + k_j^2)) sinc^2(k_j depth / 2),
    k_j = 2 pi j / L, with P interpolated linearly in ln k between the table's wavenumbers
    (k_table: (K,) in h/Mpc, increasing; end values beyond it). Returns (len(k_perp), K) in 1 / (Mpc/h).
    """
    k_table = np.asarray(k_table, dtype=float)
    k_perp = np.asarray(k_perp, dtype=float)
    j = np.arange(n_terms + 1)
    kz = 2 * math.pi * j / box_size
    # +j and -j together; np.sinc(x) = sin(pi x) / (pi x)
    window = np.where(j == 0, 1.0, 2.0) * np.sinc(kz * depth / (2 * math.pi)) ** 2
    x = np.clip(np.log(np.hypot(k_perp[:, None], kz[None, :])), math.log(k_table[0]), math.log(k_table[-1]))
    x_table = np.log(k_table)
    index = np.clip(np.searchsorted(x_table, x, side="right") - 1, 0, k_table.size - 2)
    fraction = (x - x_table[index]) / (x_table[index + 1] - x_table[index])
    rows = np.broadcast_to(np.arange(k_perp.size)[:, None], x.shape)
    matrix = np.zeros((k_perp.size, k_table.size))
    np.add.at(matrix, (rows, index), window * (1 - fraction))
    np.add.at(matrix, (rows, index + 1), window * fraction)
    return matrix / box_size


def projected_power(
    k_table: np.ndarray, p_table: np.ndarray, k_perp: np.ndarray, box_size: float, depth: float, n_terms: int
) -> np.ndarray:
    """2D spectrum (Mpc/h)^2 of a slab of ``depth`` through a periodic box, at k_perp: (K,).

    Sums the 3D spectrum (tabulated, (Mpc/h)^3) over k_j = 2 pi j / L, |j| <= n_terms, with the
    slab window sinc^2(k_j depth / 2) (see :func:`projection_matrix`).
    """
    return projection_matrix(k_table, k_perp, box_size, depth, n_terms) @ np.asarray(p_table, dtype=float)


@register_simulator("camels_like")
class CamelsLike:
    """CAMELS-style total-matter maps (output ``Mtot``: (n, n), (M_sun/h)/(Mpc/h)^2).

    Parameters (theta columns): Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2, with the CAMELS
    prior. Physics and the two feedback mappings in the module docstring.

    Args:
        model: ``"tng_like"`` or ``"simba_like"``.
        n_grid: pixels per side (64 for tests, 256 for CAMELS-resolution maps).
        box_size: box side L in Mpc/h (CAMELS: 25).
        slab_depth: depth of the projected slab in Mpc/h (CAMELS maps: 5), at most box_size.
        field: ``"lognormal"`` (positive surface density) or ``"gaussian"``.
        redshift: redshift of the spectrum.
        transfer_function: pyccl transfer function (``boltzmann_camb``, ``eisenstein_hu``, ``bbks``).
        dtype: stored dtype of the maps.
        spectra: ``"emulator"``: the dark-matter-only spectra (halofit and linear) from a
            :class:`~cosmosbi.simulators.lss.MatterPowerTable` over the prior box of Omega_m
            and sigma_8 (built on first use, cached in ``cache_dir``; one table serves both
            models), the feedback factor applied exactly; ``"direct"``: pyccl for every
            parameter point.
        emulator_nodes: Chebyshev nodes per table axis (int, or name -> int; default
            :data:`~cosmosbi.simulators.lss.EMULATOR_NODES`).
        cache_dir: folder of the cached tables (default ``$COSMOSBI_CACHE`` or ``~/.cache/cosmosbi``).
    """

    parameter_names = CAMELS_PARAMETERS

    def __init__(
        self,
        model: str = "tng_like",
        n_grid: int = 64,
        box_size: float = 25.0,
        slab_depth: float = 5.0,
        field: str = "lognormal",
        redshift: float = 0.0,
        transfer_function: str = "boltzmann_camb",
        dtype: str = "float32",
        spectra: str = "emulator",
        emulator_nodes: int | dict | None = None,
        cache_dir: str | None = None,
    ):
        if model not in FEEDBACK_MODELS:
            raise ValueError(f"model must be one of {FEEDBACK_MODELS}, got {model!r}")
        if field not in ("gaussian", "lognormal"):
            raise ValueError(f"field must be 'gaussian' or 'lognormal', got {field!r}")
        if transfer_function not in TRANSFER_FUNCTIONS:
            raise ValueError(f"transfer_function must be one of {TRANSFER_FUNCTIONS}, got {transfer_function!r}")
        if not 0 < slab_depth <= box_size:
            raise ValueError(f"slab_depth must be in (0, box_size = {box_size}] Mpc/h, got {slab_depth}")
        if redshift < 0:
            raise ValueError(f"redshift must be >= 0, got {redshift}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if spectra not in SPECTRA:
            raise ValueError(f"spectra must be one of {SPECTRA}, got {spectra!r}")
        self.model = model
        self.grid = FourierGrid(int(n_grid), float(box_size), 2)
        self.slab_depth = float(slab_depth)
        self.field = field
        self.redshift = float(redshift)
        self.transfer_function = transfer_function
        self.dtype = dtype
        self.prior = camels_prior()
        n = self.grid.n
        self.output_spec = {"Mtot": OutputSpec((n, n), dtype)}
        self.spectra = spectra
        self.emulator_nodes = emulator_nodes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._table: MatterPowerTable | None = None
        self._boost_cosmology = None
        # theta-independent pieces: 3D and 2D wavenumber tables, the slab projection, the grid interpolation
        n_terms = 4 * n
        kz_max = 2 * math.pi * n_terms / self.grid.box_size
        self._k3_table = np.geomspace(0.5 * self.grid.fundamental, 1.05 * math.hypot(self.grid.k.max(), kz_max), 400)
        self._k2_table = np.geomspace(self.grid.fundamental, 1.01 * self.grid.k.max(), 200)
        self._projection = projection_matrix(
            self._k3_table, self._k2_table, self.grid.box_size, self.slab_depth, n_terms
        )
        self._to_grid = LogLogInterpolator(self._k2_table, self.grid.k)

    def power_emulator(self) -> MatterPowerTable:
        """The dark-matter-only spectra table over the prior box of Omega_m and sigma_8 (built on first use)."""
        bounds = prior_box(self.prior, ("Omega_m", "sigma_8"))
        if self._table is None or self._table.bounds != bounds:
            # both spectra: one table serves tng_like and simba_like (the linear one costs nothing extra)
            kinds = ("linear", "nonlinear")
            table = MatterPowerTable(
                self._k3_table,
                bounds,
                CAMELS_COSMOLOGY,
                kinds,
                self.redshift,
                self.transfer_function,
                self.emulator_nodes,
            )
            self._table = table.build(self.cache_dir)
        return self._table

    def power_3d(self, theta_row) -> np.ndarray:
        """P_bar(k) in (Mpc/h)^3 on the simulator's 3D wavenumber table for one row theta: (6,)."""
        if self.spectra == "direct":
            return baryonic_power(self.model, theta_row, self._k3_table, self.redshift, self.transfer_function)
        spectra = self.power_emulator()(
            dict(CAMELS_COSMOLOGY, Omega_m=float(theta_row[0]), sigma_8=float(theta_row[1]))
        )
        if self._boost_cosmology is None:  # the feedback boost reads h only
            c = CAMELS_COSMOLOGY
            self._boost_cosmology = make_cosmology(
                0.3, 0.8, c["h"], c["n_s"], c["Omega_b"], transfer_function="eisenstein_hu"
            )
        return feedback_power(
            self.model,
            theta_row[2:],
            self._k3_table,
            spectra["nonlinear"],
            spectra["linear"],
            self._boost_cosmology,
            self.redshift,
        )

    def power_2d(self, theta_row) -> np.ndarray:
        """Input 2D spectrum of delta_2D on the half-space grid modes, (n, n // 2 + 1), (Mpc/h)^2."""
        return self._to_grid(self._projection @ self.power_3d(theta_row))

    def mean_surface_density(self, Omega_m: float) -> float:
        """Mean Sigma = Omega_m rho_crit depth, (M_sun/h)/(Mpc/h)^2."""
        return Omega_m * RHO_CRIT * self.slab_depth

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, 6) -> {"Mtot": (N, n, n)}; one Generator per row."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        if theta.shape[1] != len(CAMELS_PARAMETERS):
            raise ValueError(f"theta has {theta.shape[1]} columns; expected 6 ({list(CAMELS_PARAMETERS)})")
        rngs = row_generators(rng, len(theta))
        maps = np.empty((len(theta), self.grid.n, self.grid.n), dtype=self.dtype)
        cache: dict[tuple, tuple] = {}
        for i, (row, g) in enumerate(zip(theta, rngs)):
            key = tuple(row)
            if key not in cache:
                p = self.power_2d(row)
                cache[key] = lognormal_power(self.grid, p) if self.field == "lognormal" else (p, None)
            pg, sigma2 = cache[key]
            delta = (
                lognormal_field(self.grid, pg, sigma2, g)
                if self.field == "lognormal"
                else gaussian_field(self.grid, pg, g)
            )
            maps[i] = self.mean_surface_density(row[0]) * (1.0 + delta)
        return {"Mtot": maps}

    def __repr__(self) -> str:
        return (
            f"CamelsLike(model={self.model!r}, n_grid={self.grid.n}, box_size={self.grid.box_size}, "
            f"slab_depth={self.slab_depth})"
        )
