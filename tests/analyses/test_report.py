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
    report.add_table("Verdicts", ["parameter", "SBC", "reason"], [[n, v, r] for n, v, r in zip(s.names, s.verdicts, s.reasons)])
    report.add("Posteriors", figures=[plots.corner({"posterior": samples[0]}, ["a", "b"], truth=theta[0])])
    report.add("Simulation-based calibration", figures=[plots.rank_histograms(s), plots.ecdf_differences(s)])
    report.add("Coverage and TARP", figures=[plots.coverage_curves(c, t, s)])
    report.add("Domain shift", f"<p>MMD p = {mmd.pvalue:.3g}</p>", figures=[plots.mmd_null(mmd), plots.ood_histogram({"target": ood_scores(theta, theta + 1)})])
    report.add("Training", figures=[plots.loss_curves({"compressor": [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.1}, {"epoch": 2, "train_loss": 1.0, "val_loss": 1.2}]})])
    metrics = {"sbc": s.to_dict(), "coverage": c.to_dict(), "tarp": t.to_dict(), "mmd": mmd.to_dict()}
    path = report.write(tmp_path, metrics)
    text = path.read_text()
    for heading in ["Verdicts", "Posteriors", "Simulation-based calibration", "Coverage and TARP", "Domain shift", "Training"]:
        assert f">{heading}</h2>" in text
    assert text.count("data:image/png;base64,") == 7
    assert 'class="calibrated"' in text or 'class="overconfident"' in text or 'class="conservative"' in text
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["sbc"]["a"]["verdict"] in {"calibrated", "overconfident", "conservative"}
    assert 0 <= saved["mmd"]["pvalue"] <= 1
