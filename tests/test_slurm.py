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
    config = {"run_dir": str(tmp_path / "run"), "simulator": {"name": "gaussian_field", "options": {"n_pixels": 16}},
              "datasets": {"train": {"n": 150, "seed": 4}}, "batch_size": 16}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**slurm_cluster, "PATH": f"{Path(sys.executable).parent}:{slurm_cluster.get('PATH', '')}"}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", f"--output={tmp_path}/job-%j.out", str(ROOT / "slurm" / "simulate.sbatch"), str(tmp_path / "c.yaml")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    state = wait_for(job_id, env)
    log = next(tmp_path.glob("job-*.out")).read_text()
    assert state == "COMPLETED", log
    dataset = SimulationDataset(tmp_path / "run" / "sims" / "train")
    assert dataset.manifest["runs"][-1]["n_ranks"] == 2
    serial = run_simulations(make_simulator("gaussian_field", {"n_pixels": 16}), 150, tmp_path / "serial", seed=4, progress=False)
    reference = SimulationDataset(serial.path)
    np.testing.assert_array_equal(dataset.theta, reference.theta)
    np.testing.assert_array_equal(dataset.read("field"), reference.read("field"))
