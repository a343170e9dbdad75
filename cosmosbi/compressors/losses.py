"""Training losses for compressors, all on standardised parameters theta_s (N, D).

- ``vmim``: variational mutual-information maximisation. A conditional normalising flow
  q(theta | t) (a masked autoregressive flow from ``nflows``) is trained jointly with the
  compressor and the loss is -mean log q(theta | t), a lower bound on I(theta; t) up to the
  prior entropy. The summary dimension d is free.
- ``mse``: mean squared error between t (N, D) and theta_s (posterior-mean regression).
- ``gaussian_nll``: the network outputs (mean, log-variance) (N, 2D); the loss is the Gaussian
  negative log-likelihood of theta_s, and the summaries are the means.

``make_loss(kind, parameter_dim, summary_dim)`` builds one; ``network_outputs(kind, D, d)``
says how many outputs the compressor network needs for it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cosmosbi.torch_runtime import seeded_torch

__all__ = ["VMIMLoss", "MSELoss", "GaussianNLLLoss", "make_loss", "network_outputs", "LOSSES"]


class VMIMLoss(nn.Module):
    """-log q(theta_s | t) under a conditional masked autoregressive flow.

    Args:
        parameter_dim: D.
        summary_dim: d (the flow's context size).
        transforms: number of autoregressive transforms.
        hidden: hidden units of each MADE.
    """

    kind = "vmim"

    def __init__(self, parameter_dim: int, summary_dim: int, transforms: int = 4, hidden: int = 64):
        super().__init__()
        from nflows.distributions import StandardNormal
        from nflows.flows import Flow
        from nflows.transforms import CompositeTransform, MaskedAffineAutoregressiveTransform, ReversePermutation

        layers = []
        for _ in range(transforms):
            layers.append(
                MaskedAffineAutoregressiveTransform(
                    features=parameter_dim, hidden_features=hidden, context_features=summary_dim
                )
            )
            if parameter_dim > 1:
                layers.append(ReversePermutation(features=parameter_dim))
        self.flow = Flow(CompositeTransform(layers), StandardNormal([parameter_dim]))
        self.config = {"kind": "vmim", "transforms": transforms, "hidden": hidden}

    def forward(self, t: torch.Tensor, theta_s: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(theta_s, context=t).mean()

    def summaries(self, output: torch.Tensor) -> torch.Tensor:
        return output


class MSELoss(nn.Module):
    """Mean squared error of t against theta_s; t must have D components."""

    kind = "mse"

    def __init__(self, parameter_dim: int, summary_dim: int):
        super().__init__()
        if summary_dim != parameter_dim:
            raise ValueError(
                f"loss 'mse' regresses the parameters: "
                f"summary_dim must equal the {parameter_dim} parameters, got {summary_dim}"
            )
        self.config = {"kind": "mse"}

    def forward(self, t: torch.Tensor, theta_s: torch.Tensor) -> torch.Tensor:
        return (t - theta_s).pow(2).sum(1).mean()

    def summaries(self, output: torch.Tensor) -> torch.Tensor:
        return output


class GaussianNLLLoss(nn.Module):
    """Gaussian negative log-likelihood; the network outputs (mean, log-variance) of theta_s."""

    kind = "gaussian_nll"

    def __init__(self, parameter_dim: int, summary_dim: int):
        super().__init__()
        if summary_dim != parameter_dim:
            raise ValueError(
                f"loss 'gaussian_nll' predicts the parameters: "
                f"summary_dim must equal the {parameter_dim} parameters, got {summary_dim}"
            )
        self.dim = parameter_dim
        self.config = {"kind": "gaussian_nll"}

    def forward(self, output: torch.Tensor, theta_s: torch.Tensor) -> torch.Tensor:
        mean, log_var = output[:, : self.dim], output[:, self.dim :].clamp(-15, 15)
        nll = 0.5 * ((theta_s - mean).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi))
        return nll.sum(1).mean()

    def summaries(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, : self.dim]


LOSSES = {"vmim": VMIMLoss, "mse": MSELoss, "gaussian_nll": GaussianNLLLoss}


def network_outputs(kind: str, parameter_dim: int, summary_dim: int) -> int:
    """Number of outputs the compressor network needs for loss ``kind``."""
    return 2 * parameter_dim if kind == "gaussian_nll" else summary_dim


def make_loss(kind: str, parameter_dim: int, summary_dim: int, seed: int = 0, **options) -> nn.Module:
    """Build loss ``kind`` (vmim | mse | gaussian_nll) for D parameters and d summaries.

    Trainable parts (the VMIM flow) are initialised from ``seed`` without touching torch's
    global random state.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss: unknown loss {kind!r}; expected one of {sorted(LOSSES)}")
    with seeded_torch(seed):
        return LOSSES[kind](parameter_dim, summary_dim, **options)
