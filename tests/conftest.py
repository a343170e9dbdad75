import shutil
import subprocess
import sys

import pytest


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
