"""Simulations per second of `cosmosbi simulate` with 1 and 2 MPI ranks, in one run.

    python benchmarks/simulate_scaling.py [--n 2000] [--n-pixels 256] [--ranks 1 2]

Each rank count simulates the same Gaussian-field dataset into a fresh directory under
`mpiexec -n R`; the rate uses the run time the manifest records (simulation, writing and
merging; not interpreter start-up). The datasets are checked to be identical bit for bit.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from cosmosbi.simulators.store import SimulationDataset


def run(ranks: int, config: Path, run_dir: Path) -> tuple[float, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [
        "mpiexec",
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "cosmosbi",
        "simulate",
        "-q",
        str(config),
        "--run-dir",
        str(run_dir),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    manifest = SimulationDataset(run_dir / "sims" / "bench").manifest
    return manifest["runs"][-1]["seconds"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="simulations per run")
    parser.add_argument("--n-pixels", type=int, default=256, help="grid side of the Gaussian field")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "simulator": {"name": "gaussian_field", "options": {"n_pixels": args.n_pixels}},
                    "datasets": {"bench": {"n": args.n, "seed": 0}},
                    "batch_size": args.batch_size,
                }
            )
        )
        print(
            f"Gaussian field {args.n_pixels}x{args.n_pixels}, {args.n} simulations, batch {args.batch_size}; "
            f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        rates = {}
        for ranks in args.ranks:
            seconds, wall = run(ranks, config, tmp / f"r{ranks}")
            rates[ranks] = args.n / seconds
            print(
                f"{ranks} rank(s): {rates[ranks]:8.1f} simulations/s  "
                f"(run {seconds:.2f} s, wall with start-up {wall:.2f} s)"
            )
        base = SimulationDataset(tmp / f"r{args.ranks[0]}" / "sims" / "bench")
        for ranks in args.ranks[1:]:
            other = SimulationDataset(tmp / f"r{ranks}" / "sims" / "bench")
            same = np.array_equal(base.theta, other.theta) and np.array_equal(base.read("field"), other.read("field"))
            print(
                f"speed-up with {ranks} ranks: {rates[ranks] / rates[args.ranks[0]]:.2f}x; "
                f"dataset identical to {args.ranks[0]} rank(s): {same}"
            )


if __name__ == "__main__":
    main()
