"""Run a simulator over many parameter draws, MPI-parallel, into an HDF5 dataset that resumes.

Simulation i of a dataset draws its parameters (unless theta is given) and its randomness
from ``SeedSequence([seed, i])``, so the dataset is the same whatever the batch size, the
number of MPI ranks, or where an earlier run was killed. Each finished batch is written
atomically as a small part file; at the end every rank merges its parts into its shard and
rank 0 writes the manifest. Rerunning the same call after a kill simulates only the missing
indices. A simulation that raises or returns NaN/inf is recorded as failed (index, seed,
message) and never stored as data.

Run under MPI with ``mpiexec -n 4 python my_script.py`` (or ``cosmosbi simulate`` under
``mpiexec``/``srun``); without an MPI launcher it runs as one process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cosmosbi.files import atomic_write_json, config_hash, provenance, read_json
from cosmosbi.simulators.base import OutputSpec, as_simulator, simulate_rows
from cosmosbi.simulators.mpi import get_comm
from cosmosbi.simulators.priors import Prior
from cosmosbi.simulators.store import FORMAT_VERSION, MANIFEST, DatasetError, merge_files, read_index, write_rows

__all__ = ["run_simulations", "RunSummary", "simulation_seeds"]

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


def simulation_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """The (parameter draw, simulation noise) seed sequences of simulation ``index``."""
    theta_seq, noise_seq = np.random.SeedSequence([seed, index]).spawn(2)
    return theta_seq, noise_seq


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
        batch_size: simulations per ``simulate`` call and per part file.
        comm: an mpi4py communicator (default: COMM_WORLD under an MPI launcher, else serial).
        progress: show a progress bar on rank 0.
        description: JSON-able description of the simulator for the manifest; default: the
            ``description`` attribute that :func:`make_simulator` sets, else the simulator's name.
        chunk: ``(k, K)``: simulate only chunk k of K of the indices 0..n-1 (contiguous blocks),
            without MPI and without merging, for K independent processes such as the tasks of
            a SLURM job array. A later call without ``chunk`` merges everything (simulating
            whatever a failed chunk left) and writes the final manifest.

    Returns:
        :class:`RunSummary` (the same on every rank).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (number of simulations) must be a positive integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, seed = int(n), int(seed)
    simulator = as_simulator(simulator) if prior is None else as_simulator(simulator, prior=prior)
    prior = prior or simulator.prior
    if tuple(prior.names) != tuple(simulator.parameter_names):
        raise ValueError(f"prior parameters {list(prior.names)} differ from the simulator's {list(simulator.parameter_names)}")
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
    comm = get_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    out_dir = Path(out_dir)
    started = time.time()
    identity = {
        "simulator": dict(description or getattr(simulator, "description", None) or {"name": _label(simulator)}),
        "parameter_names": list(prior.names),
        "prior": prior.to_config(),
        "seed": seed,
        "theta": None if theta is None else config_hash(theta.tolist()),
    }

    # rank 0 checks the directory and finds what is left to do; every rank learns the verdict
    plan: dict[str, Any] = {}
    if rank == 0:
        try:
            plan = _prepare(out_dir, identity, n, simulator)
        except (ValueError, OSError) as err:
            plan = {"error": str(err), "kind": type(err).__name__}
    plan = comm.bcast(plan, root=0)
    if "error" in plan:
        raise (DatasetError if plan["kind"] == "DatasetError" else ValueError)(plan["error"])

    missing = np.asarray(plan["missing"], dtype=np.int64)
    if chunk is not None:  # a fixed block of indices, whatever other chunks have done meanwhile
        mine = np.intersect1d(np.array_split(np.arange(n), chunk[1])[chunk[0]], missing)
        rank = int(chunk[0])
    else:
        mine = np.array_split(missing, size)[rank]
    parts_dir = out_dir / "parts"
    bar = _progress_bar(len(mine), out_dir, rank, size, progress)
    n_new = n_failed = 0
    for start in range(0, len(mine), batch_size):
        index = mine[start : start + batch_size]
        rows_theta = theta[index] if theta is not None else _draw_theta(prior, seed, index)
        outputs, failures = _simulate_batch(simulator, rows_theta, index, seed)
        ok = np.setdiff1d(index, [f["index"] for f in failures])
        keep = np.isin(index, ok)
        write_rows(
            parts_dir / f"part-r{rank:05d}-{index[0]:010d}.h5",
            rows_theta[keep],
            index[keep],
            seed,
            {k: v[keep] for k, v in outputs.items()},
            failures,
            prior.names,
        )
        n_new += len(index)
        n_failed += len(failures)
        if bar is not None:
            bar.update(len(index))
    if bar is not None:
        bar.close()
    if chunk is not None:
        block = len(np.array_split(np.arange(n), chunk[1])[chunk[0]])
        return RunSummary(path=out_dir, n=block, simulated=block - len(mine) + n_new - n_failed, failed=n_failed, new_this_run=n_new,
                          status=f"chunk {chunk[0]} of {chunk[1]}, not merged yet", seconds=time.time() - started)

    comm.barrier()
    _merge_parts(out_dir, rank, size, seed, prior.names)
    comm.barrier()
    new_per_rank = comm.allgather(n_new)
    summary = _finish(out_dir, n, time.time() - started, size, new_per_rank) if rank == 0 else None
    return comm.bcast(summary, root=0)


def _label(simulator) -> str:
    return getattr(simulator, "name", None) or type(simulator).__name__


def _draw_theta(prior: Prior, seed: int, index: np.ndarray) -> np.ndarray:
    """Parameters of simulations ``index`` from their own seed sequences: (len(index), D)."""
    return np.stack([prior.sample(1, np.random.default_rng(simulation_seeds(seed, int(i))[0]))[0] for i in index])


def _noise_generators(seed: int, index: np.ndarray) -> list[np.random.Generator]:
    return [np.random.default_rng(simulation_seeds(seed, int(i))[1]) for i in index]


def _simulate_batch(simulator, theta: np.ndarray, index: np.ndarray, seed: int):
    """Simulate a batch; isolate failing rows. Returns (outputs, failure records)."""
    try:
        outputs = simulate_rows(simulator, theta, _noise_generators(seed, index))
        errors: dict[int, str] = {}
    except Exception as batch_error:  # find which rows fail by simulating them one at a time
        log.info("batch starting at index %d raised %r; retrying its rows one by one", index[0], batch_error)
        outputs, errors = _simulate_rows_one_by_one(simulator, theta, index, seed)
    outputs = _cast_to_spec(simulator, outputs)
    failures = [{"index": int(i), "seed": seed, "message": msg} for i, msg in errors.items()]
    for r, i in enumerate(index):
        if int(i) in errors:
            continue
        bad = [name for name, value in outputs.items() if _is_inexact(value) and not np.all(np.isfinite(value[r]))]
        if bad:
            failures.append({"index": int(i), "seed": seed, "message": f"output {bad[0]!r} contains NaN or inf"})
    if failures:
        log.warning("%d of %d simulations in this batch failed (first: index %d: %s)", len(failures), len(index), failures[0]["index"], failures[0]["message"])
    return outputs, failures


def _simulate_rows_one_by_one(simulator, theta, index, seed):
    rows, errors = {}, {}
    for r, i in enumerate(index):
        try:
            rows[r] = simulate_rows(simulator, theta[r : r + 1], _noise_generators(seed, index[r : r + 1]))
        except Exception as err:
            errors[int(i)] = f"{type(err).__name__}: {err}"
    if not rows:
        return {}, errors
    template = next(iter(rows.values()))
    outputs = {}
    for name, value in template.items():
        full = np.zeros((len(index), *value.shape[1:]), dtype=value.dtype)
        for r, out in rows.items():
            full[r] = out[name][0]
        outputs[name] = full
    return outputs, errors


def _is_inexact(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.inexact)


def _cast_to_spec(simulator, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    spec: Mapping[str, OutputSpec] | None = getattr(simulator, "output_spec", None)
    if not spec or not outputs:
        return outputs
    if set(spec) != set(outputs):
        raise TypeError(f"simulate() returned outputs {sorted(outputs)}, but its output_spec names {sorted(spec)}")
    cast = {}
    for name, value in outputs.items():
        if tuple(value.shape[1:]) != tuple(spec[name].shape):
            raise TypeError(f"simulate() output {name!r} has per-simulation shape {value.shape[1:]}, output_spec says {spec[name].shape}")
        cast[name] = value.astype(spec[name].dtype, copy=False)
    return cast


def _existing_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("shard-*.h5")) + sorted((out_dir / "parts").glob("part-*.h5"))


def _done_indices(out_dir: Path) -> tuple[set[int], dict[int, dict], dict[str, dict]]:
    """Indices stored, failure records, and the output spec seen, over every shard and part."""
    import h5py

    done: set[int] = set()
    failures: dict[int, dict] = {}
    spec: dict[str, dict] = {}
    for path in _existing_files(out_dir):
        index, fails = read_index(path)
        done.update(index.tolist())
        failures.update({f["index"]: f for f in fails})
        if not spec and len(index):
            with h5py.File(path, "r") as f:
                spec = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in f["x"].items()}
    return done, failures, spec


def _prepare(out_dir: Path, identity: dict, n: int, simulator) -> dict[str, Any]:
    """Check that out_dir is new or holds this same dataset; write the 'running' manifest."""
    manifest_path = out_dir / MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output directory {out_dir} exists and is not a directory")
    previous = None
    if manifest_path.exists():
        previous = read_json(manifest_path)
        differing = [k for k in identity if previous.get("identity", {}).get(k) != identity[k]]
        if differing:
            key = differing[0]
            raise ValueError(
                f"{out_dir} already holds a dataset with a different {key} "
                f"({previous.get('identity', {}).get(key)!r}, now {identity[key]!r}); "
                "choose another output directory or remove the old one"
            )
        if n < previous["n"]:
            raise ValueError(f"{out_dir} holds a dataset of n={previous['n']} simulations; asked for n={n}. Use n >= {previous['n']} or another directory")
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(f"output directory {out_dir} is not empty and holds no {MANIFEST}; choose an empty or new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    done, failures, spec = _done_indices(out_dir)
    outside = [i for i in done | set(failures) if i >= n]
    if outside:
        raise DatasetError(f"{out_dir} holds simulation index {outside[0]} >= n={n}; the directory does not match this run")
    missing = sorted(set(range(n)) - done - set(failures))
    output_spec = {k: v.to_dict() for k, v in (getattr(simulator, "output_spec", None) or {}).items()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "parameter_names": identity["parameter_names"],
        "seed": identity["seed"],
        "n": n,
        "status": "running",
        "output_spec": output_spec or spec,
        "counts": {"simulated": len(done), "failed": len(failures), "missing": len(missing)},
        "shards": {},
        "failures": [],
        "created": (previous or {}).get("created") or provenance(),
        "runs": (previous or {}).get("runs", []),
    }
    atomic_write_json(manifest_path, manifest)
    if previous is not None and missing:
        log.info("%s: resuming, %d of %d simulations left", out_dir, len(missing), n)
    return {"missing": missing}


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


def _finish(out_dir: Path, n: int, seconds: float, n_ranks: int, new_per_rank: list[int]) -> RunSummary:
    """Rank 0: count what the shards hold and write the final manifest."""
    manifest_path = out_dir / MANIFEST
    manifest = read_json(manifest_path)
    shards, failures, spec_seen = {}, {}, {}
    stored: set[int] = set()
    for path in sorted(out_dir.glob("shard-*.h5")):
        index, fails = read_index(path)
        shards[path.name] = len(index)
        stored.update(index.tolist())
        failures.update({f["index"]: f for f in fails})
    if not manifest["output_spec"]:
        manifest["output_spec"] = _done_indices(out_dir)[2]
    parts_dir = out_dir / "parts"
    for stale in parts_dir.glob(".part-*.tmp"):  # half-written parts of a killed run
        stale.unlink()
    if parts_dir.is_dir() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    missing = n - len(stored) - len(set(failures) - stored)
    status = "complete" if missing == 0 else "incomplete"
    failure_list = [failures[i] for i in sorted(failures)]
    manifest.update(
        status=status,
        counts={"simulated": len(stored), "failed": len(failure_list), "missing": missing},
        shards=shards,
        failures=failure_list,
    )
    manifest["runs"].append({**provenance(), "n_ranks": n_ranks, "new_simulations": int(sum(new_per_rank)), "seconds": round(seconds, 3)})
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
    )


def _progress_bar(total: int, out_dir: Path, rank: int, size: int, enabled: bool):
    if not enabled or rank != 0 or total == 0:
        return None
    from tqdm.auto import tqdm

    label = f"simulating {out_dir.name}" + (f" (rank 0 of {size})" if size > 1 else "")
    return tqdm(total=total, desc=label, unit="sim")
