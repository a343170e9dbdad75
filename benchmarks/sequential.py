"""Simulations needed for one observation: truncated sequential NPE vs amortised NPE, in one run.

    python benchmarks/sequential.py --problem gaussian_field --budgets 1000 3000 10000 --rounds 4
    python benchmarks/sequential.py --problem two_moons --budgets 1000 3000 --rounds 4

For each total simulation budget B, both arms run through
:func:`cosmosbi.estimators.sequential.sequential_npe` with the same NPE defaults:
amortised NPE is one round of B prior simulations; TSNPE is ``--rounds`` rounds of B / rounds
simulations, round K > 0 drawn from the prior truncated to the current posterior's
1 - epsilon (``--epsilon``, default 1e-4) highest-probability region. Accuracy is the C2ST
accuracy (5-fold MLP) between ``--n-samples`` samples of each estimate and as many samples of the exact posterior of one
observation (emcee on the exact field likelihood; for two moons, the exact density on a
2000 x 2000 grid). The script prints, per problem, the smallest budget at which each arm
reaches C2ST <= 0.55 and their ratio.

Problems:
- ``gaussian_field``: an n x n Gaussian field (``--n-pixels``, default 16) with
  P(k) = A (k / k_pivot)^-B, k_pivot = n / 4, summarised by its log-bandpowers (11 at
  n = 16, 23 at n = 32), observed at (A, B) = (1, 2).
- ``two_moons``: the sbi benchmark's two moons, observed at x = (0, 0) (bimodal crescents).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cosmosbi.analyses.metrics import c2st
from cosmosbi.estimators.baselines import exact_posterior_samples
from cosmosbi.estimators.reference import PowerSpectrumProblem
from cosmosbi.estimators.sequential import sequential_npe
from cosmosbi.estimators.toy_problems import TwoMoons

TARGET = 0.55


def gaussian_field_problem(rng, n_samples, n_pixels):
    """(simulator, summarize, x_obs, exact samples) of the Gaussian-field problem."""
    problem = PowerSpectrumProblem(n_pixels=n_pixels)
    _, fields = problem.simulate(1, rng, np.array([[1.0, 2.0]]))
    exact = exact_posterior_samples(problem.simulator, fields[0], n_samples, rng).samples
    return problem.simulator, (lambda out: problem.summaries(out["field"])), problem.summaries(fields)[0], exact


def two_moons_problem(rng, n_samples, n_pixels):
    moons = TwoMoons()
    x_obs = np.zeros(2)
    return moons, None, x_obs, moons.reference_posterior(x_obs, n_samples, rng)


PROBLEMS = {"gaussian_field": gaussian_field_problem, "two_moons": two_moons_problem}


def first_reaching(results, arm):
    hits = [r["budget"] for r in results if r["arm"] == arm and r["c2st"] <= TARGET]
    return min(hits) if hits else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="gaussian_field")
    parser.add_argument("--budgets", type=int, nargs="*", default=[1000, 3000, 10000])
    parser.add_argument(
        "--sequential-budgets",
        type=int,
        nargs="*",
        default=None,
        help="budgets of the sequential arm (default: --budgets)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epsilon", type=float, default=1e-4, help="posterior mass outside each truncated region")
    parser.add_argument("--n-pixels", type=int, default=16, help="side of the Gaussian field's grid")
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    load = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}; {load}")
    rng = np.random.default_rng(args.seed)
    simulator, summarize, x_obs, exact = PROBLEMS[args.problem](rng, args.n_samples, args.n_pixels)
    arms = [("amortised", 1, b) for b in args.budgets]
    arms += [
        ("sequential", args.rounds, b)
        for b in (args.sequential_budgets if args.sequential_budgets is not None else args.budgets)
    ]
    results = []
    with tempfile.TemporaryDirectory() as work:
        for arm, rounds, budget in arms:
            start = time.perf_counter()
            result = sequential_npe(
                simulator,
                x_obs,
                Path(work) / f"{arm}-{budget}",
                args.seed + 1,
                rounds=rounds,
                simulations_per_round=budget // rounds,
                summarize=summarize,
                epsilon=args.epsilon,
            )
            samples = result.estimator.sample(args.n_samples, x_obs, np.random.default_rng(args.seed + 2))
            accuracy = c2st(samples, exact, seed=0)
            seconds = time.perf_counter() - start
            acceptance = [r.get("acceptance") for r in result.rounds[1:]]
            results.append(
                {
                    "arm": arm,
                    "budget": budget,
                    "rounds": rounds,
                    "c2st": accuracy,
                    "seconds": seconds,
                    "acceptance": acceptance,
                }
            )
            truncation = (
                ""
                if not acceptance
                else "  prior mass of the truncated regions " + ", ".join(f"{a:.3g}" for a in acceptance)
            )
            print(
                f"{args.problem:15s} {arm:10s} budget {budget:6d} ({rounds} rounds)  "
                f"C2ST {accuracy:.3f}  {seconds:6.1f} s{truncation}",
                flush=True,
            )
    amortised, sequential = first_reaching(results, "amortised"), first_reaching(results, "sequential")
    ratio = (
        f"{amortised / sequential:.1f}x fewer"
        if amortised and sequential
        else "n/a (an arm never reached the target on this grid)"
    )
    print(
        f"{args.problem}: C2ST <= {TARGET} first reached at {amortised} simulations (amortised), "
        f"{sequential} (sequential): {ratio}"
    )
    print(f"# {subprocess.run(['uptime'], check=False, capture_output=True, text=True).stdout.strip()}")
    if args.json:
        args.json.write_text(json.dumps({"problem": args.problem, "load": load, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
