"""A full disk or a read-only directory: one clear message, nothing partial, and a rerun completes."""

import subprocess

import numpy as np
import pytest

from cosmosbi.simulators import BoxUniform, as_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset, StorageError

PRIOR = BoxUniform(["mu", "sigma"], [-1.0, 0.1], [1.0, 1.0])


def wide(theta, rng):
    return theta[0] + theta[1] * rng.standard_normal(1000)  # 8 kB per simulation


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root; the test is skipped where it cannot be mounted)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def remount(mount, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


@pytest.mark.parametrize("n, stage", [(400, "writing simulations"), (150, "merging simulations")])
def test_a_full_disk_gives_one_message_and_a_rerun_completes(tmp_path, small_disk, capfd, n, stage):
    sim = as_simulator(wide, prior=PRIOR)
    target = small_disk / "ds"
    with pytest.raises(StorageError, match=f"{stage} failed: no space left on the device.*rerun the same command"):
        run_simulations(sim, n, target, seed=1, batch_size=16, progress=False, checkpoint_s=0)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "_dealloc" not in err  # no reports from HDF5 destructors
    assert not list(target.glob("**/*.tmp"))  # nothing half-written; finished parts are kept
    remount(small_disk, "size=8m")  # space freed
    summary = run_simulations(sim, n, target, seed=1, batch_size=16, progress=False)
    assert summary.status == "complete" and summary.new_this_run < n
    reference = run_simulations(sim, n, tmp_path / "reference", seed=1, progress=False)
    a, b = SimulationDataset(target), SimulationDataset(reference.path)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.read("x"), b.read("x"))
    a.close()


def test_a_read_only_directory_gives_one_message(small_disk):
    sim = as_simulator(wide, prior=PRIOR)
    run_simulations(sim, 20, small_disk / "ds", seed=1, progress=False)
    remount(small_disk, "ro")
    with pytest.raises(StorageError, match="starting the simulations failed: no permission to write in"):
        run_simulations(sim, 40, small_disk / "ds", seed=1, progress=False)
    remount(small_disk, "rw")
    assert run_simulations(sim, 40, small_disk / "ds", seed=1, progress=False).status == "complete"
