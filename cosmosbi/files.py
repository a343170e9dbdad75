"""Atomic file writes, stable hashes of configs, and provenance records."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_json", "read_json", "config_hash", "UNHASHED_SETTINGS", "HASHED_WHEN_SET", "hashed_settings",
           "package_versions", "provenance"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``.

    A reader never sees a half-written file: either the old content or the new one. On an
    exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def config_hash(data: Any) -> str:
    """Stable short hash of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# settings that change where or how fast a result is computed, never the result: left out of keys
UNHASHED_SETTINGS = frozenset({"device", "num_workers", "num_threads", "in_memory_bytes"})
# settings that change a result only when switched on (bf16 training changes the weights): hashed
# only when they differ from this value, so the keys of configs that leave them off stay as they were
HASHED_WHEN_SET = {"mixed_precision": False}


def hashed_settings(settings: dict, drop=()) -> dict:
    """``settings`` (nested dicts) as keys hash them: without :data:`UNHASHED_SETTINGS`, the keys in
    ``drop``, and the :data:`HASHED_WHEN_SET` settings that hold their default, at any depth."""
    left_out = UNHASHED_SETTINGS | set(drop)
    return {k: (hashed_settings(v, drop) if isinstance(v, dict) else v) for k, v in settings.items()
            if k not in left_out and not (k in HASHED_WHEN_SET and v == HASHED_WHEN_SET[k])}


def package_versions(names: tuple[str, ...] = ("cosmosbi", "numpy", "scipy", "h5py", "torch", "sbi", "healpy")) -> dict[str, str]:
    """Installed versions of the named distributions (without importing them)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance() -> dict[str, Any]:
    """Who, where and when: host, platform, time (UTC, ISO 8601) and package versions."""
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
    }
