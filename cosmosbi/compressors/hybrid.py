"""Hybrid compressors: the tomographic bandpowers of the maps next to a CNN on the maps.

x -> [standardised log bandpowers, CNN features] -> MLP head -> t (N, out_features).

The bandpower branch computes the classic two-point summary of the maps (the auto and cross
spectra of every pair of channels, i <= j, pairs-major: every band of pair (0, 0), then
(0, 1), ...), exactly as :mod:`cosmosbi.compressors.summaries` does, and transforms it as the
power-spectrum baseline does (``transform: log_auto`` of :func:`cosmosbi.analyses.baseline.bandpower_vector`:
log of the auto-spectra, cross-spectra linear); each feature is then standardised with a shift
and scale set from the training data (:meth:`HybridNetwork.set_bandpower_standardisation`).
The head sees the bandpowers themselves, so the learned summaries can hold all their
information and the CNN branch learns what they miss; both branches train jointly (e.g. with
VMIM). The bandpower branch carries no trainable weights and no gradient.

- :class:`Hybrid2D`: flat periodic maps (N, C, n, n) or (N, n, n); bandpowers from a torch FFT
  with the binning of :func:`~cosmosbi.compressors.summaries.flat_power_spectrum`
  (cross-spectra Re(FFT(x_i) FFT(x_j)^*) / n^2); CNN branch :class:`~cosmosbi.compressors.networks.ResNet2D`.
- :class:`HybridHealpix`: NESTED maps on a footprint (N, C, P) or (N, P); bandpowers are
  :func:`~cosmosbi.compressors.summaries.healpix_bandpowers` (healpy, on the CPU); CNN branch
  :class:`~cosmosbi.compressors.healpix.HealpixCNN`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cosmosbi.compressors.healpix import HealpixCNN, footprint_ranges
from cosmosbi.compressors.networks import ResNet2D, check_positive
from cosmosbi.compressors.normalise import Normalise
from cosmosbi.compressors.summaries import flat_mode_bins, healpix_bandpowers

__all__ = ["HybridNetwork", "Hybrid2D", "HybridHealpix", "FlatBandpowers", "HealpixBandpowers"]


class FlatBandpowers(nn.Module):
    """Auto and cross power spectra of periodic n x n maps: (N, C, n, n) -> (N, C (C + 1) / 2, B).

    Pair (i, j) holds the mean of Re(FFT(x_i)_k FFT(x_j)_k^*) / n^2 over the modes of each
    wavenumber bin (float64); for i = j this is :func:`~cosmosbi.compressors.summaries.flat_power_spectrum`.
    """

    def __init__(self, size: int, channels: int, bin_edges):
        super().__init__()
        which, counts, _ = flat_mode_bins(size, bin_edges)
        used = np.flatnonzero(which >= 0)
        self.size, self.n_bins = size, len(counts)
        self.pairs = [(i, j) for i in range(channels) for j in range(i, channels)]
        self.register_buffer("modes", torch.as_tensor(used), persistent=False)
        self.register_buffer("bins", torch.as_tensor(which[used]), persistent=False)
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.size
        f = torch.fft.fft2(x.detach().to(torch.float64)).reshape(x.shape[0], x.shape[1], n * n)[:, :, self.modes]
        first = torch.tensor([i for i, _ in self.pairs], device=x.device)
        second = torch.tensor([j for _, j in self.pairs], device=x.device)
        power = (f[:, first] * f[:, second].conj()).real / n**2  # (N, pairs, modes)
        sums = power.new_zeros(x.shape[0], len(self.pairs), self.n_bins).index_add_(2, self.bins, power)
        return sums / self.counts


class HealpixBandpowers(nn.Module):
    """Tomographic pseudo-C_ell bandpowers of footprint maps: (N, C, P) -> (N, C (C + 1) / 2, K),
    by :func:`~cosmosbi.compressors.summaries.healpix_bandpowers` (healpy on the CPU, float64)."""

    def __init__(self, nside: int, pixels: np.ndarray, channels: int, ell_edges):
        super().__init__()
        self.nside, self.pixels, self.ell_edges = nside, pixels, np.asarray(ell_edges, dtype=int)
        self.pairs = [(i, j) for i in range(channels) for j in range(i, channels)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = x.detach().to("cpu", torch.float64).numpy()
        _, power, _ = healpix_bandpowers(maps, self.nside, self.pixels, self.ell_edges)
        return torch.as_tensor(power, device=x.device)


class HybridNetwork(nn.Module):
    """Bandpower branch + CNN branch -> MLP head: x -> t (N, out_features).

    ``normalise`` (the input normalisation :func:`~cosmosbi.compressors.trainer.make_compressor`
    sets) is the CNN branch's; the bandpowers are computed from the raw maps.
    """

    def __init__(
        self, bandpowers: nn.Module, cnn: nn.Module, n_bands: int, out_features: int, hidden: int, layers: int
    ):
        super().__init__()
        check_positive(out_features=out_features, hidden=hidden, layers=layers)
        self.out_features = out_features
        self.bandpowers = bandpowers
        self.cnn = cnn
        self.n_bandpowers = len(bandpowers.pairs) * n_bands
        auto = torch.tensor([i == j for i, j in bandpowers.pairs]).repeat_interleave(n_bands)
        self.register_buffer("auto", auto, persistent=False)
        self.bandpower_normalise = Normalise(self.n_bandpowers)
        sizes = [self.n_bandpowers + cnn.out_features] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            body += [nn.Linear(a, b), nn.GELU()]
        self.head = nn.Sequential(*body, nn.Linear(sizes[-1], out_features))

    @property
    def normalise(self) -> Normalise:
        return self.cnn.normalise

    def bandpower_features(self, x: torch.Tensor) -> torch.Tensor:
        """Log-auto bandpower vectors (N, n_pairs * n_bands), float64, before standardisation: the
        data vector of the power-spectrum baseline with ``transform: log_auto``."""
        if x.dim() == self.map_dims:
            x = x.unsqueeze(1)
        power = self.bandpowers(x).reshape(x.shape[0], -1)
        return torch.where(self.auto, torch.log(power.clamp_min(torch.finfo(torch.float64).tiny)), power)

    @torch.no_grad()
    def set_bandpower_standardisation(self, x: torch.Tensor) -> None:
        """Set the bandpower features' shift and scale to their mean and std over maps x (N, ...)."""
        features = self.bandpower_features(x)
        self.bandpower_normalise.shift.copy_(features.mean(0))
        self.bandpower_normalise.scale.copy_(features.std(0).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = self.bandpower_normalise(self.bandpower_features(x)).to(x.dtype)
        return self.head(torch.cat([bands, self.cnn(x)], dim=1))


class Hybrid2D(HybridNetwork):
    """Hybrid compressor for flat periodic maps (N, C, n, n) or (N, n, n) -> t (N, out_features).

    Args:
        size: side n of the maps (pixels).
        in_channels: channels C (e.g. tomographic bins).
        out_features: summary dimension d.
        bin_edges: wavenumber bin edges in units of the fundamental mode (default: unit-width
            bins up to the Nyquist frequency, 0.5, 1.5, ..., n / 2 + 0.5).
        cnn_features: outputs of the CNN branch.
        hidden, layers: width and number of hidden layers of the head.
        width, depth, blocks, periodic, norm, stem_kernel, linear_stem: the CNN branch's
            :class:`~cosmosbi.compressors.networks.ResNet2D` options.
    """

    map_dims = 3

    def __init__(
        self,
        size: int,
        in_channels: int = 1,
        out_features: int = 2,
        bin_edges: list[float] | None = None,
        cnn_features: int = 16,
        hidden: int = 64,
        layers: int = 2,
        width: int = 16,
        depth: int = 3,
        blocks: int = 1,
        periodic: bool = True,
        norm: str = "batch",
        stem_kernel: int = 3,
        linear_stem: bool = False,
    ):
        check_positive(size=size, in_channels=in_channels, cnn_features=cnn_features)
        edges = np.arange(0.5, size // 2 + 1.0, 1.0).tolist() if bin_edges is None else [float(e) for e in bin_edges]
        cnn = ResNet2D(in_channels, cnn_features, width, depth, blocks, periodic, norm, stem_kernel, linear_stem)
        super().__init__(FlatBandpowers(size, in_channels, edges), cnn, len(edges) - 1, out_features, hidden, layers)
        self.config = {
            "kind": "hybrid2d",
            "size": size,
            "in_channels": in_channels,
            "out_features": out_features,
            "bin_edges": edges,
            "cnn_features": cnn_features,
            "hidden": hidden,
            "layers": layers,
            **{k: v for k, v in cnn.config.items() if k not in ("kind", "in_channels", "out_features")},
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[-2:] != (self.bandpowers.size, self.bandpowers.size):
            raise ValueError(
                f"hybrid2d expects {self.bandpowers.size} x {self.bandpowers.size} maps, got shape {tuple(x.shape)}"
            )
        return super().forward(x)


class HybridHealpix(HybridNetwork):
    """Hybrid compressor for NESTED footprint maps (N, C, P) or (N, P) -> t (N, out_features).

    Args:
        nside: resolution of the maps.
        pixels: sorted NESTED footprint pixels (P,), or None for the full sky (``config`` stores
            them as ``footprint`` run-length ranges).
        in_channels: channels C (e.g. tomographic bins).
        out_features: summary dimension d.
        ell_edges: multipole band edges (default: 8 equal-width bands over [2, 2 nside]).
        cnn_features: outputs of the CNN branch.
        hidden, layers: width and number of hidden layers of the head.
        width, depth, convs: the CNN branch's :class:`~cosmosbi.compressors.healpix.HealpixCNN` options.
    """

    map_dims = 2

    def __init__(
        self,
        nside: int,
        pixels=None,
        in_channels: int = 1,
        out_features: int = 2,
        ell_edges: list[int] | None = None,
        cnn_features: int = 16,
        hidden: int = 64,
        layers: int = 2,
        width: int = 16,
        depth: int = 3,
        convs: int = 2,
    ):
        check_positive(in_channels=in_channels, cnn_features=cnn_features)
        cnn = HealpixCNN(nside, pixels, in_channels, cnn_features, width, depth, convs)
        pixels = np.arange(12 * nside**2) if pixels is None else np.asarray(pixels, dtype=np.int64)
        edges = (
            np.unique(np.round(np.linspace(2, 2 * nside + 1, 9))).astype(int).tolist()
            if ell_edges is None
            else [int(e) for e in ell_edges]
        )
        if len(edges) < 2 or edges[0] < 0 or np.any(np.diff(edges) <= 0) or edges[-1] > 3 * nside:
            raise ValueError(
                f"hybrid_healpix: ell_edges must increase from >= 0 to at most 3 nside = {3 * nside}, got {edges}"
            )
        super().__init__(
            HealpixBandpowers(nside, pixels, in_channels, edges), cnn, len(edges) - 1, out_features, hidden, layers
        )
        self.config = {
            "kind": "hybrid_healpix",
            "nside": nside,
            "in_channels": in_channels,
            "out_features": out_features,
            "ell_edges": edges,
            "cnn_features": cnn_features,
            "hidden": hidden,
            "layers": layers,
            "width": width,
            "depth": depth,
            "convs": convs,
            "footprint": footprint_ranges(pixels),
        }
