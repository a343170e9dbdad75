"""Priors over named parameters.

A :class:`Prior` is a product of independent one-dimensional marginals, each attached to a
parameter name. It samples with an explicit numpy ``rng``, evaluates log-densities, checks
bounds with errors that name the offending parameter, and converts to a torch distribution
that ``sbi`` accepts as a prior.

Example::

    prior = BoxUniform(["A", "B"], low=[0.5, 1.0], high=[2.0, 3.0])
    theta = prior.sample(100, np.random.default_rng(0))   # (100, 2)
    prior.log_prob(theta)                                  # (100,)
    prior_torch = prior.to_torch()                         # for sbi
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import special

__all__ = [
    "Marginal",
    "Uniform",
    "LogUniform",
    "Normal",
    "TruncatedNormal",
    "Prior",
    "BoxUniform",
    "Gaussian",
    "prior_from_config",
]


class Marginal:
    """A one-dimensional distribution with numpy and torch versions of its density.

    Subclasses implement ``icdf`` (inverse CDF on u in (0, 1)), ``log_prob`` for numpy
    arrays, ``log_prob_torch`` and ``icdf_torch`` for torch tensors, and the support
    ``low`` / ``high`` (may be infinite).
    """

    low: float = -math.inf
    high: float = math.inf

    def icdf(self, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # abstract

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # abstract

    def icdf_torch(self, u):
        raise NotImplementedError  # abstract

    def log_prob_torch(self, x):
        raise NotImplementedError  # abstract

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError  # abstract

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` values by inverse-CDF sampling. Returns (n,)."""
        return self.icdf(rng.random(n))


@dataclass(frozen=True)
class Uniform(Marginal):
    """Uniform on [low, high]."""

    low: float
    high: float

    def __post_init__(self):
        _check_interval("uniform", self.low, self.high)

    def icdf(self, u):
        return self.low + (self.high - self.low) * u

    def log_prob(self, x):
        x = np.asarray(x, dtype=float)
        inside = (x >= self.low) & (x <= self.high)
        return np.where(inside, -math.log(self.high - self.low), -np.inf)

    def icdf_torch(self, u):
        return self.low + (self.high - self.low) * u

    def log_prob_torch(self, x):
        import torch

        inside = (x >= self.low) & (x <= self.high)
        value = torch.full_like(x, -math.log(self.high - self.low))
        return torch.where(inside, value, torch.full_like(x, -math.inf))

    def to_config(self):
        return {"uniform": [self.low, self.high]}


@dataclass(frozen=True)
class LogUniform(Marginal):
    """Log-uniform on [low, high] (uniform in log x), low > 0."""

    low: float
    high: float

    def __post_init__(self):
        _check_interval("log_uniform", self.low, self.high)
        if self.low <= 0:
            raise ValueError(f"log_uniform needs low > 0, got low={self.low}")

    @property
    def _log_width(self) -> float:
        return math.log(self.high) - math.log(self.low)

    def icdf(self, u):
        return self.low * np.exp(self._log_width * u)

    def log_prob(self, x):
        x = np.asarray(x, dtype=float)
        inside = (x >= self.low) & (x <= self.high)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = -np.log(np.where(inside, x, 1.0)) - math.log(self._log_width)
        return np.where(inside, value, -np.inf)

    def icdf_torch(self, u):
        import torch

        return self.low * torch.exp(self._log_width * u)

    def log_prob_torch(self, x):
        import torch

        inside = (x >= self.low) & (x <= self.high)
        value = -torch.log(torch.where(inside, x, torch.ones_like(x))) - math.log(self._log_width)
        return torch.where(inside, value, torch.full_like(x, -math.inf))

    def to_config(self):
        return {"log_uniform": [self.low, self.high]}


@dataclass(frozen=True)
class Normal(Marginal):
    """Gaussian with mean ``mean`` and standard deviation ``std``."""

    mean: float
    std: float

    def __post_init__(self):
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"normal needs a finite mean and std > 0, got mean={self.mean}, std={self.std}")

    def icdf(self, u):
        return self.mean + self.std * special.ndtri(u)

    def log_prob(self, x):
        z = (np.asarray(x, dtype=float) - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std) - 0.5 * math.log(2 * math.pi)

    def icdf_torch(self, u):
        import torch

        return self.mean + self.std * torch.special.ndtri(u)

    def log_prob_torch(self, x):
        z = (x - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std) - 0.5 * math.log(2 * math.pi)

    def to_config(self):
        return {"normal": [self.mean, self.std]}


@dataclass(frozen=True)
class TruncatedNormal(Marginal):
    """Gaussian (mean, std) truncated to [low, high]; either bound may be infinite."""

    mean: float
    std: float
    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self):
        Normal(self.mean, self.std)  # validates mean and std
        if not self.low < self.high:
            raise ValueError(f"truncated normal needs low < high, got [{self.low}, {self.high}]")
        if self._mass <= 0:
            raise ValueError(f"truncated normal N({self.mean}, {self.std}) has no mass in [{self.low}, {self.high}]")

    @property
    def _cdf_bounds(self) -> tuple[float, float]:
        return (
            float(special.ndtr((self.low - self.mean) / self.std)),
            float(special.ndtr((self.high - self.mean) / self.std)),
        )

    @property
    def _mass(self) -> float:
        a, b = self._cdf_bounds
        return b - a

    def icdf(self, u):
        a, b = self._cdf_bounds
        x = self.mean + self.std * special.ndtri(a + (b - a) * u)
        return np.clip(x, self.low, self.high)

    def log_prob(self, x):
        x = np.asarray(x, dtype=float)
        inside = (x >= self.low) & (x <= self.high)
        value = Normal(self.mean, self.std).log_prob(x) - math.log(self._mass)
        return np.where(inside, value, -np.inf)

    def icdf_torch(self, u):
        import torch

        a, b = self._cdf_bounds
        x = self.mean + self.std * torch.special.ndtri(a + (b - a) * u)
        return torch.clamp(x, self.low, self.high)

    def log_prob_torch(self, x):
        import torch

        inside = (x >= self.low) & (x <= self.high)
        value = Normal(self.mean, self.std).log_prob_torch(x) - math.log(self._mass)
        return torch.where(inside, value, torch.full_like(x, -math.inf))

    def to_config(self):
        return {"normal": [self.mean, self.std], "bounds": [self.low, self.high]}


def _check_interval(kind: str, low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{kind} needs finite low < high, got [{low}, {high}]")


class Prior:
    """Product of independent named marginals.

    Args:
        marginals: mapping parameter name -> :class:`Marginal`, in parameter order.
    """

    def __init__(self, marginals: Mapping[str, Marginal]):
        if not marginals:
            raise ValueError("a prior needs at least one parameter")
        for name, marginal in marginals.items():
            if not isinstance(marginal, Marginal):
                raise TypeError(f"prior parameter {name!r}: expected a Marginal, got {marginal!r}")
        self.marginals: dict[str, Marginal] = dict(marginals)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.marginals)

    @property
    def dim(self) -> int:
        return len(self.marginals)

    @property
    def low(self) -> np.ndarray:
        """Lower bounds of the support, (D,) (may be -inf)."""
        return np.array([m.low for m in self.marginals.values()], dtype=float)

    @property
    def high(self) -> np.ndarray:
        """Upper bounds of the support, (D,) (may be +inf)."""
        return np.array([m.high for m in self.marginals.values()], dtype=float)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` parameter vectors. Returns theta: (n, D) float64."""
        if int(n) != n or n < 0:
            raise ValueError(f"number of prior samples must be a non-negative integer, got {n!r}")
        u = rng.random((int(n), self.dim))
        return np.stack([m.icdf(u[:, j]) for j, m in enumerate(self.marginals.values())], axis=1)

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Log-density of theta: (N, D) or (D,). Returns (N,) or a scalar; -inf outside the support."""
        theta = np.asarray(theta, dtype=float)
        flat = self._as_2d(theta)
        total = sum(m.log_prob(flat[:, j]) for j, m in enumerate(self.marginals.values()))
        return total if theta.ndim == 2 else total[0]

    def contains(self, theta: np.ndarray) -> np.ndarray:
        """Whether each row of theta: (N, D) lies in the support. Returns (N,) bool."""
        flat = self._as_2d(np.asarray(theta, dtype=float))
        return np.all((flat >= self.low) & (flat <= self.high), axis=1) & np.all(np.isfinite(flat), axis=1)

    def check(self, theta: np.ndarray) -> np.ndarray:
        """Return theta as (N, D) float64 or raise ``ValueError`` naming the first bad row and parameter."""
        flat = self._as_2d(np.asarray(theta, dtype=float))
        bad = ~((flat >= self.low) & (flat <= self.high) & np.isfinite(flat))
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            name = self.names[col]
            raise ValueError(
                f"theta[{row}] has {name}={float(flat[row, col])}, outside the prior support "
                f"[{self.low[col]}, {self.high[col]}] of {name!r}"
            )
        return flat

    def _as_2d(self, theta: np.ndarray) -> np.ndarray:
        flat = np.atleast_2d(theta)
        if flat.ndim != 2 or flat.shape[1] != self.dim:
            raise ValueError(
                f"theta must have shape (N, {self.dim}) for parameters {list(self.names)}, got {theta.shape}"
            )
        return flat

    def to_config(self) -> dict[str, dict[str, Any]]:
        """The prior as the config mapping that :func:`prior_from_config` reads."""
        return {name: m.to_config() for name, m in self.marginals.items()}

    def to_torch(self, device: str = "cpu"):
        """A ``torch.distributions.Distribution`` with event shape (D,), usable as an sbi prior."""
        from cosmosbi.simulators.torch_prior import TorchPrior

        return TorchPrior(self, device=device)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.marginals.items())
        return f"Prior({inner})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Prior) and self.marginals == other.marginals


def BoxUniform(names: Sequence[str], low: Sequence[float], high: Sequence[float]) -> Prior:
    """Uniform prior on the box [low, high] over the named parameters."""
    names, low, high = list(names), list(low), list(high)
    if not len(names) == len(low) == len(high):
        raise ValueError(f"BoxUniform: {len(names)} names but {len(low)} lows and {len(high)} highs")
    return Prior({n: Uniform(float(lo), float(hi)) for n, lo, hi in zip(names, low, high)})


def Gaussian(
    names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> Prior:
    """Independent Gaussian prior, truncated to [low, high] when bounds are given."""
    names = list(names)
    d = len(names)
    low = [-math.inf] * d if low is None else list(low)
    high = [math.inf] * d if high is None else list(high)
    if not all(len(v) == d for v in (mean, std, low, high)):
        raise ValueError(f"Gaussian: mean, std, low, high must each have {d} entries for {names}")
    marginals: dict[str, Marginal] = {}
    for n, m, s, lo, hi in zip(names, mean, std, low, high):
        if math.isinf(lo) and math.isinf(hi):
            marginals[n] = Normal(float(m), float(s))
        else:
            marginals[n] = TruncatedNormal(float(m), float(s), float(lo), float(hi))
    return Prior(marginals)


def marginal_from_config(spec: Mapping[str, Any], where: str = "prior") -> Marginal:
    """Build one marginal from its config mapping.

    Accepted forms: ``{uniform: [low, high]}``, ``{log_uniform: [low, high]}``,
    ``{normal: [mean, std]}`` and ``{normal: [mean, std], bounds: [low, high]}`` (truncated;
    use ``.inf`` in YAML for an open side).
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{uniform: [low, high]}}, got {spec!r}")
    keys = set(spec)
    kinds = keys & {"uniform", "log_uniform", "normal"}
    extra = keys - {"uniform", "log_uniform", "normal", "bounds"}
    if len(kinds) != 1 or extra or ("bounds" in keys and kinds != {"normal"}):
        raise ValueError(
            f"{where}: expected exactly one of uniform / log_uniform / normal (normal may add bounds), "
            f"got keys {sorted(keys)}"
        )
    kind = kinds.pop()
    values = _pair(spec[kind], f"{where}.{kind}")
    try:
        if kind == "uniform":
            return Uniform(*values)
        if kind == "log_uniform":
            return LogUniform(*values)
        if "bounds" in spec:
            low, high = _pair(spec["bounds"], f"{where}.bounds")
            return TruncatedNormal(values[0], values[1], low, high)
        return Normal(*values)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _pair(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}: expected a list of two numbers, got {value!r}")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected numbers, got {value!r}") from None


def prior_from_config(spec: Mapping[str, Any], where: str = "prior") -> Prior:
    """Build a :class:`Prior` from ``{name: marginal spec}`` (see :func:`marginal_from_config`)."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{where}: expected a non-empty mapping of parameter name to distribution")
    return Prior({str(k): marginal_from_config(v, f"{where}.{k}") for k, v in spec.items()})
