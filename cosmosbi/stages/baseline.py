"""The ``baseline`` stage: power-spectrum Gaussian-likelihood posteriors of test observations
against the full-field estimator's (:mod:`cosmosbi.analyses.baseline`), into ``RUN_DIR/baseline``
(``metrics.json``, ``samples.npz``, ``triangle.png``).

Key: the baseline section, the estimator's key and the datasets it reads (the fiducial, mean
and test simulations and the estimator's view of the test dataset).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cosmosbi.files import atomic_path, atomic_write_json, read_json
from cosmosbi.stages.base import Declaration, StageType, data_stages
from cosmosbi.stages.data import estimator_data, open_dataset

__all__ = ["STAGE", "write_baseline", "single_map_output", "baseline"]


def declare(config, dump: dict, layout):
    if config.estimator is None or config.baseline is None:
        return
    b = config.baseline
    needs = [
        "estimate",
        *data_stages(config, [b.test]),
        *(f"simulate:{n}" for n in (b.fiducial, b.mean_dataset, b.test)),
    ]
    yield Declaration("baseline", {"baseline": dump["baseline"]}, (layout.baseline,), tuple(dict.fromkeys(needs)))


def write_baseline(config, layout, source: str = "config", progress: bool = False) -> Path:
    """Run the ``baseline`` section of ``config``; writes ``RUN_DIR/baseline/metrics.json``, a
    triangle plot ``triangle.png`` (full field vs power spectrum, first observation) and
    ``samples.npz``; returns the path of metrics.json."""
    import matplotlib.pyplot as plt

    from cosmosbi.analyses import plots
    from cosmosbi.analyses.baseline import PolynomialMean, bandpower_vector, compare_posteriors, default_bin_edges
    from cosmosbi.analyses.derived import DERIVED, derived_functions
    from cosmosbi.estimators.baselines import GaussianBandpowerLikelihood
    from cosmosbi.estimators.io import load_estimator

    section = config.baseline
    if section is None or config.estimator is None:
        raise ValueError(f"{source}: the baseline stage needs an estimator and a baseline section")
    simulator = config.build_simulator(source)
    names = list(simulator.prior.names)
    pair = tuple(section.pair or names[:2])
    derived = derived_functions(names, [d for d in DERIVED if set(DERIVED[d][0]) <= set(names)], source)
    edges = section.bin_edges or default_bin_edges(section.summary, simulator)

    def vectors(dataset_name: str, rows=None) -> tuple[np.ndarray, np.ndarray]:
        dataset = open_dataset(layout.sims(dataset_name), source)
        output = section.input or single_map_output(dataset, source)
        idx = np.arange(len(dataset)) if rows is None else np.arange(min(rows, len(dataset)))
        theta = dataset.theta[idx]
        data = np.concatenate(
            [
                bandpower_vector(
                    dataset.read(output, idx[a : a + 500]),
                    section.summary,
                    edges,
                    simulator=simulator,
                    transform=section.transform,
                )
                for a in range(0, len(idx), 500)
            ]
        )
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
        mcmc.append(
            {
                "acceptance": float(result.acceptance),
                "converged": bool(result.converged),
                "n_steps": int(result.n_steps),
            }
        )
    mcmc_seconds = time.time() - started

    estimator = load_estimator(layout.estimator, device=config.estimator.device)
    theta_t, t, _ = estimator_data(config, layout, section.test, source, hint="run the compress stage first")
    if not np.allclose(theta_t[: len(theta_test)], theta_test):
        raise ValueError(
            f"{source}: the estimator's summaries of {section.test!r} do not match its simulations; "
            "rerun the compress stage"
        )
    started = time.time()
    full_samples = list(estimator.sample(section.n_samples, t[: len(theta_test)], rng))
    npe_seconds = time.time() - started

    comparison = compare_posteriors(full_samples, baseline_samples, theta_test, names, pair, derived)
    metrics = {
        "summary_statistic": section.summary,
        "bin_edges": list(map(float, edges)),
        "transform": section.transform,
        "n_bandpowers": likelihood.n_bins,
        "fiducial": {
            "dataset": section.fiducial,
            "n": len(fiducial),
            "theta": theta_fid[0].tolist(),
            "correction": section.correction,
            "hartlap_factor": likelihood.hartlap_factor,
        },
        "mean": {
            "dataset": section.mean_dataset,
            "n": len(data_mean),
            "degree": section.mean_degree,
            "n_terms": len(mean.terms),
            # with the uncorrected inverse of a covariance from n simulations, E[chi^2] / B = (n - 1) / (n - B - 2)
            "chi2_per_bandpower_expected": float(1 / likelihood.hartlap_factor),
            "chi2_per_bandpower_test_mean": float(chi2_test.mean()),
            "chi2_per_bandpower_test_median": float(np.median(chi2_test)),
            "chi2_per_bandpower_fiducial_mean_vector": float(chi2_fid),
        },
        "test": {"dataset": section.test, "n": len(theta_test)},
        "n_samples": section.n_samples,
        "parameters": names,
        "mcmc": {
            "acceptance_mean": float(np.mean([m["acceptance"] for m in mcmc])),
            "converged": int(sum(m["converged"] for m in mcmc)),
            "steps_median": float(np.median([m["n_steps"] for m in mcmc])),
        },
        "seconds": {
            "bandpowers": round(setup_seconds, 2),
            "mcmc": round(mcmc_seconds, 2),
            "full_field_sampling": round(npe_seconds, 2),
        },
        **comparison,
    }
    out = layout.baseline
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    with atomic_path(out / "samples.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                theta=theta_test,
                full_field=np.stack(full_samples),
                power_spectrum=np.stack(baseline_samples),
                names=np.array(names),
            )
    figure = plots.corner(
        {"full field (CNN + NPE)": full_samples[0], "power spectrum (Gaussian likelihood)": baseline_samples[0]},
        names,
        truth=theta_test[0],
        title=f"{section.test} simulation 0",
    )
    with atomic_path(out / "triangle.png") as tmp:
        figure.savefig(tmp, format="png", dpi=section.figure_dpi, bbox_inches="tight")
    plt.close(figure)
    return out / "metrics.json"


def single_map_output(dataset, source: str) -> str:
    """The output to take bandpowers of when ``baseline.input`` is not given: the only
    non-scalar output (e.g. ``kappa``; a derived ``S_8`` column is ignored)."""
    maps = [n for n in dataset.output_names if int(np.prod(dataset.output_spec[n]["shape"])) > 1]
    if len(maps) != 1:
        raise ValueError(
            f"{source}: baseline.input: the dataset has outputs {list(dataset.output_names)}; name the map to use"
        )
    return maps[0]


def baseline(config, layout, source: str = "config", *, progress: bool = True) -> str:
    """Run the baseline; returns a one-line summary of its area and width ratios."""
    path = write_baseline(config, layout, source, progress=progress)
    s = read_json(path)["summary"]
    parts = [
        f"area ratio ({', '.join(s['pair'])}) power spectrum / full field: mean {s['area_ratio_mean']:.3g}"
        f" +- {s['area_ratio_error'] or 0:.2g}, median {s['area_ratio_median']:.3g}"
        f" over {s['n_observations']} test simulations"
    ]
    if "S_8_std_ratio_mean" in s:
        parts.append(f"S_8 std ratio mean {s['S_8_std_ratio_mean']:.3g}")
    return "; ".join(parts) + f" -> {path}"


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    return baseline(config, layout, source, progress=progress)


STAGE = StageType("baseline", "baseline", declare, run)
