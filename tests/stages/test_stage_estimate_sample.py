"""`cosmosbi train` and `cosmosbi sample` on a small Gaussian-field run."""

import numpy as np
import pytest
import yaml

from cosmosbi.cli import main
from cosmosbi.estimators.io import load_samples_hdf5

CONFIG = {
    "simulator": {"name": "gaussian_field", "options": {"n_pixels": 16}},
    "datasets": {"train": {"n": 600, "seed": 1}, "test": {"n": 3, "seed": 2}},
    "batch_size": 200,
    "estimator": {
        "kind": "npe",
        "flow": {"hidden_features": 16, "num_transforms": 2},
        "training": {"max_epochs": 5},
        "n_samples": 50,
        "device": "cpu",
    },
}


@pytest.fixture
def config_path(tmp_path):
    data = dict(CONFIG, run_dir=str(tmp_path / "run"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["simulate", "-q", str(path)]) == 0
    return path


def test_train_then_sample_writes_hdf5_and_getdist_chains(config_path, tmp_path, capsys):
    from cosmosbi.simulators.store import SimulationDataset

    assert main(["train", "-q", str(config_path)]) == 0
    assert (tmp_path / "run" / "estimator" / "estimator.json").is_file()
    fields = SimulationDataset(tmp_path / "run" / "sims" / "test").read("field")
    np.save(tmp_path / "one.npy", fields[0])
    np.save(tmp_path / "batch.npy", fields)
    assert (
        main(["sample", str(config_path), "--obs", str(tmp_path / "one.npy"), "--out", str(tmp_path / "post" / "one")])
        == 0
    )
    samples, names, _ = load_samples_hdf5(tmp_path / "post" / "one.h5")
    assert samples.shape == (50, 2) and names == ["A", "B"]
    from getdist import loadMCSamples

    chain = loadMCSamples(str(tmp_path / "post" / "one"), settings={"ignore_rows": 0})
    np.testing.assert_allclose(chain.getMeans(), samples.mean(0), rtol=1e-8)
    assert (
        main(
            [
                "sample",
                str(config_path),
                "--obs",
                str(tmp_path / "batch.npy"),
                "-n",
                "20",
                "--out",
                str(tmp_path / "post" / "batch"),
            ]
        )
        == 0
    )
    samples, _, _ = load_samples_hdf5(tmp_path / "post" / "batch.h5")
    assert samples.shape == (3, 20, 2)
    assert all((tmp_path / "post" / f"batch_{m}.txt").is_file() for m in range(3))


def test_sample_reports_a_wrong_observation_shape(config_path, tmp_path, capsys):
    assert main(["train", "-q", str(config_path)]) == 0
    np.save(tmp_path / "bad.npy", np.zeros((8, 8)))
    assert main(["sample", str(config_path), "--obs", str(tmp_path / "bad.npy")]) == 2
    assert "expected one field of shape (16, 16)" in capsys.readouterr().err


def test_train_needs_an_estimator_section_and_valid_settings(tmp_path, capsys):
    data = {k: v for k, v in CONFIG.items() if k != "estimator"}
    data["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path)]) == 2
    assert "no estimator section" in capsys.readouterr().err
    data["estimator"] = {"kind": "npe", "flow": {"model": "glow"}}
    path.write_text(yaml.safe_dump(data))
    assert main(["simulate", "-q", str(path)]) == 2  # checked on load, before any simulation
    assert "estimator.flow: model: expected one of" in capsys.readouterr().err
    assert main(["train", str(path)]) == 2
    assert "estimator.flow: model: expected one of" in capsys.readouterr().err
    data["estimator"] = {"kind": "xyz"}
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path)]) == 2
    assert "estimator.kind" in capsys.readouterr().err


def test_sample_refuses_bad_observations_and_a_hostile_weights_file(config_path, tmp_path, capsys):
    import os

    import torch

    assert main(["train", "-q", str(config_path)]) == 0
    np.save(tmp_path / "complex.npy", np.ones((16, 16), dtype=complex))
    assert main(["sample", str(config_path), "--obs", str(tmp_path / "complex.npy")]) == 2
    assert f"{tmp_path / 'complex.npy'}: observations must be real numbers" in capsys.readouterr().err
    np.save(tmp_path / "nan.npy", np.full((16, 16), np.nan))
    assert main(["sample", str(config_path), "--obs", str(tmp_path / "nan.npy")]) == 2
    assert "observations must be finite" in capsys.readouterr().err

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    weights = tmp_path / "run" / "estimator" / "weights.pt"
    torch.save({"weight": RunsCode()}, weights)
    np.save(tmp_path / "one.npy", np.ones((16, 16)))
    assert main(["sample", str(config_path), "--obs", str(tmp_path / "one.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {weights}: not a weights file that loads without running code" in err
    assert not (tmp_path / "ran").exists()
