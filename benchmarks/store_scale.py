"""Simulate, merge and read back the README's ``noisy_line`` simulator at growing sizes.

Each size runs in a fresh subprocess (so peak memory is that size's alone) with the default
``batch_size`` (64) and checkpointing, one process (or ``--ranks`` MPI ranks), and reports the
wall and CPU time of the run, the part of it spent merging, the time to open the dataset and
read every row back (``theta``, then one pass of ``iter_batches(4096)``), the peak resident
memory (``ru_maxrss``: after the imports, after simulating and merging, after reading) and the
bytes stored. With ``--baseline`` it also merges the same rows written
as one part file per batch (what the runner did before checkpointing) with the merge of this
version and with the previous set-operation merge (``np.isin`` / ``np.union1d`` per part),
and prints the ratio.

Usage::

    python benchmarks/store_scale.py                       # 10^4, 10^5, 10^6 rows
    python benchmarks/store_scale.py --sizes 10000 100000 --baseline
    python benchmarks/store_scale.py --ranks 2             # under mpiexec -n 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def noisy_line(theta, rng):
    """y = a x + b with Gaussian noise, at 20 points; theta = (a, b)."""
    x = np.linspace(0, 1, 20)
    return theta[0] * x + theta[1] + 0.1 * rng.standard_normal(20)


def run_one(n: int, directory: Path) -> dict:
    """Simulate n rows into ``directory`` and read them back; timings in seconds, memory in MB."""
    from cosmosbi.simulators import BoxUniform, as_simulator
    from cosmosbi.simulators.runner import run_simulations
    from cosmosbi.simulators.store import SimulationDataset

    prior = BoxUniform(["a", "b"], low=[-1, -1], high=[1, 1])
    before = _peak_mb()
    cpu = time.process_time()
    summary = run_simulations(as_simulator(noisy_line, prior=prior), n, directory, seed=1, progress=False)
    cpu = time.process_time() - cpu
    after_run = _peak_mb()
    started = time.perf_counter()
    dataset = SimulationDataset(directory)
    assert dataset.theta.shape == (n, 2) and summary.status == "complete"
    rows = 0
    for batch in dataset.iter_batches(4096):
        assert batch["x"].shape == (len(batch["index"]), 20)
        rows += len(batch["index"])
    assert rows == n
    read_s = time.perf_counter() - started
    stored = sum(p.stat().st_size for p in directory.glob("shard-*.h5"))
    return {
        "n": n,
        "run_s": summary.seconds,
        "run_cpu_s": cpu,
        "merge_s": summary.merge_seconds,
        "read_s": read_s,
        "start_mb": before,
        "run_peak_mb": after_run,
        "read_peak_mb": _peak_mb(),
        "stored_mb": stored / 2**20,
    }


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_operation_merge(sources, target, seed, names, chunk_rows=512):
    """The merge of earlier versions: set operations over every index stored so far, per source."""
    import h5py

    from cosmosbi.simulators.store import write_rows

    seen = np.zeros(0, dtype=np.int64)
    theta, index, x = [], [], []
    for source in sources:
        with h5py.File(source, "r") as f:
            rows = f["index"][:]
            keep = np.nonzero(~np.isin(rows, seen))[0]
            seen = np.union1d(seen, rows)
            for start in range(0, len(keep), chunk_rows):
                block = keep[start : start + chunk_rows]
                span = slice(int(block[0]), int(block[-1]) + 1)
                theta.append(f["theta"][span][block - block[0]])
                index.append(f["index"][span][block - block[0]])
                x.append(f["x/x"][span][block - block[0]])
    write_rows(target, np.concatenate(theta), np.concatenate(index), seed, {"x": np.concatenate(x)}, [], names)


def run_baseline(n: int, directory: Path) -> dict:
    """Merge n rows written as one part per batch of 64, with this version's merge and the previous one."""
    from cosmosbi.simulators.store import merge_files, write_rows

    rng = np.random.default_rng(0)
    parts = []
    for start in range(0, n, 64):
        index = np.arange(start, min(start + 64, n))
        part = directory / "parts" / f"part-r00000-{start:010d}.h5"
        write_rows(
            part,
            rng.uniform(-1, 1, (len(index), 2)),
            index,
            1,
            {"x": rng.normal(size=(len(index), 20))},
            [],
            ["a", "b"],
        )
        parts.append(part)
    started = time.perf_counter()
    merge_files(parts, directory / "linear.h5", 1, ["a", "b"])
    linear = time.perf_counter() - started
    started = time.perf_counter()
    set_operation_merge(parts, directory / "sets.h5", 1, ["a", "b"])
    sets = time.perf_counter() - started
    return {"n": n, "parts": len(parts), "merge_linear_s": linear, "merge_set_operations_s": sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--ranks", type=int, default=1, help="MPI ranks (runs under mpiexec -n RANKS)")
    parser.add_argument("--baseline", action="store_true", help="also compare with the set-operation merge")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="run", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        result = (run_one if args.mode == "run" else run_baseline)(args.one, Path(args.dir))
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            print(json.dumps(result))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"noisy_line, batch_size 64, {args.ranks} process(es), {os.cpu_count()} CPUs; load average {load}")
    modes = ["run"] + (["baseline"] if args.baseline else [])
    for mode in modes:
        for n in args.sizes:
            if mode == "baseline" and n > 10**5:
                continue  # the set-operation merge is quadratic: 10^6 rows take most of an hour
            directory = Path(tempfile.mkdtemp(prefix="store_scale-"))
            launcher = ["mpiexec", "-n", str(args.ranks)] if args.ranks > 1 and mode == "run" else []
            command = [
                *launcher,
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--mode",
                mode,
                "--dir",
                str(directory / "ds"),
            ]
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            except subprocess.CalledProcessError as err:
                sys.exit(f"{n} rows failed:\n{err.stderr}")
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if mode == "run":
                print(
                    f"{n:>9d} rows: run {result['run_s']:7.1f} s wall, {result['run_cpu_s']:7.1f} s CPU "
                    f"(merge {result['merge_s']:5.2f} s), read {result['read_s']:5.2f} s; peak memory "
                    f"{result['start_mb']:4.0f} MB after imports, {result['run_peak_mb']:4.0f} MB simulating + "
                    f"merging, {result['read_peak_mb']:4.0f} MB reading; stored {result['stored_mb']:6.1f} MB"
                )
            else:
                ratio = result["merge_set_operations_s"] / result["merge_linear_s"]
                print(
                    f"{n:>9d} rows in {result['parts']} parts: merge {result['merge_linear_s']:6.2f} s, "
                    f"set-operation merge {result['merge_set_operations_s']:6.2f} s, ratio {ratio:5.1f}x"
                )


if __name__ == "__main__":
    main()
