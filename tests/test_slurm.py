"""Jobs on a real (single-node) SLURM cluster."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).parents[1]


def wait_for(job_id: str, env: dict, timeout: float = 300) -> str:
    """Wait until the job leaves the queue; return its final state from sacct or scontrol."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, env=env)
        if not queued.stdout.strip():
            break
        time.sleep(1)
    else:
        pytest.fail(f"SLURM job {job_id} still queued after {timeout} s")
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, env=env).stdout
    for token in shown.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return "UNKNOWN"


def test_mpi_simulation_job_gives_the_serial_dataset(tmp_path, slurm_cluster, mpiexec):
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 16}},
        "datasets": {"train": {"n": 150, "seed": 4}},
        "batch_size": 16,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**slurm_cluster, "PATH": f"{Path(sys.executable).parent}:{slurm_cluster.get('PATH', '')}"}
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--ntasks=2",
            f"--output={tmp_path}/job-%j.out",
            str(ROOT / "slurm" / "simulate.sbatch"),
            str(tmp_path / "c.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    state = wait_for(job_id, env)
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert state == "COMPLETED", log
    dataset = SimulationDataset(tmp_path / "run" / "sims" / "train")
    assert dataset.manifest["runs"][-1]["n_ranks"] == 2
    serial = run_simulations(
        make_simulator("gaussian_field", {"n_pixels": 16}), 150, tmp_path / "serial", seed=4, progress=False
    )
    reference = SimulationDataset(serial.path)
    np.testing.assert_array_equal(dataset.theta, reference.theta)
    np.testing.assert_array_equal(dataset.read("field"), reference.read("field"))


def analysis_config(run_dir: Path, **slurm) -> dict:
    """A small full analysis: Gaussian field, power-spectrum NPE, validation, one observation."""
    return {
        "run_dir": str(run_dir),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "prior": {"A": {"uniform": [0.5, 2.0]}, "B": {"uniform": [1.0, 3.0]}},
        "datasets": {"train": {"n": 400, "seed": 1}, "test": {"n": 30, "seed": 2}},
        "batch_size": 50,
        "estimator": {"kind": "npe", "summary": "power_spectrum", "training": {"max_epochs": 20}, "n_samples": 200},
        "validation": {"test": "test", "n_samples": 100, "corner": 0},
        "observations": {"mock": {"dataset": "test", "index": 0}},
        "slurm": {"python": sys.executable, **slurm},
    }


def test_submitted_chain_gives_the_results_of_cosmosbi_run(tmp_path, slurm_cluster, mpiexec, monkeypatch):
    from cosmosbi.cli import main
    from cosmosbi.files import read_json

    monkeypatch.setenv("SLURM_CONF", slurm_cluster.get("SLURM_CONF", ""))
    monkeypatch.chdir(tmp_path)
    config = analysis_config(Path("batch"), jobs={"simulate": {"ntasks": 2}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["slurm", "submit", "c.yaml"]) == 0
    jobs = read_json(tmp_path / "batch" / "slurm" / "jobs.json")["jobs"]
    assert [j["name"] for j in jobs] == ["simulate", "estimate", "validate", "sample"]
    for job in jobs:
        state = wait_for(job["job_id"], slurm_cluster)
        logs = "\n".join(p.read_text() for p in (tmp_path / "batch" / "slurm").glob("*.out"))
        assert state == "COMPLETED", f"{job['name']}: {state}\n{logs[-3000:]}"
    assert SimulationDataset(tmp_path / "batch" / "sims" / "train").manifest["runs"][-1]["n_ranks"] == 2

    assert main(["run", "-q", "c.yaml", "--run-dir", "local"]) == 0
    for name in ("train", "test"):
        batch, local = (SimulationDataset(tmp_path / d / "sims" / name) for d in ("batch", "local"))
        np.testing.assert_array_equal(batch.read("field"), local.read("field"))
    batch, local = (read_json(tmp_path / d / "validation" / "metrics.json")["validation"] for d in ("batch", "local"))
    assert batch["sbc"] == local["sbc"]
    assert read_json(tmp_path / "batch" / "posterior" / "summary.json") == read_json(
        tmp_path / "local" / "posterior" / "summary.json"
    )
    # resubmitting a finished analysis runs nothing again
    assert main(["slurm", "submit", "c.yaml"]) == 0
    for job in read_json(tmp_path / "batch" / "slurm" / "jobs.json")["jobs"]:
        assert wait_for(job["job_id"], slurm_cluster) == "COMPLETED"
    log = (tmp_path / "batch" / "slurm").glob(f"sample-{job['job_id']}.out")
    assert "done earlier with these settings" in next(log).read_text()


def test_job_array_simulation_equals_the_mpi_one(tmp_path, slurm_cluster, monkeypatch):
    from cosmosbi.cli import main
    from cosmosbi.files import read_json

    monkeypatch.setenv("SLURM_CONF", slurm_cluster.get("SLURM_CONF", ""))
    monkeypatch.chdir(tmp_path)
    config = analysis_config(Path("array"), jobs={"simulate": {"array": 3}})
    for key in ("estimator", "validation", "observations"):
        del config[key]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["slurm", "submit", "c.yaml"]) == 0
    jobs = read_json(tmp_path / "array" / "slurm" / "jobs.json")["jobs"]
    assert [j["name"] for j in jobs] == ["simulate-array", "simulate-merge"]
    for job in jobs:
        assert wait_for(job["job_id"], slurm_cluster) == "COMPLETED"
    assert len(list((tmp_path / "array" / "slurm").glob("simulate-array-*_*.out"))) == 3
    serial = run_simulations(
        make_simulator("gaussian_field", {"n_pixels": 8}), 400, tmp_path / "serial", seed=1, progress=False
    )
    merged = SimulationDataset(tmp_path / "array" / "sims" / "train")
    np.testing.assert_array_equal(merged.read("field"), SimulationDataset(serial.path).read("field"))
