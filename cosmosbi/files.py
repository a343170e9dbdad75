"""Atomic file writes, safe file names, torch weights without pickle, stable hashes of configs, and provenance."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "safe_name",
    "atomic_path",
    "atomic_write_json",
    "read_json",
    "load_weights",
    "config_hash",
    "UNHASHED_SETTINGS",
    "HASHED_WHEN_SET",
    "hashed_settings",
    "package_versions",
    "provenance",
]


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a plain file name, else raise ``ValueError`` naming ``what``.

    Names of datasets and observations become file and directory names inside a run
    directory: letters, digits, ``_``, ``.`` and ``-``, starting with a letter or a digit, at
    most 128 characters, and no ``..`` (so no path separators, absolute paths or parent
    directories).
    """
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} is not a plain file name: use letters, digits, '_', '.' and '-', "
            "starting with a letter or a digit (no '/', no '..', at most 128 characters)"
        )
    return name


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


def load_weights(path: str | Path, map_location="cpu") -> dict:
    """A ``state_dict`` saved with ``torch.save``, read with ``torch.load(weights_only=True)``.

    A file that is not one (truncated, not a torch file, or a pickle that would run code on
    loading) raises ``ValueError`` naming the file.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ValueError(f"{path}: not a weights file that loads without running code ({first})") from None


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
# settings that change a result only when switched on (bf16 training and augmentation change the
# weights, a time limit fails slow simulations): hashed only when they differ from this value, so
# the keys of configs that leave them off stay as they were
HASHED_WHEN_SET = {"mixed_precision": False, "augment": False, "simulation_timeout_s": None}


def hashed_settings(settings: dict, drop=()) -> dict:
    """``settings`` (nested dicts) as keys hash them: without :data:`UNHASHED_SETTINGS`, the keys in
    ``drop``, and the :data:`HASHED_WHEN_SET` settings that hold their default, at any depth."""
    left_out = UNHASHED_SETTINGS | set(drop)
    return {
        k: (hashed_settings(v, drop) if isinstance(v, dict) else v)
        for k, v in settings.items()
        if k not in left_out and not (k in HASHED_WHEN_SET and v == HASHED_WHEN_SET[k])
    }


def package_versions(
    names: tuple[str, ...] = ("cosmosbi", "numpy", "scipy", "h5py", "torch", "sbi", "healpy"),
) -> dict[str, str]:
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
