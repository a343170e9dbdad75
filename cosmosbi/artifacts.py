"""Fingerprints of the files a stage wrote, to notice artifacts deleted, truncated or edited later.

A fingerprint holds, per file (path relative to the run directory), its size, its modification
time and, for files up to :data:`HASHED_BYTES`, the SHA-256 of its bytes. Checking compares size
and time first; only a file whose time changed is read again (its hash decides: a file touched
but not changed passes; a large file without a hash whose time changed counts as changed).
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

__all__ = ["HASHED_BYTES", "fingerprint", "changed_files"]

HASHED_BYTES = 64 * 2**20  # larger files (big shards) are checked by size and modification time


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(path: Path, unchecked: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else []
    return [p for p in files if not any(fnmatch.fnmatch(p.relative_to(path).as_posix(), u) for u in unchecked)]


def fingerprint(paths, root: Path, unchecked: tuple[str, ...] = ()) -> dict[str, dict]:
    """{file relative to ``root``: {"size", "mtime_ns", "sha256" (None above HASHED_BYTES)}} of
    every file under ``paths`` (files or folders), except those matching a glob of ``unchecked``
    (relative to the folder they are in)."""
    out = {}
    for path in paths:
        for file in _files(Path(path), unchecked):
            stat = file.stat()
            out[file.relative_to(root).as_posix()] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _sha256(file) if stat.st_size <= HASHED_BYTES else None,
            }
    return out


def changed_files(recorded: dict[str, dict], root: Path) -> list[tuple[str, str]]:
    """The files of a fingerprint that are no longer as recorded: [(file, what happened)]."""
    changed = []
    for name, was in recorded.items():
        path = root / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            changed.append((name, "deleted"))
            continue
        if stat.st_size != was["size"]:
            changed.append((name, f"size {was['size']} -> {stat.st_size} bytes"))
        elif stat.st_mtime_ns != was["mtime_ns"] and (was.get("sha256") is None or _sha256(path) != was["sha256"]):
            changed.append((name, "contents changed"))
    return changed
