"""A CNN on partial-sky HEALPix maps in NESTED ordering.

Maps enter as x (N, C, P): C channels (e.g. tomographic bins) on the P footprint pixels
``pixels`` (sorted NESTED indices at resolution ``nside``). Layers:

Inside the network tensors are pixels-major, (N, P, C), so that gathers and pooling move
contiguous rows.

- :class:`HealpixConv`: each output pixel sees itself and its 8 neighbours (7 at the few
  pixels where HEALPix has only 7) with one weight per compass direction (SW, W, NW, N, NE,
  E, SE, S, as ``healpy.get_all_neighbours`` orders them); neighbours outside the footprint
  count as zero.
- :class:`HealpixPool`: averages the (up to) four NESTED children of each parent pixel,
  going from nside to nside / 2: in NESTED ordering the parent of pixel p is p // 4.

Symmetry: rotating the sphere by 90 degrees about the polar axis permutes HEALPix pixels
and keeps compass directions, so the convolution and the pooling commute with that pixel
permutation, and the network's output is invariant to it on a full-sky map (tested).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cosmosbi.compressors.normalise import Normalise

__all__ = ["HealpixConv", "HealpixPool", "HealpixCNN", "footprint_ranges", "footprint_from_ranges", "neighbour_table"]


def footprint_ranges(pixels: np.ndarray) -> list[list[int]]:
    """Run-length form [[start, stop), ...] of sorted pixel indices (compact for JSON)."""
    pixels = np.asarray(pixels, dtype=np.int64)
    if pixels.size == 0:
        return []
    breaks = np.nonzero(np.diff(pixels) != 1)[0]
    starts = np.concatenate([[pixels[0]], pixels[breaks + 1]])
    stops = np.concatenate([pixels[breaks] + 1, [pixels[-1] + 1]])
    return [[int(a), int(b)] for a, b in zip(starts, stops)]


def footprint_from_ranges(ranges) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, dtype=np.int64)


def neighbour_table(nside: int, pixels: np.ndarray) -> np.ndarray:
    """(P, 9) positions in ``pixels`` of each pixel and its 8 neighbours; P marks 'outside'."""
    import healpy as hp

    position = np.full(12 * nside * nside, len(pixels), dtype=np.int64)
    position[pixels] = np.arange(len(pixels))
    neighbours = hp.get_all_neighbours(nside, pixels, nest=True).T  # (P, 8), -1 where absent
    table = np.where(neighbours >= 0, position[np.clip(neighbours, 0, None)], len(pixels))
    return np.concatenate([np.arange(len(pixels))[:, None], table], axis=1)


class HealpixConv(nn.Module):
    """Neighbourhood convolution on footprint pixels, pixels-major: (N, P, C_in) -> (N, P, C_out)."""

    def __init__(self, nside: int, pixels: np.ndarray, channels_in: int, channels_out: int, bias: bool = True):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(neighbour_table(nside, pixels)), persistent=False)
        self.weight = nn.Parameter(torch.randn(9, channels_in, channels_out) / np.sqrt(9 * channels_in))
        self.bias = nn.Parameter(torch.zeros(channels_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
        out = x @ self.weight[0]
        for k in range(1, 9):  # one gather per direction keeps memory at (N, P, C)
            out = out + torch.index_select(padded, 1, self.table[:, k]) @ self.weight[k]
        return out if self.bias is None else out + self.bias


class HealpixPool(nn.Module):
    """Mean over the NESTED children present in the footprint: (N, P, C) -> (N, P_parent, C)."""

    def __init__(self, pixels: np.ndarray):
        super().__init__()
        parents, which = np.unique(np.asarray(pixels) // 4, return_inverse=True)
        self.parent_pixels = parents
        counts = np.bincount(which, minlength=len(parents)).astype(np.float32)
        self.register_buffer("which", torch.as_tensor(which, dtype=torch.long), persistent=False)
        self.register_buffer("counts", torch.as_tensor(counts)[:, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], len(self.counts), x.shape[2])
        out.index_add_(1, self.which, x)
        return out / self.counts


class _PixelBatchNorm(nn.BatchNorm1d):
    """Batch norm over batch and pixels for pixels-major tensors (N, P, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class HealpixCNN(nn.Module):
    """CNN for footprint-restricted NESTED maps: x (N, C, P) or (N, P) -> t (N, out_features).

    ``depth`` levels of (conv, batch-norm, GELU) x ``convs`` followed by a pooling to half the
    nside; the width doubles at each level. Global mean and mean-square pooling over the
    remaining pixels, then an MLP head.

    Args:
        nside: resolution of the input maps.
        pixels: sorted NESTED footprint pixels (P,), or None for the full sky; ``config``
            stores them as ``footprint``, run-length [start, stop) pairs.
        in_channels: channels C (e.g. tomographic bins).
        out_features: summary dimension d.
        width: channels of the first level.
        depth: number of conv + pool levels (at most log2(nside)).
        convs: convolutions per level.
    """

    def __init__(
        self,
        nside: int,
        pixels=None,
        in_channels: int = 1,
        out_features: int = 2,
        width: int = 16,
        depth: int = 3,
        convs: int = 2,
    ):
        super().__init__()
        if nside < 1 or nside & (nside - 1):
            raise ValueError(f"healpix_cnn: nside must be a power of two, got {nside}")
        if depth < 1 or 2**depth > nside:
            raise ValueError(
                f"healpix_cnn: depth must be in [1, log2(nside)] = [1, {int(np.log2(nside))}], got {depth}"
            )
        pixels = np.arange(12 * nside**2) if pixels is None else np.asarray(pixels, dtype=np.int64)
        if (
            pixels.ndim != 1
            or pixels.size == 0
            or np.any(np.diff(pixels) <= 0)
            or pixels[0] < 0
            or pixels[-1] >= 12 * nside**2
        ):
            raise ValueError(
                f"healpix_cnn: pixels must be sorted unique NESTED indices in [0, {12 * nside**2}) at nside {nside}"
            )
        self.config = {
            "kind": "healpix_cnn",
            "nside": nside,
            "in_channels": in_channels,
            "out_features": out_features,
            "width": width,
            "depth": depth,
            "convs": convs,
            "footprint": footprint_ranges(pixels),
        }
        self.out_features = out_features
        self.n_pixels = len(pixels)
        self.normalise = Normalise(in_channels)
        layers: list[nn.Module] = []
        channels, level_pixels, level_nside = in_channels, pixels, nside
        for level in range(depth):
            out = width * 2**level
            for _ in range(convs):
                layers += [
                    HealpixConv(level_nside, level_pixels, channels, out, bias=False),
                    _PixelBatchNorm(out),
                    nn.GELU(),
                ]
                channels = out
            pool = HealpixPool(level_pixels)
            layers.append(pool)
            level_pixels, level_nside = pool.parent_pixels, level_nside // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(2 * channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.shape[-1] != self.n_pixels:
            raise ValueError(
                f"healpix_cnn expects maps with {self.n_pixels} footprint pixels, got shape {tuple(x.shape)}"
            )
        h = self.features(self.normalise(x).transpose(1, 2).contiguous())  # (N, P, C)
        return self.head(torch.cat([h.mean(dim=1), h.pow(2).mean(dim=1)], dim=1))
