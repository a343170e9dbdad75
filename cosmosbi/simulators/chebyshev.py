"""Tensor-product Chebyshev tables: nodes, barycentric interpolation and the cached on-disk build.

A table holds arrays f(theta) of any shape at the tensor product of n_d Chebyshev points of
the second kind on each parameter's interval [low_d, high_d], and interpolates them with a
polynomial of degree n_d - 1 per parameter (barycentric formula, one axis at a time). Tables
are stored as ``.npz`` files named by a hash of everything they depend on
(:func:`table_key`); :func:`load_or_build` lets processes that share a folder (MPI ranks,
concurrent jobs) compute a table once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_savez",
    "barycentric_weights",
    "chebyshev_nodes",
    "default_cache_dir",
    "interpolate",
    "load_or_build",
    "table_key",
    "tabulate",
    "tensor_points",
]

log = logging.getLogger(__name__)


def chebyshev_nodes(low: float, high: float, n: int) -> np.ndarray:
    """n Chebyshev points of the second kind (including the end points) on [low, high]."""
    if n == 1:
        return np.array([0.5 * (low + high)])
    x = -np.cos(np.pi * np.arange(n) / (n - 1))
    return 0.5 * (low + high) + 0.5 * (high - low) * x


def barycentric_weights(nodes: np.ndarray, x: float) -> np.ndarray:
    """Lagrange interpolation weights at x for Chebyshev points of the second kind. Returns (n,)."""
    n = nodes.size
    if n == 1:
        return np.ones(1)
    w = np.ones(n)
    w[1::2] = -1
    w[0] *= 0.5
    w[-1] *= 0.5
    diff = x - nodes
    hit = np.abs(diff) <= 1e-14 * max(1.0, abs(x))
    if hit.any():
        out = np.zeros(n)
        out[np.argmax(hit)] = 1.0
        return out
    q = w / diff
    return q / q.sum()


def tensor_points(grids: Sequence[np.ndarray]) -> np.ndarray:
    """All combinations of the nodes of each parameter, last parameter fastest. Returns (prod n_d, D)."""
    if len(grids) == 0:
        return np.zeros((1, 0))
    return np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, len(grids))


def interpolate(values: np.ndarray, grids: Sequence[np.ndarray], x: Sequence[float]) -> np.ndarray:
    """Interpolate a table at one point.

    values: (n_1, ..., n_D, ...) the function at :func:`tensor_points` of ``grids`` (D arrays of
    nodes); x: (D,). Returns the trailing shape (...).
    """
    out = np.asarray(values)
    for nodes, xi in zip(grids, x):  # contract one parameter axis at a time
        out = barycentric_weights(nodes, float(xi)) @ out.reshape(nodes.size, -1)
    return out.reshape(np.shape(values)[len(grids) :])


def tabulate(
    points: np.ndarray,
    evaluate: Callable[[np.ndarray], dict[str, np.ndarray]],
    shape: tuple[int, ...],
    *,
    progress: bool = False,
    heartbeat: Callable[[], None] | None = None,
    description: str = "table",
    order: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate ``evaluate`` (point (D,) -> name -> array) at every row of points: (M, D).

    Returns name -> array of shape ``shape + array shape`` (shape: the node counts, whose
    product is M). ``heartbeat`` is called after every point (it keeps a build lock fresh).
    ``order`` (a permutation of the M rows) is the order of evaluation, for an ``evaluate``
    that caches work shared by neighbouring points; the result does not depend on it.
    """
    iterator = np.arange(len(points)) if order is None else np.asarray(order)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=description, leave=False, disable=None)
    rows: list[dict] = [{}] * len(points)
    for index in iterator:
        rows[index] = evaluate(points[index])
        if heartbeat is not None:
            heartbeat()
    return {k: np.stack([r[k] for r in rows]).reshape(*shape, *np.shape(rows[0][k])) for k in rows[0]}


def table_key(blob: dict) -> str:
    """24-hex-digit hash of a JSON-serialisable description of everything a table depends on."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """Folder of cached tables: ``$COSMOSBI_CACHE`` or ``~/.cache/cosmosbi``."""
    return Path(os.environ.get("COSMOSBI_CACHE", Path.home() / ".cache" / "cosmosbi"))


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an npz file atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_build(
    path: str | os.PathLike,
    compute: Callable[[Callable[[], None]], dict[str, np.ndarray]],
    *,
    poll_seconds: float = 2.0,
    stale_seconds: float = 900.0,
) -> dict[str, np.ndarray]:
    """Load the arrays of the npz file ``path`` if it exists, else compute and save them.

    ``compute(heartbeat)`` returns name -> array and should call ``heartbeat()`` regularly.
    Processes that share the folder build a table once: the first one holds the lock file
    ``path + ".lock"`` while it computes (``heartbeat`` touches it); the others wait for the
    table to appear, polling every ``poll_seconds``. A lock untouched for ``stale_seconds``
    (its builder died) is taken over. The table is written atomically (:func:`atomic_savez`).
    """
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            log.info("loaded table %s", path)
            return data
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > stale_seconds:
                log.warning("removing stale table lock %s (untouched for %.0f s)", lock, age)
                lock.unlink(missing_ok=True)
                continue
            time.sleep(poll_seconds)
            continue
        try:
            data = compute(lambda: os.utime(lock))
            atomic_savez(path, data)
        finally:
            lock.unlink(missing_ok=True)
        return data
