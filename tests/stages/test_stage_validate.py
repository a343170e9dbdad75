"""The validate stage: `cosmosbi validate` writes the report, its metrics and its figures."""

import json

import numpy as np
import yaml

from cosmosbi.cli import main


def test_validate_writes_report_and_flags_the_variant(tmp_path, capsys):
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 16}},
        "datasets": {
            "train": {"n": 2000, "seed": 1},
            "test": {"n": 150, "seed": 2},
            # same parameter names, different physics: the spectrum pivots at k = 3.6 instead of 4
            "variant": {
                "n": 150,
                "seed": 3,
                "simulator": {"name": "gaussian_field", "options": {"n_pixels": 16, "k_pivot": 3.6}},
            },
        },
        "estimator": {"kind": "npe", "dataset": "train", "summary": "power_spectrum", "training": {"max_epochs": 60}},
        "validation": {"test": "test", "n_samples": 200, "corner": 1, "shift": ["variant"]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2  # nothing trained yet
    assert main(["simulate", "-q", str(path)]) == 0
    assert main(["train", "-q", str(path)]) == 0
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "C2ST vs exact" in out
    metrics = json.loads((tmp_path / "run" / "validation" / "metrics.json").read_text())
    html = (tmp_path / "run" / "validation" / "report.html").read_text()
    for section in [
        "Verdicts",
        "Posteriors of test simulations",
        "Comparison with the exact posterior",
        "Simulation-based calibration",
        "Coverage and TARP",
        "Domain shift",
        "Cross-variant check",
        "Robustness",
        "Training",
        "Posterior widths",
    ]:
        assert f">{section}</h2>" in html, section
    assert metrics["validation"]["n_test"] == 150
    for name in ["A", "B"]:  # 256 pixels constrain both parameters well inside their priors
        assert metrics["posterior_width"][name]["ratio_median"] < 0.5
    # the pivot change rescales the amplitude A: the variant is detected and A is not robust
    assert metrics["shift"]["variant"]["mmd"]["pvalue"] < 0.01
    assert metrics["cross_variant"]["robustness"]["A"]["verdict"] == "shifted"
    assert abs(metrics["cross_variant"]["variants"]["variant"]["A"]["bias_sigma"]) > 1
    assert metrics["exact_comparison"][0]["c2st"] < 0.75
    assert np.isfinite(metrics["validation"]["tarp"]["atc"])
    # every figure of the report is also a PNG file named after its section
    figures = sorted(p.name for p in (tmp_path / "run" / "validation" / "figures").glob("*.png"))
    assert html.count("data:image/png;base64,") == len(figures)
    for stem in [
        "posteriors-of-test-simulations",
        "simulation-based-calibration-1",
        "simulation-based-calibration-2",
        "coverage-and-tarp",
        "mmd-training-vs-variant",
        "out-of-distribution-scores",
        "training",
    ]:
        assert any(name.endswith(f"-{stem}.png") for name in figures), stem
