"""The base of the network estimators (NPE, NLE): prior, architecture, training, device, input checks."""

from __future__ import annotations

import numpy as np
import torch

from cosmosbi.estimators.networks import FlowConfig, TrainingConfig, TrainingSummary, train_network
from cosmosbi.simulators.priors import Prior
from cosmosbi.torch_runtime import resolve_device, torch_threads

__all__ = ["NetworkEstimator", "as_tensor"]


def as_tensor(value, device: str = "cpu") -> torch.Tensor:
    """A float32 tensor on ``device`` from a numpy array, list or tensor."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float32), device=device)


class NetworkEstimator:
    """Shared state of NPE and NLE: prior, architecture, training settings, network, device.

    Subclasses set ``kind`` (``"npe"`` or ``"nle"``, the network :func:`train_network` builds) and
    ``default_flow`` / ``default_training``, and implement ``_net_log_prob``.
    """

    kind: str = ""
    default_flow = FlowConfig()
    default_training = TrainingConfig()

    def __init__(
        self,
        prior: Prior,
        flow: FlowConfig | None = None,
        training: TrainingConfig | None = None,
        *,
        embedding_net: torch.nn.Module | None = None,
        device: str = "auto",
    ):
        if not isinstance(prior, Prior):
            raise TypeError(f"prior: expected a cosmosbi Prior, got {type(prior).__name__}")
        self.prior = prior
        self.flow = flow or self.default_flow
        self.training = training or self.default_training
        self.embedding_net = embedding_net
        self.device = resolve_device(device)
        self.network: torch.nn.Module | None = None
        self.summary: TrainingSummary | None = None
        self.x_shape: tuple[int, ...] | None = None

    def fit(self, theta, x, rng: np.random.Generator, *, progress: bool = False):
        """Train on simulations theta: (N, D) and x: (N, ...). Returns self."""
        theta_t, x_t = as_tensor(theta), as_tensor(x)
        if theta_t.ndim != 2 or theta_t.shape[1] != self.prior.dim:
            raise ValueError(f"theta must have shape (N, {self.prior.dim}), got {tuple(theta_t.shape)}")
        if x_t.ndim < 2 or len(x_t) != len(theta_t):
            raise ValueError(
                f"x must have shape (N, ...) with N = {len(theta_t)} rows like theta, got {tuple(x_t.shape)}"
            )
        finite = torch.isfinite(x_t.reshape(len(x_t), -1)).all(1) & torch.isfinite(theta_t).all(1)
        if not finite.all():
            first = int(torch.nonzero(~finite)[0])
            raise ValueError(f"x or theta holds non-finite values in {int((~finite).sum())} rows (first: row {first})")
        self.network, self.summary = train_network(
            self.kind,
            self.flow,
            self.training,
            theta_t,
            x_t,
            rng,
            embedding_net=self.embedding_net,
            device=self.device,
            progress=progress,
        )
        self.x_shape = tuple(x_t.shape[1:])
        return self

    def _threads(self):
        """Context with the configured torch thread count (training.num_threads), for network calls."""
        return torch_threads(self.training.num_threads)

    def _require_network(self) -> torch.nn.Module:
        if self.network is None:
            raise RuntimeError(f"this {type(self).__name__} is not trained: call fit() or load it first")
        return self.network

    def _batch_x(self, x) -> tuple[torch.Tensor, bool]:
        """x as (M, ...) on the device, and whether it was a single observation."""
        if self.x_shape is None:
            raise RuntimeError(f"this {type(self).__name__} is not trained: call fit() or load it first")
        x_t = as_tensor(x, self.device)
        single = x_t.shape == torch.Size(self.x_shape)
        if single:
            x_t = x_t[None]
        if tuple(x_t.shape[1:]) != self.x_shape:
            raise ValueError(f"x must have shape {self.x_shape} or (M, *{self.x_shape}), got {tuple(x_t.shape)}")
        return x_t, single

    def _pairs(self, theta, x) -> tuple[torch.Tensor, torch.Tensor]:
        """theta: (N, D) and x: (N, ...) or one x broadcast to N rows."""
        theta_t = as_tensor(theta, self.device)
        if theta_t.ndim == 1:
            theta_t = theta_t[None]
        if theta_t.ndim != 2 or theta_t.shape[1] != self.prior.dim:
            raise ValueError(f"theta must have shape (N, {self.prior.dim}), got {tuple(theta_t.shape)}")
        x_t, single = self._batch_x(x)
        if single:
            x_t = x_t.expand(len(theta_t), *x_t.shape[1:])
        elif len(x_t) != len(theta_t):
            raise ValueError(f"theta has {len(theta_t)} rows but x has {len(x_t)}; give one x or one per theta")
        return theta_t, x_t

    def _in_support(self, theta_t: torch.Tensor) -> torch.Tensor:
        low = torch.as_tensor(self.prior.low, dtype=theta_t.dtype, device=theta_t.device)
        high = torch.as_tensor(self.prior.high, dtype=theta_t.dtype, device=theta_t.device)
        return ((theta_t >= low) & (theta_t <= high) & torch.isfinite(theta_t)).all(-1)
