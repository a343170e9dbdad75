"""The estimators' reference problem: power-spectrum summaries of a Gaussian random field.

The field (:class:`~cosmosbi.simulators.gaussian_field.GaussianField2D`) has an exact
likelihood, so the posterior of any estimator trained on its summaries can be compared with
the exact posterior. The summaries are binned power spectra (bandpowers) in bins of width
one fundamental mode; their theory mean is the mean of P(k) over the Fourier modes of a bin.
"""

from __future__ import annotations

import numpy as np

from cosmosbi.compressors.summaries import flat_power_spectrum
from cosmosbi.simulators.gaussian_field import GaussianField2D

__all__ = ["PowerSpectrumProblem"]


class PowerSpectrumProblem:
    """Gaussian field on an n x n grid summarised by its binned power spectrum.

    Args:
        n_pixels: grid side n.
        model: spectrum model of the field (``"power_law"`` or ``"running_noise"``).
        bin_edges: wavenumber bin edges (B + 1,); default: unit-width bins from 0.5 up to
            the largest |k| of the grid, so that every non-zero mode is used.
    """

    def __init__(self, n_pixels: int = 16, model: str = "power_law", bin_edges: np.ndarray | None = None):
        self.simulator = GaussianField2D(n_pixels=n_pixels, model=model, dtype="float64")
        self.prior = self.simulator.prior
        n = self.simulator.n_pixels
        freq = np.fft.fftfreq(n) * n
        k = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).ravel()
        if bin_edges is None:
            bin_edges = np.arange(0.5, k.max() + 1.0, 1.0)
        self.bin_edges = np.asarray(bin_edges, dtype=float)
        which = np.digitize(k, self.bin_edges) - 1
        used = (k > 0) & (which >= 0) & (which < self.bin_edges.size - 1)
        self._mode_k = k[used]
        self._mode_bin = which[used]
        self.counts = np.bincount(self._mode_bin, minlength=self.bin_edges.size - 1).astype(float)
        if np.any(self.counts == 0):
            raise ValueError(f"bin_edges {self.bin_edges.tolist()}: a bin holds no Fourier modes of the {n} x {n} grid")

    @property
    def n_bins(self) -> int:
        return self.counts.size

    def bandpowers(self, fields: np.ndarray) -> np.ndarray:
        """Binned power of fields: (N, n, n). Returns (N, B)."""
        return flat_power_spectrum(fields, self.bin_edges)[1]

    def summaries(self, fields: np.ndarray) -> np.ndarray:
        """Log-bandpowers of fields: (N, n, n), the estimators' input. Returns (N, B) float32."""
        return np.log(self.bandpowers(fields)).astype(np.float32)

    def theory_bandpowers(self, theta: np.ndarray) -> np.ndarray:
        """Mean bandpower for theta: (N, D): the mean of P(k) over each bin's modes. Returns (N, B)."""
        P = self.simulator.spectrum.power(np.atleast_2d(theta), self._mode_k)
        sums = np.stack([np.bincount(self._mode_bin, weights=row, minlength=self.n_bins) for row in P])
        return sums / self.counts

    def simulate(
        self, n: int, rng: np.random.Generator, theta: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw theta from the prior (or use theta: (n, D)) and simulate fields.

        Returns:
            theta: (n, D) and fields: (n, n_pixels, n_pixels).
        """
        if theta is None:
            theta = self.prior.sample(n, rng)
        fields = self.simulator.simulate(theta, rng)["field"]
        return theta, fields
