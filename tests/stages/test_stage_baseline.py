"""The baseline stage: its config checks, its key and needs, and what it writes."""

import json

import numpy as np
import pytest
import yaml

from cosmosbi.config import ConfigError, load_config
from cosmosbi.pipeline import plan_stages, run_pipeline


def _config(run_dir, **changes) -> dict:
    config = {
        "run_dir": str(run_dir),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "prior": {"A": {"uniform": [0.5, 2.0]}, "B": {"uniform": [1.0, 3.0]}},
        "datasets": {
            "train": {"n": 400, "seed": 1},
            "test": {"n": 20, "seed": 2},
            "fiducial": {"n": 60, "seed": 3, "fixed": {"A": 1.2, "B": 2.0}},
        },
        "batch_size": 200,
        "estimator": {"kind": "npe", "summary": "power_spectrum", "training": {"max_epochs": 5}, "n_samples": 100},
        "baseline": {"summary": "power_spectrum", "fiducial": "fiducial", "n_test": 3, "n_samples": 200},
    }
    config.update(changes)
    return config


def _write(tmp_path, config) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_baseline_config_is_checked_and_planned_as_a_stage(tmp_path):
    config = load_config(_write(tmp_path, _config(tmp_path / "run")))
    stages = {s.name: s for s in plan_stages(config)}
    assert stages["baseline"].kind == "baseline"
    assert set(stages["baseline"].needs) == {"estimate", "simulate:test", "simulate:fiducial", "simulate:train"}
    data = _config(tmp_path / "run")
    data["baseline"]["n_samples"] = 300
    changed = {s.name: s.key for s in plan_stages(load_config(_write(tmp_path, data)))}
    assert changed["baseline"] != stages["baseline"].key
    assert all(changed[n] == s.key for n, s in stages.items() if n != "baseline")

    bad = [
        ({"fiducial": "nope"}, "baseline.fiducial: no dataset 'nope'"),
        ({"fiducial": "train"}, "must set `fixed`"),
        ({"pair": ["A", "C"]}, "baseline.pair: unknown parameter 'C'"),
        ({"pair": ["A", "A"]}, "two different parameters"),
        ({"correction": "magic"}, "baseline.correction"),
        ({"summary": "peaks"}, "baseline.summary"),
    ]
    for change, message in bad:
        data = _config(tmp_path / "run")
        data["baseline"].update(change)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(_write(tmp_path, data))
    data = _config(tmp_path / "run")
    del data["estimator"]
    with pytest.raises(ConfigError, match="baseline needs an estimator"):
        load_config(_write(tmp_path, data))


def test_baseline_stage_writes_metrics_and_figure(tmp_path):
    config = load_config(_write(tmp_path, _config(tmp_path / "run")))
    outcomes = run_pipeline(config, "c.yaml", progress=False, echo=lambda line: None)
    assert [o["stage"] for o in outcomes][-1] == "baseline"
    metrics = json.loads((tmp_path / "run" / "baseline" / "metrics.json").read_text())
    assert metrics["summary"]["n_observations"] == 3 and metrics["summary"]["pair"] == ["A", "B"]
    assert metrics["n_bandpowers"] == 4 and metrics["fiducial"]["n"] == 60
    assert metrics["mean"]["n_terms"] == 6
    for row in metrics["observations"]:
        assert row["area_ratio"] == pytest.approx(row["area_power_spectrum"] / row["area_full_field"])
    with np.load(tmp_path / "run" / "baseline" / "samples.npz") as f:
        assert f["full_field"].shape == f["power_spectrum"].shape == (3, 200, 2)
    assert (tmp_path / "run" / "baseline" / "triangle.png").stat().st_size > 1000
    again = run_pipeline(config, "c.yaml", progress=False, echo=lambda line: None)
    assert all(o["action"] == "skipped" for o in again)
