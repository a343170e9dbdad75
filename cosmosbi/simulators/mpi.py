"""The MPI communicator, or a one-process stand-in when the job was not started by MPI."""

from __future__ import annotations

import os

__all__ = ["SerialComm", "get_comm", "launched_by_mpi"]

# environment variables set by the common MPI launchers (MPICH/Hydra, Open MPI, PMIx, SLURM's PMI2)
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class SerialComm:
    """The subset of mpi4py's communicator API the runner uses, for a single process."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def barrier(self) -> None:
        return None

    def bcast(self, obj, root: int = 0):
        return obj

    def allgather(self, obj) -> list:
        return [obj]

    def gather(self, obj, root: int = 0) -> list:
        return [obj]

    def Abort(self, errorcode: int = 1) -> None:
        raise SystemExit(errorcode)


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec, mpirun, srun --mpi)."""
    return any(var in os.environ for var in _LAUNCHER_VARIABLES)


def get_comm(comm=None):
    """Return ``comm`` if given; else MPI's COMM_WORLD when launched by MPI; else a :class:`SerialComm`.

    mpi4py is imported only under an MPI launcher, so a plain ``python`` run needs no MPI.
    """
    if comm is not None:
        return comm
    if not launched_by_mpi():
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError(
            "this process was started by an MPI launcher but mpi4py is not importable "
            f"({err}); install it with `pip install 'cosmosbi[mpi]'`"
        ) from None
    return MPI.COMM_WORLD
