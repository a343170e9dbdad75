"""Classic summary statistics, used as baselines and as compressor inputs."""

from __future__ import annotations

import numpy as np

__all__ = ["flat_power_spectrum"]


def flat_power_spectrum(x: np.ndarray, bin_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Isotropic power spectrum of periodic n x n fields in bins of wavenumber.

    The wavenumber k = |(k_x, k_y)| is in units of the fundamental mode (integer components),
    and P(k) is normalised as |FFT(x)_k|^2 / n^2, so a field made with spectrum P has
    E[P_hat(k)] = P(k). Modes with k in [edge_b, edge_b+1) fall in bin b; k = 0 is never used.

    Args:
        x: fields (n, n) or (N, n, n).
        bin_edges: increasing wavenumber bin edges (B + 1,).

    Returns:
        k_mean (B,): mean wavenumber of the modes in each bin;
        power (N, B): mean |FFT(x)_k|^2 / n^2 over the modes of each bin;
        counts (B,): number of Fourier modes in each bin.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected fields of shape (n, n) or (N, n, n), got {x.shape}")
    n = x.shape[-1]
    edges = np.asarray(bin_edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin_edges must be a 1-d increasing array of at least 2 edges, got {bin_edges!r}")
    freq = np.fft.fftfreq(n) * n
    k = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).ravel()
    which = np.digitize(k, edges) - 1
    which[(k == 0) | (which < 0) | (which >= edges.size - 1)] = -1
    n_bins = edges.size - 1
    counts = np.bincount(which[which >= 0], minlength=n_bins).astype(float)
    if np.any(counts == 0):
        raise ValueError(f"bin {int(np.argmin(counts))} of {edges.tolist()} holds no Fourier modes of a {n} x {n} grid")
    k_mean = np.bincount(which[which >= 0], weights=k[which >= 0], minlength=n_bins) / counts
    power = (np.abs(np.fft.fft2(x)) ** 2 / n**2).reshape(len(x), -1)
    used = which >= 0
    sums = np.stack([np.bincount(which[used], weights=p[used], minlength=n_bins) for p in power])
    return k_mean, sums / counts, counts
