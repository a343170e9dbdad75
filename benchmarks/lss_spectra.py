"""Cost per map of ``lss_field`` and ``camels_like`` with the matter power emulator, and its error.

For a 64^3 ``lss_field`` box (L = 500 Mpc/h, lognormal, counts + slab outputs) and a 64^2
``camels_like`` map (lognormal, tng_like feedback), the cost per map or box of:

- ``emulator``: the simulator as configured by default (``spectra: emulator``), a new prior
  draw per map, the spectra table already built;
- ``bare``: the same lognormal FFT pipeline at a fixed spectrum (the simulator with its input
  spectrum on the grid replaced by one precomputed array: per map the lognormal transform of
  the spectrum, the field, and the outputs), a new prior draw per map;
- ``field only``: the same with the lognormal transform cached (repeated parameters);
- ``direct``: ``spectra: direct`` (pyccl for every draw);

each timed in alternating rounds (median of the rounds' means); the ratios emulator / bare
and direct / emulator, the table's build time and size, and its relative error against
direct pyccl on the simulator's wavenumber table (the input 3D spectrum, with the feedback
factor for camels_like) at random prior points: maximum over points and wavenumbers, and rms.

    python benchmarks/lss_spectra.py [--maps 40] [--camels-maps 600] [--rounds 10] [--direct-maps 3]
                                     [--error-points 20]
                                     [--transfer-function boltzmann_camb] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from cosmosbi.simulators import make_simulator


def per_map(sim, theta: np.ndarray, seed: int) -> float:
    """Seconds per row of one simulate call."""
    t0 = time.perf_counter()
    sim.simulate(theta, np.random.default_rng(seed))
    return (time.perf_counter() - t0) / len(theta)


def run_case(name: str, options: dict, args, spectrum_method: str) -> None:
    rng = np.random.default_rng(2026)
    sim = make_simulator(name, options)
    print(f"\n{sim}")
    t0 = time.perf_counter()
    table = sim.power_emulator()
    t_build = time.perf_counter() - t0
    axes = ", ".join(f"{n} x{m}" for n, m in zip(table.names, table.nodes))
    print(
        f"  spectra table: {table.n_points} cosmologies ({axes}; kinds {list(table.kinds)}), "
        f"built or loaded in {t_build:.1f} s"
    )

    n_maps = args.maps if name == "lss_field" else args.camels_maps
    theta = sim.prior.sample(n_maps, rng)
    bare = make_simulator(name, options)
    fixed = getattr(bare, spectrum_method)(theta[0])
    setattr(bare, spectrum_method, lambda row: fixed)  # the fixed input spectrum on the grid
    per_map(sim, theta[:1], 0)  # warm-up
    per_map(bare, theta[:1], 0)
    # the variants alternate in rounds (the machine is shared); medians over rounds
    rounds = {"emulator": [], "bare": [], "field": []}
    for chunk in np.array_split(np.arange(n_maps), args.rounds):
        rounds["emulator"].append(per_map(sim, theta[chunk], 1))
        rounds["bare"].append(per_map(bare, theta[chunk], 1))
        rounds["field"].append(per_map(bare, np.repeat(theta[chunk[:1]], len(chunk), axis=0), 1))
    t_emulator, t_bare, t_field = (float(np.median(rounds[k])) for k in ("emulator", "bare", "field"))

    direct = make_simulator(name, dict(options, spectra="direct"))
    t_direct = per_map(direct, theta[: args.direct_maps], 1)

    print(
        f"  per map: emulator {1e3 * t_emulator:.2f} ms, bare FFT pipeline at a fixed spectrum {1e3 * t_bare:.2f} ms "
        f"(field only, transform cached: {1e3 * t_field:.2f} ms), direct pyccl {1e3 * t_direct:.0f} ms"
    )
    print(
        f"  ratio emulator / bare = {t_emulator / t_bare:.2f} (target <= 2); "
        f"direct / emulator = {t_direct / t_emulator:.0f}"
    )

    errors = []
    for row in sim.prior.sample(args.error_points, rng):
        if name == "camels_like":
            emulated, exact = sim.power_3d(row), direct.power_3d(row)
        else:
            emulated, exact = sim.power_table(row), direct.power_table(row)
        errors.append(np.abs(emulated / exact - 1))
    errors = np.array(errors)
    print(
        f"  emulator error vs direct pyccl over {args.error_points} prior points, {errors.shape[1]} wavenumbers: "
        f"max {100 * errors.max():.3f}%, rms {100 * np.sqrt(np.mean(errors**2)):.3f}% (target < 0.5%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=40, help="lss_field boxes timed per variant")
    parser.add_argument("--camels-maps", type=int, default=600, help="camels_like maps timed per variant")
    parser.add_argument("--rounds", type=int, default=10, help="alternating timing rounds (medians reported)")
    parser.add_argument("--direct-maps", type=int, default=3, help="maps / boxes timed with direct pyccl")
    parser.add_argument("--error-points", type=int, default=20, help="prior points for the emulator error")
    parser.add_argument("--transfer-function", default="boltzmann_camb")
    parser.add_argument(
        "--cache-dir", default=None, help="spectra table cache (default: a fresh temp dir, so the build is timed)"
    )
    args = parser.parse_args()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="lss_spectra_bench_")
    common = {"transfer_function": args.transfer_function, "cache_dir": cache_dir}
    lss = {"n_grid": 64, "box_size": 500.0, "field": "lognormal", "outputs": ["counts", "slab"], **common}
    camels = {"model": "tng_like", "n_grid": 64, "field": "lognormal", **common}
    run_case("lss_field", lss, args, "power_grid")
    run_case("camels_like", camels, args, "power_2d")


if __name__ == "__main__":
    main()
