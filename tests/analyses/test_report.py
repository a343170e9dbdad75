import json

import numpy as np

from cosmosbi.analyses import plots
from cosmosbi.analyses.calibration import hpd_coverage, sbc, tarp
from cosmosbi.analyses.report import Report
from cosmosbi.analyses.shift import mmd_test, ood_scores


def test_report_has_every_section_and_embedded_figures(tmp_path):
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((200, 2))
    samples = theta[:, None, :] * 0.8 + 0.6 * rng.standard_normal((200, 100, 2))
    lp = -0.5 * np.sum(((samples - samples.mean(1, keepdims=True)) / 0.6) ** 2, -1)
    lt = -0.5 * np.sum(((theta - samples.mean(1)) / 0.6) ** 2, -1)
    s, c, t = sbc(samples, theta, ["a", "b"]), hpd_coverage(lp, lt), tarp(samples, theta, rng)
    mmd = mmd_test(rng.standard_normal((50, 2)), rng.standard_normal((50, 2)) + 1, rng, n_permutations=100)
    report = Report("Validation test")
    report.add_table(
        "Verdicts", ["parameter", "SBC", "reason"], [[n, v, r] for n, v, r in zip(s.names, s.verdicts, s.reasons)]
    )
    report.add("Posteriors", figures=[plots.corner({"posterior": samples[0]}, ["a", "b"], truth=theta[0])])
    report.add("Simulation-based calibration", figures=[plots.rank_histograms(s), plots.ecdf_differences(s)])
    report.add("Coverage and TARP", figures=[plots.coverage_curves(c, t, s)])
    report.add(
        "Domain shift",
        f"<p>MMD p = {mmd.pvalue:.3g}</p>",
        figures=[plots.mmd_null(mmd), plots.ood_histogram({"target": ood_scores(theta, theta + 1)})],
    )
    report.add(
        "Training",
        figures=[
            plots.loss_curves(
                {
                    "compressor": [
                        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1},
                        {"epoch": 2, "train_loss": 1.0, "val_loss": 1.2},
                    ]
                }
            )
        ],
    )
    metrics = {"sbc": s.to_dict(), "coverage": c.to_dict(), "tarp": t.to_dict(), "mmd": mmd.to_dict()}
    path = report.write(tmp_path, metrics)
    text = path.read_text()
    for heading in [
        "Verdicts",
        "Posteriors",
        "Simulation-based calibration",
        "Coverage and TARP",
        "Domain shift",
        "Training",
    ]:
        assert f">{heading}</h2>" in text
    assert text.count("data:image/png;base64,") == 7
    assert 'class="calibrated"' in text or 'class="overconfident"' in text or 'class="conservative"' in text
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["sbc"]["a"]["verdict"] in {"calibrated", "overconfident", "conservative"}
    assert 0 <= saved["mmd"]["pvalue"] <= 1


def test_report_saves_each_figure_as_a_png_named_after_its_section(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(value):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, value])
        return fig

    report = Report("Figures")
    report.add_table("Verdicts", ["parameter", "verdict"], [["a", "calibrated"]])
    report.add("Simulation-based calibration", figures=[figure(1), figure(2)])
    report.add("MMD: training vs simba", figures=[figure(3)])
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "09-stale.png").write_bytes(b"old")
    report.write(tmp_path, {})
    saved = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert saved == [
        "02-simulation-based-calibration-1.png",
        "02-simulation-based-calibration-2.png",
        "03-mmd-training-vs-simba.png",
    ]
    for name in saved:
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the files hold the same images as the report
    import base64

    text = (tmp_path / "report.html").read_text()
    for name in saved:
        assert base64.b64encode((tmp_path / "figures" / name).read_bytes()).decode() in text
