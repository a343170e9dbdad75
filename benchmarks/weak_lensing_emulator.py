"""Accuracy and build cost of the weak-lensing spectra table of a config, per number of nodes.

For each number of Chebyshev nodes per parameter, builds (or loads) the spectra table of the
config's ``weak_lensing`` simulator over its prior box and prints the build time and the
maximum relative error of the tabulated ``cls`` (convergence spectra), ``gls`` (Gaussian
spectra) and lognormal ``shifts`` against direct pyccl + GLASS-solver evaluations at random
points of the prior (errors as in :func:`~cosmosbi.simulators.lensing_theory.spectra_relative_error`).

    python benchmarks/weak_lensing_emulator.py examples/weak_lensing.yaml --nodes 5 6 --points 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cosmosbi.config import load_config
from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.lensing_theory import spectra_relative_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--nodes", type=int, nargs="+", default=[7])
    parser.add_argument("--points", type=int, default=10, help="random prior points for the error")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cache-dir", default=None, help="spectra table cache (default: the simulator's)")
    args = parser.parse_args()

    config = load_config(args.config)
    options = dict(config.simulator.options)
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    base = make_simulator(config.simulator.name, {**options, "emulator": False})
    thetas = base.prior.sample(args.points, np.random.default_rng(args.seed))
    t0 = time.perf_counter()
    direct = [base.theory.evaluate(base.params(t)) for t in thetas]
    print(f"direct theory: {(time.perf_counter() - t0) / len(thetas):.2f} s per point")
    for nodes in args.nodes:
        sim = make_simulator(config.simulator.name, {**options, "emulator_nodes": nodes})
        t0 = time.perf_counter()
        table = sim.table()
        built = time.perf_counter() - t0
        errors = {"cls": 0.0, "gls": 0.0, "shifts": 0.0}
        for theta, ref in zip(thetas, direct):
            emulated = table(theta)
            for key in ("cls", "gls"):
                errors[key] = max(errors[key], spectra_relative_error(emulated[key], ref[key], sim.pairs).max())
            errors["shifts"] = max(errors["shifts"], float(np.max(np.abs(emulated["shifts"] / ref["shifts"] - 1))))
        text = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        print(
            f"nodes {nodes}: {table.n_points} points, table built or loaded in {built:.0f} s; max relative error {text}"
        )


if __name__ == "__main__":
    main()
