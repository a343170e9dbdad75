"""CPU cores a process may use, and the thread settings that follow from them (no torch import).

- :func:`available_cores`: the CPU affinity, capped by a cgroup CPU quota (containers, batch jobs);
- :func:`default_threads`: threads for torch and BLAS when none are set: one per process when
  several MPI ranks share the machine, else :func:`available_cores`; an explicit count
  (``num_threads`` in a config) always wins;
- :func:`set_thread_environment`: called by ``import cosmosbi``, before torch or a BLAS library
  is loaded, to make those defaults theirs and to make OpenMP's waiting threads sleep.

OpenMP wait policy: torch's OpenMP threads keep spinning on their core while they wait for
work. On a machine shared with other processes the spinning threads take cores from the
threads doing the work, and a torch run slows down many times over (``benchmarks/contention.py``).
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep. OpenMP reads it once, when torch is
first imported, so it applies only when ``cosmosbi`` is imported before ``torch`` (the
``cosmosbi`` command always is); a value already in the environment is kept
(``OMP_WAIT_POLICY=ACTIVE`` spins).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores", "default_threads", "mpi_world_size", "set_thread_environment"]

# environment variables giving the number of processes started by the common MPI launchers
_MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")
_CGROUP_V2_QUOTA = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
# thread-count variables of OpenMP (torch), OpenBLAS and MKL (numpy, scipy, torch)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max`` or v1 CFS files), or None when unlimited."""
    try:
        quota, period = _CGROUP_V2_QUOTA.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(p.read_text()) for p in _CGROUP_V1_QUOTA)
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup CPU quota (at least 1)."""
    cores = _affinity_cores()
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def mpi_world_size() -> int:
    """Number of processes of this MPI job, from the launcher's environment (1 when not under MPI)."""
    for name in _MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def default_threads() -> int:
    """CPU threads for torch and BLAS when none are set: one per MPI rank, else :func:`available_cores`."""
    return 1 if mpi_world_size() > 1 else available_cores()


def _affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_thread_environment() -> None:
    """Set the OpenMP wait policy and the default thread counts in the environment where it sets none.

    ``OMP_WAIT_POLICY=PASSIVE`` is set unless given. The thread-count variables are set to
    :func:`default_threads` only when that is below the CPU affinity (a cgroup quota or MPI
    ranks), the one case where OpenMP and BLAS would otherwise start too many threads; each
    variable already set is left as it is. Takes effect for libraries loaded afterwards.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threads = default_threads()
    if threads < _affinity_cores():
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, str(threads))
