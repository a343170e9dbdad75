"""lss_field and camels_like through the MPI runner (``mpiexec -n 2 cosmosbi simulate``)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import cosmosbi
from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.runner import simulation_seeds
from cosmosbi.simulators.store import SimulationDataset

CASES = {
    "lss_field": {
        "n_grid": 8,
        "box_size": 100.0,
        "transfer_function": "eisenstein_hu",
        "outputs": ["delta", "counts", "slab"],
        "emulator_nodes": 3,
    },
    "camels_like": {"model": "tng_like", "n_grid": 16, "transfer_function": "eisenstein_hu", "emulator_nodes": 3},
}


@pytest.mark.mpi
@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_write_what_a_serial_run_computes(tmp_path, mpiexec, name):
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": name, "options": CASES[name]},
        "datasets": {"train": {"n": 5, "seed": 4}},
        "batch_size": 2,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    # the ranks import the same cosmosbi as this test
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(cosmosbi.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, "-m", "cosmosbi", "simulate", str(path), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    ds = SimulationDataset(tmp_path / "run" / "sims" / "train")
    assert len(ds) == 5 and np.array_equal(ds.index, np.arange(5))
    assert ds.manifest["runs"][-1]["n_ranks"] == 2 and len(ds.manifest["shards"]) == 2
    sim = make_simulator(name, CASES[name])
    serial = sim.simulate(ds.theta, [np.random.default_rng(simulation_seeds(4, i)[1]) for i in range(5)])
    for output, value in serial.items():
        np.testing.assert_array_equal(ds.read(output), value)
