"""HDF5 storage of simulations: parts, shards, the manifest, and the lazy dataset reader.

Layout of a dataset directory::

    manifest.json          what the dataset is (simulator, prior, seed, n), its status,
                           counts, shards and their row counts, failures, provenance
    shard-00000.h5         rows written by MPI rank 0, and so on for each rank
    parts/                 while a run is in progress: one file per checkpoint of each rank

Every shard and part holds the datasets ``theta`` (rows, D) float64, ``index`` (rows,)
int64, ``seed`` (rows,) int64 (the root seed; simulation i used
``SeedSequence([seed, index])``) and one dataset per named output under ``x/``, plus the
attribute ``failures`` (JSON list of {index, seed, message}) for the simulations that failed.
Merging sorts the indices of its sources once and copies rows block by block in index order,
so its time and memory are linear in the number of rows (a dataset larger than memory is never
loaded whole); the reader orders rows by index across all shards.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from cosmosbi.files import atomic_path, read_json

__all__ = [
    "FORMAT_VERSION",
    "SimulationDataset",
    "write_rows",
    "read_index",
    "read_output_spec",
    "merge_files",
    "DatasetError",
    "StorageError",
    "storage_errors",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete, or inconsistent with its manifest."""


def _open(path: Path, mode: str = "r"):
    import h5py

    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise DatasetError(
            f"{path}: cannot open as HDF5 ({err}); the file is truncated or corrupt. "
            "Move it aside and rerun the simulation to recreate its rows."
        ) from None


def _create_file(
    f, n_rows: int, seed: int, parameter_names: Sequence[str], spec: Mapping[str, tuple], failures
) -> None:
    """Lay out an empty shard/part of ``n_rows`` rows; spec: name -> (per-row shape, dtype)."""
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["parameter_names"] = json.dumps(list(parameter_names))
    f.attrs["failures"] = json.dumps(sorted(failures, key=lambda r: r["index"]))
    f.create_dataset("theta", shape=(n_rows, len(parameter_names)), dtype=np.float64)
    f.create_dataset("index", shape=(n_rows,), dtype=np.int64)
    f.create_dataset("seed", data=np.full(n_rows, seed, dtype=np.int64))
    group = f.create_group("x")
    for name, (shape, dtype) in spec.items():
        row_bytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        chunk_rows = int(np.clip(2**20 // row_bytes, 1, max(1, n_rows)))
        group.create_dataset(name, shape=(n_rows, *shape), dtype=dtype, chunks=(chunk_rows, *shape) if n_rows else None)


class StorageError(OSError):
    """Writing a dataset failed for lack of space or permission; the message says what to do."""

    def __str__(self) -> str:
        return str(self.args[-1]) if self.args else ""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike, action: str) -> Iterator[None]:
    """Turn a full disk or a denied write during ``action`` on ``path`` into one :class:`StorageError`.

    HDF5 reports a failed write again from the destructors of its open objects (through
    ``sys.unraisablehook`` and ``sys.excepthook``); those reports are silenced while the block
    runs and its failed objects are released, so the user sees one message, not a traceback per
    handle. Other errors pass through unchanged.
    """
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = sys.excepthook = lambda *args: None
    failure = None
    try:
        yield
    except OSError as err:
        failure = _storage_failure(err, path, action)
        if failure is None:
            raise
        traceback.clear_frames(err.__traceback__)  # drop the failed HDF5 handles now, while silenced
    finally:
        if failure is not None:
            gc.collect()
        sys.unraisablehook, sys.excepthook = hooks
    if failure is not None:
        raise failure from None


def _storage_failure(err: OSError, path, action: str) -> StorageError | None:
    text = str(err)
    if err.errno in _NO_SPACE or "No space left" in text or "Disk quota" in text:
        reason, remedy = f"no space left on the device holding {Path(path).parent}", "free space"
    elif err.errno in _NO_PERMISSION or "Permission denied" in text or "Read-only file system" in text:
        reason, remedy = f"no permission to write in {Path(path).parent}", "make it writable"
    else:
        return None
    return StorageError(
        err.errno or errno.EIO,
        f"{path}: {action} failed: {reason}. Nothing partial was kept; {remedy} and rerun the same "
        "command: it resumes from the simulations already stored.",
    )


def write_rows(
    path: Path,
    theta: np.ndarray,
    index: np.ndarray,
    seed: int,
    outputs: Mapping[str, np.ndarray],
    failures: Sequence[Mapping[str, Any]],
    parameter_names: Sequence[str],
) -> None:
    """Atomically write rows (sorted by index) and failure records to the HDF5 file ``path``.

    theta: (R, D); index: (R,); outputs: name -> (R, ...). A full disk or a denied write raises
    :class:`StorageError` and leaves nothing at ``path``.
    """
    with storage_errors(path, "writing simulations"), atomic_path(path) as tmp:
        _write_rows_to(tmp, theta, index, seed, outputs, failures, parameter_names)


def _write_rows_to(tmp: Path, theta, index, seed, outputs, failures, parameter_names) -> None:
    # a function of its own: once it has raised, nothing holds its HDF5 handles (see storage_errors)
    import h5py

    order = np.argsort(index, kind="stable")
    spec = {name: (np.shape(value)[1:], np.asarray(value).dtype) for name, value in outputs.items()}
    with h5py.File(tmp, "w") as f:
        _create_file(f, len(order), seed, parameter_names, spec, failures)
        f["theta"][...] = np.asarray(theta, dtype=np.float64).reshape(len(order), len(parameter_names))[order]
        f["index"][...] = np.asarray(index, dtype=np.int64)[order]
        for name, value in outputs.items():
            f["x"][name][...] = np.asarray(value)[order]


def read_index(path: Path) -> tuple[np.ndarray, list[dict]]:
    """The stored indices (R,) and the failure records of one shard or part."""
    with _open(path) as f:
        return f["index"][:], json.loads(f.attrs.get("failures", "[]"))


def read_output_spec(path: Path) -> dict[str, dict]:
    """The outputs of one shard or part: name -> {"shape": per-row shape, "dtype": dtype name}."""
    with _open(path) as f:
        return {name: {"shape": list(d.shape[1:]), "dtype": str(d.dtype)} for name, d in f["x"].items()}


def merge_files(
    sources: Sequence[Path], target: Path, seed: int, parameter_names: Sequence[str], block_bytes: int = 8 * 2**20
) -> None:
    """Merge shard/part files into ``target`` atomically, in index order, ``block_bytes`` of rows at a time.

    Time and memory are linear in the number of rows: every source is sorted once by index
    (one stable sort over all indices), then the rows are copied block by block. A simulation
    index present in more than one source is kept once (from the earliest source). Every source
    must hold the same outputs (names, per-row shapes and dtypes) as the first one with rows.
    """
    indices, failures, spec, spec_source = [], {}, {}, None
    for source in sources:
        with _open(source) as f:
            index = f["index"][:]
            failures.update({r["index"]: r for r in json.loads(f.attrs.get("failures", "[]"))})
            if len(index):
                found = {name: (d.shape[1:], d.dtype) for name, d in f["x"].items()}
                if spec_source is None:
                    spec, spec_source = found, source
                elif found != spec:
                    raise DatasetError(
                        f"{source}: outputs {_describe_spec(found)} differ from {_describe_spec(spec)} in "
                        f"{spec_source}; the simulator changed between runs. Move the files of one version aside "
                        "and rerun"
                    )
        indices.append(index)
    offsets = np.cumsum([0, *(len(i) for i in indices)])
    all_index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    del indices
    order = np.argsort(all_index, kind="stable")  # ties keep source order: the earliest source wins
    sorted_index = all_index[order]
    del all_index
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    del sorted_index
    keep = order[first]  # positions in the concatenated sources, in index order
    del order, first
    source_of = np.searchsorted(offsets, keep, side="right") - 1
    row_of = keep - offsets[source_of]
    del keep
    with storage_errors(target, "merging simulations"), atomic_path(target) as tmp:
        _write_merged(
            tmp, sources, source_of, row_of, spec, seed, parameter_names, list(failures.values()), block_bytes
        )


def _write_merged(
    tmp: Path, sources, source_of, row_of, spec, seed, parameter_names, failures, block_bytes: int
) -> None:
    """Write rows ``row_of`` of sources ``source_of`` (in this order) to the new file ``tmp``, a block at a time."""
    import h5py

    total = len(source_of)
    row_bytes = 16 + 8 * len(parameter_names) + sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in spec.values())
    block = max(1, block_bytes // row_bytes)
    keys = ["theta", "index", *(f"x/{name}" for name in spec)]
    with h5py.File(tmp, "w") as out:
        _create_file(out, total, seed, parameter_names, spec, failures)
        for start in range(0, total, block):
            stop = min(start + block, total)
            buffers = {key: np.empty((stop - start, *out[key].shape[1:]), dtype=out[key].dtype) for key in keys}
            block_sources, block_rows = source_of[start:stop], row_of[start:stop]
            by_source = np.argsort(block_sources, kind="stable")
            bounds = np.flatnonzero(np.diff(block_sources[by_source])) + 1
            for where in np.split(by_source, bounds):  # the positions in this block of one source's rows
                with _open(sources[int(block_sources[where[0]])]) as f:
                    for key in keys:
                        buffers[key][where] = _read_rows(f[key], block_rows[where])
            for key in keys:
                out[key][start:stop] = buffers[key]


def _read_rows(dataset, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (distinct, in any order) of an HDF5 dataset; one contiguous read when they are dense."""
    if len(rows) == 0:
        return dataset[:0]
    order = np.argsort(rows, kind="stable")
    ascending = rows[order]
    low, high = int(ascending[0]), int(ascending[-1]) + 1
    values = dataset[low:high][ascending - low] if high - low <= 2 * len(rows) + 1024 else dataset[ascending]
    out = np.empty_like(values)
    out[order] = values
    return out


def _describe_spec(spec: Mapping[str, tuple]) -> str:
    return ", ".join(f"{name} {tuple(shape)} {np.dtype(dtype)}" for name, (shape, dtype) in spec.items())


def iter_batches(dataset, batch_size: int, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive blocks of ``batch_size`` rows of any dataset with ``index``, ``theta``,
    ``output_names`` and ``read(name, rows)``: dicts {"index", "theta", name...}."""
    names = list(dataset.output_names if names is None else names)
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        batch = {"index": dataset.index[rows], "theta": dataset.theta[rows]}
        batch.update({name: dataset.read(name, rows) for name in names})
        yield batch


@dataclass
class _Shard:
    path: Path
    index: np.ndarray


class SimulationDataset:
    """Lazy, index-ordered reader of a simulation dataset directory (out-of-core).

    ``len(ds)`` rows (failed simulations are not rows); ``ds.theta`` (N, D) and ``ds.index``
    (N,) are small and read eagerly; ``ds.read(name)`` reads one output (N, ...);
    ``ds.iter_batches(batch_size)`` streams rows in index order; ``ds[i]`` returns the dict
    {"theta": (D,), name: (...)} of row i, so the dataset works as a map-style
    ``torch.utils.data.Dataset`` in a ``DataLoader`` (file handles are reopened per process).

    Args:
        path: the dataset directory (holding ``manifest.json``).
        allow_incomplete: read a dataset whose run has not finished (its finished shards only).
    """

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DatasetError(f"{self.path}: not a simulation dataset (no {MANIFEST})")
        self.manifest = read_json(manifest_path)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{manifest_path}: format_version {self.manifest.get('format_version')!r}, "
                f"this cosmosbi reads version {FORMAT_VERSION}"
            )
        status = self.manifest.get("status")
        if status != "complete" and not allow_incomplete:
            counts = self.manifest.get("counts", {})
            raise DatasetError(
                f"{self.path}: dataset is {status} ({counts.get('simulated', 0)} of {self.manifest.get('n')} "
                "simulated); rerun the same simulate command to finish it"
            )
        self.parameter_names: tuple[str, ...] = tuple(self.manifest["parameter_names"])
        self._shards = self._check_shards()
        all_index = np.concatenate([s.index for s in self._shards]) if self._shards else np.zeros(0, np.int64)
        order = np.argsort(all_index, kind="stable")
        self.index = all_index[order]
        shard_of_row = (
            np.concatenate([np.full(len(s.index), k) for k, s in enumerate(self._shards)])
            if self._shards
            else np.zeros(0, int)
        )
        row_in_shard = (
            np.concatenate([np.arange(len(s.index)) for s in self._shards]) if self._shards else np.zeros(0, int)
        )
        self._shard_of_row = shard_of_row[order]
        self._row_in_shard = row_in_shard[order]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self._theta: np.ndarray | None = None

    def _check_shards(self) -> list[_Shard]:
        listed: dict[str, int] = self.manifest.get("shards", {})
        on_disk = sorted(p.name for p in self.path.glob("shard-*.h5"))
        if self.manifest.get("status") == "complete" and sorted(listed) != on_disk:
            raise DatasetError(f"{self.path}: manifest lists shards {sorted(listed)} but the directory holds {on_disk}")
        shards = []
        seen = 0
        for name in sorted(listed):
            path = self.path / name
            if not path.is_file():
                raise DatasetError(f"{path}: listed in the manifest but missing")
            index, _ = read_index(path)
            if len(index) != listed[name]:
                raise DatasetError(f"{path}: holds {len(index)} rows but the manifest says {listed[name]}")
            seen += len(index)
            shards.append(_Shard(path, index))
        if shards:
            all_index = np.concatenate([s.index for s in shards])
            if len(np.unique(all_index)) != len(all_index):
                raise DatasetError(f"{self.path}: a simulation index appears in more than one shard")
        expected = self.manifest.get("counts", {}).get("simulated")
        if self.manifest.get("status") == "complete" and expected != seen:
            raise DatasetError(f"{self.path}: shards hold {seen} rows but the manifest counts {expected}")
        return shards

    # ----------------------------------------------------------------- metadata

    def __len__(self) -> int:
        return len(self.index)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("output_spec", {}))

    @property
    def output_spec(self) -> dict[str, dict]:
        """name -> {"shape": per-simulation shape, "dtype": dtype}."""
        return dict(self.manifest.get("output_spec", {}))

    @property
    def failures(self) -> list[dict]:
        """Failed simulations: [{"index", "seed", "message"}, ...]."""
        return list(self.manifest.get("failures", []))

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    def __repr__(self) -> str:
        outputs = ", ".join(f"{k}{tuple(v['shape'])}" for k, v in self.output_spec.items())
        return (
            f"SimulationDataset({str(self.path)!r}, rows={len(self)}, parameters={list(self.parameter_names)}, "
            f"outputs=[{outputs}])"
        )

    # ----------------------------------------------------------------- data access

    def _file(self, k: int):
        if self._pid != os.getpid():  # a forked DataLoader worker must not share HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = _open(self._shards[k].path)
        return self._handles[k]

    @property
    def theta(self) -> np.ndarray:
        """Parameters of every row, in index order: (N, D) float64."""
        if self._theta is None:
            self._theta = self._gather("theta", np.arange(len(self)))
        return self._theta

    def read(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Read output ``name`` for ``rows`` (positions 0..N-1 in index order; default all): (R, ...)."""
        if name not in self.output_names:
            raise KeyError(f"{self.path}: no output {name!r}; outputs are {list(self.output_names)}")
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        return self._gather(f"x/{name}", rows)

    def _gather(self, key: str, rows: np.ndarray) -> np.ndarray:
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)}), got min {rows.min()} max {rows.max()}")
        if key == "theta":
            shape, dtype = (len(self.parameter_names),), np.float64
        else:
            spec = self.output_spec[key[2:]]
            shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        out = np.empty((len(rows), *shape), dtype=dtype)
        shard_ids = self._shard_of_row[rows]
        for k in np.unique(shard_ids):
            where = np.nonzero(shard_ids == k)[0]
            local = self._row_in_shard[rows[where]]
            order = np.argsort(local)
            dset = self._file(int(k))[key]
            if len(local) > len(dset) // 2:  # dense request: one contiguous read is faster
                block = dset[:][local[order]]
            else:
                block = dset[local[order]]
            out[where[order]] = block
        return out

    def iter_batches(self, batch_size: int, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield {"index", "theta", name...} for consecutive blocks of ``batch_size`` rows."""
        return iter_batches(self, batch_size, names)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for a dataset of {len(self)} rows")
        i = int(i) % len(self)
        f = self._file(int(self._shard_of_row[i]))
        r = int(self._row_in_shard[i])
        item = {"theta": self.theta[i]}
        item.update({name: f[f"x/{name}"][r] for name in self.output_names})
        return item

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def write_dataset(
    out_dir: str | os.PathLike,
    theta: np.ndarray,
    index: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    parameter_names: Sequence[str],
    identity: Mapping[str, Any],
    seed: int = 0,
) -> SimulationDataset:
    """Write arrays as a complete one-shard dataset that :class:`SimulationDataset` reads.

    Used for derived data (e.g. compressed summaries), so later stages read it like simulations.
    theta: (N, D); index: (N,) simulation indices; outputs: name -> (N, ...).
    """
    from cosmosbi.files import atomic_write_json, provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows(out_dir / "shard-00000.h5", theta, index, seed, outputs, [], parameter_names)
    manifest = {
        "format_version": FORMAT_VERSION,
        "identity": dict(identity),
        "parameter_names": list(parameter_names),
        "seed": seed,
        "n": int(np.max(index)) + 1 if len(index) else 0,
        "status": "complete",
        "output_spec": {
            k: {"shape": list(np.shape(v)[1:]), "dtype": str(np.asarray(v).dtype)} for k, v in outputs.items()
        },
        "counts": {"simulated": len(index), "failed": 0, "missing": 0},
        "shards": {"shard-00000.h5": len(index)},
        "failures": [],
        "created": provenance(),
        "runs": [],
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return SimulationDataset(out_dir)
