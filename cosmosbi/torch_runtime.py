"""How torch runs: which device, how many CPU threads, and seeded random state.

- :func:`resolve_device`: ``"auto"`` -> CUDA when present, else CPU; always a ``torch.device``.
- :func:`torch_generator`, :func:`seeded_torch`: torch random state from an int seed or a numpy
  Generator (a generator of its own, or torch's global generators within a block).
- :func:`torch_threads`: torch's CPU threads within a block; by default the cores this process
  may use (:func:`cosmosbi.cores.default_threads`), an explicit count always wins.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from cosmosbi.cores import default_threads

__all__ = [
    "resolve_device",
    "seeded_torch",
    "torch_generator",
    "torch_threads",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device named by ``device``: ``"auto"`` gives CUDA when present, else CPU.

    Other names (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``) are passed to torch;
    an unknown name raises ``ValueError``.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device: expected a device name such as 'auto', 'cpu' or 'cuda', got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


def _seed_from(seed: int | np.random.Generator) -> int:
    """An int seed for torch from an int (< 2**63) or a numpy Generator (one draw)."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**62))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or a numpy Generator, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed: expected 0 <= seed < 2**63, got {seed}")
    return int(seed)


def torch_generator(seed: int | np.random.Generator, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded from ``seed`` (an int, or one draw of a numpy Generator)."""
    return torch.Generator(device=resolve_device(device)).manual_seed(_seed_from(seed))


@contextlib.contextmanager
def seeded_torch(seed: int | np.random.Generator) -> Iterator[None]:
    """Run a block with torch's global generators (CPU and CUDA) seeded from ``seed``, restoring them afterwards.

    Libraries that draw from torch's global generator (sbi and nflows: weight initialisation,
    batch order, flow sampling; ``nn.Module`` initialisation) then draw a function of ``seed``
    only, and the caller's torch random state is left as it was.
    """
    value = _seed_from(seed)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(value)
        yield


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[int]:
    """Run a block with ``n`` torch CPU threads (None: :func:`~cosmosbi.cores.default_threads`), then restore.

    Yields the number of threads in use. Cheap enough to wrap every network call.
    """
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_threads: expected a positive integer or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(before)
