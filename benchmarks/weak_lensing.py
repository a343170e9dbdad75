"""Cost of one weak-lensing mock survey against bare ``healpy.synfast``, and emulator accuracy.

One survey: 4 tomographic bins, nside 256 (lmax 2 nside by default), lognormal convergence
with cross-bin correlations, shape noise, full sky, spectra from the cached table. The
baseline is ``healpy.synfast`` of the same number of maps (one per bin) at the same nside
and lmax. Also printed: the cost of building the spectra table, the cost of one direct
pyccl + GLASS-solver evaluation that the table replaces, and the table's maximum relative
error against direct pyccl at random points of the prior.

    python benchmarks/weak_lensing.py [--nside 256] [--surveys 10] [--error-points 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import healpy as hp
import numpy as np

from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.lensing_theory import spectra_relative_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=256)
    parser.add_argument("--lmax", type=int, default=None)
    parser.add_argument("--n-bins", type=int, default=4)
    parser.add_argument("--surveys", type=int, default=10, help="simulated surveys to time")
    parser.add_argument("--error-points", type=int, default=8, help="prior points for the emulator error")
    parser.add_argument("--nodes", type=int, default=7, help="Chebyshev nodes per parameter")
    parser.add_argument("--cache-dir", default=None, help="spectra table cache (default: a fresh temp dir)")
    args = parser.parse_args()

    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="wl_bench_")
    options = {
        "nside": args.nside,
        "lmax": args.lmax,
        "n_bins": args.n_bins,
        "field": "lognormal",
        "noise": True,
        "emulator_nodes": args.nodes,
        "cache_dir": cache_dir,
    }
    sim = make_simulator("weak_lensing", options)
    print(f"simulator: {sim}")
    rng = np.random.default_rng(2026)

    t0 = time.perf_counter()
    table = sim.table()
    t_table = time.perf_counter() - t0
    print(f"spectra table: {table.n_points} cosmologies over {list(sim.parameter_names)} built in {t_table:.1f} s")

    # direct theory (what the table replaces) and the table's error against it
    errors = {"cls": [], "gls": [], "shifts": []}
    t_direct, t_lookup = [], []
    for theta in sim.prior.sample(args.error_points, rng):
        t0 = time.perf_counter()
        direct = sim.theory.evaluate(sim.params(theta))
        t_direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        emulated = table(theta)
        t_lookup.append(time.perf_counter() - t0)
        errors["cls"].append(spectra_relative_error(emulated["cls"], direct["cls"], sim.pairs).max())
        errors["gls"].append(spectra_relative_error(emulated["gls"], direct["gls"], sim.pairs).max())
        errors["shifts"].append(np.max(np.abs(emulated["shifts"] / direct["shifts"] - 1)))
    print(
        f"direct theory (pyccl spectra + shifts + GLASS solver) per cosmology: {np.mean(t_direct):.2f} s; "
        f"table lookup: {1e3 * np.mean(t_lookup):.2f} ms"
    )
    print(
        f"emulator max relative error over {args.error_points} prior points: "
        f"C_ell {100 * max(errors['cls']):.3f}%, Gaussian G_ell {100 * max(errors['gls']):.3f}%, "
        f"shifts {100 * max(errors['shifts']):.4f}%"
    )

    # one survey per simulate call, interleaved with the baseline so that both see the same
    # load on a shared machine; warm up once
    theta = sim.prior.sample(args.surveys, rng)
    cl = table(theta[0])["cls"][0]
    sim.simulate(theta[:1], rng)
    hp.synfast(cl, sim.nside, lmax=sim.lmax)
    t_survey, t_synfast = [], []
    for row in theta:
        t0 = time.perf_counter()
        sim.simulate(row[None], rng)
        t_survey.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(sim.n_bins):
            hp.synfast(cl, sim.nside, lmax=sim.lmax)
        t_synfast.append(time.perf_counter() - t0)
    t_survey, t_synfast = np.array(t_survey), np.array(t_synfast)

    print(
        f"per survey ({sim.n_bins} bins, nside {sim.nside}, lmax {sim.lmax}, lognormal, noise): "
        f"median {np.median(t_survey):.3f} s, min {t_survey.min():.3f} s over {args.surveys}"
    )
    print(
        f"healpy.synfast of {sim.n_bins} maps (same nside, lmax): "
        f"median {np.median(t_synfast):.3f} s, min {t_synfast.min():.3f} s"
    )
    print(
        f"ratio survey / synfast: median of paired ratios {np.median(t_survey / t_synfast):.2f}x, "
        f"ratio of minima {t_survey.min() / t_synfast.min():.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
