"""HDF5 storage of simulations: parts, shards, the manifest, and the lazy dataset reader.

Layout of a dataset directory::

    manifest.json          what the dataset is (simulator, prior, seed, n), its status,
                           counts, shards and their row counts, failures, provenance
    shard-00000.h5         rows written by MPI rank 0, and so on for each rank
    parts/                 while a run is in progress: one small file per finished batch

Every shard and part holds the datasets ``theta`` (rows, D) float64, ``index`` (rows,)
int64, ``seed`` (rows,) int64 (the root seed; simulation i used
``SeedSequence([seed, index])``) and one dataset per named output under ``x/``, plus the
attribute ``failures`` (JSON list of {index, seed, message}) for the simulations that failed.
Merging streams rows (a dataset larger than memory is never loaded whole); the reader orders
rows by index across all shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from cosmosbi.files import atomic_path, read_json

__all__ = ["FORMAT_VERSION", "SimulationDataset", "write_rows", "read_index", "merge_files", "DatasetError"]

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


def _create_file(f, n_rows: int, seed: int, parameter_names: Sequence[str], spec: Mapping[str, tuple], failures) -> None:
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

    theta: (R, D); index: (R,); outputs: name -> (R, ...).
    """
    import h5py

    order = np.argsort(index, kind="stable")
    spec = {name: (np.shape(value)[1:], np.asarray(value).dtype) for name, value in outputs.items()}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _create_file(f, len(order), seed, parameter_names, spec, failures)
            f["theta"][...] = np.asarray(theta, dtype=np.float64).reshape(len(order), -1)[order]
            f["index"][...] = np.asarray(index, dtype=np.int64)[order]
            for name, value in outputs.items():
                f["x"][name][...] = np.asarray(value)[order]


def read_index(path: Path) -> tuple[np.ndarray, list[dict]]:
    """The stored indices (R,) and the failure records of one shard or part."""
    with _open(path) as f:
        return f["index"][:], json.loads(f.attrs.get("failures", "[]"))


def merge_files(sources: Sequence[Path], target: Path, seed: int, parameter_names: Sequence[str], chunk_rows: int = 512) -> None:
    """Concatenate shard/part files into ``target`` atomically, streaming ``chunk_rows`` at a time.

    A simulation index present in more than one source is kept once (the first).
    """
    import h5py

    plans, failures, spec = [], {}, {}
    seen = np.zeros(0, dtype=np.int64)
    for source in sources:
        with _open(source) as f:
            index = f["index"][:]
            keep = np.nonzero(~np.isin(index, seen))[0]
            seen = np.union1d(seen, index)
            failures.update({r["index"]: r for r in json.loads(f.attrs.get("failures", "[]"))})
            if not spec and len(index):
                spec = {name: (d.shape[1:], d.dtype) for name, d in f["x"].items()}
        plans.append((source, keep))
    total = sum(len(keep) for _, keep in plans)
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as out:
            _create_file(out, total, seed, parameter_names, spec, list(failures.values()))
            position = 0
            for source, keep in plans:
                with _open(source) as f:
                    for start in range(0, len(keep), chunk_rows):
                        rows = keep[start : start + chunk_rows]
                        block = slice(int(rows[0]), int(rows[-1]) + 1)
                        stop = position + len(rows)
                        for key in ["theta", "index", *(f"x/{name}" for name in spec)]:
                            out[key][position:stop] = f[key][block][rows - rows[0]]
                        position = stop


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
        shard_of_row = np.concatenate([np.full(len(s.index), k) for k, s in enumerate(self._shards)]) if self._shards else np.zeros(0, int)
        row_in_shard = np.concatenate([np.arange(len(s.index)) for s in self._shards]) if self._shards else np.zeros(0, int)
        self._shard_of_row = shard_of_row[order]
        self._row_in_shard = row_in_shard[order]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self._theta: np.ndarray | None = None

    def _check_shards(self) -> list[_Shard]:
        listed: dict[str, int] = self.manifest.get("shards", {})
        on_disk = sorted(p.name for p in self.path.glob("shard-*.h5"))
        if self.manifest.get("status") == "complete" and sorted(listed) != on_disk:
            raise DatasetError(
                f"{self.path}: manifest lists shards {sorted(listed)} but the directory holds {on_disk}"
            )
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
        return f"SimulationDataset({str(self.path)!r}, rows={len(self)}, parameters={list(self.parameter_names)}, outputs=[{outputs}])"

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
) -> "SimulationDataset":
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
        "output_spec": {k: {"shape": list(np.shape(v)[1:]), "dtype": str(np.asarray(v).dtype)} for k, v in outputs.items()},
        "counts": {"simulated": len(index), "failed": 0, "missing": 0},
        "shards": {"shard-00000.h5": len(index)},
        "failures": [],
        "created": provenance(),
        "runs": [],
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return SimulationDataset(out_dir)
