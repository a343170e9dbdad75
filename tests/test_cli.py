import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml

from cosmosbi.cli import main
from cosmosbi.config import ConfigError, default_config_path, load_config
from cosmosbi.simulators.store import SimulationDataset

GOOD = {
    "run_dir": "RUN",
    "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
    "datasets": {"train": {"n": 20, "seed": 1}, "fid": {"n": 5, "seed": 2, "fixed": {"A": 1.0, "B": 2.0}}},
    "batch_size": 8,
}


def write(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_simulate_then_info(tmp_path, capsys):
    config = write(tmp_path, {**GOOD, "run_dir": str(tmp_path / "run")})
    assert main(["simulate", "-q", str(config)]) == 0
    out = capsys.readouterr().out
    assert "train: 20 of 20 simulations stored, 0 failed" in out
    fid = SimulationDataset(tmp_path / "run" / "sims" / "fid")
    np.testing.assert_array_equal(fid.theta, np.tile([1.0, 2.0], (5, 1)))
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "status    complete: 20 simulated, 0 failed, 0 missing of n=20" in out
    assert "field        shape (8, 8)  float32" in out
    assert "theta fixed by the caller" in out
    # rerunning does nothing new
    assert main(["simulate", "-q", str(config), "--dataset", "train"]) == 0
    assert "0 run now" in capsys.readouterr().out


def test_default_config_is_valid_and_runs(tmp_path, capsys):
    config = load_config(default_config_path())
    assert config.simulator.name == "gaussian_field"
    assert main(["simulate", "-q", "--run-dir", str(tmp_path / "default"), "--dataset", "test"]) == 0
    assert len(SimulationDataset(tmp_path / "default" / "sims" / "test")) == config.datasets["test"].n


def test_examples_are_valid_configs():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_config(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        ("run_dir: [unclosed", r"malformed YAML at line 1"),
        ("- just\n- a list\n", "expected a mapping"),
        ({**GOOD, "simulatr": {}}, "simulatr: unknown key"),
        ({k: v for k, v in GOOD.items() if k != "datasets"}, "datasets: required key is missing"),
        ({**GOOD, "batch_size": "many"}, "batch_size: .*integer"),
        ({**GOOD, "datasets": {"train": {"n": -3, "seed": 1}}}, "datasets.train.n: .*greater than 0"),
        ({**GOOD, "datasets": {"train": {"n": 3, "seed": 1, "sed": 2}}}, "datasets.train.sed: unknown key"),
        ({**GOOD, "simulator": {"name": "weak_lensingg"}}, "simulator.name: unknown simulator 'weak_lensingg'"),
        ({**GOOD, "simulator": {"name": "gaussian_field", "options": {"npix": 8}}}, "has no option 'npix'"),
        (
            {**GOOD, "prior": {"A": {"uniform": [2, 1]}, "B": {"uniform": [1, 3]}}},
            r"prior.A: uniform needs finite low < high",
        ),
        (
            {**GOOD, "prior": {"B": {"uniform": [1, 3]}, "A": {"uniform": [0, 1]}}},
            "must match the simulator's parameters",
        ),
    ],
)
def test_config_errors_name_file_and_key(tmp_path, mutate, message):
    path = write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    path = write(tmp_path, {**GOOD, "datasets": {"train": {"n": 5, "seed": 1, "fixed": {"A": 9.0, "B": 2.0}}}})
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "datasets.train.fixed" in err and "A=9.0" in err
    assert main(["simulate", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "neither a dataset directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["simulate"], ["info"], ["simulators"]])
def test_help_is_available(command):
    done = subprocess.run([sys.executable, "-m", "cosmosbi", *command, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: cosmosbi" in done.stdout


def test_simulators_lists_builtins(capsys):
    assert main(["simulators"]) == 0
    out = capsys.readouterr().out
    assert "gaussian_field:" in out and "n_pixels (default 32)" in out


def test_compress_trains_and_writes_summaries(tmp_path, capsys):
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "datasets": {"train": {"n": 120, "seed": 1}, "test": {"n": 20, "seed": 2}},
        "compressor": {
            "input": "field",
            "network": {"kind": "resnet2d", "width": 4, "depth": 1},
            "loss": "mse",
            "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        },
    }
    path = write(tmp_path, config)
    assert main(["compress", "-q", str(path)]) == 2
    assert "run `cosmosbi simulate" in capsys.readouterr().err
    assert main(["simulate", "-q", str(path)]) == 0
    assert main(["compress", "-q", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test (20 x 2)" in out
    summaries = SimulationDataset(tmp_path / "run" / "summaries" / "test")
    np.testing.assert_array_equal(summaries.theta, SimulationDataset(tmp_path / "run" / "sims" / "test").theta)
    assert main(["info", str(tmp_path / "run")]) == 0
    assert "by a resnet2d compressor (loss mse)" in capsys.readouterr().out


def test_compressor_section_errors(tmp_path):
    bad = {**GOOD, "compressor": {"input": "field", "network": {"kind": "mlp"}, "train_on": "training"}}
    with pytest.raises(ConfigError, match="compressor.train_on: no dataset 'training'"):
        load_config(write(tmp_path, bad))
    bad = {**GOOD, "compressor": {"input": "field", "network": {"kind": "mlp"}, "train": {"epochs": 0}}}
    with pytest.raises(ConfigError, match="compressor.train.epochs"):
        load_config(write(tmp_path, bad))


def test_dry_run_and_status_of_a_config_naming_os_system_run_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "-q", str(write(tmp_path, {**GOOD, "run_dir": str(run_dir)}, "good.yaml"))]) == 0
    marker = tmp_path / "ran"
    simulator = {"name": "os:system", "options": {"command": f"touch {marker}"}}
    hostile = write(tmp_path, {**GOOD, "run_dir": str(run_dir), "simulator": simulator})
    assert main(["slurm", "submit", "--dry-run", str(hostile)]) == 0
    assert "cosmosbi run" in capsys.readouterr().out
    assert main(["status", str(run_dir), "--config", str(hostile)]) == 0
    assert "stale" in capsys.readouterr().out  # the simulator changed
    assert not marker.exists()
    # running it runs it, as documented, and the result is refused as not a simulator
    assert main(["simulate", "-q", str(hostile)]) == 2
    assert "os:system() returned int, not a simulator" in capsys.readouterr().err
    assert marker.exists()


def test_run_help_says_a_config_runs_code():
    command = [sys.executable, "-m", "cosmosbi", "run", "--help"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert "runs that code" in " ".join(done.stdout.split())


@pytest.mark.parametrize(
    "error",
    [
        TypeError("unsupported operand"),
        OverflowError("Python int too large to convert to C long"),
        pickle.UnpicklingError("Weights only load failed.\n\nmore text"),
        ZeroDivisionError(),
        KeyError("field"),
        KeyError("no output 'x'; outputs are ['field']"),
        KeyboardInterrupt(),
    ],
)
def test_every_error_is_one_line_without_traceback(tmp_path, capsys, monkeypatch, error):
    import cosmosbi.stages.simulate

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cosmosbi.stages.simulate, "simulate_datasets", fail)
    path = write(tmp_path, GOOD)
    assert main(["simulate", "-q", str(path)]) == (130 if isinstance(error, KeyboardInterrupt) else 2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cosmosbi simulate: error: ") and "Traceback" not in err
    if isinstance(error, (TypeError, OverflowError, ZeroDivisionError)):
        assert f"{type(error).__name__}" in err and "cosmosbi -v" in err
    assert main(["-v", "simulate", "-q", str(path)]) != 0
    assert "Traceback" in capsys.readouterr().err


def test_a_huge_seed_is_a_config_error(tmp_path, capsys):
    path = write(tmp_path, {**GOOD, "datasets": {"train": {"n": 5, "seed": 2**70}}})
    assert main(["simulate", "-q", str(path)]) == 2
    assert "datasets.train.seed: Input should be less than or equal to 9223372036854775807" in capsys.readouterr().err
