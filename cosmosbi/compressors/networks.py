"""Compressor networks for flat images and vectors: x -> t of shape (N, d).

- :class:`ResNet2D`: residual CNN for images (N, C, H, W) or (N, H, W).
- :class:`MLP`: fully connected network for vectors (N, F) (or anything flattened to it).

:data:`NETWORKS` also builds ``healpix_cnn`` (:mod:`cosmosbi.compressors.healpix`) and the hybrids
``hybrid2d`` and ``hybrid_healpix`` (bandpowers + CNN, :mod:`cosmosbi.compressors.hybrid`).

Every network takes its normalisation of the input (a per-channel shift and scale, stored as
buffers so that they travel with the state_dict) and is described by a JSON-able dict
(``network.config``) from which :func:`build_network` rebuilds it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from cosmosbi.compressors.healpix import HealpixCNN, footprint_from_ranges
from cosmosbi.compressors.normalise import Normalise

__all__ = ["ResNet2D", "MLP", "build_network", "network_class", "network_options", "check_positive", "NETWORKS"]


def _norm(kind: str, channels: int) -> nn.Module:
    # batch statistics keep the amplitude differences between maps (per-map normalisation
    # such as LayerNorm or GroupNorm would divide out the amplitude of a field)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"network option norm must be 'batch' or 'none', got {kind!r}")


class _ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, padding_mode: str, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(
                channels_in, channels_out, 3, stride=stride, padding=1, padding_mode=padding_mode, bias=norm == "none"
            ),
            _norm(norm, channels_out),
            nn.GELU(),
            nn.Conv2d(channels_out, channels_out, 3, padding=1, padding_mode=padding_mode, bias=norm == "none"),
            _norm(norm, channels_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and channels_in == channels_out
            else nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=norm == "none"), _norm(norm, channels_out)
            )
        )
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class ResNet2D(nn.Module):
    """Residual CNN for images: x (N, C, H, W) or (N, H, W) -> t (N, out_features).

    A stem convolution, then ``depth`` stages of ``blocks`` residual blocks each; every stage
    after the first halves the resolution and doubles the width. Global pooling concatenates
    the mean and the mean square of the feature maps of the stem and of every stage (second
    moments carry the power of a field, and pooling every resolution keeps the small scales
    that downsampling aliases), then a small MLP head maps to ``out_features``. Convolutions use circular
    padding (periodic fields); set ``periodic=False`` for images with edges.

    With ``linear_stem=True`` the stem is a plain convolution (no normalisation, no activation)
    of size ``stem_kernel``: the mean square of each of its channels is then an exactly quadratic
    statistic of the input, sum_k |h_c(k)|^2 |x(k)|^2, a bandpower with a learned window
    |h_c(k)|^2 (for Gaussian fields the sufficient statistics are of this form); the activation
    is applied after the pooling, before the first stage.

    Args:
        in_channels: input channels C (1 for a single map).
        out_features: summary dimension d.
        width: channels of the first stage.
        depth: number of stages.
        blocks: residual blocks per stage.
        periodic: circular (True) or zero (False) padding.
        norm: "batch" (batch normalisation) or "none".
        stem_kernel: odd kernel size of the stem convolution.
        linear_stem: pool the moments of the stem convolution before any normalisation or
            activation (see above).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 2,
        width: int = 16,
        depth: int = 3,
        blocks: int = 1,
        periodic: bool = True,
        norm: str = "batch",
        stem_kernel: int = 3,
        linear_stem: bool = False,
    ):
        super().__init__()
        check_positive(
            in_channels=in_channels,
            out_features=out_features,
            width=width,
            depth=depth,
            blocks=blocks,
            stem_kernel=stem_kernel,
        )
        if stem_kernel % 2 == 0:
            raise ValueError(f"network option stem_kernel must be odd, got {stem_kernel}")
        if not isinstance(linear_stem, bool):
            raise ValueError(f"network option linear_stem must be true or false, got {linear_stem!r}")
        self.config = {
            "kind": "resnet2d",
            "in_channels": in_channels,
            "out_features": out_features,
            "width": width,
            "depth": depth,
            "blocks": blocks,
            "periodic": periodic,
            "norm": norm,
            "stem_kernel": stem_kernel,
            "linear_stem": linear_stem,
        }
        self.out_features = out_features
        self.normalise = Normalise(in_channels)
        pad = "circular" if periodic else "zeros"
        conv = nn.Conv2d(
            in_channels,
            width,
            stem_kernel,
            padding=stem_kernel // 2,
            padding_mode=pad,
            bias=norm == "none" and not linear_stem,
        )
        self.linear_stem = linear_stem
        self.stem = conv if linear_stem else nn.Sequential(conv, _norm(norm, width), nn.GELU())
        self.stem_act = nn.Sequential(_norm(norm, width), nn.GELU()) if linear_stem else nn.Identity()
        self.stages = nn.ModuleList()
        channels, pooled = width, width
        for stage in range(depth):
            out = width * 2**stage
            blocks_here = []
            for b in range(blocks):
                blocks_here.append(_ResidualBlock(channels, out, 2 if stage > 0 and b == 0 else 1, pad, norm))
                channels = out
            self.stages.append(nn.Sequential(*blocks_here))
            pooled += out
        self.head = nn.Sequential(nn.Linear(2 * pooled, 2 * channels), nn.GELU(), nn.Linear(2 * channels, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        h = self.stem(self.normalise(x))
        moments = [h.mean(dim=(2, 3)), h.pow(2).mean(dim=(2, 3))]
        h = self.stem_act(h)
        for stage in self.stages:
            h = stage(h)
            moments += [h.mean(dim=(2, 3)), h.pow(2).mean(dim=(2, 3))]
        return self.head(torch.cat(moments, dim=1))


class MLP(nn.Module):
    """Fully connected network: x (N, in_features) (or (N, ...) flattened) -> t (N, out_features).

    Args:
        in_features: input size F.
        out_features: summary dimension d.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
    """

    def __init__(self, in_features: int, out_features: int = 2, hidden: int = 64, layers: int = 2):
        super().__init__()
        check_positive(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers)
        self.config = {
            "kind": "mlp",
            "in_features": in_features,
            "out_features": out_features,
            "hidden": hidden,
            "layers": layers,
        }
        self.out_features = out_features
        self.normalise = Normalise(in_features)
        sizes = [in_features] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            body += [nn.Linear(a, b), nn.GELU()]
        self.body = nn.Sequential(*body, nn.Linear(sizes[-1], out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalise(x.flatten(1)))


def check_positive(**values: int) -> None:
    """A ValueError naming the first option that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"network option {name} must be a positive integer, got {value!r}")


def _healpix_cnn(footprint=None, **kwargs):
    return HealpixCNN(pixels=None if footprint is None else footprint_from_ranges(footprint), **kwargs)


def _hybrid2d(**kwargs):
    from cosmosbi.compressors.hybrid import Hybrid2D

    return Hybrid2D(**kwargs)


def _hybrid_healpix(footprint=None, **kwargs):
    from cosmosbi.compressors.hybrid import HybridHealpix

    return HybridHealpix(pixels=None if footprint is None else footprint_from_ranges(footprint), **kwargs)


NETWORKS = {
    "resnet2d": ResNet2D,
    "mlp": MLP,
    "healpix_cnn": _healpix_cnn,
    "hybrid2d": _hybrid2d,
    "hybrid_healpix": _hybrid_healpix,
}


def network_class(kind: str) -> type[nn.Module]:
    """The class that builds network ``kind`` (its constructor documents the options)."""
    if kind not in NETWORKS:
        raise ValueError(f"network.kind: unknown network {kind!r}; expected one of {sorted(NETWORKS)}")
    if kind in ("hybrid2d", "hybrid_healpix"):
        from cosmosbi.compressors.hybrid import Hybrid2D, HybridHealpix

        return Hybrid2D if kind == "hybrid2d" else HybridHealpix
    return HealpixCNN if kind == "healpix_cnn" else NETWORKS[kind]


def network_options(kind: str) -> dict[str, inspect.Parameter]:
    """The options a config's ``compressor.network`` may set for network ``kind``: its
    constructor's parameters (annotations resolved), except ``out_features``, which the loss
    and ``summary_dim`` set; the HEALPix networks (``healpix_cnn``, ``hybrid_healpix``) take their
    footprint as ``footprint`` (run-length ranges) instead of ``pixels``."""
    params = dict(inspect.signature(network_class(kind), eval_str=True).parameters)
    if "pixels" in params:
        del params["pixels"]
        params["footprint"] = inspect.Parameter("footprint", inspect.Parameter.KEYWORD_ONLY, default=None)
    del params["out_features"]
    return params


def build_network(config: dict[str, Any]) -> nn.Module:
    """Build a network from its config dict ({"kind": ..., options...}), as saved by ``network.config``."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in NETWORKS:
        raise ValueError(f"network.kind: unknown network {kind!r}; expected one of {sorted(NETWORKS)}")
    try:
        return NETWORKS[kind](**config)
    except TypeError as err:
        raise ValueError(f"network ({kind}): {err}") from None
