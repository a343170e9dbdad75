import shutil
import subprocess
import sys

import pytest
import torch

# the networks in the tests are small: one thread is faster than two, and immune to a busy machine
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible to torch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def table_cache(tmp_path_factory, monkeypatch):
    """The simulators' spectra tables go to a folder of this test session (never ~/.cache)."""
    path = tmp_path_factory.getbasetemp() / "spectra_tables"
    monkeypatch.setenv("COSMOSBI_CACHE", str(path))
    return path


@pytest.fixture
def mpiexec():
    """Path of mpiexec, or skip when no MPI launcher (and mpi4py) is installed."""
    path = shutil.which("mpiexec")
    if path is None:
        pytest.skip("mpiexec not found: install the mpi extra (`pip install 'cosmosbi[mpi]'`)")
    probe = subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("mpi4py is not importable: install the mpi extra")
    return path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Environment for a working single-node SLURM: an existing one (SLURM_CONF) or one we start.

    Skips, with the reason, where SLURM is not installed; with COSMOSBI_REQUIRE_SLURM=1 (as in
    CI) it fails instead of skipping.
    """
    import os
    from pathlib import Path

    required = os.environ.get("COSMOSBI_REQUIRE_SLURM") == "1"

    def unavailable(reason):
        if required:
            pytest.fail(f"SLURM required (COSMOSBI_REQUIRE_SLURM=1) but {reason}")
        pytest.skip(reason)

    env = dict(os.environ)
    if shutil.which("sbatch") is None:
        unavailable("SLURM is not installed (apt-get install slurm-wlm munge)")
    if subprocess.run(["sinfo", "-h"], capture_output=True, env=env).returncode == 0:
        yield env
        return
    if os.geteuid() != 0:
        unavailable("no running SLURM and not root, so a local cluster cannot be started")
    script = Path(__file__).parents[1] / "slurm" / "local_cluster.sh"
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True, text=True)
    if started.returncode != 0:
        unavailable(f"the local SLURM cluster did not start: {started.stderr[-500:]}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True)
