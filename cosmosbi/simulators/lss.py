"""Large-scale-structure fields: Gaussian and lognormal density boxes, galaxy counts, projected slabs.

Fourier convention (periodic box of side L in Mpc/h, n cells per side, d dimensions,
cell volume V_c = (L/n)^d, box volume V = L^d, N = n^d cells). With the unnormalised
discrete Fourier transform D_k = sum_x delta(x) exp(-i k.x) (numpy's ``fftn``), a field with
power spectrum P(k) in (Mpc/h)^d has

    < |D_k|^2 > = P(k) V / V_c^2 = N^2 P(k) / V,

so the estimator P_hat(k) = |D_k|^2 V_c^2 / V is unbiased. A Gaussian field is made from
white noise w(x) ~ N(0, 1) per cell as delta = IFFT[ FFT(w) sqrt(P(k) / V_c) ]: the real
white noise makes the Fourier modes Hermitian, so delta is real, and the k = 0 mode is set to
zero (the field has zero mean). Its cell variance is sigma^2 = sum_k P(k) / V.

Lognormal fields use the standard transform delta_LN = exp(g - sigma_g^2 / 2) - 1 of a
Gaussian field g whose spectrum P_g is chosen so that delta_LN has the target spectrum P:
the grid correlation function xi(r) = IFFT[P / V_c] is mapped to xi_g = ln(1 + xi), and
P_g = V_c FFT[xi_g] at k != 0 (g has no k = 0 mode; :func:`lognormal_power` rescales xi so
that dropping the mean of xi_g leaves the spectrum unchanged), with negative P_g (which occur
on the smallest scales of very nonlinear spectra) set to zero. delta_LN then has spectrum P on
every grid mode up to that clipping, zero expected mean and delta_LN > -1.

Galaxy counts are Poisson draws with mean lambda = nbar V_c max(0, 1 + b delta) per cell;
their spectrum is b^2 P(k) + 1 / nbar (shot noise). A projected slab averages delta over the
first m cells along the last axis; its 2D spectrum (in (Mpc/h)^2) is

    P_2D(k_perp) = (1 / L) sum_j P(sqrt(k_perp^2 + k_j^2)) F_m(j),   k_j = 2 pi j / L,

over the n grid values j, with the Fejer window F_m(j) = sin^2(pi j m / n) / (m^2 sin^2(pi j / n))
(F_m(0) = 1); for m = n only j = 0 contributes and P_2D = P / L.

Spectra: pyccl computes P(k) (CAMB or a fitting function, linear or halofit) on a log-spaced
wavenumber table, which is interpolated linearly in (ln k, ln P) onto the grid modes. By default
(``spectra: emulator``) the table comes from a :class:`MatterPowerTable`, a Chebyshev
interpolation of ln P over the prior box of the varied cosmological parameters, built once and
cached on disk, so a box costs little more than its FFTs; ``spectra: direct`` calls pyccl for
every parameter point.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np

from cosmosbi.simulators.base import OutputSpec, register_simulator, row_generators
from cosmosbi.simulators.chebyshev import (
    chebyshev_nodes,
    default_cache_dir,
    interpolate,
    load_or_build,
    table_key,
    tabulate,
    tensor_points,
)
from cosmosbi.simulators.priors import Prior, Uniform

__all__ = [
    "FourierGrid",
    "make_cosmology",
    "matter_power",
    "direct_matter_power",
    "MatterPowerTable",
    "LogLogInterpolator",
    "prior_box",
    "gaussian_field",
    "lognormal_power",
    "lognormal_field",
    "poisson_counts",
    "project_slab",
    "slab_window",
    "power_spectrum",
    "LSSField",
]

log = logging.getLogger(__name__)

TRANSFER_FUNCTIONS = ("boltzmann_camb", "eisenstein_hu", "bbks")
SPECTRA = ("emulator", "direct")
COSMOLOGY_PARAMETERS = ("Omega_m", "sigma_8", "h", "n_s")
POWER_KINDS = ("linear", "nonlinear")
EMULATOR_NODES = {"Omega_m": 12, "sigma_8": 6, "h": 6, "n_s": 4}
TABLE_FORMAT = 1


# --------------------------------------------------------------------------- Fourier grid


@dataclass
class FourierGrid:
    """Wavenumbers of the rfft half-space of a periodic d-dimensional box.

    Args:
        n: cells per side (even, >= 4).
        box_size: side L in Mpc/h.
        ndim: 2 or 3.

    Attributes:
        k: |k| in h/Mpc on the half-space, shape (n,) * (ndim - 1) + (n // 2 + 1,).
        weights: number of full-grid modes each half-space mode stands for (2, or 1 on the
            planes k_last = 0 and k_last = Nyquist, whose conjugates lie in the same plane).
    """

    n: int
    box_size: float
    ndim: int = 3
    k: np.ndarray = dataclass_field(init=False, repr=False)
    weights: np.ndarray = dataclass_field(init=False, repr=False)

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.n < 4 or self.n % 2:
            raise ValueError(f"grid size n must be an even integer >= 4, got {self.n}")
        if not self.box_size > 0:
            raise ValueError(f"box_size must be positive (Mpc/h), got {self.box_size}")
        kf = 2 * math.pi / self.box_size
        full = np.fft.fftfreq(self.n, d=1.0 / self.n) * kf
        half = np.fft.rfftfreq(self.n, d=1.0 / self.n) * kf
        axes = [full] * (self.ndim - 1) + [half]
        k2 = sum(np.square(a).reshape([-1 if i == j else 1 for j in range(self.ndim)]) for i, a in enumerate(axes))
        self.k = np.sqrt(k2)
        w = np.full(half.size, 2.0)
        w[0] = w[-1] = 1.0
        self.weights = np.broadcast_to(w, self.k.shape).copy()

    @property
    def shape(self) -> tuple[int, ...]:
        """Real-space shape (n,) * ndim."""
        return (self.n,) * self.ndim

    @property
    def cell_volume(self) -> float:
        return (self.box_size / self.n) ** self.ndim

    @property
    def volume(self) -> float:
        return self.box_size**self.ndim

    @property
    def fundamental(self) -> float:
        """Fundamental wavenumber 2 pi / L in h/Mpc."""
        return 2 * math.pi / self.box_size

    @property
    def nyquist(self) -> float:
        return math.pi * self.n / self.box_size

    def default_edges(self) -> np.ndarray:
        """Bins of width k_f centred on multiples of k_f, up to the Nyquist wavenumber."""
        return self.fundamental * (np.arange(self.n // 2 + 1) + 0.5)

    def bin_sums(self, values: np.ndarray, edges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sum ``values`` over all full-grid modes in each |k| bin.

        values: (..., *half_shape). Returns (sums (..., B), mode counts (B,)).
        """
        edges = self.default_edges() if edges is None else np.asarray(edges, dtype=float)
        which = np.digitize(self.k.ravel(), edges) - 1
        inside = (which >= 0) & (which < len(edges) - 1)
        w = self.weights.ravel()[inside]
        idx = which[inside]
        nb = len(edges) - 1
        counts = np.bincount(idx, weights=w, minlength=nb)
        flat = np.asarray(values).reshape(-1, self.k.size)[:, inside]
        sums = np.stack([np.bincount(idx, weights=w * row, minlength=nb) for row in flat])
        return sums.reshape(np.shape(values)[: np.ndim(values) - self.ndim] + (nb,)), counts


# --------------------------------------------------------------------------- power spectra


def make_cosmology(
    Omega_m: float,
    sigma_8: float,
    h: float,
    n_s: float,
    Omega_b: float = 0.049,
    *,
    transfer_function: str = "boltzmann_camb",
    nonlinear: bool = False,
):
    """A pyccl Cosmology (flat LambdaCDM, massless neutrinos) from the usual parameters."""
    import pyccl

    if transfer_function not in TRANSFER_FUNCTIONS:
        raise ValueError(f"transfer_function must be one of {TRANSFER_FUNCTIONS}, got {transfer_function!r}")
    if not Omega_m > Omega_b:
        raise ValueError(f"Omega_m must exceed Omega_b = {Omega_b}, got Omega_m = {Omega_m}")
    if not (sigma_8 > 0 and h > 0 and n_s > 0):
        raise ValueError(f"sigma_8, h and n_s must be positive, got sigma_8={sigma_8}, h={h}, n_s={n_s}")
    return pyccl.Cosmology(
        Omega_c=float(Omega_m - Omega_b),
        Omega_b=float(Omega_b),
        h=float(h),
        n_s=float(n_s),
        sigma8=float(sigma_8),
        transfer_function=transfer_function,
        matter_power_spectrum="halofit" if nonlinear else "linear",
    )


def matter_power(cosmo, k: np.ndarray, redshift: float = 0.0, *, nonlinear: bool = False) -> np.ndarray:
    """Matter power spectrum P(k) in (Mpc/h)^3 at k: (K,) in h/Mpc, from a pyccl Cosmology."""
    import pyccl

    h = cosmo["h"]
    a = 1.0 / (1.0 + redshift)
    k_mpc = np.asarray(k, dtype=float) * h
    fn = pyccl.nonlin_matter_power if nonlinear else pyccl.linear_matter_power
    return fn(cosmo, k_mpc, a) * h**3


def log_k_table(k_min: float, k_max: float, n: int = 256) -> np.ndarray:
    """Log-spaced wavenumbers covering [k_min, k_max] with a small margin. Returns (n,)."""
    return np.geomspace(0.5 * k_min, 1.05 * k_max, n)


class LogLogInterpolator:
    """Linear interpolation in (ln k, ln P) from a fixed table of wavenumbers to fixed targets.

    The brackets and weights are computed once, so each spectrum costs one gather and one exp.
    Targets outside the table take its end values; targets k = 0 get P = 0.

    Args:
        k_table: (K,) increasing wavenumbers > 0.
        k: target wavenumbers, any shape.
    """

    def __init__(self, k_table: np.ndarray, k: np.ndarray):
        x_table = np.log(np.asarray(k_table, dtype=float))
        k = np.asarray(k, dtype=float)
        self.shape = k.shape
        self.positive = k.ravel() > 0
        unique, self.inverse = np.unique(k.ravel()[self.positive], return_inverse=True)
        x = np.clip(np.log(unique), x_table[0], x_table[-1])
        self.index = np.clip(np.searchsorted(x_table, x, side="right") - 1, 0, x_table.size - 2)
        self.fraction = (x - x_table[self.index]) / (x_table[self.index + 1] - x_table[self.index])

    def log_power(self, log_p_table: np.ndarray) -> np.ndarray:
        """ln P at the distinct positive targets from ln P on the table: (K,). Returns (U,)."""
        lo = log_p_table[self.index]
        return lo + self.fraction * (log_p_table[self.index + 1] - lo)

    def __call__(self, p_table: np.ndarray) -> np.ndarray:
        """P at the targets (their shape) from P on the table: (K,), P > 0."""
        out = np.zeros(self.positive.size)
        out[self.positive] = np.exp(self.log_power(np.log(p_table)))[self.inverse]
        return out.reshape(self.shape)


def interpolate_power(k_table: np.ndarray, p_table: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Log-log interpolation of a tabulated spectrum; zero at k = 0 (see :class:`LogLogInterpolator`)."""
    return LogLogInterpolator(k_table, k)(p_table)


def direct_matter_power(
    values: dict, k: np.ndarray, kinds=("linear",), redshift: float = 0.0, transfer_function: str = "boltzmann_camb"
) -> dict[str, np.ndarray]:
    """Matter power spectra from pyccl for one set of cosmological parameters.

    values: Omega_m, sigma_8, h, n_s and Omega_b; k: (K,) in h/Mpc; kinds: ``"linear"`` and/or
    ``"nonlinear"`` (halofit). Returns kind -> P(k): (K,) in (Mpc/h)^3.
    """
    nonlinear = "nonlinear" in kinds
    cosmo = make_cosmology(
        values["Omega_m"],
        values["sigma_8"],
        values["h"],
        values["n_s"],
        values["Omega_b"],
        transfer_function=transfer_function,
        nonlinear=nonlinear,
    )
    return {kind: matter_power(cosmo, k, redshift, nonlinear=kind == "nonlinear") for kind in kinds}


def prior_box(prior: Prior, names) -> dict[str, tuple[float, float]]:
    """name -> (low, high) of the prior's marginals for those of ``names`` it has."""
    return {n: (float(m.low), float(m.high)) for n, m in prior.marginals.items() if n in names}


class MatterPowerTable:
    """Emulator of the matter power spectrum: a Chebyshev table of ln P(k) over a box of cosmologies.

    The table holds ln P(k) - 2 ln sigma_8 on the wavenumbers ``k`` at the tensor product of
    Chebyshev nodes of the box of the varied cosmological parameters
    (:mod:`cosmosbi.simulators.chebyshev`) and interpolates it with a polynomial of degree
    n - 1 per parameter. The linear spectrum is exactly proportional to sigma_8^2, so sigma_8
    is a table axis only when the nonlinear (halofit) spectrum is tabulated. Points outside
    the box are computed with pyccl directly (with a warning).

    Args:
        k: (K,) increasing wavenumbers in h/Mpc.
        bounds: name -> (low, high) of the varied cosmological parameters (a subset of
            Omega_m, sigma_8, h, n_s; finite, high > low).
        fixed: values of the other cosmological parameters (Omega_b and those of Omega_m,
            sigma_8, h, n_s that are not varied).
        kinds: which spectra: ``"linear"`` and/or ``"nonlinear"``.
        redshift: redshift of the spectra.
        transfer_function: pyccl transfer function.
        nodes: Chebyshev nodes per table axis: an int for all, or name -> int (missing names
            take :data:`EMULATOR_NODES`).
    """

    def __init__(
        self,
        k,
        bounds: dict,
        fixed: dict,
        kinds=("linear",),
        redshift: float = 0.0,
        transfer_function: str = "boltzmann_camb",
        nodes: int | dict | None = None,
    ):
        self.k = np.asarray(k, dtype=float)
        self.kinds = tuple(kinds)
        if not self.kinds or any(kind not in POWER_KINDS for kind in self.kinds):
            raise ValueError(f"kinds: expected a non-empty subset of {list(POWER_KINDS)}, got {list(self.kinds)}")
        unknown = [n for n in bounds if n not in COSMOLOGY_PARAMETERS]
        if unknown:
            raise ValueError(f"bounds: unknown parameters {unknown}; expected names from {list(COSMOLOGY_PARAMETERS)}")
        self.bounds = {n: (float(bounds[n][0]), float(bounds[n][1])) for n in COSMOLOGY_PARAMETERS if n in bounds}
        for name, (lo, hi) in self.bounds.items():
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ValueError(
                    f"spectra emulator: the prior of {name} needs finite bounds with high > low, got [{lo}, {hi}]; "
                    "use a bounded prior or spectra: direct"
                )
        missing = [n for n in ("Omega_b", *COSMOLOGY_PARAMETERS) if n not in fixed and n not in self.bounds]
        if missing:
            raise ValueError(f"fixed: missing values for {missing}")
        self.names = tuple(n for n in self.bounds if n != "sigma_8" or "nonlinear" in self.kinds)
        # the parameters held at one value in the table; a varied sigma_8 off the axes is rescaled analytically
        self.reference = {n: float(v) for n, v in fixed.items() if n not in self.bounds}
        if "sigma_8" in self.bounds and "sigma_8" not in self.names:
            self.reference["sigma_8"] = 0.5 * sum(self.bounds["sigma_8"])
        self.redshift = float(redshift)
        self.transfer_function = transfer_function
        per_name = nodes if isinstance(nodes, dict) else {n: nodes for n in self.names} if nodes is not None else {}
        self.nodes = tuple(int(per_name.get(n, EMULATOR_NODES[n])) for n in self.names)
        if any(n < 2 for n in self.nodes):
            raise ValueError(
                f"emulator_nodes must be at least 2 per parameter, got {dict(zip(self.names, self.nodes))}"
            )
        self.grid = [chebyshev_nodes(*self.bounds[n], m) for n, m in zip(self.names, self.nodes)]
        self.data: dict[str, np.ndarray] | None = None
        self._stacked = None

    @property
    def n_points(self) -> int:
        """Number of cosmologies in the table."""
        return int(np.prod(self.nodes))

    def key(self) -> str:
        """Hash of everything the table depends on."""
        import pyccl

        blob = {
            "format": TABLE_FORMAT,
            "quantity": "matter_power",
            "k": hashlib.sha256(self.k.tobytes()).hexdigest(),
            "names": list(self.names),
            "bounds": {n: list(self.bounds[n]) for n in self.names},
            "nodes": list(self.nodes),
            "reference": {n: self.reference[n] for n in sorted(self.reference)},
            "kinds": list(self.kinds),
            "redshift": self.redshift,
            "transfer_function": self.transfer_function,
            "pyccl": pyccl.__version__,
        }
        return table_key(blob)

    def values_at(self, point) -> dict[str, float]:
        """Cosmological parameters at one table point: (D,)."""
        return dict(self.reference, **{n: float(v) for n, v in zip(self.names, point)})

    def build(self, cache_dir: str | Path | None = None, progress: bool = True) -> MatterPowerTable:
        """Load the table from ``cache_dir`` if present, else compute it (and save it there).

        Processes sharing ``cache_dir`` compute it once (:func:`~cosmosbi.simulators.chebyshev.load_or_build`).
        """
        if cache_dir is None:
            self.data = self._compute(progress)
            return self
        path = Path(cache_dir) / f"matter_power_table_{self.key()}.npz"
        self.data = load_or_build(path, lambda heartbeat: self._compute(progress, heartbeat))
        return self

    def _compute(self, progress: bool, heartbeat=None) -> dict[str, np.ndarray]:
        log.info("building the matter power table: %d cosmologies (%s)", self.n_points, self.transfer_function)

        def evaluate(point):
            values = self.values_at(point)
            spectra = direct_matter_power(values, self.k, self.kinds, self.redshift, self.transfer_function)
            return {f"log_power_{kind}": np.log(p) - 2 * math.log(values["sigma_8"]) for kind, p in spectra.items()}

        return tabulate(
            tensor_points(self.grid),
            evaluate,
            self.nodes,
            progress=progress,
            heartbeat=heartbeat,
            description="matter power table",
        )

    def contains(self, values: dict) -> bool:
        """Whether the cosmological parameters ``values`` lie in the box."""
        return all(lo - 1e-12 * (hi - lo) <= values[n] <= hi + 1e-12 * (hi - lo) for n, (lo, hi) in self.bounds.items())

    def log_power(self, values: dict) -> dict[str, np.ndarray]:
        """kind -> ln P(k): (K,) for the cosmological parameters ``values`` (those of the box and Omega_b).

        Interpolated inside the box, from pyccl outside it.
        """
        if self.data is None:
            raise RuntimeError("the matter power table is not built yet; call build() first")
        if not self.contains(values):
            log.warning(
                "cosmology %s is outside the matter power table's box; using pyccl directly",
                {n: values[n] for n in self.bounds},
            )
            full = dict(self.reference, **{n: values[n] for n in self.bounds})
            return {
                kind: np.log(p)
                for kind, p in direct_matter_power(
                    full, self.k, self.kinds, self.redshift, self.transfer_function
                ).items()
            }
        if self._stacked is None or self._stacked[0] is not self.data:  # all kinds in one array: one interpolation
            self._stacked = (self.data, np.stack([self.data[f"log_power_{kind}"] for kind in self.kinds], axis=-2))
        x = [values[n] for n in self.names]
        shift = 2 * math.log(values["sigma_8"] if "sigma_8" in self.bounds else self.reference["sigma_8"])
        log_p = interpolate(self._stacked[1], self.grid, x) + shift
        return dict(zip(self.kinds, log_p))

    def __call__(self, values: dict) -> dict[str, np.ndarray]:
        """kind -> P(k): (K,) in (Mpc/h)^3 (see :meth:`log_power`)."""
        return {kind: np.exp(lp) for kind, lp in self.log_power(values).items()}


# --------------------------------------------------------------------------- fields


def gaussian_field(grid: FourierGrid, power: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with spectrum ``power`` (on the half-space grid, (Mpc/h)^d).

    Returns delta: (n,) * ndim float64, real, zero mean.
    """
    white = rng.standard_normal(grid.shape)
    amp = np.sqrt(np.clip(power, 0.0, None) / grid.cell_volume)
    amp.flat[0] = 0.0
    return np.fft.irfftn(np.fft.rfftn(white) * amp, s=grid.shape)


def lognormal_power(grid: FourierGrid, power: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """Spectrum P_g of the Gaussian field whose lognormal transform has spectrum ``power``.

    g has no k = 0 mode (the box mean of g is zero), so its correlation function is
    xi_g = ln(1 + s xi) minus its grid mean mu; exp(xi_g) - 1 then has the spectrum
    s exp(-mu) P, and the scale s is solved for so that s exp(-mu(s)) = 1 (Newton's method in
    ln s from s = 1: xi has zero mean, so d mu / d ln s <= 0 by Jensen's inequality and
    ln s - mu(s) is strictly increasing, with a single root). Negative P_g are set to zero
    (they occur only for very nonlinear targets).

    Returns (P_g on the half-space grid, sigma_g^2 = the cell variance of g).
    """
    p = np.array(power, dtype=float)
    p.flat[0] = 0.0
    xi = np.fft.irfftn(p / grid.cell_volume, s=grid.shape, axes=tuple(range(grid.ndim)))
    log_scale = 0.0
    for _ in range(max_iter):
        t = math.exp(log_scale) * xi
        if t.min() <= -1.0:
            raise ValueError("the target spectrum has a correlation function <= -1; no lognormal field has it")
        xi_g = np.log1p(t)
        mu = float(xi_g.mean())
        if abs(math.expm1(log_scale - mu)) < 1e-12:
            break
        slope = float(np.mean(t / (1.0 + t)))  # d mu / d ln s
        log_scale -= (log_scale - mu) / (1.0 - slope)
    else:
        raise ValueError(f"lognormal_power: the spectrum normalisation did not converge in {max_iter} iterations")
    pg = np.fft.rfftn(xi_g, axes=tuple(range(grid.ndim))).real * grid.cell_volume
    pg = np.clip(pg, 0.0, None)
    pg.flat[0] = 0.0
    sigma2 = float(np.sum(grid.weights * pg) / grid.volume)
    return pg, sigma2


def lognormal_field(
    grid: FourierGrid, gaussian_power: np.ndarray, sigma2: float, rng: np.random.Generator
) -> np.ndarray:
    """delta_LN = exp(g - sigma_g^2 / 2) - 1 for g Gaussian with ``gaussian_power`` (see :func:`lognormal_power`)."""
    g = gaussian_field(grid, gaussian_power, rng)
    return np.expm1(g - 0.5 * sigma2)


def poisson_counts(delta: np.ndarray, mean_per_cell: float, bias: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts with mean ``mean_per_cell * max(0, 1 + bias * delta)`` per cell (int64)."""
    lam = mean_per_cell * np.clip(1.0 + bias * delta, 0.0, None)
    return rng.poisson(lam)


def project_slab(delta: np.ndarray, cells: int) -> np.ndarray:
    """Average of delta over the first ``cells`` cells along the last axis. (..., n) -> (...)."""
    return delta[..., :cells].mean(axis=-1)


def slab_window(n: int, cells: int) -> np.ndarray:
    """Fejer window F_m(j) of an average over m = ``cells`` of n cells, for j = fftfreq indices. Returns (n,)."""
    j = np.fft.fftfreq(n, d=1.0 / n)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.sin(np.pi * j * cells / n) ** 2 / (cells**2 * np.sin(np.pi * j / n) ** 2)
    w[j == 0] = 1.0
    return w


def power_spectrum(
    field: np.ndarray, box_size: float, ndim: int | None = None, edges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binned power spectrum of periodic fields.

    Args:
        field: (n,) * ndim, or a batch (..., *(n,) * ndim).
        box_size: side L in Mpc/h.
        ndim: 2 or 3 (default: field.ndim, which must then be 2 or 3).
        edges: |k| bin edges in h/Mpc (default: width k_f up to Nyquist).

    Returns:
        (k_mean (B,), P (..., B) in (Mpc/h)^ndim, full-grid mode counts (B,)): the mean of the
        unbiased estimator |D_k|^2 V_c^2 / V over the modes of each bin.
    """
    field = np.asarray(field, dtype=float)
    ndim = field.ndim if ndim is None else int(ndim)
    if ndim not in (2, 3) or field.ndim < ndim:
        raise ValueError(
            f"power_spectrum needs 2D or 3D fields (ndim=2 or 3), got field shape {field.shape} with ndim={ndim}"
        )
    n = field.shape[-1]
    if field.shape[-ndim:] != (n,) * ndim:
        raise ValueError(f"power_spectrum needs a cubic/square grid, got field shape {field.shape}")
    grid = FourierGrid(n, box_size, ndim)
    modes = np.fft.rfftn(field, axes=tuple(range(-ndim, 0)))
    est = np.abs(modes) ** 2 * grid.cell_volume**2 / grid.volume
    sums, counts = grid.bin_sums(est, edges)
    ksum, _ = grid.bin_sums(grid.k, edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ksum / counts, sums / counts, counts


# --------------------------------------------------------------------------- simulator

LSS_DEFAULTS = {"Omega_m": 0.3, "sigma_8": 0.8, "h": 0.6766, "n_s": 0.9665, "bias": 1.5}
LSS_PRIORS = {
    "Omega_m": (0.1, 0.5),
    "sigma_8": (0.6, 1.0),
    "h": (0.55, 0.85),
    "n_s": (0.87, 1.07),
    "bias": (1.0, 3.0),
}
LSS_OUTPUTS = ("delta", "counts", "slab")


@register_simulator("lss_field")
class LSSField:
    """3D matter density boxes, Poisson galaxy counts and projected slabs from the pyccl P(k).

    Outputs (choose with ``outputs``): ``delta``: (n, n, n) matter density contrast;
    ``counts``: (n, n, n) int32 galaxy counts per cell (Poisson, linear bias); ``slab``: (n, n)
    the density contrast averaged over the first ``slab_cells`` cells along the last axis.
    Conventions (normalisation, lognormal transform, slab spectrum) in the module docstring.

    Args:
        parameters: free parameters, a subset of Omega_m, sigma_8, h, n_s, bias (theta's columns
            in this order); the others take ``fixed`` values.
        fixed: values for parameters that are not free (defaults: Omega_m 0.3, sigma_8 0.8,
            h 0.6766, n_s 0.9665, bias 1.5) and Omega_b (0.049).
        box_size: box side L in Mpc/h.
        n_grid: cells per side n (even).
        redshift: redshift of the spectrum.
        field: ``"gaussian"`` or ``"lognormal"``.
        nonlinear: use the halofit nonlinear spectrum instead of the linear one.
        transfer_function: pyccl transfer function (``boltzmann_camb``, ``eisenstein_hu``, ``bbks``).
        number_density: mean galaxy density nbar in (h/Mpc)^3.
        slab_cells: depth of the projected slab in cells (default: the whole box).
        outputs: which of ``delta``, ``counts``, ``slab`` to return.
        spectra: ``"emulator"``: P(k) from a :class:`MatterPowerTable` over the prior box of the
            varied cosmological parameters (built on first use, cached in ``cache_dir``);
            ``"direct"``: pyccl for every parameter point.
        emulator_nodes: Chebyshev nodes per table axis (int, or name -> int; default
            :data:`EMULATOR_NODES`).
        cache_dir: folder of the cached tables (default ``$COSMOSBI_CACHE`` or ``~/.cache/cosmosbi``).
    """

    def __init__(
        self,
        parameters: tuple[str, ...] = ("Omega_m", "sigma_8"),
        fixed: dict[str, float] | None = None,
        box_size: float = 500.0,
        n_grid: int = 64,
        redshift: float = 0.0,
        field: str = "lognormal",
        nonlinear: bool = False,
        transfer_function: str = "boltzmann_camb",
        number_density: float = 1e-3,
        slab_cells: int | None = None,
        outputs: tuple[str, ...] = ("counts", "slab"),
        spectra: str = "emulator",
        emulator_nodes: int | dict | None = None,
        cache_dir: str | None = None,
    ):
        parameters = tuple(parameters)
        unknown = [p for p in parameters if p not in LSS_DEFAULTS]
        if unknown or not parameters or len(set(parameters)) != len(parameters):
            raise ValueError(f"parameters: expected distinct names from {list(LSS_DEFAULTS)}, got {list(parameters)}")
        values = dict(LSS_DEFAULTS, Omega_b=0.049)
        for key, value in (fixed or {}).items():
            if key not in values:
                raise ValueError(f"fixed: unknown parameter {key!r}; expected one of {sorted(values)}")
            if key in parameters:
                raise ValueError(f"fixed: {key!r} is a free parameter and cannot also be fixed")
            values[key] = float(value)
        if field not in ("gaussian", "lognormal"):
            raise ValueError(f"field must be 'gaussian' or 'lognormal', got {field!r}")
        if transfer_function not in TRANSFER_FUNCTIONS:
            raise ValueError(f"transfer_function must be one of {TRANSFER_FUNCTIONS}, got {transfer_function!r}")
        if not number_density > 0:
            raise ValueError(f"number_density must be positive ((h/Mpc)^3), got {number_density}")
        if redshift < 0:
            raise ValueError(f"redshift must be >= 0, got {redshift}")
        if spectra not in SPECTRA:
            raise ValueError(f"spectra must be one of {SPECTRA}, got {spectra!r}")
        outputs = tuple(outputs)
        if not outputs or any(o not in LSS_OUTPUTS for o in outputs):
            raise ValueError(f"outputs: expected a non-empty subset of {list(LSS_OUTPUTS)}, got {list(outputs)}")
        self.grid = FourierGrid(int(n_grid), float(box_size), 3)
        slab_cells = self.grid.n if slab_cells is None else int(slab_cells)
        if not 1 <= slab_cells <= self.grid.n:
            raise ValueError(f"slab_cells must be in [1, n_grid = {self.grid.n}], got {slab_cells}")
        self.parameter_names = parameters
        self.fixed = {k: v for k, v in values.items() if k not in parameters}
        self.redshift = float(redshift)
        self.field = field
        self.nonlinear = bool(nonlinear)
        self.transfer_function = transfer_function
        self.number_density = float(number_density)
        self.slab_cells = slab_cells
        self.outputs = outputs
        self.prior = Prior({p: Uniform(*LSS_PRIORS[p]) for p in parameters})
        n = self.grid.n
        specs = {"delta": OutputSpec((n, n, n)), "counts": OutputSpec((n, n, n), "int32"), "slab": OutputSpec((n, n))}
        self.output_spec = {o: specs[o] for o in outputs}
        self.spectra = spectra
        self.emulator_nodes = emulator_nodes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._table: MatterPowerTable | None = None
        # theta-independent: the tabulation wavenumbers and their interpolation onto the grid |k|
        self._k_table = log_k_table(self.grid.fundamental, self.grid.k.max())
        self._to_grid = LogLogInterpolator(self._k_table, self.grid.k)

    def values(self, theta_row: np.ndarray) -> dict[str, float]:
        """All parameter values (free and fixed) for one row theta: (D,)."""
        out = dict(self.fixed)
        out.update({name: float(v) for name, v in zip(self.parameter_names, theta_row)})
        return out

    def power_emulator(self) -> MatterPowerTable:
        """The matter power table over the current prior's box (built or loaded on first use)."""
        bounds = prior_box(self.prior, COSMOLOGY_PARAMETERS)
        if self._table is None or self._table.bounds != bounds:
            kind = "nonlinear" if self.nonlinear else "linear"
            fixed = {n: v for n, v in self.fixed.items() if n != "bias"}
            table = MatterPowerTable(
                self._k_table, bounds, fixed, (kind,), self.redshift, self.transfer_function, self.emulator_nodes
            )
            self._table = table.build(self.cache_dir)
        return self._table

    def power_table(self, theta_row: np.ndarray) -> np.ndarray:
        """P(k) in (Mpc/h)^3 on the simulator's log-k table for one row theta: (D,)."""
        kind = "nonlinear" if self.nonlinear else "linear"
        if self.spectra == "emulator":
            return self.power_emulator()(self.values(theta_row))[kind]
        return direct_matter_power(
            self.values(theta_row), self._k_table, (kind,), self.redshift, self.transfer_function
        )[kind]

    def power_grid(self, theta_row: np.ndarray) -> np.ndarray:
        """The input spectrum on the half-space grid modes for one row theta: (D,)."""
        return self._to_grid(self.power_table(theta_row))

    def slab_power(self, theta_row: np.ndarray) -> np.ndarray:
        """Expected 2D spectrum of the ``slab`` output on the 2D half-space grid, (n, n // 2 + 1), (Mpc/h)^2."""
        g2 = FourierGrid(self.grid.n, self.grid.box_size, 2)
        kz = np.fft.fftfreq(self.grid.n, d=1.0 / self.grid.n) * self.grid.fundamental
        window = slab_window(self.grid.n, self.slab_cells)
        table = self.power_table(theta_row)
        k3 = np.sqrt(g2.k[..., None] ** 2 + kz**2)
        return np.sum(interpolate_power(self._k_table, table, k3) * window, axis=-1) / self.grid.box_size

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, D) -> the chosen outputs, each (N, ...); one Generator per row."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        if theta.shape[1] != len(self.parameter_names):
            raise ValueError(
                f"theta has {theta.shape[1]} columns; "
                f"expected {len(self.parameter_names)} ({list(self.parameter_names)})"
            )
        rngs = row_generators(rng, len(theta))
        out = {name: np.empty((len(theta),) + spec.shape, dtype=spec.dtype) for name, spec in self.output_spec.items()}
        cache: dict[tuple, tuple] = {}
        for i, (row, g) in enumerate(zip(theta, rngs)):
            key = tuple(row)
            if key not in cache:
                p = self.power_grid(row)
                cache[key] = lognormal_power(self.grid, p) if self.field == "lognormal" else (p, None)
            pg, sigma2 = cache[key]
            delta = (
                lognormal_field(self.grid, pg, sigma2, g)
                if self.field == "lognormal"
                else gaussian_field(self.grid, pg, g)
            )
            if "delta" in out:
                out["delta"][i] = delta
            if "counts" in out:
                mean = self.number_density * self.grid.cell_volume
                out["counts"][i] = poisson_counts(delta, mean, self.values(row)["bias"], g)
            if "slab" in out:
                out["slab"][i] = project_slab(delta, self.slab_cells)
        return out

    def __repr__(self) -> str:
        return (
            f"LSSField(n_grid={self.grid.n}, box_size={self.grid.box_size}, field={self.field!r}, "
            f"parameters={list(self.parameter_names)})"
        )
