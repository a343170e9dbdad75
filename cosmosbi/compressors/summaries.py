"""Classic summary statistics, used as baselines and as compressor inputs."""

from __future__ import annotations

import numpy as np

__all__ = ["flat_mode_bins", "flat_power_spectrum", "healpix_bandpowers", "flat_peak_counts", "healpix_peak_counts"]


def flat_mode_bins(n: int, bin_edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The wavenumber bin of every Fourier mode of an n x n grid (the binning of :func:`flat_power_spectrum`).

    Returns:
        which (n * n,): bin of each mode of ``np.fft.fft2``'s output (raveled), -1 for k = 0
        and modes outside the edges;
        counts (B,): number of modes in each bin;
        k_mean (B,): mean wavenumber (units of the fundamental mode) of the modes in each bin.
    """
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
    return which, counts, k_mean


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
    which, counts, k_mean = flat_mode_bins(n, bin_edges)
    n_bins = len(counts)
    power = (np.abs(np.fft.fft2(x)) ** 2 / n**2).reshape(len(x), -1)
    used = which >= 0
    sums = np.stack([np.bincount(which[used], weights=p[used], minlength=n_bins) for p in power])
    return k_mean, sums / counts, counts


def healpix_bandpowers(
    maps: np.ndarray, nside: int, pixels: np.ndarray | None, ell_edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Tomographic auto and cross angular power spectra in multipole bands, on a footprint.

    Pseudo-C_ell of the maps zero-filled outside the footprint, divided by the sky fraction
    (unbiased for spectra that vary slowly across a band; exact on the full sky).

    Args:
        maps: (N, B, P) or (N, P): B tomographic maps on the P footprint pixels (NESTED).
        nside: HEALPix resolution.
        pixels: footprint pixels (P,) in NESTED ordering; None for the full sky.
        ell_edges: multipole band edges (K + 1,); band k holds edge_k <= ell < edge_k+1.

    Returns:
        ell_mean (K,): mean multipole of each band;
        bandpowers (N, n_pairs, K): mean C_ell over each band for every pair of maps;
        pairs: the (i, j) map pairs, i <= j, in the order of axis 1.
    """
    import healpy as hp

    maps = np.asarray(maps, dtype=float)
    if maps.ndim == 2:
        maps = maps[:, None, :]
    npix = 12 * nside**2
    pixels = np.arange(npix) if pixels is None else np.asarray(pixels)
    if maps.ndim != 3 or maps.shape[-1] != len(pixels):
        raise ValueError(f"expected maps of shape (N, B, {len(pixels)}) on the footprint, got {maps.shape}")
    edges = np.asarray(ell_edges, dtype=int)
    lmax = int(edges[-1]) - 1
    if edges[0] < 0 or np.any(np.diff(edges) <= 0) or lmax > 3 * nside - 1:
        raise ValueError(
            f"ell_edges must increase from >= 0 with the last edge <= 3 nside = {3 * nside}, got {edges.tolist()}"
        )
    fsky = len(pixels) / npix
    n_maps = maps.shape[1]
    pairs = [(i, j) for i in range(n_maps) for j in range(i, n_maps)]
    ell = np.arange(lmax + 1)
    band = np.digitize(ell, edges) - 1
    counts = np.bincount(band[band >= 0], minlength=len(edges) - 1)
    ell_mean = np.bincount(band[band >= 0], weights=ell[band >= 0], minlength=len(edges) - 1) / counts
    out = np.empty((len(maps), len(pairs), len(edges) - 1))
    full = np.zeros((n_maps, npix))
    for n, row in enumerate(maps):
        full[:, pixels] = row
        alms = [hp.map2alm(hp.reorder(m, n2r=True), lmax=lmax, iter=0) for m in full]
        for p, (i, j) in enumerate(pairs):
            cl = hp.alm2cl(alms[i], alms[j], lmax=lmax) / fsky
            out[n, p] = np.bincount(band[band >= 0], weights=cl[band >= 0], minlength=len(edges) - 1) / counts
    return ell_mean, out, pairs


def flat_peak_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram of local maxima (higher than their 8 neighbours, periodic) of images.

    Args:
        x: (N, H, W) or (H, W) maps (e.g. signal-to-noise maps).
        edges: peak-height bin edges (K + 1,).

    Returns:
        counts (N, K).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected images (N, H, W), got shape {x.shape}")
    is_peak = np.ones(x.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:
                is_peak &= x > np.roll(x, (dy, dx), axis=(1, 2))
    return np.stack([np.histogram(img[mask], bins=edges)[0] for img, mask in zip(x, is_peak)])


def healpix_peak_counts(maps: np.ndarray, nside: int, pixels: np.ndarray | None, edges: np.ndarray) -> np.ndarray:
    """Histogram of local maxima of HEALPix maps on a footprint (NESTED).

    A pixel is a peak when it is higher than all its neighbours; pixels with a neighbour
    outside the footprint are never counted.

    Args:
        maps: (N, P) or (N, B, P) maps on the P footprint pixels.
        nside: HEALPix resolution.
        pixels: footprint pixels (P,), NESTED; None for the full sky.
        edges: peak-height bin edges (K + 1,).

    Returns:
        counts (N, K) or (N, B, K).
    """
    from cosmosbi.compressors.healpix import neighbour_table

    maps = np.asarray(maps, dtype=float)
    pixels = np.arange(12 * nside**2) if pixels is None else np.asarray(pixels)
    if maps.shape[-1] != len(pixels):
        raise ValueError(f"maps have {maps.shape[-1]} pixels, the footprint {len(pixels)}")
    table = neighbour_table(nside, pixels)[:, 1:]
    interior = np.all(table < len(pixels), axis=1)
    flat = maps.reshape(-1, len(pixels))
    padded = np.concatenate([flat, np.full((len(flat), 1), np.inf)], axis=1)
    is_peak = np.all(flat[:, :, None] > padded[:, table], axis=2) & interior
    counts = np.stack([np.histogram(m[mask], bins=edges)[0] for m, mask in zip(flat, is_peak)])
    return counts.reshape(*maps.shape[:-1], len(edges) - 1)
