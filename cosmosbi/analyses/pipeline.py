"""``cosmosbi validate CONFIG.yaml``: validate the trained estimator and write the report.

Reads the config's ``validation`` section, the estimator of ``RUN_DIR/estimator`` and the
test dataset (its summaries as the estimator was trained on them), then writes
``RUN_DIR/validation/metrics.json``, ``report.html`` and each of the report's figures as a
PNG file under ``RUN_DIR/validation/figures/`` (named after its section), with:

- posteriors of a few test observations against their true values (GetDist triangle plots),
  with the exact posterior beside them where the simulator has one (the Gaussian-field
  reference problem): C2ST accuracy, shifts of the means and ratios of the widths;
- SBC rank histograms and ECDF differences, HPD coverage and TARP curves, with verdicts;
- posterior widths: the median (and 16-84% range) over the test simulations of each
  parameter's posterior standard deviation, against the prior's;
- domain shift for each dataset listed in ``shift``: MMD test against the training
  summaries, per-observation OOD scores, and the cross-variant table (bias in posterior
  sigma, coverage, SBC) with a robustness verdict per parameter;
- the training-loss curves of the compressor and the estimator.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from cosmosbi.files import read_json

__all__ = ["DERIVED", "posterior_widths", "validate_from_config"]

DERIVED = {
    "S_8": (("Omega_m", "sigma_8"), lambda om, s8: s8 * np.sqrt(om / 0.3)),
}


def _derived(names: list[str], wanted: list[str], source: str) -> dict:
    out = {}
    for name in wanted:
        if name not in DERIVED:
            raise ValueError(f"{source}: validation.derived: unknown quantity {name!r}; known: {sorted(DERIVED)}")
        needs, function = DERIVED[name]
        missing = [p for p in needs if p not in names]
        if missing:
            raise ValueError(f"{source}: validation.derived: {name} needs parameters {list(needs)}; {missing} are not inferred")
        idx = [names.index(p) for p in needs]
        out[name] = lambda t, f=function, i=idx: f(*(t[..., j] for j in i))
    return out


def _summaries(config, dataset_name: str, source: str):
    """theta (M, D) and summaries (M, d) of a dataset, as the estimator was trained on them."""
    from cosmosbi.estimators.pipeline import _output_name, summarise
    from cosmosbi.simulators.store import SimulationDataset

    settings = config.estimator
    if settings.summary == "compressor":
        path = Path(config.run_dir) / "summaries" / dataset_name
        if not (path / "manifest.json").is_file():
            raise ValueError(f"{source}: {path} does not exist; add {dataset_name!r} to compressor.apply_to and run `cosmosbi compress`")
        dataset = SimulationDataset(path)
        return dataset.theta, dataset.read("t"), None
    dataset = SimulationDataset(config.dataset_dir(dataset_name))
    raw = dataset.read(_output_name(dataset, settings))
    return dataset.theta, summarise(raw, settings), raw


def posterior_widths(samples: np.ndarray, prior, names: list[str], n_prior: int = 100_000) -> dict:
    """Posterior standard deviations of test simulations against the prior's.

    samples: (M, L, D) posterior samples of M test simulations; the prior's standard deviation
    is estimated from ``n_prior`` draws (fixed seed). Returns {parameter: {prior_std,
    posterior_std_median, posterior_std_16, posterior_std_84, ratio_median}}.
    """
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[2] != len(names):
        raise ValueError(f"samples must have shape (M, L, {len(names)}), got {samples.shape}")
    prior_std = prior.sample(n_prior, np.random.default_rng(0)).std(axis=0)
    posterior_std = samples.std(axis=1)  # (M, D)
    out = {}
    for j, name in enumerate(names):
        q16, q50, q84 = np.quantile(posterior_std[:, j], [0.16, 0.5, 0.84])
        out[name] = {"prior_std": float(prior_std[j]), "posterior_std_median": float(q50), "posterior_std_16": float(q16),
                     "posterior_std_84": float(q84), "ratio_median": float(q50 / prior_std[j])}
    return out


def validate_from_config(config, source: str = "config", progress: bool = False) -> Path:
    """Run the validation analyses of ``config``; returns the path of the HTML report."""
    from cosmosbi.analyses import plots
    from cosmosbi.analyses.report import Report
    from cosmosbi.analyses.shift import cross_variant_check, mmd_test, ood_scores
    from cosmosbi.analyses.validation import compare_with_exact, validate_posterior
    from cosmosbi.estimators.io import load_estimator
    from cosmosbi.estimators.pipeline import estimator_dir

    section = config.validation
    if section is None or config.estimator is None:
        raise ValueError(f"{source}: `cosmosbi validate` needs an estimator and a validation section")
    for name in [section.test, *section.shift]:
        if name not in config.datasets:
            raise ValueError(f"{source}: validation: no dataset {name!r}; the config defines {list(config.datasets)}")
    simulator = config.build_simulator(source)
    names = list(simulator.prior.names)
    derived = _derived(names, section.derived, source)
    estimator = load_estimator(estimator_dir(config), device=config.estimator.device)
    is_nle = type(estimator).__name__.startswith("NLE")

    class Posterior:
        def sample(self, n, x, rng):
            return estimator.sample(n, x, rng, method="batched") if is_nle else estimator.sample(n, x, rng)

        def log_prob(self, theta, x):
            return estimator.log_prob(theta, x)

    rng = np.random.default_rng(section.seed)
    theta, t, raw = _summaries(config, section.test, source)
    if section.n_test is not None:
        theta, t = theta[: section.n_test], t[: section.n_test]
        raw = raw[: section.n_test] if raw is not None else None
    started = time.time()
    result = validate_posterior(Posterior(), theta, t, names, rng, n_samples=section.n_samples, derived=derived, alpha=section.alpha)
    metrics: dict = {"test_dataset": section.test, "validation": result.to_dict()}

    report = Report(f"Validation of {config.run_dir} ({config.estimator.kind.upper()}, {len(theta)} test simulations)")
    rows = [[n, v, r] for n, v, r in zip(result.sbc.names, result.sbc.verdicts, result.sbc.reasons)]
    if result.coverage is not None:
        rows.append(["HPD regions (joint)", result.coverage.verdict, result.coverage.reason])
    rows.append(["TARP (joint)", result.tarp.verdict, result.tarp.reason])
    report.add_table("Verdicts", ["quantity", "verdict", "statistic"], rows,
                     note=f"{section.n_samples} posterior samples for each of {len(theta)} test simulations; significance level {section.alpha}.")

    # how much the data constrain each parameter: posterior widths against the prior's
    widths = posterior_widths(result.samples, simulator.prior, names)
    metrics["posterior_width"] = widths
    report.add_table("Posterior widths", ["parameter", "prior std", "posterior std (median)", "posterior std (16-84%)", "median ratio to prior"],
                     [[n, w["prior_std"], w["posterior_std_median"], f"{w['posterior_std_16']:.4g} - {w['posterior_std_84']:.4g}", w["ratio_median"]]
                      for n, w in widths.items()],
                     note="Standard deviation of each test simulation's posterior samples; a ratio near 1 means the data say little about the parameter.")

    # posteriors of a few observations (of the test set, or of `exact_on`), with the exact posterior where one exists
    shown = section.exact_on or section.test
    shown_theta, shown_samples, shown_raw = theta, result.samples, raw
    if section.exact_on is not None:
        shown_theta, shown_t, shown_raw = _summaries(config, shown, source)
        k = min(section.corner, len(shown_theta))
        shown_theta, shown_raw = shown_theta[:k], None if shown_raw is None else shown_raw[:k]
        shown_samples = Posterior().sample(section.n_samples, shown_t[:k], rng)
    count = min(section.corner, len(shown_theta))
    corner_figures, exact_rows = [], []
    exact_available = hasattr(simulator, "shell_power") and section.exact and count > 0
    if exact_available and shown_raw is None:  # summaries of a compressor: the exact likelihood needs the fields
        from cosmosbi.estimators.pipeline import _output_name
        from cosmosbi.simulators.store import SimulationDataset

        fields = SimulationDataset(config.dataset_dir(shown))
        shown_raw = fields.read(_output_name(fields, config.estimator), rows=np.arange(count))
    for i in range(count):
        sets = {"estimator": shown_samples[i]}
        if exact_available:
            from cosmosbi.estimators.baselines import exact_posterior_samples

            exact = exact_posterior_samples(simulator, shown_raw[i], section.n_samples, rng).samples
            sets["exact"] = exact
            comparison = compare_with_exact(shown_samples[i], exact, names, rng)
            metrics.setdefault("exact_comparison", []).append({"dataset": shown, "row": i, **comparison})
            exact_rows.append([f"{shown} {i}", comparison["c2st"], *(f"{comparison[n]['mean_shift_sigma']:+.2f} / {comparison[n]['width_ratio']:.2f}" for n in names)])
        corner_figures.append(plots.corner(sets, names, truth=shown_theta[i], title=f"{shown} simulation {i}"))
    report.add(f"Posteriors of {shown} simulations", "<p>Dashed lines: the true parameters.</p>", corner_figures)
    if exact_rows:
        report.add_table("Comparison with the exact posterior", ["simulation", "C2ST", *(f"{n}: mean shift (sigma) / width ratio" for n in names)], exact_rows,
                         note="C2ST 0.5: indistinguishable from the exact posterior.")

    report.add("Simulation-based calibration", figures=[plots.rank_histograms(result.sbc), plots.ecdf_differences(result.sbc)])
    report.add("Coverage and TARP", figures=[plots.coverage_curves(result.coverage, result.tarp, result.sbc)])

    # domain shift against other datasets (e.g. another simulator variant)
    if section.shift:
        train_theta, train_t, _ = _summaries(config, config.estimator.dataset, source)
        variants = {section.test: (theta, t)}
        scores, shift_rows = {section.test: ood_scores(train_t, t)}, []
        for name in section.shift:
            v_theta, v_t, _ = _summaries(config, name, source)
            if section.n_test is not None:
                v_theta, v_t = v_theta[: section.n_test], v_t[: section.n_test]
            variants[name] = (v_theta, v_t)
            mmd = mmd_test(train_t[: len(v_t) * 4], v_t, rng)
            scores[name] = ood_scores(train_t, v_t)
            metrics.setdefault("shift", {})[name] = {"mmd": mmd.to_dict(), "median_ood_pvalue": float(np.median(scores[name]))}
            shift_rows.append([name, mmd.mmd2, mmd.pvalue, float(np.median(scores[name])), float(np.mean(scores[name] < 0.01))])
            report.add(f"MMD: training vs {name}", figures=[plots.mmd_null(mmd, f"{config.estimator.dataset} vs {name}")])
        report.add_table("Domain shift", ["dataset", "MMD^2", "p-value", "median OOD p-value", "fraction OOD p < 0.01"], shift_rows)
        report.add("Out-of-distribution scores", figures=[plots.ood_histogram(scores)])
        try:
            check = cross_variant_check(lambda x, n: Posterior().sample(n, x, rng), variants, names, n_samples=min(section.n_samples, 500), alpha=section.alpha)
        except RuntimeError as err:  # e.g. the posterior of far out-of-distribution data leaves the prior
            metrics["cross_variant"] = {"error": str(err)}
            report.add("Cross-variant check", f"<p>Posterior sampling failed on a variant: {html.escape(str(err))}</p>")
            check = None
    if section.shift and check is not None:
        metrics["cross_variant"] = check
        table = [[v, p, row["bias_sigma"], row["coverage_68"], row["coverage_95"], row["sbc_verdict"]] for v, params in check["variants"].items() for p, row in params.items()]
        report.add_table("Cross-variant check", ["dataset", "parameter", "bias (sigma)", "68% coverage", "95% coverage", "SBC"], table)
        report.add_table("Robustness", ["parameter", "verdict", "reason"], [[p, r["verdict"], r["reason"]] for p, r in check["robustness"].items()])

    histories = {}
    compressor_history = Path(config.run_dir) / "compressor" / "history.json"
    if compressor_history.is_file():
        histories["compressor"] = read_json(compressor_history)
    summary = getattr(estimator, "summary", None)
    if summary is not None and getattr(summary, "validation_loss", None):
        histories["estimator"] = [{"epoch": k + 1, "val_loss": v} for k, v in enumerate(summary.validation_loss)]
    if histories:
        report.add("Training", figures=[plots.loss_curves(histories)])
    metrics["seconds"] = round(time.time() - started, 2)
    return report.write(Path(config.run_dir) / "validation", metrics)
