"""Runs `mpiexec -n 2` for real: the dataset must not depend on the number of ranks."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset

pytestmark = pytest.mark.mpi


def assert_same_dataset(a, b):
    a, b = SimulationDataset(a), SimulationDataset(b)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.theta, b.theta)
    for name in a.output_names:
        np.testing.assert_array_equal(a.read(name), b.read(name))


@pytest.mark.parametrize(
    "simulator",
    [
        {"name": "gaussian_field", "options": {"n_pixels": 16}},
        {"name": "healpix_gaussian_field", "options": {"nside": 8}},
    ],
)
def test_two_ranks_give_the_one_process_dataset_bit_for_bit(tmp_path, mpiexec, simulator):
    config = {
        "run_dir": str(tmp_path / "mpi"),
        "simulator": simulator,
        "datasets": {"train": {"n": 101, "seed": 9}},
        "batch_size": 16,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, "-m", "cosmosbi", "simulate", "-q", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    mpi_dir = tmp_path / "mpi" / "sims" / "train"
    assert sorted(p.name for p in mpi_dir.glob("shard-*.h5")) == ["shard-00000.h5", "shard-00001.h5"]
    assert SimulationDataset(mpi_dir).manifest["runs"][-1]["n_ranks"] == 2
    serial = run_simulations(
        make_simulator(simulator["name"], simulator["options"]),
        101,
        tmp_path / "serial",
        seed=9,
        batch_size=50,
        progress=False,
    )
    assert_same_dataset(mpi_dir, serial.path)


SLOW_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from cosmosbi.simulators import BoxUniform, as_simulator
    from cosmosbi.simulators.runner import run_simulations

    def slow(theta, rng):
        time.sleep(float(sys.argv[2]))
        return theta[0] + theta[1] * rng.standard_normal(8)

    prior = BoxUniform(["mu", "sigma"], [-1.0, 0.1], [1.0, 1.0])
    run_simulations(as_simulator(slow, prior=prior, name="slow"), 60, sys.argv[1], seed=3, batch_size=3,
                    progress=False, checkpoint_s=0)
    """
)


def run_and_kill(command, parts_dir, min_parts, timeout=120):
    """Start ``command`` in its own process group and SIGKILL the group once parts appear."""
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if parts_dir.is_dir() and len(list(parts_dir.glob("part-*.h5"))) >= min_parts:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("ranks", [1, 2])
def test_killed_job_resumes_to_the_clean_dataset(tmp_path, mpiexec, ranks):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    target = tmp_path / "killed"
    launcher = [mpiexec, "-n", str(ranks)] if ranks > 1 else []
    run_and_kill([*launcher, sys.executable, str(script), str(target), "0.05"], target / "parts", min_parts=4)
    stored = len(list((target / "parts").glob("part-*.h5")))
    assert 4 <= stored < 20
    # resume with one process, whatever the killed job had
    resumed = subprocess.run(
        [sys.executable, str(script), str(target), "0"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    clean = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "clean"), "0"], capture_output=True, text=True, timeout=120
    )
    assert clean.returncode == 0, clean.stderr
    assert_same_dataset(target, tmp_path / "clean")
    runs = SimulationDataset(target).manifest["runs"]
    assert len(runs) == 1 and runs[0]["new_simulations"] == 60 - 3 * stored
