"""The ``validate`` stage (``cosmosbi validate CONFIG.yaml``): validate the trained estimator and write the report.

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

from cosmosbi.analyses.derived import derived_functions
from cosmosbi.files import read_json
from cosmosbi.stages.base import Declaration, StageType, data_stages
from cosmosbi.stages.data import estimator_data, open_dataset, output_name

__all__ = ["STAGE", "write_validation", "validate"]

HINT = "add the dataset to compressor.apply_to and run `cosmosbi compress`"


def declare(config, dump: dict, layout):
    if config.estimator is None or config.validation is None:
        return
    v = config.validation
    shifted = [config.estimator.dataset, *v.shift] if v.shift else []
    shown = [v.exact_on] if v.exact_on else []
    uses_summaries = config.estimator.summary == "compressor"
    needs = [
        "estimate",
        *data_stages(config, [v.test, *shifted, *shown]),
        *(f"simulate:{n}" for n in [v.test, *shown] if uses_summaries),
    ]
    yield Declaration("validate", {"validation": dump["validation"]}, (layout.validation,), tuple(dict.fromkeys(needs)))


def write_validation(config, layout, source: str = "config", progress: bool = False) -> Path:
    """Run the validation analyses of ``config``; returns the path of the HTML report."""
    from cosmosbi.analyses import plots
    from cosmosbi.analyses.report import Report
    from cosmosbi.analyses.shift import cross_variant_check, mmd_test, ood_scores
    from cosmosbi.analyses.validation import compare_with_exact, posterior_widths, validate_posterior
    from cosmosbi.estimators.io import load_estimator

    section = config.validation
    if section is None or config.estimator is None:
        raise ValueError(f"{source}: `cosmosbi validate` needs an estimator and a validation section")
    for name in [section.test, *section.shift]:
        if name not in config.datasets:
            raise ValueError(f"{source}: validation: no dataset {name!r}; the config defines {list(config.datasets)}")
    simulator = config.build_simulator(source)
    names = list(simulator.prior.names)
    derived = derived_functions(names, section.derived, source)
    estimator = load_estimator(layout.estimator, device=config.estimator.device)  # a Posterior (estimators.posterior)

    rng = np.random.default_rng(section.seed)
    theta, t, raw = estimator_data(config, layout, section.test, source, hint=HINT)
    if section.n_test is not None:
        theta, t = theta[: section.n_test], t[: section.n_test]
        raw = raw[: section.n_test] if raw is not None else None
    started = time.time()
    result = validate_posterior(
        estimator, theta, t, names, rng, n_samples=section.n_samples, derived=derived, alpha=section.alpha
    )
    metrics: dict = {"test_dataset": section.test, "validation": result.to_dict()}

    report = Report(f"Validation of {config.run_dir} ({config.estimator.kind.upper()}, {len(theta)} test simulations)")
    rows = [[n, v, r] for n, v, r in zip(result.sbc.names, result.sbc.verdicts, result.sbc.reasons)]
    if result.coverage is not None:
        rows.append(["HPD regions (joint)", result.coverage.verdict, result.coverage.reason])
    rows.append(["TARP (joint)", result.tarp.verdict, result.tarp.reason])
    report.add_table(
        "Verdicts",
        ["quantity", "verdict", "statistic"],
        rows,
        note=f"{section.n_samples} posterior samples for each of {len(theta)} test simulations; "
        f"significance level {section.alpha}.",
    )

    # how much the data constrain each parameter: posterior widths against the prior's
    widths = posterior_widths(result.samples, simulator.prior, names)
    metrics["posterior_width"] = widths
    report.add_table(
        "Posterior widths",
        ["parameter", "prior std", "posterior std (median)", "posterior std (16-84%)", "median ratio to prior"],
        [
            [
                n,
                w["prior_std"],
                w["posterior_std_median"],
                f"{w['posterior_std_16']:.4g} - {w['posterior_std_84']:.4g}",
                w["ratio_median"],
            ]
            for n, w in widths.items()
        ],
        note="Standard deviation of each test simulation's posterior samples; "
        "a ratio near 1 means the data say little about the parameter.",
    )

    # posteriors of a few observations (of the test set, or of `exact_on`), with the exact posterior where one exists
    shown = section.exact_on or section.test
    shown_theta, shown_samples, shown_raw = theta, result.samples, raw
    if section.exact_on is not None:
        shown_theta, shown_t, shown_raw = estimator_data(config, layout, shown, source, hint=HINT)
        k = min(section.corner, len(shown_theta))
        shown_theta, shown_raw = shown_theta[:k], None if shown_raw is None else shown_raw[:k]
        shown_samples = estimator.sample(section.n_samples, shown_t[:k], rng)
    count = min(section.corner, len(shown_theta))
    corner_figures, exact_rows = [], []
    exact_available = hasattr(simulator, "shell_power") and section.exact and count > 0
    if exact_available and shown_raw is None:  # summaries of a compressor: the exact likelihood needs the fields
        fields = open_dataset(layout.sims(shown), source)
        shown_raw = fields.read(output_name(fields, config.estimator), rows=np.arange(count))
    for i in range(count):
        sets = {"estimator": shown_samples[i]}
        if exact_available:
            from cosmosbi.estimators.baselines import exact_posterior_samples

            exact = exact_posterior_samples(simulator, shown_raw[i], section.n_samples, rng).samples
            sets["exact"] = exact
            comparison = compare_with_exact(shown_samples[i], exact, names, rng)
            metrics.setdefault("exact_comparison", []).append({"dataset": shown, "row": i, **comparison})
            exact_rows.append(
                [
                    f"{shown} {i}",
                    comparison["c2st"],
                    *(f"{comparison[n]['mean_shift_sigma']:+.2f} / {comparison[n]['width_ratio']:.2f}" for n in names),
                ]
            )
        corner_figures.append(plots.corner(sets, names, truth=shown_theta[i], title=f"{shown} simulation {i}"))
    report.add(f"Posteriors of {shown} simulations", "<p>Dashed lines: the true parameters.</p>", corner_figures)
    if exact_rows:
        report.add_table(
            "Comparison with the exact posterior",
            ["simulation", "C2ST", *(f"{n}: mean shift (sigma) / width ratio" for n in names)],
            exact_rows,
            note="C2ST 0.5: indistinguishable from the exact posterior.",
        )

    report.add(
        "Simulation-based calibration", figures=[plots.rank_histograms(result.sbc), plots.ecdf_differences(result.sbc)]
    )
    report.add("Coverage and TARP", figures=[plots.coverage_curves(result.coverage, result.tarp, result.sbc)])

    # domain shift against other datasets (e.g. another simulator variant)
    if section.shift:
        train_theta, train_t, _ = estimator_data(config, layout, config.estimator.dataset, source, hint=HINT)
        variants = {section.test: (theta, t)}
        scores, shift_rows = {section.test: ood_scores(train_t, t)}, []
        for name in section.shift:
            v_theta, v_t, _ = estimator_data(config, layout, name, source, hint=HINT)
            if section.n_test is not None:
                v_theta, v_t = v_theta[: section.n_test], v_t[: section.n_test]
            variants[name] = (v_theta, v_t)
            mmd = mmd_test(train_t[: len(v_t) * 4], v_t, rng)
            scores[name] = ood_scores(train_t, v_t)
            metrics.setdefault("shift", {})[name] = {
                "mmd": mmd.to_dict(),
                "median_ood_pvalue": float(np.median(scores[name])),
            }
            shift_rows.append(
                [name, mmd.mmd2, mmd.pvalue, float(np.median(scores[name])), float(np.mean(scores[name] < 0.01))]
            )
            report.add(
                f"MMD: training vs {name}", figures=[plots.mmd_null(mmd, f"{config.estimator.dataset} vs {name}")]
            )
        report.add_table(
            "Domain shift", ["dataset", "MMD^2", "p-value", "median OOD p-value", "fraction OOD p < 0.01"], shift_rows
        )
        report.add("Out-of-distribution scores", figures=[plots.ood_histogram(scores)])
        try:
            check = cross_variant_check(
                lambda x, n: estimator.sample(n, x, rng),
                variants,
                names,
                n_samples=min(section.n_samples, 500),
                alpha=section.alpha,
            )
        except RuntimeError as err:  # e.g. the posterior of far out-of-distribution data leaves the prior
            metrics["cross_variant"] = {"error": str(err)}
            report.add("Cross-variant check", f"<p>Posterior sampling failed on a variant: {html.escape(str(err))}</p>")
            check = None
    if section.shift and check is not None:
        metrics["cross_variant"] = check
        table = [
            [v, p, row["bias_sigma"], row["coverage_68"], row["coverage_95"], row["sbc_verdict"]]
            for v, params in check["variants"].items()
            for p, row in params.items()
        ]
        report.add_table(
            "Cross-variant check",
            ["dataset", "parameter", "bias (sigma)", "68% coverage", "95% coverage", "SBC"],
            table,
        )
        report.add_table(
            "Robustness",
            ["parameter", "verdict", "reason"],
            [[p, r["verdict"], r["reason"]] for p, r in check["robustness"].items()],
        )

    histories = {}
    compressor_history = layout.compressor / "history.json"
    if compressor_history.is_file():
        histories["compressor"] = read_json(compressor_history)
    summary = getattr(estimator, "summary", None)
    if summary is not None and getattr(summary, "validation_loss", None):
        histories["estimator"] = [{"epoch": k + 1, "val_loss": v} for k, v in enumerate(summary.validation_loss)]
    if histories:
        report.add("Training", figures=[plots.loss_curves(histories)])
    metrics["seconds"] = round(time.time() - started, 2)
    return report.write(layout.validation, metrics)


def validate(config, layout, source: str = "config", *, progress: bool = True) -> str:
    """Write the validation report; returns a one-line summary of its verdicts."""
    path = write_validation(config, layout, source, progress=progress)
    metrics = read_json(path.parent / "metrics.json")
    parts = [f"{name}: SBC {row['verdict']}" for name, row in metrics["validation"]["sbc"].items()]
    for key in ("hpd_coverage", "tarp"):
        if metrics["validation"].get(key):
            parts.append(f"{key}: {metrics['validation'][key]['verdict']}")
    c2st = [c["c2st"] for c in metrics.get("exact_comparison", [])]
    if c2st:
        parts.append(f"C2ST vs exact {', '.join(f'{c:.3f}' for c in c2st)}")
    return "; ".join(parts) + f" -> {path}"


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    return validate(config, layout, source, progress=progress)


STAGE = StageType("validate", "validate", declare, run)
