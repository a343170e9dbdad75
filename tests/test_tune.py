"""`cosmosbi tune`: trials as cached stage runs on shared simulations, resume, best config, search-space checks."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from optuna.distributions import CategoricalDistribution

from cosmosbi.cli import main
from cosmosbi.config import ConfigError, load_config
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.files import read_json
from cosmosbi.pipeline import plan_stages
from cosmosbi.tune import config_settings, open_study, trial_config, trial_scores, tune

SPACE = {
    "compressor.network.hidden": [8, 16],
    "estimator.training.learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
}


def tiny_config(run_dir, trials=3, space=None) -> dict:
    return {
        "run_dir": str(run_dir),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "prior": {"A": {"uniform": [0.5, 2.0]}, "B": {"uniform": [1.0, 3.0]}},
        "datasets": {"train": {"n": 200, "seed": 1}, "test": {"n": 20, "seed": 2}},
        "batch_size": 100,
        "compressor": {
            "input": "field",
            "network": {"kind": "mlp", "hidden": 16},
            "loss": "mse",
            "train": {"epochs": 1, "batch_size": 64},
        },
        "estimator": {"kind": "npe", "summary": "compressor", "training": {"max_epochs": 2}, "n_samples": 50},
        "validation": {"test": "test", "n_samples": 20, "corner": 0},
        "tune": {"trials": trials, "space": space or SPACE},
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A finished 3-trial search: (config file, results)."""
    root = tmp_path_factory.mktemp("tune")
    path = write(root / "tiny.yaml", tiny_config(root / "run"))
    config = load_config(path)
    return path, tune(config, str(path), progress=False, echo=quiet)


def test_three_trials_finish_and_best_yaml_reproduces_the_best_trial(tuned):
    path, results = tuned
    config = load_config(path)
    layout_tune = Path(config.run_dir) / "tune"
    trials = results["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    best = results["best"]
    assert best["score"] == min(t["score"] for t in trials)
    assert trials[0]["compressor.network.hidden"] == 16  # trial 0: the config's own settings
    assert best["score"] == trial_scores(best["run_dir"])["estimator_val_loss"]
    for name in ("results.csv", "results.json", "tune.png"):
        assert (layout_tune / name).is_file()
    best_config = load_config(layout_tune / "best.yaml")
    assert best_config.tune is None and best_config.run_dir == config.run_dir
    assert best_config.compressor.network["hidden"] == best["compressor.network.hidden"]
    assert best_config.estimator.training["learning_rate"] == best["estimator.training.learning_rate"]
    # the best config trains exactly what the best trial trained (same stage keys: same cached results)
    keys = {s.name: s.key for s in plan_stages(best_config)}
    trial = trial_config(config, {k: best[k] for k in SPACE}, best["run_dir"])
    trial_keys = {s.name: s.key for s in plan_stages(trial)}
    for name in ("simulate:train", "compress", "summarise:train", "estimate"):
        assert keys[name] == trial_keys[name]
    for name in ("compress", "estimate"):
        assert read_json(Path(best["run_dir"]) / "stages" / f"{name}.json")["key"] == keys[name]


def test_trial_zero_runs_the_config_settings_or_their_defaults(tmp_path):
    space = {
        **SPACE,
        "estimator.flow.hidden_features": [FlowConfig().hidden_features, 128],
        "estimator.training.batch_size": [50, 100],
        "compressor.train.batch_size": [32, 64],
    }
    config = load_config(write(tmp_path / "c.yaml", tiny_config(tmp_path / "run", space=space)))
    # hidden 16 is the config's; the hidden features and learning rate are the NPE defaults (its
    # default batch size, chosen from the data, is outside the space); 64 the config's compressor batch
    assert config_settings(config) == {
        "compressor.network.hidden": 16,
        "estimator.flow.hidden_features": FlowConfig().hidden_features,
        "estimator.training.learning_rate": TrainingConfig().learning_rate,
        "compressor.train.batch_size": 64,
    }


def test_trials_read_the_parent_simulations_without_copying_them(tuned):
    path, results = tuned
    parent = Path(load_config(path).run_dir)
    for row in results["trials"]:
        link = Path(row["run_dir"]) / "sims" / "train"
        assert link.is_symlink() and link.resolve() == (parent / "sims" / "train").resolve()
        assert not (Path(row["run_dir"]) / "sims" / "test").exists()  # only what the trial trains on


def test_a_resumed_tune_does_not_redo_finished_trials(tuned, tmp_path):
    path, results = tuned
    config = load_config(path)
    stamps = {
        r["run_dir"]: os.stat(Path(r["run_dir"]) / "estimator" / "estimator.json").st_mtime_ns
        for r in results["trials"]
    }
    again = tune(config, str(path), progress=False, echo=quiet)
    assert len(again["trials"]) == 3
    more = load_config(write(tmp_path / "more.yaml", tiny_config(config.run_dir, trials=4)))
    extended = tune(more, str(path), progress=False, echo=quiet)
    assert [t["trial"] for t in extended["trials"]] == [0, 1, 2, 3]
    for run_dir, stamp in stamps.items():
        assert os.stat(Path(run_dir) / "estimator" / "estimator.json").st_mtime_ns == stamp


def test_a_study_refuses_changed_shared_settings(tuned, tmp_path):
    path, _ = tuned
    data = tiny_config(load_config(path).run_dir)
    data["estimator"]["seed"] = 5
    with pytest.raises(ValueError, match="move that folder away"):
        open_study(load_config(write(tmp_path / "changed.yaml", data)))


def test_a_killed_trial_is_run_again_with_its_settings(tmp_path):
    path = write(tmp_path / "tiny.yaml", tiny_config(tmp_path / "run", trials=2))
    config = load_config(path)
    tune(
        load_config(write(tmp_path / "none.yaml", tiny_config(tmp_path / "run", trials=1))),
        str(path),
        progress=False,
        echo=quiet,
    )
    study, _ = open_study(config)
    killed = study.ask({"compressor.network.hidden": CategoricalDistribution([8, 16])})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed.set_user_attr("pid", gone.pid)
    killed.set_user_attr("host", socket.gethostname())
    results = tune(config, str(path), progress=False, echo=quiet)
    states = {t["trial"]: t["state"] for t in results["trials"]}
    assert states == {0: "complete", 1: "fail", 2: "complete"}
    assert results["trials"][2]["compressor.network.hidden"] == killed.params["compressor.network.hidden"]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"datasets.train.n": [10, 20]}, "tune.space.datasets.train.n: not a tunable setting"),
        ({"compressor.network.widht": [8, 16]}, "tune.space.compressor.network.widht: .*unknown key"),
        ({"estimator.flow.hidden_featurez": [8]}, "tune.space.estimator.flow.hidden_featurez: .*unknown key"),
        ({"compressor.train.batch_size": [64, 0]}, r"tune.space.compressor.train.batch_size: value 0"),
        (
            {"compressor.train.learning_rate": {"low": 0.1, "high": 0.01}},
            "tune.space.compressor.train.learning_rate.*low",
        ),
        ({"estimator.training.learning_rate": {"low": 0, "high": 0.1, "log": True}}, "log: needs low > 0"),
    ],
)
def test_bad_search_spaces_fail_at_load_naming_the_key(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path / "bad.yaml", tiny_config(tmp_path / "run", space=space)))


def test_tune_without_a_tune_section_says_so(tmp_path, capsys):
    data = tiny_config(tmp_path / "run")
    del data["tune"]
    assert main(["tune", str(write(tmp_path / "plain.yaml", data))]) == 2
    assert "no tune section" in capsys.readouterr().err


@pytest.mark.slow  # a minute: the worker process imports torch and sbi
def test_parallel_workers_share_one_study(tmp_path):
    data = tiny_config(tmp_path / "run", trials=4)
    data["tune"]["parallel"] = 2
    path = write(tmp_path / "tiny.yaml", data)
    results = tune(load_config(path), str(path), progress=False, echo=quiet)
    complete = [t for t in results["trials"] if t["state"] == "complete"]
    assert 4 <= len(complete) <= 5  # a worker may start one trial while the last ones finish
    assert len({t["run_dir"] for t in complete}) == len(complete)
    for row in complete:
        assert row["score"] == trial_scores(row["run_dir"])["estimator_val_loss"]
