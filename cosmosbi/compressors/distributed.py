"""Data-parallel compressor training over processes started by ``torchrun`` or ``srun``.

A launch is distributed when its environment names a world of more than one process and the
rendezvous address: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (``torchrun``),
``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` (``srun``), or those of ``mpiexec``
(Open MPI's ``OMPI_COMM_WORLD_*``, MPICH's ``PMI_RANK``, ``PMI_SIZE``), with ``MASTER_ADDR``
and ``MASTER_PORT`` (``torchrun`` sets them; the batch scripts of ``cosmosbi slurm submit``
export them). The processes talk through gloo on CPU and NCCL on GPUs (each process uses the
GPU of its local rank).

Every process sees the same shuffled global batches (from the seed and the epoch) and trains on
its contiguous share of each (:func:`rank_share`); gradients are averaged so that an update is
the one a single process makes on the whole global batch, up to the order of float sums.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cosmosbi.torch_runtime import resolve_device

__all__ = ["LAUNCH_VARIABLES", "Launch", "TorchComm", "device_of", "distributed_session", "launch_of", "rank_share"]


@dataclass(frozen=True)
class Launch:
    """Where this process stands in its launch: rank, world size and rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# (rank, world size, rank on the node) as torchrun, srun, Open MPI and MPICH name them, in that order
LAUNCH_VARIABLES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


def _integer(environ, name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def launch_of(environ=None) -> Launch:
    """The :class:`Launch` described by ``environ`` (default: ``os.environ``).

    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` first, then ``SLURM_PROCID``/``SLURM_NTASKS``/
    ``SLURM_LOCALID``, then Open MPI's and MPICH's variables; a world of one process when neither is set or
    ``MASTER_ADDR`` is missing (a SLURM job step that is not a data-parallel launch).
    """
    environ = os.environ if environ is None else environ
    if "MASTER_ADDR" not in environ:
        return Launch()
    for rank, size, local in LAUNCH_VARIABLES:
        if rank in environ and size in environ:
            launch = Launch(
                _integer(environ, rank), _integer(environ, size), _integer(environ, local) if local in environ else 0
            )
            if not 0 <= launch.rank < launch.world_size:
                raise ValueError(f"environment: {rank}={launch.rank} is not in [0, {size}={launch.world_size})")
            return launch
    return Launch()


def device_of(device: str, launch: Launch) -> torch.device:
    """The torch device of this process: :func:`~cosmosbi.torch_runtime.resolve_device`, with a
    CUDA device given without an index taken as the GPU of the local rank in a distributed launch."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None and launch.distributed:
        return torch.device("cuda", launch.local_rank % torch.cuda.device_count())
    return resolved


@contextlib.contextmanager
def distributed_session(launch: Launch, device: torch.device) -> Iterator[bool]:
    """Join the process group of ``launch`` (gloo on CPU, NCCL on CUDA) for the duration; yields
    whether training is distributed. A process group set up by the caller is used as it is."""
    if not torch.distributed.is_available():
        if launch.distributed:
            raise RuntimeError("this torch has no torch.distributed; cannot train over several processes")
        yield False
        return
    if device.type == "cuda" and (launch.distributed or torch.distributed.is_initialized()):
        torch.cuda.set_device(device)
    if torch.distributed.is_initialized():
        yield torch.distributed.get_world_size() > 1
        return
    if not launch.distributed:
        yield False
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size)
    try:
        yield True
    finally:
        torch.distributed.destroy_process_group()


class TorchComm:
    """The subset of mpi4py's communicator API that the stages use (as
    :class:`cosmosbi.simulators.mpi.SerialComm`), over the torch.distributed process group of a
    ``torchrun`` launch: ``cosmosbi run`` under ``torchrun`` coordinates its processes with it.

    Creating it joins the process group of ``launch`` (gloo; NCCL as well for CUDA tensors when
    a GPU is visible), which the compressor training then uses.
    """

    def __init__(self, launch: Launch):
        if not torch.distributed.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
            torch.distributed.init_process_group(
                backend, init_method="env://", rank=launch.rank, world_size=launch.world_size
            )

    def Get_rank(self) -> int:  # mpi4py's name
        return torch.distributed.get_rank()

    def Get_size(self) -> int:
        return torch.distributed.get_world_size()

    def barrier(self) -> None:
        torch.distributed.barrier()

    def bcast(self, obj, root: int = 0):
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=root)
        return box[0]

    def allgather(self, obj) -> list:
        out = [None] * self.Get_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather(self, obj, root: int = 0) -> list | None:
        out = [None] * self.Get_size() if self.Get_rank() == root else None
        torch.distributed.gather_object(obj, out, dst=root)
        return out

    def Abort(self, errorcode: int = 1) -> None:
        os._exit(errorcode)  # the launcher stops the other processes


def rank_share(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch of row positions (sizes differ by at most one)."""
    return np.array_split(batch, world_size)[rank]
