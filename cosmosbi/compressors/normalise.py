"""The input normalisation every compressor network starts with."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Normalise"]


class Normalise(nn.Module):
    """x -> (x - shift) / scale with per-channel buffers of shape (C,) (broadcast on axis 1).

    The buffers travel with the network's state_dict; they are set from the training data
    (see :func:`cosmosbi.compressors.trainer.make_compressor`).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.shift.view(shape)) / self.scale.view(shape)
