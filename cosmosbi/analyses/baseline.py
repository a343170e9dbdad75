"""The power-spectrum baseline of a full-field analysis (``cosmosbi run``'s ``baseline`` stage).

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
import time
from pathlib import Path

import numpy as np

__all__ = ["bandpower_vector", "PolynomialMean", "pair_area", "truth_levels", "compare_posteriors", "baseline_from_config"]


# ----------------------------------------------------------------------------- data vector


def bandpower_vector(x: np.ndarray, summary: str, bin_edges, *, simulator=None, transform: str = "log_auto") -> np.ndarray:
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
            raise ValueError("baseline.summary: healpix_bandpowers needs a HEALPix simulator (one with nside and pixels)")
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
            raise ValueError(f"expected theta (N, D) and data (N, B) with the same N, got {theta.shape} and {data.shape}")
        self.degree = int(degree)
        self.center, self.scale = theta.mean(0), np.maximum(theta.std(0), 1e-12)
        self.terms = [c for k in range(self.degree + 1) for c in itertools.combinations_with_replacement(range(theta.shape[1]), k)]
        if len(theta) < 2 * len(self.terms):
            raise ValueError(f"a degree-{degree} mean in {theta.shape[1]} parameters has {len(self.terms)} coefficients; "
                             f"fit it to at least {2 * len(self.terms)} simulations (got {len(theta)})")
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
    sub = samples[: max_points, list(pair)].T
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


def compare_posteriors(full: list[np.ndarray], baseline: list[np.ndarray], theta: np.ndarray, names: list[str],
                       pair: tuple[str, str], derived: dict | None = None) -> dict:
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
        row = {"index": k, "theta": theta[k].tolist(),
               "area_full_field": pair_area(f, i, j), "area_power_spectrum": pair_area(b, i, j)}
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
        "area_ratio_of_means": float(np.mean([r["area_power_spectrum"] for r in rows]) / np.mean([r["area_full_field"] for r in rows])),
    }
    for name in [*derived, *names]:
        values = np.array([r[f"{name}_std_ratio"] for r in rows])
        summary[f"{name}_std_ratio_mean"] = float(values.mean())
        summary[f"{name}_std_ratio_median"] = float(np.median(values))
        summary[f"{name}_std_ratio_error"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    pair_label = f"({pair[0]}, {pair[1]}) joint"
    calibration = {label: _coverage_summary(np.array(pits[label]), np.array(levels[label]), names, pair_label) for label in pits}
    return {"summary": summary, "calibration": calibration, "observations": rows}


# ----------------------------------------------------------------------------- the stage


def baseline_dir(config) -> Path:
    return Path(config.run_dir) / "baseline"


def baseline_from_config(config, source: str = "config", progress: bool = False) -> Path:
    """Run the ``baseline`` section of ``config``; writes ``RUN_DIR/baseline/metrics.json``, a
    triangle plot ``triangle.png`` (full field vs power spectrum, first observation) and
    ``samples.npz``; returns the path of metrics.json."""
    import matplotlib.pyplot as plt

    from cosmosbi.analyses import plots
    from cosmosbi.analyses.pipeline import DERIVED, _derived, _summaries
    from cosmosbi.estimators.baselines import GaussianBandpowerLikelihood
    from cosmosbi.estimators.io import load_estimator
    from cosmosbi.estimators.pipeline import estimator_dir
    from cosmosbi.files import atomic_path, atomic_write_json
    from cosmosbi.simulators.store import SimulationDataset

    section = config.baseline
    if section is None or config.estimator is None:
        raise ValueError(f"{source}: the baseline stage needs an estimator and a baseline section")
    simulator = config.build_simulator(source)
    names = list(simulator.prior.names)
    pair = tuple(section.pair or names[:2])
    derived = _derived(names, [d for d in DERIVED if set(DERIVED[d][0]) <= set(names)], source)
    edges = section.bin_edges or default_bin_edges(section.summary, simulator)

    def vectors(dataset_name: str, rows=None) -> tuple[np.ndarray, np.ndarray]:
        dataset = SimulationDataset(config.dataset_dir(dataset_name))
        output = section.input or _single_map_output(dataset, source)
        idx = np.arange(len(dataset)) if rows is None else np.arange(min(rows, len(dataset)))
        theta = dataset.theta[idx]
        data = np.concatenate([bandpower_vector(dataset.read(output, idx[a: a + 500]), section.summary, edges,
                                                simulator=simulator, transform=section.transform)
                               for a in range(0, len(idx), 500)])
        return theta, data

    started = time.time()
    theta_fid, fiducial = vectors(section.fiducial)
    theta_mean, data_mean = vectors(section.mean_dataset)
    mean = PolynomialMean(theta_mean, data_mean, section.mean_degree)
    likelihood = GaussianBandpowerLikelihood(mean, fiducial, section.correction)
    theta_test, data_test = vectors(section.test, section.n_test)
    setup_seconds = time.time() - started

    # accuracy of mean and covariance on held-out simulations: chi^2 / B ~ 1 when they describe them
    chi2_test = np.array([likelihood.chi2(t[None], d)[0] for t, d in zip(theta_test, data_test)]) / likelihood.n_bins
    chi2_fid = likelihood.chi2(theta_fid[0][None], fiducial.mean(0))[0] * len(fiducial) / likelihood.n_bins

    rng = np.random.default_rng(section.seed)
    started = time.time()
    baseline_samples, mcmc = [], []
    for d in data_test:
        result = likelihood.sample(d, simulator.prior, section.n_samples, rng)
        baseline_samples.append(result.samples)
        mcmc.append({"acceptance": float(result.acceptance), "converged": bool(result.converged), "n_steps": int(result.n_steps)})
    mcmc_seconds = time.time() - started

    estimator = load_estimator(estimator_dir(config), device=config.estimator.device)
    theta_t, t, _ = _summaries(config, section.test, source)
    if not np.allclose(theta_t[: len(theta_test)], theta_test):
        raise ValueError(f"{source}: the estimator's summaries of {section.test!r} do not match its simulations; rerun the compress stage")
    started = time.time()
    full_samples = list(estimator.sample(section.n_samples, t[: len(theta_test)], rng))
    npe_seconds = time.time() - started

    comparison = compare_posteriors(full_samples, baseline_samples, theta_test, names, pair, derived)
    metrics = {
        "summary_statistic": section.summary,
        "bin_edges": list(map(float, edges)),
        "transform": section.transform,
        "n_bandpowers": likelihood.n_bins,
        "fiducial": {"dataset": section.fiducial, "n": len(fiducial), "theta": theta_fid[0].tolist(),
                     "correction": section.correction, "hartlap_factor": likelihood.hartlap_factor},
        "mean": {"dataset": section.mean_dataset, "n": len(data_mean), "degree": section.mean_degree, "n_terms": len(mean.terms),
                 # with the uncorrected inverse of a covariance from n simulations, E[chi^2] / B = (n - 1) / (n - B - 2)
                 "chi2_per_bandpower_expected": float(1 / likelihood.hartlap_factor),
                 "chi2_per_bandpower_test_mean": float(chi2_test.mean()),
                 "chi2_per_bandpower_test_median": float(np.median(chi2_test)),
                 "chi2_per_bandpower_fiducial_mean_vector": float(chi2_fid)},
        "test": {"dataset": section.test, "n": len(theta_test)},
        "n_samples": section.n_samples,
        "parameters": names,
        "mcmc": {"acceptance_mean": float(np.mean([m["acceptance"] for m in mcmc])),
                 "converged": int(sum(m["converged"] for m in mcmc)), "steps_median": float(np.median([m["n_steps"] for m in mcmc]))},
        "seconds": {"bandpowers": round(setup_seconds, 2), "mcmc": round(mcmc_seconds, 2), "full_field_sampling": round(npe_seconds, 2)},
        **comparison,
    }
    out = baseline_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    with atomic_path(out / "samples.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, theta=theta_test, full_field=np.stack(full_samples), power_spectrum=np.stack(baseline_samples), names=np.array(names))
    figure = plots.corner({"full field (CNN + NPE)": full_samples[0], "power spectrum (Gaussian likelihood)": baseline_samples[0]},
                          names, truth=theta_test[0], title=f"{section.test} simulation 0")
    with atomic_path(out / "triangle.png") as tmp:
        figure.savefig(tmp, format="png", dpi=section.figure_dpi, bbox_inches="tight")
    plt.close(figure)
    return out / "metrics.json"


def _single_map_output(dataset, source: str) -> str:
    """The output to take bandpowers of when ``baseline.input`` is not given: the only
    non-scalar output (e.g. ``kappa``; a derived ``S_8`` column is ignored)."""
    maps = [n for n in dataset.output_names if int(np.prod(dataset.output_spec[n]["shape"])) > 1]
    if len(maps) != 1:
        raise ValueError(f"{source}: baseline.input: the dataset has outputs {list(dataset.output_names)}; name the map to use")
    return maps[0]
