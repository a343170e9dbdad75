"""Joint inference from N independent observations: both routes against the exact joint posterior.

    python benchmarks/joint.py [--n-single 4000] [--n-sets 20000] [--n-sbc 200]

Problem: :class:`cosmosbi.estimators.toy_problems.GaussianPopulation`, population means mu in
[-2, 2]^2, each observation x_i = mu + eta_i + e_i with its own nuisance offset eta_i
(tau = 0.6) and noise e_i (sigma = 0.8); exact joint posterior N(mean x_i, I / N) truncated
to the prior box.

Routes:
- ``NLE sum``: NLE (cosmosbi defaults) on ``--n-single`` single observations; emcee on
  log p(mu) + sum_i log q(x_i | mu).
- ``deep-set NPE``: NPE (cosmosbi defaults) with a deep-set embedding, trained on
  ``--n-sets`` simulated sets of 1 to 12 observations (log-uniform sizes).

Accuracy: C2ST (5-fold MLP) between 1000 samples of each route and 1000 exact samples, mean
over 3 populations, at N = 1, 3, 10. Calibration: SBC over ``--n-sbc`` populations of N = 10
observations (200 posterior samples each), chi^2 and KS p-values per parameter.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import numpy as np

from cosmosbi.analyses.calibration import sbc
from cosmosbi.analyses.metrics import c2st
from cosmosbi.estimators.joint import (
    deep_set_npe,
    pad_sets,
    sample_joint_nle,
    sample_joint_nle_many,
    set_sizes,
    simulate_sets,
)
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.toy_problems import GaussianPopulation

N_MAX = 12


def uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-single", type=int, default=4000)
    parser.add_argument("--n-sets", type=int, default=20_000)
    parser.add_argument("--n-sbc", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.machine()}; {uptime()}")
    rng = np.random.default_rng(args.seed)
    population = GaussianPopulation()
    prior = population.prior

    start = time.perf_counter()
    theta = prior.sample(args.n_single, rng)
    nle = NLE(prior, device="cpu").fit(theta, population.simulate(theta, rng)["x"], rng)
    print(f"\nNLE trained on {args.n_single} observations in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    theta = prior.sample(args.n_sets, rng)
    padded = pad_sets(simulate_sets(population, theta, set_sizes(args.n_sets, N_MAX, rng), rng), N_MAX)
    npe = deep_set_npe(prior, padded).fit(theta, padded, rng)
    print(f"\ndeep-set NPE trained on {args.n_sets} sets in {time.perf_counter() - start:.0f} s", flush=True)

    for n_obs in (1, 3, 10):
        scores = {"NLE sum": [], "deep-set NPE": []}
        for mu in prior.sample(3, rng):
            x_set = population.simulate(np.repeat(mu[None], n_obs, 0), rng)["x"]
            exact = population.reference_posterior(x_set, 1000, rng)
            scores["NLE sum"].append(c2st(sample_joint_nle(nle, x_set, 1000, rng).samples, exact))
            scores["deep-set NPE"].append(c2st(npe.sample(1000, pad_sets([x_set], N_MAX)[0], rng), exact))
        print(
            f"N = {n_obs:2d}: C2ST "
            + ", ".join(f"{k} {np.mean(v):.3f} (max {np.max(v):.3f})" for k, v in scores.items()),
            flush=True,
        )

    truth = prior.sample(args.n_sbc, rng)
    test_sets = simulate_sets(population, truth, np.full(args.n_sbc, 10), rng)
    start = time.perf_counter()
    routes = {
        "NLE sum": np.stack([r.samples for r in sample_joint_nle_many(nle, np.stack(test_sets), 200, rng)]),
    }
    seconds = {"NLE sum": time.perf_counter() - start}
    start = time.perf_counter()
    routes["deep-set NPE"] = npe.sample(200, pad_sets(test_sets, N_MAX), rng)
    seconds["deep-set NPE"] = time.perf_counter() - start
    for name, samples in routes.items():
        result = sbc(samples, truth, list(prior.names))
        detail = "; ".join(
            f"{p}: {v} (chi2 p {c:.2f}, KS p {k:.2f})"
            for p, v, c, k in zip(prior.names, result.verdicts, result.chi2_pvalue, result.ks_pvalue)
        )
        print(
            f"SBC over {args.n_sbc} populations of N = 10, {name} ({seconds[name]:.0f} s sampling): {detail}",
            flush=True,
        )
    print(f"# {uptime()}")


if __name__ == "__main__":
    main()
