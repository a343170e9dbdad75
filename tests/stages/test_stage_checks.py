"""The sample stage's checks of the observed data: OOD p-value and posterior predictive check."""

import logging

import numpy as np
import pytest
import yaml

from cosmosbi.config import ConfigError, SimulateConfig, load_config
from cosmosbi.files import read_json
from cosmosbi.pipeline import plan_stages, run_pipeline
from cosmosbi.simulators.base import make_simulator


def config_data(run_dir, observation_file, **estimator) -> dict:
    return {
        "run_dir": str(run_dir),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 16}},
        "datasets": {"train": {"n": 300, "seed": 1}, "test": {"n": 5, "seed": 2}},
        "batch_size": 200,
        "estimator": {
            "kind": "npe",
            "flow": {"hidden_features": 16, "num_transforms": 2},
            "training": {"max_epochs": 5},
            "n_samples": 300,
            "device": "cpu",
            **estimator,
        },
        "observations": {"mock": {"dataset": "test", "index": 0}, "loud": {"file": str(observation_file)}},
    }


def test_a_field_of_another_model_is_flagged_and_a_held_out_simulation_is_not(tmp_path, caplog):
    # a power law 5 times above the prior's largest amplitude (A <= 2): far from every training field
    simulator = make_simulator("gaussian_field", {"n_pixels": 16})
    loud = simulator.simulate(np.array([[10.0, 2.0]]), np.random.default_rng(5))["field"][0]
    np.save(tmp_path / "loud.npy", loud)
    config = SimulateConfig.model_validate(config_data(tmp_path / "run", tmp_path / "loud.npy", ppc_simulations=200))
    lines = []
    with caplog.at_level(logging.WARNING, logger="cosmosbi.stages.sample"):
        run_pipeline(config, progress=False, echo=lines.append)
    summary = read_json(tmp_path / "run" / "posterior" / "summary.json")
    mock, flagged = summary["mock"]["checks"], summary["loud"]["checks"]
    # smallest possible p-values: 1 / (1 + 300 training fields) and 1 / (1 + 200 simulations)
    assert flagged["in_distribution"]["pvalue"] == pytest.approx(1 / 301)
    assert flagged["flagged"]
    if "posterior_error" in flagged:  # the estimate put almost no mass inside the prior: no posterior to check
        assert "predictive" not in flagged and "loud" not in h5py_names(tmp_path / "run" / "posterior")
    else:
        assert flagged["predictive"]["summaries"]["pvalue"] == pytest.approx(1 / 201)
        assert "power_spectrum" not in flagged["predictive"]  # the summaries are the spectrum
    # a simulation of the prior: p-values are uniform (or larger) there; 1e-3 and 1/201 are far in the tail
    assert mock["in_distribution"]["pvalue"] > 1e-3 and mock["predictive"]["summaries"]["pvalue"] > 1 / 201
    assert mock["predictive"]["n_simulations"] == 200 and len(mock["predictive"]["summaries"]["statistics"]) == 11
    assert set(summary["mock"]) == {"A", "B", "checks"}
    assert any("WARNING loud: out of the training distribution" in line for line in lines)
    assert any("observation loud" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "posterior" / "mock-checks.png").stat().st_size > 1000
    page = (tmp_path / "run" / "posterior" / "checks.html").read_text()
    assert "loud" in page and "flagged" in page


def h5py_names(directory):
    """Stems of the posterior sample files in ``directory``."""
    return {p.stem for p in directory.glob("*.h5")}


def test_the_number_of_simulations_is_hashed_only_when_set(tmp_path):
    def keys(**estimator):
        config = SimulateConfig.model_validate(config_data(tmp_path, "x.npy", **estimator))
        return {s.name: s.key for s in plan_stages(config)}

    base, changed = keys(), keys(ppc_simulations=50)
    assert [n for n in base if base[n] != changed[n]] == ["sample"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_data(tmp_path, "x.npy", ppc_simulations=5)))
    with pytest.raises(ConfigError, match="estimator.ppc_simulations: expected 0 .* or at least 10 simulations, got 5"):
        load_config(path)


def test_fields_used_whole_are_checked_by_their_power_spectrum_and_zero_simulations_skip_the_check(tmp_path):
    field = make_simulator("gaussian_field", {"n_pixels": 16}).simulate(np.array([[1.0, 2.0]]), 3)["field"][0]
    np.save(tmp_path / "obs.npy", field)
    data = config_data(tmp_path / "run", tmp_path / "obs.npy", ppc_simulations=20, summary="none")
    data["estimator"]["training"] = {"max_epochs": 2}
    run_pipeline(SimulateConfig.model_validate(data), progress=False, echo=lambda line: None)
    checks = read_json(tmp_path / "run" / "posterior" / "summary.json")["loud"]["checks"]
    # 256 pixels are not checked one by one; the spectrum's 8 bands up to the Nyquist frequency are
    assert "summaries" not in checks["predictive"] and len(checks["predictive"]["power_spectrum"]["statistics"]) == 8
    assert 0 < checks["in_distribution"]["pvalue"] <= 1
    data["estimator"]["ppc_simulations"] = 0
    outcomes = run_pipeline(SimulateConfig.model_validate(data), progress=False, echo=lambda line: None)
    assert [o["stage"] for o in outcomes if o["action"] == "ran"] == ["sample"]
    checks = read_json(tmp_path / "run" / "posterior" / "summary.json")["loud"]["checks"]
    assert "predictive" not in checks and "in_distribution" in checks
