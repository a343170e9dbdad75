"""Dark-matter subhalo populations: mass function, counts, positions, concentrations, truncation.

One population per image, drawn with that image's numpy Generator. Populations of different
sizes are stacked into padded arrays (masked zero-mass subhalos) for the batched deflection.

Mass function (masses are total truncated-subhalo masses, M_sun), for m_min < m < m_max:

    dN/dm  proportional to  m^beta * (1 + gamma_hm m_hm / m)^(-beta_hm),

the second factor being the warm-dark-matter suppression of Lovell et al. (2014) with
half-mode mass m_hm (gamma_hm = 2.7, beta_hm = 0.99); it is 1 for cold dark matter.

Normalisation ``"sigma_sub"``: ``Sigma_sub`` is the projected number density (kpc^-2) of
cold-dark-matter subhalos with m_min < m < m_max, so the expected count in a region of area
A (kpc^2) is Sigma_sub A S, S = (suppressed integral) / (unsuppressed integral).
Normalisation ``"f_sub"``: ``f_sub`` is the ratio of the expected subhalo mass to the
main deflector's projected mass in the region, the latter taken as the SIS value
pi Sigma_crit theta_E (r_out - r_in) for an annulus r_in < r < r_out.

Positions are uniform in the annulus r_in theta_E < r < r_out theta_E around the lens centre.
Concentration: Duffy et al. (2008) c_200c(m, z) evaluated at the subhalo mass; scale radius
r_s = r_200c / c. Truncation radius: Tormen et al. (1998) tidal radius in a singular isothermal
host, r_t = r (m / (2 M_host(<r)))^(1/3), with the 3D radius r replaced by the projected one,
M_host(<r) = pi Sigma_crit theta_E r in angular units (the SIS with the lens's Einstein radius).

Mass convention. A subhalo's mass ``m`` (what ``m_min`` and ``m_max`` bound) is the total mass
of the truncated NFW halo, and the same ``m`` is taken as M200c to set its concentration and
scale radius: r_200 = (3 m / (4 pi 200 rho_crit(z_lens)))^(1/3), r_s = r_200 / c_200c(m). The
density normalisation rho_s then makes the truncated halo's total mass m:
rho_s = m / (4 pi r_s^3 g(tau)), g(tau) = tau^2 / (tau^2 + 1)^2 ((tau^2 - 1) ln tau + pi tau - (tau^2 + 1)).
lenstronomy's ``TNFW`` (same Baltz et al. density) is parametrised by the M200 and
concentration of the untruncated NFW with the same rho_s and r_s
(``LensCosmo.nfw_physical2angle(M200, c)``) plus ``r_trunc``. The same halo there has
c' with c'^3 / mu(c') = c^3 / g(tau), mu(c) = ln(1 + c) - c / (1 + c), and
M200 = m (c' / c)^3 = m mu(c') / g(tau): :func:`lenstronomy_m200` computes (M200, c'), and
:func:`lenstronomy_tnfw_kwargs` gives the angular parameters (``Rs``, ``alpha_Rs``,
``r_trunc``) directly. A user with masses in lenstronomy's M200 convention converts them with
the inverse relation (m = M200 g(tau) / mu(c')) before comparing mass functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cosmosbi.simulators.lens_profiles import LensDistances

__all__ = [
    "MassFunction",
    "SubhaloPopulation",
    "concentration_duffy08",
    "draw_subhalo_population",
    "expected_count",
    "lenstronomy_m200",
    "lenstronomy_tnfw_kwargs",
    "tnfw_total_over_m0",
    "pad_populations",
    "region_area_arcsec2",
]

WDM_GAMMA = 2.7
WDM_BETA = 0.99


class MassFunction:
    """dN/dm proportional to m^beta (1 + 2.7 m_hm / m)^-0.99 between m_min and m_max (M_sun).

    Args:
        m_min, m_max: mass range, 0 < m_min < m_max.
        beta: power-law slope (any real value).
        log10_m_hm: log10 of the half-mode mass, or None for cold dark matter.
        n_grid: size of the log-mass grid used when the suppression is on.
    """

    def __init__(self, m_min: float, m_max: float, beta: float, log10_m_hm: float | None = None, n_grid: int = 2048):
        if not 0 < m_min < m_max:
            raise ValueError(f"expected 0 < m_min < m_max, got m_min={m_min}, m_max={m_max}")
        self.m_min, self.m_max, self.beta = float(m_min), float(m_max), float(beta)
        self.m_hm = None if log10_m_hm is None else 10.0 ** float(log10_m_hm)
        self._grid = None
        if self.m_hm is not None:
            lnm = np.linspace(math.log(m_min), math.log(m_max), n_grid)
            m = np.exp(lnm)
            dens = m ** (self.beta + 1) * self.suppression(m)  # dN / dln m
            cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(lnm))])
            self._grid = (lnm, cdf, m)

    def suppression(self, m):
        """WDM / CDM ratio of the mass function at m (1 without a half-mode mass)."""
        if self.m_hm is None:
            return np.ones_like(np.asarray(m, dtype=float))
        return (1.0 + WDM_GAMMA * self.m_hm / np.asarray(m, dtype=float)) ** (-WDM_BETA)

    def _power_integral(self, p: float) -> float:
        """Integral of m^p from m_min to m_max."""
        if abs(p + 1) < 1e-12:
            return math.log(self.m_max / self.m_min)
        return (self.m_max ** (p + 1) - self.m_min ** (p + 1)) / (p + 1)

    def suppressed_fraction(self) -> float:
        """Number of subhalos with the suppression over the number without it."""
        if self._grid is None:
            return 1.0
        return self._grid[1][-1] / self._power_integral(self.beta)

    def mean_mass(self) -> float:
        """Mean subhalo mass (M_sun) under the (suppressed) mass function."""
        if self._grid is None:
            return self._power_integral(self.beta + 1) / self._power_integral(self.beta)
        lnm, cdf, m = self._grid
        dens_m = m ** (self.beta + 2) * self.suppression(m)
        return float(np.sum(0.5 * (dens_m[1:] + dens_m[:-1]) * np.diff(lnm)) / cdf[-1])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw n masses by inverse-CDF sampling. Returns (n,)."""
        u = rng.random(n)
        if self._grid is not None:
            lnm, cdf, _ = self._grid
            return np.exp(np.interp(u * cdf[-1], cdf, lnm))
        p = self.beta + 1
        if abs(p) < 1e-12:
            return self.m_min * (self.m_max / self.m_min) ** u
        lo, hi = self.m_min**p, self.m_max**p
        return (lo + u * (hi - lo)) ** (1.0 / p)


def concentration_duffy08(mass, z: float, h: float = 0.7):
    """c_200c of Duffy et al. (2008), full sample: 5.71 (M / 2e12 h^-1 M_sun)^-0.084 (1 + z)^-0.47."""
    return 5.71 * (np.asarray(mass) / (2e12 / h)) ** -0.084 * (1 + z) ** -0.47


@dataclass
class SubhaloPopulation:
    """The subhalos of one image (S of them). Angles in arcsec, masses in M_sun.

    Attributes: x, y (S,) positions; mass (S,); theta_e2 (S,) squared point-mass Einstein
    radius; r_s (S,) scale radius; tau (S,) truncation radius over scale radius;
    expected_count: the Poisson mean the count was drawn from.
    """

    x: np.ndarray
    y: np.ndarray
    mass: np.ndarray
    theta_e2: np.ndarray
    r_s: np.ndarray
    tau: np.ndarray
    expected_count: float

    def __len__(self) -> int:
        return len(self.mass)


def region_area_arcsec2(theta_e: float, r_in: float, r_out: float) -> float:
    """Area (arcsec^2) of the annulus r_in theta_E < r < r_out theta_E."""
    return math.pi * (r_out**2 - r_in**2) * theta_e**2


def expected_count(
    normalisation: str,
    value: float,
    mass_function: MassFunction,
    theta_e: float,
    r_in: float,
    r_out: float,
    distances: LensDistances,
) -> float:
    """Poisson mean of the number of subhalos in the annulus (see the module docstring)."""
    area_kpc2 = region_area_arcsec2(theta_e, r_in, r_out) * distances.kpc_per_arcsec**2
    if normalisation == "sigma_sub":
        return max(float(value), 0.0) * area_kpc2 * mass_function.suppressed_fraction()
    if normalisation == "f_sub":
        host_mass = math.pi * distances.sigma_crit * theta_e * (r_out - r_in) * theta_e * distances.kpc_per_arcsec**2
        return max(float(value), 0.0) * host_mass / mass_function.mean_mass()
    raise ValueError(f"normalisation: expected 'sigma_sub' or 'f_sub', got {normalisation!r}")


def draw_subhalo_population(
    rng: np.random.Generator,
    *,
    normalisation: str,
    value: float,
    mass_function: MassFunction,
    theta_e: float,
    center: tuple[float, float],
    distances: LensDistances,
    r_in: float = 0.5,
    r_out: float = 1.5,
    n_subhalos: int | None = None,
) -> SubhaloPopulation:
    """Draw one image's subhalos.

    Args:
        rng: that image's Generator.
        normalisation, value: ``"sigma_sub"`` with Sigma_sub (kpc^-2) or ``"f_sub"``.
        mass_function: the :class:`MassFunction` (slope and WDM suppression).
        theta_e: the main deflector's Einstein radius (arcsec); center: its centre (arcsec).
        distances: the lens configuration.
        r_in, r_out: the annulus, in units of theta_e.
        n_subhalos: a fixed count instead of the Poisson draw (benchmarks, tests).
    """
    lam = expected_count(normalisation, value, mass_function, theta_e, r_in, r_out, distances)
    n = int(rng.poisson(lam)) if n_subhalos is None else int(n_subhalos)
    mass = mass_function.sample(n, rng)
    radius = theta_e * np.sqrt(r_in**2 + rng.random(n) * (r_out**2 - r_in**2))
    angle = rng.random(n) * 2 * math.pi
    x = center[0] + radius * np.cos(angle)
    y = center[1] + radius * np.sin(angle)
    # scale radius from the mass-concentration relation (arcsec)
    c = concentration_duffy08(mass, distances.z_lens, distances.h)
    r200_mpc = (3 * mass / (4 * math.pi * 200.0 * distances.rho_crit_lens)) ** (1.0 / 3.0)
    r_s = r200_mpc * 1e3 / c / distances.kpc_per_arcsec
    # tidal truncation in an SIS host at the projected radius
    host_mass = math.pi * distances.sigma_crit * distances.kpc_per_arcsec**2 * theta_e * radius  # M_sun within r
    r_t = radius * (mass / (2 * host_mass)) ** (1.0 / 3.0)
    tau = np.clip(r_t / r_s, 0.05, 100.0)
    return SubhaloPopulation(
        x=x, y=y, mass=mass, theta_e2=distances.point_mass_theta_e2(mass), r_s=r_s, tau=tau, expected_count=lam
    )


def pad_populations(populations: list[SubhaloPopulation]) -> dict[str, np.ndarray]:
    """Stack populations into (B, S_max) arrays; padding entries have theta_e2 = 0 and mask False.

    Padding subhalos sit far from the image (x = y = 1e3 arcsec) with unit r_s and tau, so
    they contribute exactly zero deflection and no near-field work.
    """
    b = len(populations)
    s_max = max((len(p) for p in populations), default=0)
    out = {
        "x": np.full((b, s_max), 1e3),
        "y": np.full((b, s_max), 1e3),
        "theta_e2": np.zeros((b, s_max)),
        "r_s": np.ones((b, s_max)),
        "tau": np.ones((b, s_max)),
        "mask": np.zeros((b, s_max), dtype=bool),
    }
    for i, p in enumerate(populations):
        k = len(p)
        out["x"][i, :k], out["y"][i, :k] = p.x, p.y
        out["theta_e2"][i, :k], out["r_s"][i, :k], out["tau"][i, :k] = p.theta_e2, p.r_s, p.tau
        out["mask"][i, :k] = True
    return out


def tnfw_total_over_m0(tau):
    """g(tau) = M_total / (4 pi rho_s r_s^3) of a truncated NFW halo (Baltz et al. 2009)."""
    tau = np.asarray(tau, dtype=float)
    t2 = tau * tau
    return t2 / (t2 + 1) ** 2 * ((t2 - 1) * np.log(tau) + np.pi * tau - (t2 + 1))


def lenstronomy_m200(mass, concentration, tau):
    """The (M200, c) that lenstronomy's ``LensCosmo.nfw_physical2angle`` needs for the same halo.

    ``mass``: total truncated masses (M_sun, this module's convention); ``concentration``: their
    c_200c (:func:`concentration_duffy08` at the lens redshift); ``tau`` = r_t / r_s. Solves
    c'^3 / mu(c') = c^3 / g(tau) by bisection in ln c' (mu(c) = ln(1 + c) - c / (1 + c); the left
    side increases with c') and returns (M200 = m (c' / c)^3, c'), arrays shaped like ``mass``.
    """
    mass, c, tau = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (mass, concentration, tau)))
    target = np.log(c**3 / tnfw_total_over_m0(tau))

    def log_ratio(x):  # ln(c'^3 / mu(c')) at c' = e^x
        cp = np.exp(x)
        return 3 * x - np.log(np.log1p(cp) - cp / (1 + cp))

    lo, hi = np.full_like(c, math.log(1e-4)), np.full_like(c, math.log(1e5))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = log_ratio(mid) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    c_prime = np.exp(0.5 * (lo + hi))
    return mass * (c_prime / c) ** 3, c_prime


def lenstronomy_tnfw_kwargs(population: SubhaloPopulation) -> list[dict[str, float]]:
    """lenstronomy ``TNFW`` keyword arguments (angles in arcsec) of each subhalo of ``population``.

    ``alpha_Rs`` is the deflection at Rs of the untruncated NFW of the same rho_s: with
    rho_s in lensing units theta_e2 / (4 Rs^3 g(tau)), alpha_Rs = 4 rho_s Rs^2 (1 + ln(1/2)).
    """
    g = tnfw_total_over_m0(population.tau)
    alpha_rs = population.theta_e2 * (1 + math.log(0.5)) / (population.r_s * g)
    return [
        dict(
            Rs=float(population.r_s[k]),
            alpha_Rs=float(alpha_rs[k]),
            r_trunc=float(population.tau[k] * population.r_s[k]),
            center_x=float(population.x[k]),
            center_y=float(population.y[k]),
        )
        for k in range(len(population))
    ]
