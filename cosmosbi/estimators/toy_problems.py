"""Small inference problems with exact reference posteriors, for sequential and joint inference.

- :class:`TwoMoons`: the two-moons problem of the sbi benchmark (Greenberg et al. 2019;
  Lueckmann et al. 2021). Its posterior for one observation is a pair of thin crescents
  (bimodal, strongly non-Gaussian); the likelihood is known in closed form, and
  :meth:`TwoMoons.reference_posterior` samples the exact posterior on a fine grid.
- :class:`GaussianPopulation`: N independent observations x_i = mu + eta_i + e_i in R^2 of
  population parameters mu, each with its own nuisance offset eta_i ~ N(0, tau^2 I) and
  noise e_i ~ N(0, sigma^2 I). With the nuisances marginalised x_i ~ N(mu, (tau^2 + sigma^2) I),
  so the joint posterior of mu under the box prior is N(mean_i x_i, (tau^2 + sigma^2) / N I)
  truncated to the box (:meth:`GaussianPopulation.reference_posterior`).
"""

from __future__ import annotations

import math

import numpy as np

from cosmosbi.simulators.base import OutputSpec, row_generators
from cosmosbi.simulators.priors import BoxUniform

__all__ = ["GaussianPopulation", "TwoMoons"]


class TwoMoons:
    """Two-moons simulator: theta in [-1, 1]^2, output ``x``: (2,).

    x = p + (-|theta_1 + theta_2| / sqrt 2, (theta_2 - theta_1) / sqrt 2), with
    p = (r cos a + 0.25, r sin a), a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2).
    """

    parameter_names = ("theta_1", "theta_2")
    R_MEAN, R_STD = 0.1, 0.01

    def __init__(self):
        self.output_spec = {"x": OutputSpec((2,), "float64")}
        self.prior = BoxUniform(self.parameter_names, [-1.0, -1.0], [1.0, 1.0])

    @staticmethod
    def shift(theta: np.ndarray) -> np.ndarray:
        """The theta-dependent offset of x for theta: (N, 2). Returns (N, 2)."""
        theta = np.atleast_2d(theta)
        return np.stack([-np.abs(theta[:, 0] + theta[:, 1]), theta[:, 1] - theta[:, 0]], axis=1) / math.sqrt(2)

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, 2) -> {"x": (N, 2)}; one Generator per row."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        rngs = row_generators(rng, len(theta))
        draws = np.array(
            [[g.uniform(-math.pi / 2, math.pi / 2), g.normal(self.R_MEAN, self.R_STD)] for g in rngs]
        ).reshape(-1, 2)
        a, r = draws[:, 0], draws[:, 1]
        p = np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1)
        return {"x": p + self.shift(theta)}

    def log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Exact ln p(x | theta) for theta: (N, 2) and x: (2,) or (N, 2). Returns (N,).

        p = x - shift(theta) - (0.25, 0) in polar coordinates (r, a) has density
        N(r; 0.1, 0.01^2) / pi / r for a in (-pi/2, pi/2) (zero elsewhere).
        """
        u = np.atleast_2d(np.asarray(x, dtype=float)) - self.shift(theta) - np.array([0.25, 0.0])
        r = np.hypot(u[:, 0], u[:, 1])
        with np.errstate(divide="ignore"):
            value = (
                -0.5 * ((r - self.R_MEAN) / self.R_STD) ** 2
                - math.log(self.R_STD * math.sqrt(2 * math.pi))
                - math.log(math.pi)
                - np.log(r)
            )
        return np.where(u[:, 0] > 0, value, -np.inf)

    def reference_posterior(self, x: np.ndarray, n: int, rng: np.random.Generator, *, grid: int = 2000) -> np.ndarray:
        """n draws of the exact posterior for one x: (2,), from the density on a grid x grid mesh.

        Each draw picks a cell with probability proportional to the density at its centre and
        a uniform point inside it (cell side 2 / grid, a fifth of the crescents' width at 2000).
        Returns (n, 2).
        """
        edges = np.linspace(-1.0, 1.0, grid + 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        t1, t2 = np.meshgrid(centres, centres, indexing="ij")
        log_p = self.log_likelihood(np.stack([t1.ravel(), t2.ravel()], axis=1), x)
        if not np.isfinite(log_p).any():
            raise ValueError(f"x={np.asarray(x).tolist()}: the likelihood is zero on the whole prior box")
        weights = np.exp(log_p - log_p.max())
        cells = rng.choice(weights.size, size=int(n), p=weights / weights.sum())
        step = edges[1] - edges[0]
        corner = np.stack([edges[cells // grid], edges[cells % grid]], axis=1)
        return corner + step * rng.random((int(n), 2))


class GaussianPopulation:
    """Population means mu in [-2, 2]^2 observed through independent objects with nuisances.

    One simulation is one object: output ``x``: (2,) = mu + eta + e with a per-object nuisance
    offset eta ~ N(0, tau^2 I) and noise e ~ N(0, sigma^2 I).

    Args:
        tau: nuisance scatter; sigma: noise level.
    """

    parameter_names = ("mu_1", "mu_2")

    def __init__(self, tau: float = 0.6, sigma: float = 0.8):
        self.output_spec = {"x": OutputSpec((2,), "float64")}
        self.tau, self.sigma = float(tau), float(sigma)
        self.prior = BoxUniform(self.parameter_names, [-2.0, -2.0], [2.0, 2.0])

    @property
    def scale(self) -> float:
        """Standard deviation of one observation given mu, nuisance marginalised."""
        return math.hypot(self.tau, self.sigma)

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        """theta: (N, 2) -> {"x": (N, 2)}; one Generator per row."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        rngs = row_generators(rng, len(theta))
        noise = np.array([self.tau * g.standard_normal(2) + self.sigma * g.standard_normal(2) for g in rngs]).reshape(
            -1, 2
        )
        return {"x": theta + noise}

    def reference_posterior(self, x_set: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws of the exact joint posterior of mu given x_set: (N, 2) observations. Returns (n, 2)."""
        x_set = np.atleast_2d(np.asarray(x_set, dtype=float))
        mean, std = x_set.mean(0), self.scale / math.sqrt(len(x_set))
        out: list[np.ndarray] = []
        have = 0
        while have < n:
            draws = mean + std * rng.standard_normal((2 * int(n) + 100, 2))
            draws = draws[self.prior.contains(draws)]
            out.append(draws)
            have += len(draws)
        return np.concatenate(out)[: int(n)]
