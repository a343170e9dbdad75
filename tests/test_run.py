"""`cosmosbi run` and `cosmosbi status`: staged analyses that skip, resume and rerun what changed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cosmosbi.cli import main
from cosmosbi.config import SimulateConfig, default_config_path, load_config
from cosmosbi.files import read_json
from cosmosbi.pipeline import plan_stages, run_pipeline, stage_status
from cosmosbi.simulators.store import SimulationDataset

ROOT = Path(__file__).parents[1]


def small_config(run_dir, **changes) -> dict:
    config = {
        "run_dir": str(run_dir),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "prior": {"A": {"uniform": [0.5, 2.0]}, "B": {"uniform": [1.0, 3.0]}},
        "datasets": {"train": {"n": 300, "seed": 1}, "test": {"n": 40, "seed": 2}},
        "batch_size": 100,
        "compressor": {
            "input": "field",
            "network": {"kind": "mlp", "hidden": 16},
            "loss": "mse",
            "train": {"epochs": 2, "batch_size": 64},
        },
        "estimator": {"kind": "npe", "summary": "compressor", "training": {"max_epochs": 5}, "n_samples": 100},
        "validation": {"test": "test", "n_samples": 50, "corner": 0},
    }
    for key, value in changes.items():
        config[key] = value
    return config


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def config_of(data: dict) -> SimulateConfig:
    return SimulateConfig.model_validate(data)


def actions(outcomes) -> dict:
    return {o["stage"]: o["action"] for o in outcomes}


def test_keys_change_only_downstream_of_a_changed_setting(tmp_path):
    base = {s.name: s.key for s in plan_stages(config_of(small_config(tmp_path)))}
    assert list(base) == [
        "simulate:train",
        "simulate:test",
        "compress",
        "summarise:train",
        "summarise:test",
        "estimate",
        "validate",
    ]
    estimator = {**small_config(tmp_path)["estimator"], "seed": 3}
    changed = {s.name: s.key for s in plan_stages(config_of(small_config(tmp_path, estimator=estimator)))}
    assert [n for n in base if base[n] != changed[n]] == ["estimate", "validate"]
    datasets = {"train": {"n": 300, "seed": 1}, "test": {"n": 40, "seed": 9}}
    changed = {s.name: s.key for s in plan_stages(config_of(small_config(tmp_path, datasets=datasets)))}
    assert [n for n in base if base[n] != changed[n]] == ["simulate:test", "summarise:test", "validate"]
    # where things run does not change what they compute
    compressor = {
        **small_config(tmp_path)["compressor"],
        "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "num_threads": 1},
    }
    assert {s.name: s.key for s in plan_stages(config_of(small_config(tmp_path, compressor=compressor)))} == base
    assert {s.name: s.key for s in plan_stages(config_of(small_config(tmp_path, batch_size=7)))} == base


def test_rerun_skips_and_a_changed_setting_reruns_only_what_depends_on_it(tmp_path):
    config = config_of(small_config(tmp_path / "run"))
    first = run_pipeline(config, progress=False, echo=lambda s: None)
    assert set(actions(first).values()) == {"ran"}
    report = tmp_path / "run" / "validation" / "report.html"
    assert report.is_file() and "Simulation-based calibration" in report.read_text()
    assert set(actions(run_pipeline(config, progress=False, echo=lambda s: None)).values()) == {"skipped"}

    estimator = {**small_config(tmp_path)["estimator"], "seed": 3}
    changed = config_of(small_config(tmp_path / "run", estimator=estimator))
    assert actions(run_pipeline(changed, progress=False, echo=lambda s: None)) == {
        "simulate:train": "skipped",
        "simulate:test": "skipped",
        "compress": "skipped",
        "summarise:train": "skipped",
        "summarise:test": "skipped",
        "estimate": "ran",
        "validate": "ran",
    }
    archived = sorted(p.name for p in (tmp_path / "run" / "stages" / "previous").iterdir())
    assert [a.split("-")[0] for a in archived] == ["estimate", "validate"]
    # back to the first settings: the archived artifacts return, nothing is recomputed
    assert set(actions(run_pipeline(config, progress=False, echo=lambda s: None)).values()) == {"skipped"}
    assert report.is_file()
    record = read_json(tmp_path / "run" / "run.json")
    assert len(record["invocations"]) == 4 and record["seeds"]["datasets.train"] == 1
    assert record["created"]["versions"]["numpy"] == np.__version__


def test_raising_n_adds_simulations_and_keeps_the_others(tmp_path):
    config = small_config(tmp_path / "run")
    del config["compressor"], config["estimator"], config["validation"]
    run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    before = SimulationDataset(tmp_path / "run" / "sims" / "train")
    theta = before.theta.copy()
    config["datasets"]["train"]["n"] = 350
    outcome = run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    assert actions(outcome) == {"simulate:train": "ran", "simulate:test": "skipped"}
    after = SimulationDataset(tmp_path / "run" / "sims" / "train")
    assert len(after) == 350 and after.manifest["runs"][-1]["new_simulations"] == 50
    np.testing.assert_array_equal(after.theta[:300], theta)


def test_a_stage_alone_needs_its_inputs(tmp_path):
    config = config_of(small_config(tmp_path / "run"))
    with pytest.raises(ValueError, match="stage compress needs simulate:train"):
        run_pipeline(config, only=["compress"], progress=False, echo=lambda s: None)
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        run_pipeline(config, only=["train"], progress=False, echo=lambda s: None)
    assert actions(run_pipeline(config, only=["simulate"], progress=False, echo=lambda s: None)) == {
        "simulate:train": "ran",
        "simulate:test": "ran",
    }
    assert [r["state"] for r in stage_status(tmp_path / "run")] == ["done"] * 2 + ["pending"] * 5


def test_run_and_status_commands(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", small_config(tmp_path / "run"))
    assert main(["run", "-q", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[validate]" in out and "7 stage(s) run, 0 skipped" in out
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 7 and "trained NPE" in out
    changed = small_config(tmp_path / "run", estimator={**small_config(tmp_path)["estimator"], "seed": 4})
    assert main(["status", str(tmp_path / "run"), "--config", str(write(tmp_path / "d.yaml", changed))]) == 0
    out = capsys.readouterr().out
    assert out.count(" stale ") == 2 and "would rerun" in out
    assert main(["status", str(tmp_path)]) == 2
    assert "not a `cosmosbi run` directory" in capsys.readouterr().err


def test_observations_from_a_file_and_a_dataset(tmp_path, capsys):
    field = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    np.save(tmp_path / "obs.npy", field)
    config = small_config(
        tmp_path / "run",
        observations={"real": {"file": str(tmp_path / "obs.npy")}, "mock": {"dataset": "test", "index": 2}},
    )
    config["estimator"]["summary"] = "power_spectrum"
    del config["compressor"]
    run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    summary = read_json(tmp_path / "run" / "posterior" / "summary.json")
    assert set(summary) == {"real", "mock"} and set(summary["mock"]) == {"A", "B", "checks"}
    for name in ("real", "mock"):
        assert (tmp_path / "run" / "posterior" / f"{name}.png").is_file()
        chain = np.loadtxt(tmp_path / "run" / "posterior" / f"{name}.txt")
        assert chain.shape == (100, 4)  # weight, -log posterior, A, B
        assert np.all((chain[:, 2] >= 0.5) & (chain[:, 2] <= 2.0))
    # a different observation file reruns only the sample stage
    np.save(tmp_path / "obs.npy", 2 * field)
    assert [
        s
        for s, a in actions(run_pipeline(config_of(config), progress=False, echo=lambda s: None)).items()
        if a == "ran"
    ] == ["sample"]
    bad = {**config, "validation": {"exact_on": "fiducial"}}
    with pytest.raises(ValueError, match="validation.exact_on: no dataset 'fiducial'"):
        load_config(write(tmp_path / "bad.yaml", bad))
    bad = {**config, "observations": {"x": {"file": "a.npy", "dataset": "test"}}}
    path = write(tmp_path / "bad.yaml", bad)
    with pytest.raises(ValueError, match="observations.x: .*exactly one of file or dataset"):
        load_config(path)


def test_quickstart_example_is_the_built_in_default():
    example = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    built_in = yaml.safe_load(default_config_path("quickstart").read_text())
    assert {k: v for k, v in example.items() if k != "run_dir"} == {k: v for k, v in built_in.items() if k != "run_dir"}


def _run_until(command, cwd, ready, timeout=120):
    """Start ``command``, SIGKILL it once ``ready()`` is true; returns whether it was killed mid-way."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.wait()
    return False


def test_killed_run_resumes_without_redoing_finished_work(tmp_path):
    run = tmp_path / "run"
    config = small_config(run, datasets={"train": {"n": 6000, "seed": 1}, "test": {"n": 40, "seed": 2}}, batch_size=200)
    config["simulator"]["options"]["n_pixels"] = 16
    config["compressor"] = {
        "input": "field",
        "network": {"kind": "resnet2d", "width": 4, "depth": 1, "norm": "none"},
        "loss": "mse",
        "train": {"epochs": 4, "batch_size": 256, "patience": 10, "num_threads": 1},
    }
    path = write(tmp_path / "c.yaml", config)
    command = [sys.executable, "-m", "cosmosbi", "run", "-q", str(path)]
    parts = run / "sims" / "train" / "parts"

    # killed while simulating: the parts written survive
    assert _run_until(command, tmp_path, lambda: parts.is_dir() and len(list(parts.glob("part-*.h5"))) >= 1)
    assert [r["state"] for r in stage_status_of(run, config)][:1] == ["interrupted"]
    # killed while training the compressor, after its first checkpoint
    checkpoint = run / "compressor" / "checkpoint.pt"
    assert _run_until(command, tmp_path, checkpoint.is_file, timeout=300)
    simulated = read_json(run / "stages" / "simulate-train.json")
    train = SimulationDataset(run / "sims" / "train")
    assert train.manifest["runs"][-1]["new_simulations"] < 6000  # the second run only finished what was missing

    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "[simulate:train] done earlier" in finished.stdout
    assert read_json(run / "stages" / "simulate-train.json") == simulated
    history = read_json(run / "compressor" / "history.json")
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert [r["state"] for r in stage_status_of(run, config)] == ["done"] * 7


def stage_status_of(run, config):
    return stage_status(run, config_of(config))


def _small_run(tmp_path) -> dict:
    """A run without compressor: simulate:train, simulate:test, estimate, sample."""
    config = small_config(tmp_path / "run", observations={"mock": {"dataset": "test", "index": 0}})
    del config["compressor"], config["validation"]
    config["estimator"]["summary"] = "power_spectrum"
    config["estimator"]["training"]["max_epochs"] = 2
    return config


def test_deleted_or_edited_artifacts_are_found_by_status_and_rerun(tmp_path, capsys):
    config = _small_run(tmp_path)
    run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    run = tmp_path / "run"
    assert "artifacts" in read_json(run / "stages" / "estimate.json")
    (run / "estimator" / "weights.pt").unlink()
    rows = {r["stage"]: r for r in stage_status_of(run, config)}
    assert rows["estimate"]["state"] == "damaged" and "weights.pt: deleted" in rows["estimate"]["problem"]
    assert rows["sample"]["state"] == "done"
    assert main(["status", str(run)]) == 0
    assert "weights.pt: deleted since stage estimate finished: would rerun" in capsys.readouterr().out
    lines = []
    outcome = actions(run_pipeline(config_of(config), progress=False, echo=lines.append))
    # the estimator is fitted again, and what used the old one (the posterior) follows it
    assert outcome == {"simulate:train": "skipped", "simulate:test": "skipped", "estimate": "ran", "sample": "ran"}
    assert any("weights.pt: deleted" in line and "rerunning" in line for line in lines)
    assert [r["state"] for r in stage_status_of(run, config)] == ["done"] * 4
    # a file rewritten with other bytes of the same size is found by its hash
    summary = run / "posterior" / "summary.json"
    summary.write_text(summary.read_text().replace('"mean"', '"MEAN"'))
    assert {r["stage"]: r["state"] for r in stage_status_of(run, config)}["sample"] == "damaged"
    assert actions(run_pipeline(config_of(config), progress=False, echo=lambda s: None))["sample"] == "ran"


def test_a_truncated_simulation_shard_stops_the_run_naming_the_file(tmp_path, capsys):
    config = _small_run(tmp_path)
    run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    shard = next((tmp_path / "run" / "sims" / "train").glob("shard-*.h5"))
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    rows = {r["stage"]: r for r in stage_status_of(tmp_path / "run", config)}
    assert rows["simulate:train"]["state"] == "damaged" and shard.name in rows["simulate:train"]["problem"]
    message = rf"{shard.name}: size \d+ -> \d+ bytes since stage simulate:train finished.*move"
    with pytest.raises(ValueError, match=message):
        run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    path = write(tmp_path / "c.yaml", config)
    assert main(["run", "-q", str(path)]) == 2
    assert shard.name in capsys.readouterr().err


def test_a_malformed_stage_record_is_reported_and_treated_as_not_done(tmp_path, capsys):
    config = _small_run(tmp_path)
    run_pipeline(config_of(config), progress=False, echo=lambda s: None)
    record = tmp_path / "run" / "stages" / "estimate.json"
    record.write_text(json.dumps({"stage": "estimate", "status": "done"}))  # no key
    rows = {r["stage"]: r for r in stage_status_of(tmp_path / "run", config)}
    assert rows["estimate"]["state"] == "malformed" and str(record) in rows["estimate"]["problem"]
    lines = []
    outcome = actions(run_pipeline(config_of(config), progress=False, echo=lines.append))
    assert outcome["estimate"] == "ran" and outcome["sample"] == "ran"
    assert any(str(record) in line and "malformed" in line for line in lines)
    record.write_text("{not json")
    assert {r["stage"]: r["state"] for r in stage_status_of(tmp_path / "run", config)}["estimate"] == "malformed"


def test_status_works_on_a_first_run_killed_before_it_ended(tmp_path, capsys):
    run = tmp_path / "run"
    config = _small_run(tmp_path)
    config["datasets"]["train"]["n"] = 100_000
    path = write(tmp_path / "c.yaml", config)
    command = [sys.executable, "-m", "cosmosbi", "run", "-q", str(path)]
    assert _run_until(command, tmp_path, lambda: (run / "stages" / "simulate-train.json").is_file())
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    # the config file lists its datasets sorted: test (small, done) runs before train (killed)
    assert "simulate:train         interrupted" in out and out.count(" pending ") == 2 and "not finished" in out
    invocation = read_json(run / "run.json")["invocations"][-1]
    assert invocation["finished"] is None
