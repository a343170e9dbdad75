"""Torch view of a :class:`~cosmosbi.simulators.priors.Prior`, for sbi and torch code."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints

from cosmosbi.torch_runtime import torch_generator


class TorchPrior(Distribution):
    """Product of independent marginals as a torch distribution with event shape (D,).

    ``sample`` uses inverse-CDF sampling from the global or a given torch generator;
    ``log_prob`` returns -inf outside the support. ``support`` is the (possibly unbounded)
    box, which lets sbi reject posterior samples that leave it.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, prior, device: str = "cpu", validate_args: bool = False):
        self.prior = prior
        self._marginals = list(prior.marginals.values())
        self._device = torch.device(device)
        self._low = torch.as_tensor(prior.low, dtype=torch.float32, device=self._device)
        self._high = torch.as_tensor(prior.high, dtype=torch.float32, device=self._device)
        super().__init__(
            batch_shape=torch.Size(),
            event_shape=torch.Size([prior.dim]),
            validate_args=validate_args,
        )

    @property
    def support(self):
        return constraints.independent(constraints.interval(self._low, self._high), 1)

    @property
    def mean(self) -> torch.Tensor:
        u = torch.rand(20000, self.prior.dim, generator=torch_generator(0))
        return self._from_uniform(u.to(self._device)).mean(0)

    @property
    def variance(self) -> torch.Tensor:
        u = torch.rand(20000, self.prior.dim, generator=torch_generator(0))
        return self._from_uniform(u.to(self._device)).var(0)

    def _from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        # keep u away from 0 and 1 so unbounded marginals stay finite
        u = u.clamp(1e-7, 1 - 1e-7)
        cols = [m.icdf_torch(u[..., j]) for j, m in enumerate(self._marginals)]
        return torch.stack(cols, dim=-1).to(torch.float32)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        u = torch.rand(shape, dtype=torch.float64, device=self._device, generator=generator)
        return self._from_uniform(u)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value, device=self._device)
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"expected theta with last dimension {self.prior.dim}, got shape {tuple(value.shape)}")
        x = value.to(torch.float64)
        total = sum(m.log_prob_torch(x[..., j]) for j, m in enumerate(self._marginals))
        total = torch.where(torch.isnan(total), torch.full_like(total, -math.inf), total)
        return total.to(value.dtype if value.is_floating_point() else torch.float32)
