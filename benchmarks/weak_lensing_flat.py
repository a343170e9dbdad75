"""Cost of one flat-sky weak-lensing mock survey against the bare FFTs it needs.

One survey: ``--bins`` tomographic bins on a ``--pixels``^2 patch of ``--patch-deg`` degrees,
lognormal convergence with cross-bin correlations, Kaiser-Squires shear, shape noise; the
theory (pyccl + GLASS solver) is evaluated once at the fixed theta and reused, as a table
lookup would be (``benchmarks/weak_lensing.py`` times lookups). The baseline is numpy's FFTs
of the same box alone: real white noise and its forward FFT (the usual way to draw the
modes), one inverse real FFT per bin for the fields, and for the shear one forward and two
inverse real FFTs per bin (5 FFTs per bin).

    python benchmarks/weak_lensing_flat.py [--pixels 256] [--patch-deg 10] [--bins 5] [--surveys 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from cosmosbi.simulators import make_simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=256)
    parser.add_argument("--patch-deg", type=float, default=10.0)
    parser.add_argument("--bins", type=int, default=5)
    parser.add_argument("--padding", type=int, default=1)
    parser.add_argument("--surveys", type=int, default=10)
    args = parser.parse_args()

    sim = make_simulator(
        "weak_lensing_flat",
        {
            "n_pixels": args.pixels,
            "patch_deg": args.patch_deg,
            "n_bins": args.bins,
            "padding": args.padding,
            "shear": True,
            "emulator": False,
            "cache_dir": tempfile.mkdtemp(prefix="wl_flat_bench_"),
        },
    )
    print(f"simulator: {sim}")
    theta = np.array([[0.3, 0.8]])
    t0 = time.perf_counter()
    sim.theory_at(theta[0])
    print(f"theory once (pyccl + GLASS solver, lmax {sim.lmax}): {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(1)
    b = sim.box_pixels
    survey, ffts = [], []
    for _ in range(args.surveys):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        sim.simulate(theta, rng)
        survey.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        modes = np.fft.rfft2(rng.standard_normal((args.bins, b, b)))
        np.fft.irfft2(modes, s=(b, b))
        k = np.fft.rfft2(np.fft.irfft2(modes, s=(b, b)))
        np.fft.irfft2(k, s=(b, b)), np.fft.irfft2(k, s=(b, b))
        ffts.append(time.perf_counter() - t0)
    survey, ffts = np.array(survey), np.array(ffts)
    print(f"one survey: median {np.median(survey) * 1e3:.1f} ms, min {survey.min() * 1e3:.1f} ms")
    print(f"FFTs alone ({5 * args.bins} real FFTs of {b}^2 and the white noise): median {np.median(ffts) * 1e3:.1f} ms")
    ratio, minima = np.median(survey / ffts), survey.min() / ffts.min()
    print(f"survey / FFTs: {ratio:.2f}x (median of paired ratios), {minima:.2f}x (minima)")


if __name__ == "__main__":
    main()
