"""Run a simulator over many parameter draws, MPI-parallel, into an HDF5 dataset that resumes.

Simulation i of a dataset draws its parameters (unless theta is given) and its randomness
from ``SeedSequence([seed, i])``, so the dataset is the same whatever the batch size, the
number of MPI ranks, or where an earlier run was killed. The rows simulated are written
atomically as a part file at every checkpoint (about once a second, see ``checkpoint_s``); at
the end every rank merges its parts into its shard (in time linear in the number of rows) and
rank 0 writes the manifest. Rerunning the same call after a kill simulates only the missing
indices. Every simulation's outputs are checked against the output spec (names, per-row
shapes, numeric dtypes, finite values) before they are stored; a simulation that raises,
returns unusable outputs, or runs past ``simulation_timeout_s`` is recorded as failed (index,
seed, message) and never stored as data.

Run under MPI with ``mpiexec -n 4 python my_script.py`` (or ``cosmosbi simulate`` under
``mpiexec``/``srun``); without an MPI launcher it runs as one process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from cosmosbi.files import atomic_write_json, config_hash, provenance, read_json
from cosmosbi.simulators.base import FunctionSimulator, as_simulator, simulate_rows, simulator_identity
from cosmosbi.simulators.mpi import get_comm
from cosmosbi.simulators.priors import Prior
from cosmosbi.simulators.store import (
    FORMAT_VERSION,
    MANIFEST,
    DatasetError,
    StorageError,
    merge_files,
    read_index,
    read_output_spec,
    storage_errors,
    write_rows,
)

__all__ = ["run_simulations", "RunSummary", "SimulationTimeout", "remove_orphan_files", "simulation_seeds"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a call to :func:`run_simulations` did and what the dataset now holds."""

    path: Path
    n: int
    simulated: int
    failed: int
    new_this_run: int
    status: str
    seconds: float
    failures: list[dict] = field(default_factory=list)
    merge_seconds: float = 0.0


def simulation_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """The (parameter draw, simulation noise) seed sequences of simulation ``index``: the two
    children of ``SeedSequence([seed, index])`` (built directly, as ``spawn(2)`` would)."""
    entropy = [seed, index]
    return np.random.SeedSequence(entropy, spawn_key=(0,)), np.random.SeedSequence(entropy, spawn_key=(1,))


def run_simulations(
    simulator,
    n: int,
    out_dir: str | Path,
    seed: int,
    *,
    theta: np.ndarray | None = None,
    prior: Prior | None = None,
    batch_size: int = 64,
    comm=None,
    progress: bool = True,
    description: Mapping[str, Any] | None = None,
    chunk: tuple[int, int] | None = None,
    simulation_timeout_s: float | None = None,
    checkpoint_s: float = 1.0,
    overwrite: bool = False,
) -> RunSummary:
    """Simulate ``n`` datasets rows into ``out_dir``, resuming whatever an earlier run left.

    Args:
        simulator: a simulator (see :mod:`cosmosbi.simulators.base`) or a plain function
            ``f(theta, rng)`` (then ``prior`` is required).
        n: number of simulations (indices 0..n-1). A larger n on an existing dataset extends it.
        out_dir: dataset directory (created if needed).
        seed: root seed (a non-negative integer).
        theta: optional fixed parameters (n, D) instead of prior draws (e.g. a design at a
            fiducial point); must lie inside the prior support.
        prior: prior to draw theta from (default: the simulator's).
        batch_size: simulations per ``simulate`` call.
        comm: an mpi4py communicator (default: COMM_WORLD under an MPI launcher, else serial).
        progress: show a progress bar on rank 0.
        description: JSON-able description of the simulator for the manifest; default: the
            ``description`` attribute that :func:`make_simulator` sets, else the simulator's name.
            The code of a plain function is part of the identity in any case
            (:func:`~cosmosbi.simulators.base.simulator_identity`).
        chunk: ``(k, K)``: simulate only chunk k of K of the indices 0..n-1 (contiguous blocks),
            without MPI and without merging, for K independent processes such as the tasks of
            a SLURM job array. A later call without ``chunk`` merges everything (simulating
            whatever a failed chunk left) and writes the final manifest.
        simulation_timeout_s: optional limit in seconds on one simulation (a batched simulator
            gets this much per row of a batch; a batch over its limit is retried row by row). A
            simulation over the limit is recorded as failed and the run goes on. The guard is a
            ``SIGALRM`` timer: it costs two system calls per simulation, works only in the main
            thread of a process on a POSIX system, and interrupts Python code (also a
            ``time.sleep``) but not a C extension until it returns to Python.
        checkpoint_s: the rows simulated so far are written as a part file (a resume point
            after a kill) whenever this many seconds have passed since the last one (0: after
            every batch), and at the end or on an error.
        overwrite: replace a dataset found in ``out_dir`` instead of resuming it (or refusing
            it when it was made by another simulator, code version, prior or seed).

    Returns:
        :class:`RunSummary` (the same on every rank).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (number of simulations) must be a positive integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_seconds("checkpoint_s", checkpoint_s, allow_zero=True)
    if simulation_timeout_s is not None:
        _check_seconds("simulation_timeout_s", simulation_timeout_s, allow_zero=False)
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            raise ValueError(
                "simulation_timeout_s needs SIGALRM: run the simulations in the main thread of a POSIX process"
            )
    n, seed = int(n), int(seed)
    simulator = as_simulator(simulator) if prior is None else as_simulator(simulator, prior=prior)
    prior = prior or simulator.prior
    if tuple(prior.names) != tuple(simulator.parameter_names):
        raise ValueError(
            f"prior parameters {list(prior.names)} differ from the simulator's {list(simulator.parameter_names)}"
        )
    if theta is not None:
        theta = prior.check(theta)
        if len(theta) != n:
            raise ValueError(f"theta has {len(theta)} rows but n={n}")

    if chunk is not None:
        k, n_chunks = chunk
        if not (isinstance(k, (int, np.integer)) and isinstance(n_chunks, (int, np.integer)) and 0 <= k < n_chunks):
            raise ValueError(f"chunk must be (k, K) with 0 <= k < K, got {chunk!r}")
        if comm is not None and comm.Get_size() > 1:
            raise ValueError("chunk: run one process per chunk (a job array), not an MPI job")
        if overwrite:
            raise ValueError(
                "overwrite: the chunks of a job array share one dataset; remove it before submitting the array"
            )
    comm = get_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    out_dir = Path(out_dir)
    started = time.time()
    identity = {
        "simulator": simulator_identity(simulator, description),
        "parameter_names": list(prior.names),
        "prior": prior.to_config(),
        "seed": seed,
        "theta": None if theta is None else config_hash(theta.tolist()),
    }

    # rank 0 checks the directory and finds what is left to do; every rank learns the verdict
    plan: dict[str, Any] = {}
    if rank == 0:
        try:
            plan = _prepare(out_dir, identity, n, simulator, overwrite, clean=chunk is None)
        except (ValueError, OSError) as err:
            plan = {"error": str(err), "kind": type(err).__name__, "errno": getattr(err, "errno", None)}
    plan = comm.bcast(plan, root=0)
    if "error" in plan:
        if plan["kind"] == "StorageError":
            raise StorageError(plan["errno"], plan["error"])
        raise (DatasetError if plan["kind"] == "DatasetError" else ValueError)(plan["error"])

    missing = np.asarray(plan["missing"], dtype=np.int64)
    if chunk is not None:  # a fixed block of indices, whatever other chunks have done meanwhile
        missing = np.intersect1d(np.array_split(np.arange(n), chunk[1])[chunk[0]], missing)
        rank = int(chunk[0])
    batches = _Batches(
        simulator, prior, seed, theta, _RowCheck(plan["output_spec"], plan["spec_origin"]), simulation_timeout_s
    )
    writer = _PartWriter(out_dir / "parts", rank, seed, prior.names, checkpoint_s)
    marks_manifest = rank == 0 and chunk is None
    try:
        n_probed = 0
        if not batches.check.spec and chunk is None:
            # rank 0 simulates the first missing rows until one succeeds, so that every rank
            # checks its rows against the same output shapes
            probe: dict[str, Any] = {"spec": None, "n": 0}
            probe_error = None
            if rank == 0:
                try:
                    probe["n"] = batches.run_until_spec(missing, batch_size, writer)
                    probe["spec"] = batches.check.spec
                    writer.flush()
                except Exception as err:
                    probe_error = err
                    probe["error"], probe["kind"] = str(err), type(err).__name__
            probe = comm.bcast(probe, root=0)
            if probe_error is not None:
                raise probe_error
            if "error" in probe:  # the other ranks stop with rank 0's message
                raise (ValueError if probe["kind"] == "ValueError" else RuntimeError)(probe["error"])
            n_probed = probe["n"]
            batches.check.spec = probe["spec"]
        rest = missing[n_probed:]
        mine = rest if chunk is not None else np.array_split(rest, size)[rank]
        bar = _progress_bar(len(mine), out_dir, rank, size, progress)
        for start in range(0, len(mine), batch_size):
            index = mine[start : start + batch_size]
            batches.run(index, writer, first=start == 0 and n_probed == 0)
            if bar is not None:
                bar.update(len(index))
        if bar is not None:
            bar.close()
        writer.flush()
    except BaseException as err:
        if not isinstance(err, OSError):
            with contextlib.suppress(Exception):  # keep what was simulated; the first error is the one to report
                writer.flush()
        if marks_manifest:
            _mark_interrupted(out_dir, err)
        raise
    n_new = (n_probed if rank == 0 else 0) + len(mine)
    n_failed = writer.n_failed
    if chunk is not None:
        block = len(np.array_split(np.arange(n), chunk[1])[chunk[0]])
        return RunSummary(
            path=out_dir,
            n=block,
            simulated=block - len(missing) + n_new - n_failed,
            failed=n_failed,
            new_this_run=n_new,
            status=f"chunk {chunk[0]} of {chunk[1]}, not merged yet",
            seconds=time.time() - started,
        )

    comm.barrier()
    merge_started = time.time()
    try:
        _merge_parts(out_dir, rank, size, seed, prior.names)
    except BaseException as err:
        if marks_manifest:
            _mark_interrupted(out_dir, err)
        raise
    comm.barrier()
    merge_seconds = time.time() - merge_started
    new_per_rank = comm.allgather(n_new)
    summary = _finish(out_dir, n, time.time() - started, size, new_per_rank, merge_seconds) if rank == 0 else None
    return comm.bcast(summary, root=0)


def _check_seconds(name: str, value, allow_zero: bool) -> None:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {bound} number of seconds, got {value!r}")


class SimulationTimeout(Exception):
    """A simulation ran longer than ``simulation_timeout_s``."""


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`SimulationTimeout` in the block once ``seconds`` have passed (None: no limit)."""
    if seconds is None:
        yield
        return

    def expire(signum, frame):
        raise SimulationTimeout(f"simulation exceeded simulation_timeout_s={seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _RowCheck:
    """Checks one simulation's outputs against the output spec before it is stored.

    spec: name -> {"shape", "dtype"}; None until the first valid simulation defines it (from its
    names, shapes and dtypes) when the simulator declares no ``output_spec`` and nothing is stored.
    """

    def __init__(self, spec: Mapping[str, Mapping] | None, origin: str = "output_spec"):
        self.spec = (
            {k: {"shape": list(v["shape"]), "dtype": str(v["dtype"])} for k, v in spec.items()} if spec else None
        )
        self.origin = origin if spec else "the first simulation"

    def __call__(self, row: Mapping[str, Any]) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(the outputs cast to the spec's dtypes, None), or (None, why the simulation is refused)."""
        values = {}
        for name, value in row.items():
            value = np.asarray(value)
            if value.dtype.kind not in "biufc":
                return None, f"output {name!r} has dtype {value.dtype}; expected numbers"
            values[name] = value
        if self.spec is None:
            bad = _not_finite(values)
            if bad:
                return None, bad
            self.spec = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in values.items()}
            return values, None
        if set(values) != set(self.spec):
            return None, f"returned outputs {sorted(values)}; expected {sorted(self.spec)} ({self.origin})"
        cast = {}
        for name, value in values.items():
            shape, dtype = tuple(self.spec[name]["shape"]), np.dtype(self.spec[name]["dtype"])
            if value.shape != shape:
                return None, f"output {name!r} has shape {value.shape} per simulation; expected {shape} ({self.origin})"
            if not _castable(value, dtype):
                return None, f"output {name!r} has dtype {value.dtype}; expected {dtype} ({self.origin})"
            cast[name] = value.astype(dtype, copy=False)
        bad = _not_finite(cast)
        return (None, bad) if bad else (cast, None)


def _not_finite(values: Mapping[str, np.ndarray]) -> str | None:
    for name, value in values.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            return f"output {name!r} contains NaN or inf"
    return None


def _castable(value: np.ndarray, dtype: np.dtype) -> bool:
    """Whether storing ``value`` as ``dtype`` keeps it: no dropped imaginary part, no truncated or wrapped integer."""
    if dtype.kind == "f":
        return value.dtype.kind in "biuf"
    if dtype.kind == "c":
        return True
    if dtype.kind in "iu":
        if value.dtype.kind not in "biu":
            return False
        info = np.iinfo(dtype)
        return value.size == 0 or (int(value.min()) >= info.min and int(value.max()) <= info.max)
    return value.dtype.kind == "b" and dtype.kind == "b"


class _Batches:
    """Simulates batches of indices, checks every row, and hands the good rows and failures to a writer."""

    def __init__(self, simulator, prior: Prior, seed: int, theta, check: _RowCheck, timeout: float | None):
        self.simulator, self.prior, self.seed, self.theta = simulator, prior, seed, theta
        self.check, self.timeout = check, timeout
        self.row_wise = isinstance(simulator, FunctionSimulator) and not simulator.batched

    def run_until_spec(self, missing: np.ndarray, batch_size: int, writer: _PartWriter) -> int:
        """Simulate leading batches of ``missing`` until one row defines the output spec; returns the rows done."""
        done = 0
        while self.check.spec is None and done < len(missing):
            index = missing[done : done + batch_size]
            self.run(index, writer, first=done == 0)
            done += len(index)
        return done

    def run(self, index: np.ndarray, writer: _PartWriter, first: bool = False) -> None:
        """Simulate rows ``index``; refuse the run when every row of the first batch has unusable outputs."""
        seqs = [simulation_seeds(self.seed, int(i)) for i in index]
        if self.theta is not None:
            theta = self.theta[index]
        else:
            theta = np.stack([self.prior.sample(1, np.random.default_rng(t))[0] for t, _ in seqs])
        rows = self._simulate(theta, [noise for _, noise in seqs])
        good, outputs, failures, output_errors = [], [], [], []
        for r, (i, row) in enumerate(zip(index, rows)):
            if isinstance(row, str):
                failures.append({"index": int(i), "seed": self.seed, "message": row})
                continue
            values, message = self.check(row)
            if message is None:
                good.append(r)
                outputs.append(values)
            else:
                failures.append({"index": int(i), "seed": self.seed, "message": message})
                output_errors.append(message)
        if first and len(output_errors) == len(index):
            raise ValueError(
                f"simulator {_label(self.simulator)}: {output_errors[0]} (simulation index {int(index[0])}); "
                "every simulation of the first batch returned unusable outputs, so the run stops. "
                "Fix the simulator or its output_spec and rerun"
            )
        if failures:
            log.warning(
                "%d of %d simulations in this batch failed (first: index %d: %s)",
                len(failures),
                len(index),
                failures[0]["index"],
                failures[0]["message"],
            )
        stacked = {}
        if outputs:
            for name, spec in self.check.spec.items():
                stacked[name] = np.empty((len(outputs), *spec["shape"]), dtype=spec["dtype"])
                for r, values in enumerate(outputs):
                    stacked[name][r] = values[name]
        writer.add(theta[good], index[good], stacked, failures)

    def _simulate(self, theta: np.ndarray, noise_seqs: list) -> list[dict | str]:
        """Per row: a dict of that simulation's outputs, or the message of its failure."""
        if not self.row_wise:
            try:
                with _time_limit(None if self.timeout is None else self.timeout * len(theta)):
                    out = simulate_rows(self.simulator, theta, _generators(noise_seqs))
                return [{name: value[r] for name, value in out.items()} for r in range(len(theta))]
            except Exception as batch_error:  # find which rows fail by simulating them one at a time
                log.info("a batch of %d simulations raised %r; retrying its rows one by one", len(theta), batch_error)
        rows: list[dict | str] = []
        for r in range(len(theta)):
            try:
                with _time_limit(self.timeout):
                    if self.row_wise:
                        rows.append(self.simulator.simulate_row(theta[r], _generators(noise_seqs[r : r + 1])[0]))
                    else:
                        out = simulate_rows(self.simulator, theta[r : r + 1], _generators(noise_seqs[r : r + 1]))
                        rows.append({name: value[0] for name, value in out.items()})
            except Exception as err:
                rows.append(str(err) if isinstance(err, SimulationTimeout) else f"{type(err).__name__}: {err}")
        return rows


def _generators(seqs) -> list[np.random.Generator]:
    return [np.random.default_rng(seq) for seq in seqs]


class _PartWriter:
    """Buffers simulated rows and failures and writes them as one part file per checkpoint."""

    def __init__(self, parts_dir: Path, rank: int, seed: int, names, checkpoint_s: float, max_bytes: int = 32 * 2**20):
        self.parts_dir, self.rank, self.seed, self.names = parts_dir, rank, seed, list(names)
        self.checkpoint_s, self.max_bytes = checkpoint_s, max_bytes
        self.n_failed = 0
        self._reset()

    def _reset(self) -> None:
        self.theta, self.index, self.outputs, self.failures = [], [], [], []
        self.first: int | None = None
        self.nbytes = 0
        self.since = time.monotonic()

    def add(self, theta: np.ndarray, index: np.ndarray, outputs: dict[str, np.ndarray], failures: list[dict]) -> None:
        if self.first is None and (len(index) or failures):
            self.first = int(min([*index.tolist(), *(f["index"] for f in failures)]))
        self.theta.append(theta)
        self.index.append(index)
        if outputs:
            self.outputs.append(outputs)
        self.failures.extend(failures)
        self.n_failed += len(failures)
        self.nbytes += theta.nbytes + sum(v.nbytes for v in outputs.values())
        if time.monotonic() - self.since >= self.checkpoint_s or self.nbytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self.first is None:
            self.since = time.monotonic()
            return
        index = np.concatenate(self.index)
        theta = np.concatenate(self.theta).reshape(len(index), len(self.names))
        outputs = {
            name: np.concatenate([o[name] for o in self.outputs]) for name in (self.outputs[0] if self.outputs else {})
        }
        write_rows(
            self.parts_dir / f"part-r{self.rank:05d}-{self.first:010d}.h5",
            theta,
            index,
            self.seed,
            outputs,
            self.failures,
            self.names,
        )
        self._reset()


def _label(simulator) -> str:
    return getattr(simulator, "name", None) or type(simulator).__name__


def _mark_interrupted(out_dir: Path, err: BaseException) -> None:
    """Record in the manifest that the run stopped (it resumes from its parts); never raises."""
    try:
        manifest = read_json(out_dir / MANIFEST)
        manifest["status"] = "interrupted"
        manifest["error"] = f"{type(err).__name__}: {err}"
        atomic_write_json(out_dir / MANIFEST, manifest)
    except Exception:  # e.g. a full disk: the manifest then keeps saying running
        log.debug("could not mark %s as interrupted", out_dir, exc_info=True)


_TMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


def remove_orphan_files(out_dir: Path) -> list[Path]:
    """Remove temporary files (``.NAME.PID.tmp``) that a killed run left in ``out_dir`` and its parts.

    Only files whose process is no longer alive on this host are removed. Returns the removed paths.
    """
    removed = []
    for folder in (out_dir, out_dir / "parts"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TMP_NAME.match(path.name)
            if match is None or not path.is_file():
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or _process_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    if removed:
        log.info("%s: removed %d temporary files of a killed run", out_dir, len(removed))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _existing_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("shard-*.h5")) + sorted((out_dir / "parts").glob("part-*.h5"))


def _stored(out_dir: Path) -> tuple[np.ndarray, dict[int, dict], dict[str, dict]]:
    """Indices stored (sorted, distinct), failure records, and the output spec seen, over every shard and part."""
    indices, failures, spec = [], {}, {}
    for path in _existing_files(out_dir):
        index, fails = read_index(path)
        indices.append(index)
        failures.update({f["index"]: f for f in fails})
        if not spec and len(index):
            spec = read_output_spec(path)
    done = np.unique(np.concatenate(indices)) if indices else np.zeros(0, np.int64)
    return done, failures, spec


def _remove_dataset(out_dir: Path) -> None:
    """Delete the files of a dataset (manifest, shards, parts); other files are left alone."""
    for path in [*out_dir.glob("shard-*.h5"), *out_dir.glob(".*.tmp")]:
        path.unlink()
    parts = out_dir / "parts"
    if parts.is_dir():
        for path in parts.iterdir():
            path.unlink()
        parts.rmdir()
    (out_dir / MANIFEST).unlink()


def _prepare(out_dir: Path, identity: dict, n: int, simulator, overwrite: bool, clean: bool) -> dict[str, Any]:
    """Check that out_dir is new or holds this same dataset; write the 'running' manifest."""
    manifest_path = out_dir / MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output directory {out_dir} exists and is not a directory")
    previous = None
    if manifest_path.exists():
        previous = read_json(manifest_path)
        if overwrite:
            log.info("%s: overwrite=True, removing the dataset it holds", out_dir)
            _remove_dataset(out_dir)
            previous = None
    if previous is not None:
        differing = [k for k in identity if previous.get("identity", {}).get(k) != identity[k]]
        if differing:
            key = differing[0]
            raise ValueError(
                f"{out_dir} already holds a dataset with a different {key} "
                f"({previous.get('identity', {}).get(key)!r}, now {identity[key]!r}); its simulations are not reused. "
                "Choose another output directory, delete this one, or pass overwrite=True to run_simulations "
                "to replace it"
            )
        if n < previous["n"]:
            raise ValueError(
                f"{out_dir} holds a dataset of n={previous['n']} simulations; asked for n={n}. "
                f"Use n >= {previous['n']} or another directory"
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(
            f"output directory {out_dir} is not empty and holds no {MANIFEST}; choose an empty or new directory"
        )
    with storage_errors(manifest_path, "starting the simulations"):
        out_dir.mkdir(parents=True, exist_ok=True)
        if clean:
            remove_orphan_files(out_dir)
        done, failures, stored_spec = _stored(out_dir)
        failed = np.asarray(sorted(failures), dtype=np.int64)
        outside = np.concatenate([done[done >= n], failed[failed >= n]])
        if len(outside):
            raise DatasetError(
                f"{out_dir} holds simulation index {int(outside[0])} >= n={n}; the directory does not match this run"
            )
        missing = np.setdiff1d(np.arange(n), np.union1d(done, failed))
        declared = {k: v.to_dict() for k, v in (getattr(simulator, "output_spec", None) or {}).items()}
        if declared and stored_spec and declared != stored_spec:
            raise ValueError(
                f"{out_dir} stores outputs {stored_spec} but the simulator's output_spec is {declared}; "
                "choose another output directory or pass overwrite=True to replace the dataset"
            )
        output_spec = declared or stored_spec
        origin = "output_spec" if declared else "the stored simulations"
        manifest = {
            "format_version": FORMAT_VERSION,
            "identity": identity,
            "parameter_names": identity["parameter_names"],
            "seed": identity["seed"],
            "n": n,
            "status": "running",
            "output_spec": output_spec,
            "counts": {"simulated": len(done), "failed": len(failures), "missing": len(missing)},
            "shards": {},
            "failures": [],
            "created": (previous or {}).get("created") or provenance(),
            "runs": (previous or {}).get("runs", []),
        }
        atomic_write_json(manifest_path, manifest)
    if previous is not None and len(missing):
        log.info("%s: resuming, %d of %d simulations left", out_dir, len(missing), n)
    return {"missing": missing, "output_spec": output_spec, "spec_origin": origin}


def _merge_parts(out_dir: Path, rank: int, size: int, seed: int, names) -> None:
    """Merge the parts written by rank id q into shard-q, for every q handled by this rank."""
    parts_dir = out_dir / "parts"
    groups: dict[int, list[Path]] = {}
    for part in sorted(parts_dir.glob("part-r*.h5")):
        groups.setdefault(int(part.name[6:11]), []).append(part)
    for q, parts in sorted(groups.items()):
        if q % size != rank:
            continue
        shard = out_dir / f"shard-{q:05d}.h5"
        sources = ([shard] if shard.exists() else []) + parts
        merge_files(sources, shard, seed, names)
        for part in parts:
            part.unlink()


def _finish(
    out_dir: Path, n: int, seconds: float, n_ranks: int, new_per_rank: list[int], merge_seconds: float
) -> RunSummary:
    """Rank 0: count what the shards hold and write the final manifest."""
    manifest_path = out_dir / MANIFEST
    manifest = read_json(manifest_path)
    shards, failures, indices = {}, {}, []
    for path in sorted(out_dir.glob("shard-*.h5")):
        index, fails = read_index(path)
        shards[path.name] = len(index)
        indices.append(index)
        failures.update({f["index"]: f for f in fails})
    stored = np.unique(np.concatenate(indices)) if indices else np.zeros(0, np.int64)
    if not manifest["output_spec"]:
        manifest["output_spec"] = _stored(out_dir)[2]
    remove_orphan_files(out_dir)
    parts_dir = out_dir / "parts"
    if parts_dir.is_dir() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    failed_only = np.setdiff1d(np.asarray(sorted(failures), dtype=np.int64), stored)
    missing = n - len(stored) - len(failed_only)
    status = "complete" if missing == 0 else "incomplete"
    failure_list = [failures[i] for i in sorted(failures)]
    manifest.pop("error", None)
    manifest.update(
        status=status,
        counts={"simulated": len(stored), "failed": len(failure_list), "missing": missing},
        shards=shards,
        failures=failure_list,
    )
    manifest["runs"].append(
        {**provenance(), "n_ranks": n_ranks, "new_simulations": int(sum(new_per_rank)), "seconds": round(seconds, 3)}
    )
    with storage_errors(manifest_path, "writing the manifest"):
        atomic_write_json(manifest_path, manifest)
    return RunSummary(
        path=out_dir,
        n=n,
        simulated=len(stored),
        failed=len(failure_list),
        new_this_run=int(sum(new_per_rank)),
        status=status,
        seconds=seconds,
        failures=failure_list,
        merge_seconds=merge_seconds,
    )


def _progress_bar(total: int, out_dir: Path, rank: int, size: int, enabled: bool):
    if not enabled or rank != 0 or total == 0:
        return None
    from tqdm.auto import tqdm

    label = f"simulating {out_dir.name}" + (f" (rank 0 of {size})" if size > 1 else "")
    return tqdm(total=total, desc=label, unit="sim")
