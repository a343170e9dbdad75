"""One run at a time per run directory: the lock every ``cosmosbi`` command that writes takes.

``cosmosbi run``, ``simulate`` and the single-stage commands hold the run directory
**exclusively** (``RUN_DIR/locks/run.json``); the tasks of a SLURM job array (``simulate
--chunk``) hold it **shared** (``RUN_DIR/locks/shared-HOST-PID.json``), so chunks run together
but never beside an exclusive holder. Under MPI rank 0 takes the lock for all ranks of the run.

Each holder writes a small JSON file (pid, host, since, command) with an exclusive create, then
looks for holders of the other kind; whoever sees the other backs off, so two processes never
both proceed. A holder whose process is gone is **stale** and is taken over: a dead pid on this
host, or, on another host (whose processes cannot be asked), a lock file not refreshed for
``stale_after_s`` seconds (the planner refreshes it at every stage). A busy directory either
makes the caller wait (``wait_s``) or raises :class:`RunLocked`, naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

__all__ = ["RunLocked", "DEFAULT_STALE_AFTER_S", "run_lock", "lock_holders", "describe_holder", "pid_alive"]

# a lock file of another host untouched this long is taken to belong to a dead process
DEFAULT_STALE_AFTER_S = 24 * 3600.0
POLL_S = 0.5


class RunLocked(RuntimeError):
    """The run directory is held by another live process."""


def _holder_record(command: str) -> dict:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "command": command}


def describe_holder(holder: dict) -> str:
    """'pid P on host H since T (command)' of a lock file's record."""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}{command}"


def _read(path: Path) -> dict | None:
    """A lock file's record; None if it is gone. A file being written (empty or partial) reads as
    a live holder of unknown pid."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"pid": None, "host": None, "since": None}


def pid_alive(pid, host) -> bool | None:
    """Whether process ``pid`` of ``host`` is running: True or False on this host; None for
    another host (or no pid), whose processes cannot be asked."""
    if host != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _alive(path: Path, holder: dict, stale_after_s: float) -> bool:
    """Whether the process that holds ``path`` may still be running."""
    alive = pid_alive(holder.get("pid"), holder.get("host"))
    if alive is not None:
        return alive
    try:  # another host, or a file still being written: alive while it is refreshed
        return time.time() - path.stat().st_mtime < stale_after_s
    except FileNotFoundError:
        return False


def lock_holders(locks: Path, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> list[tuple[Path, dict]]:
    """The live holders of a run directory's lock folder ``locks``: [(lock file, record)]."""
    found = []
    for path in sorted(locks.glob("*.json")) if locks.is_dir() else []:
        holder = _read(path)
        if holder is not None and _alive(path, holder, stale_after_s):
            found.append((path, holder))
    return found


def _take_over(path: Path, holder: dict) -> None:
    """Remove a stale lock file (only one of several processes doing this at once succeeds)."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        path.rename(aside)
        aside.unlink()
        print(f"cosmosbi: took over the stale lock of {describe_holder(holder)} ({path})", file=sys.stderr)


def _try_acquire(locks: Path, shared: bool, command: str, stale_after_s: float):
    """One attempt. Returns (our lock file, None) on success; (None, None) when this process holds
    the directory already; (None, (lock file, record) of a live holder) when it is busy."""
    locks.mkdir(parents=True, exist_ok=True)
    exclusive = locks / "run.json"
    mine = locks / f"shared-{socket.gethostname()}-{os.getpid()}.json" if shared else exclusive
    for path in sorted(locks.glob("*.json")):
        holder = _read(path)
        if holder is not None and not _alive(path, holder, stale_after_s):
            _take_over(path, holder)
    try:
        fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = _read(mine) or {}
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            return None, None
        return None, (mine, holder)
    with os.fdopen(fd, "w") as handle:
        json.dump(_holder_record(command), handle)
    # an exclusive holder backs off before shared ones, a shared one before the exclusive one
    others = [(p, h) for p, h in lock_holders(locks, stale_after_s) if p != mine and (p == exclusive) == shared]
    if others:
        mine.unlink()
        return None, others[0]
    return mine, None


class _Held:
    """A held lock: ``refresh()`` marks it alive (for holders on other hosts)."""

    def __init__(self, path: Path | None):
        self.path = path

    def refresh(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)


@contextlib.contextmanager
def run_lock(
    locks: str | os.PathLike,
    *,
    shared: bool = False,
    wait_s: float = 0.0,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    command: str | None = None,
    comm=None,
) -> Iterator[_Held]:
    """Hold the run directory whose lock folder is ``locks`` for the duration of the ``with`` block.

    Args:
        locks: the lock folder (``RunLayout.locks``).
        shared: hold it shared (job-array chunks) rather than exclusively.
        wait_s: how long to wait for a busy directory before raising :class:`RunLocked` (0: at once).
        stale_after_s: age after which a lock file of another host counts as stale.
        command: what the holder runs (shown to whoever finds the directory busy).
        comm: an MPI communicator whose rank 0 takes the lock for every rank (all ranks raise if
            it is busy); None: this process alone.

    Yields an object whose ``refresh()`` marks the lock alive.
    """
    locks = Path(locks)
    command = command or " ".join(["cosmosbi", *sys.argv[1:]])
    mine, error = None, None
    if comm is None or comm.Get_rank() == 0:
        deadline = time.time() + max(float(wait_s), 0.0)
        waited = False
        while True:
            try:
                mine, busy = _try_acquire(locks, shared, command, stale_after_s)
            except OSError as err:
                error = f"cannot lock the run directory {locks.parent}: {err}"
                break
            if busy is None:  # ours now, or already this process's
                break
            if time.time() >= deadline:
                path, holder = busy
                advice = (
                    f"gave up waiting after {wait_s:g} s" if wait_s else "wait for it to end, or pass --wait SECONDS"
                )
                error = f"run directory {locks.parent} is in use by {describe_holder(holder)} (lock {path}); {advice}"
                break
            if not waited:
                path, holder = busy
                print(f"cosmosbi: waiting for {describe_holder(holder)} to release {locks.parent}", file=sys.stderr)
                waited = True
            time.sleep(POLL_S)
    if comm is not None:
        error = comm.bcast(error, root=0)
    if error is not None:
        raise RunLocked(error)
    try:
        yield _Held(mine)
    finally:
        if mine is not None:
            with contextlib.suppress(FileNotFoundError):
                mine.unlink()
