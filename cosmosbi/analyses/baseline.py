"""The power-spectrum baseline of a full-field analysis (the work of the ``baseline`` stage,
:mod:`cosmosbi.stages.baseline`).

For a set of test observations with known parameters, the posterior of the trained
full-field estimator (e.g. HEALPix CNN summaries + NPE) is compared with the posterior of a
Gaussian likelihood of bandpowers, the standard two-point analysis:

- data vector: binned power spectra of the observation (:func:`bandpower_vector`): tomographic
  auto and cross pseudo-C_ell on the footprint (``healpix_bandpowers``) or the isotropic power
  spectrum of a flat periodic field (``power_spectrum``). With ``transform: log_auto`` the
  auto-spectrum bandpowers (positive by construction) enter as logarithms, which makes their
  covariance nearly independent of the parameters; cross-spectra stay linear.
- mean mu(theta): a polynomial emulator in the (standardised) parameters fitted by least
  squares to the bandpowers of the training simulations (:class:`PolynomialMean`). Pseudo-C_ell
  of a lognormal field on a masked sky with noise has no exact closed-form mean, and an emulator
  of the simulated mean is what analyses of simulated maps commonly use; its accuracy is
  reported: the mean chi^2 per bandpower of held-out simulations, which is (n - 1) / (n - B - 2)
  (n fiducial simulations, B bandpowers) when the emulator and the covariance describe them.
- covariance: from simulations at one fixed parameter point (the ``fiducial`` dataset), with the
  Hartlap or Sellentin-Heavens correction (:class:`~cosmosbi.estimators.baselines.GaussianBandpowerLikelihood`),
  sampled with emcee.

Reported per observation and on average: the ratio of the posterior areas in a parameter pair
(Gaussian-equivalent area, pi sqrt(det Cov) per unit chi^2, from the samples' covariance) and
the ratio of the standard deviations of a derived parameter (S_8), power spectrum over full
field (a ratio above 1: the full field constrains better). Calibration of both posteriors is
checked on the same observations: the fraction of true values inside the 68% and 95% marginal
central intervals and the joint (pair) highest-density regions, with binomial errors, and a
Kolmogorov-Smirnov test of the probability-integral-transform values of the truth.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["bandpower_vector", "PolynomialMean", "pair_area", "truth_levels", "compare_posteriors", "default_bin_edges"]


# ----------------------------------------------------------------------------- data vector


def bandpower_vector(
    x: np.ndarray, summary: str, bin_edges, *, simulator=None, transform: str = "log_auto"
) -> np.ndarray:
    """Bandpower data vectors (N, B) of simulator outputs x.

    Args:
        x: ``healpix_bandpowers``: maps (N, C, P) or (N, P) on the simulator's footprint;
            ``power_spectrum``: flat periodic fields (N, n, n).
        summary: ``"healpix_bandpowers"`` or ``"power_spectrum"``.
        bin_edges: multipole band edges (healpix) or wavenumber bin edges (flat).
        simulator: needed for ``healpix_bandpowers`` (its ``nside`` and footprint ``pixels``).
        transform: ``"log_auto"`` (log of auto-spectrum bandpowers) or ``"none"``.

    Returns:
        (N, B): for healpix, pairs-major (every band of pair (0, 0), then (0, 1), ...).
    """
    from cosmosbi.compressors.summaries import flat_power_spectrum, healpix_bandpowers

    if transform not in ("log_auto", "none"):
        raise ValueError(f"baseline.transform: expected 'log_auto' or 'none', got {transform!r}")
    x = np.asarray(x, dtype=float)
    edges = np.asarray(bin_edges, dtype=float)
    if summary == "healpix_bandpowers":
        if simulator is None or not hasattr(simulator, "nside"):
            raise ValueError(
                "baseline.summary: healpix_bandpowers needs a HEALPix simulator (one with nside and pixels)"
            )
        _, power, pairs = healpix_bandpowers(x, simulator.nside, getattr(simulator, "pixels", None), edges.astype(int))
        auto = np.array([i == j for i, j in pairs])
        if transform == "log_auto":
            power[:, auto] = np.log(np.maximum(power[:, auto], np.finfo(float).tiny))
        return power.reshape(len(power), -1)
    if summary == "power_spectrum":
        power = flat_power_spectrum(x, edges)[1]
        return np.log(np.maximum(power, np.finfo(float).tiny)) if transform == "log_auto" else power
    raise ValueError(f"baseline.summary: expected 'healpix_bandpowers' or 'power_spectrum', got {summary!r}")


def default_bin_edges(summary: str, simulator) -> list[float]:
    """Default bands: 8 equal-width multipole bands over [2, lmax] (healpix), unit-width
    wavenumber bins up to the Nyquist frequency (flat fields)."""
    if summary == "healpix_bandpowers":
        lmax = int(getattr(simulator, "lmax", 2 * simulator.nside))
        return np.unique(np.round(np.linspace(2, lmax + 1, 9))).tolist()
    n = simulator.output_spec[next(iter(simulator.output_spec))].shape[-1]
    return np.arange(0.5, n // 2 + 1.0, 1.0).tolist()


# ----------------------------------------------------------------------------- mean emulator


class PolynomialMean:
    """Least-squares polynomial mu(theta) of total degree ``degree`` in the standardised parameters.

    Args:
        theta: (N, D) parameters of the simulations it is fitted to.
        data: (N, B) their data vectors.
        degree: total polynomial degree (every monomial of degree <= degree).
    """

    def __init__(self, theta: np.ndarray, data: np.ndarray, degree: int = 2):
        theta, data = np.asarray(theta, float), np.asarray(data, float)
        if degree < 1:
            raise ValueError(f"baseline.mean_degree must be at least 1, got {degree}")
        if theta.ndim != 2 or data.ndim != 2 or len(theta) != len(data):
            raise ValueError(
                f"expected theta (N, D) and data (N, B) with the same N, got {theta.shape} and {data.shape}"
            )
        self.degree = int(degree)
        self.center, self.scale = theta.mean(0), np.maximum(theta.std(0), 1e-12)
        self.terms = [
            c for k in range(self.degree + 1) for c in itertools.combinations_with_replacement(range(theta.shape[1]), k)
        ]
        if len(theta) < 2 * len(self.terms):
            raise ValueError(
                f"a degree-{degree} mean in {theta.shape[1]} parameters has {len(self.terms)} coefficients; "
                f"fit it to at least {2 * len(self.terms)} simulations (got {len(theta)})"
            )
        self.coefficients, *_ = np.linalg.lstsq(self._design(theta), data, rcond=None)

    def _design(self, theta: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(theta) - self.center) / self.scale
        return np.stack([np.prod(z[:, list(term)], axis=1) if term else np.ones(len(z)) for term in self.terms], axis=1)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        """mu(theta): (N, D) -> (N, B)."""
        return self._design(theta) @ self.coefficients


# ----------------------------------------------------------------------------- comparisons


def pair_area(samples: np.ndarray, i: int, j: int) -> float:
    """Gaussian-equivalent area of the posterior in parameters (i, j): pi sqrt(det Cov_ij)
    (the 39% region of a Gaussian; ratios are the same for any fixed level)."""
    cov = np.cov(np.asarray(samples)[:, [i, j]], rowvar=False)
    return float(math.pi * math.sqrt(max(np.linalg.det(cov), 0.0)))


def truth_levels(samples: np.ndarray, truth: np.ndarray, pair: tuple[int, int], max_points: int = 1000) -> dict:
    """Where the truth falls in one posterior: per parameter, the fraction of samples below it
    (uniform over observations if calibrated); for the pair, the credibility level of the
    smallest highest-density region that contains it, with the density a Gaussian KDE of the
    pair's first ``max_points`` samples (the fraction of them denser than the truth)."""
    from scipy.stats import gaussian_kde

    samples, truth = np.asarray(samples), np.asarray(truth)
    pit = (samples < truth).mean(axis=0)
    sub = samples[:max_points, list(pair)].T
    kde = gaussian_kde(sub)
    density = kde(sub)
    at_truth = kde(truth[list(pair)][:, None])[0]
    return {"pit": pit.tolist(), "pair_level": float(np.mean(density > at_truth))}


def _coverage_summary(pits: np.ndarray, levels: np.ndarray, names: list[str], pair_label: str) -> dict:
    """Coverage fractions at 68% and 95% with binomial errors, and KS tests of uniformity."""
    from scipy.stats import kstest

    k = len(levels)
    out = {}
    for j, name in enumerate([*names, pair_label]):
        if j < len(names):
            central = np.abs(2 * pits[:, j] - 1)  # level of the smallest central interval holding the truth
        else:
            central = levels
        row = {}
        for level in (0.68, 0.95):
            row[f"coverage_{int(level * 100)}"] = float(np.mean(central <= level))
            row[f"coverage_{int(level * 100)}_error"] = float(math.sqrt(level * (1 - level) / k))
        row["ks_pvalue"] = float(kstest(central, "uniform").pvalue)
        out[name] = row
    return out


def compare_posteriors(
    full: list[np.ndarray],
    baseline: list[np.ndarray],
    theta: np.ndarray,
    names: list[str],
    pair: tuple[str, str],
    derived: dict | None = None,
) -> dict:
    """Area and width ratios (baseline over full field) and calibration of both, over observations.

    Args:
        full, baseline: per observation, posterior samples (n, D) of each method.
        theta: (K, D) true parameters.
        names: parameter names.
        pair: the two parameters whose posterior area is compared.
        derived: {name: function theta (..., D) -> (...)} derived quantities whose standard
            deviations are compared (e.g. S_8).
    """
    derived = derived or {}
    i, j = names.index(pair[0]), names.index(pair[1])
    rows = []
    pits = {"full_field": [], "power_spectrum": []}
    levels = {"full_field": [], "power_spectrum": []}
    for k, (f, b) in enumerate(zip(full, baseline)):
        row = {
            "index": k,
            "theta": theta[k].tolist(),
            "area_full_field": pair_area(f, i, j),
            "area_power_spectrum": pair_area(b, i, j),
        }
        row["area_ratio"] = row["area_power_spectrum"] / row["area_full_field"]
        for name, function in derived.items():
            sf, sb = float(np.std(function(f))), float(np.std(function(b)))
            row[f"{name}_std_full_field"], row[f"{name}_std_power_spectrum"] = sf, sb
            row[f"{name}_std_ratio"] = sb / sf
        for p, name in enumerate(names):
            row[f"{name}_std_ratio"] = float(np.std(b[:, p]) / np.std(f[:, p]))
        for label, s in (("full_field", f), ("power_spectrum", b)):
            t = truth_levels(s, theta[k], (i, j))
            pits[label].append(t["pit"])
            levels[label].append(t["pair_level"])
        rows.append(row)
    ratios = np.array([r["area_ratio"] for r in rows])
    summary = {
        "pair": list(pair),
        "n_observations": len(rows),
        "area_ratio_mean": float(ratios.mean()),
        "area_ratio_median": float(np.median(ratios)),
        "area_ratio_error": float(ratios.std(ddof=1) / math.sqrt(len(ratios))) if len(ratios) > 1 else None,
        "area_ratio_of_means": float(
            np.mean([r["area_power_spectrum"] for r in rows]) / np.mean([r["area_full_field"] for r in rows])
        ),
    }
    for name in [*derived, *names]:
        values = np.array([r[f"{name}_std_ratio"] for r in rows])
        summary[f"{name}_std_ratio_mean"] = float(values.mean())
        summary[f"{name}_std_ratio_median"] = float(np.median(values))
        summary[f"{name}_std_ratio_error"] = (
            float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        )
    pair_label = f"({pair[0]}, {pair[1]}) joint"
    calibration = {
        label: _coverage_summary(np.array(pits[label]), np.array(levels[label]), names, pair_label) for label in pits
    }
    return {"summary": summary, "calibration": calibration, "observations": rows}
