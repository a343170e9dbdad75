"""Training time and accuracy of cosmosbi's estimator defaults vs sbi's own defaults, in one run.

    python benchmarks/estimators.py [--n 10000] [--n-obs 3] [--skip-nle]

Reference problem: a 16 x 16 Gaussian field with P(k) = A (k / 4)^-B, summarised by its
11 log-bandpowers (`cosmosbi.estimators.reference.PowerSpectrumProblem`). Every arm trains on
the same n simulations. Accuracy is the C2ST accuracy (5-fold MLP classifier) between 2000
estimator samples and 2000 exact-posterior samples (emcee on the exact field likelihood),
averaged over n-obs observations simulated at fixed parameters.

Arms:
- `sbi defaults`: `sbi.inference.NPE(prior).append_simulations(theta, t).train()` with every
  sbi default, and torch's default thread count;
- `sbi defaults, 1 thread`: the same with `torch.set_num_threads(1)`;
- `cosmosbi NPE`: `cosmosbi.estimators.NPE(prior).fit(theta, t, rng)` with its defaults;
- `cosmosbi NLE`: `cosmosbi.estimators.NLE(prior).fit(...)` with its defaults, sampled with emcee.

`--skip-sbi-default-threads` leaves out the first arm: with torch's default two threads on a
machine whose cores are shared, every training step of sbi's network slows down by an order
of magnitude (thread contention), and that arm did not finish within 35 minutes there.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from cosmosbi.analyses.metrics import c2st, c2st_null_std
from cosmosbi.estimators import NLE, NPE
from cosmosbi.estimators.baselines import exact_posterior_samples
from cosmosbi.estimators.networks import NullTracker
from cosmosbi.estimators.reference import PowerSpectrumProblem
from cosmosbi.torch_runtime import seeded_torch

OBS_THETA = np.array([[1.0, 2.0], [0.7, 1.5], [1.6, 2.6], [1.2, 1.8], [0.9, 2.3]])


def sbi_defaults(problem, theta, t, t_obs, n_samples, threads):
    from sbi.inference import NPE as SbiNPE

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with seeded_torch(np.random.default_rng(2)):
            start = time.perf_counter()
            # NullTracker: no TensorBoard files in the working directory (does not change training)
            inference = SbiNPE(prior=problem.prior.to_torch(), show_progress_bars=False, tracker=NullTracker())
            inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(t))
            inference.train()
            seconds = time.perf_counter() - start
            posterior = inference.build_posterior()
            samples = [posterior.sample((n_samples,), x=torch.as_tensor(row), show_progress_bars=False).numpy() for row in t_obs]
    finally:
        torch.set_num_threads(before)
    return seconds, int(inference._summary["epochs_trained"][-1]), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="training simulations")
    parser.add_argument("--n-obs", type=int, default=3, help="observations the C2ST is averaged over (at most 5)")
    parser.add_argument("--n-samples", type=int, default=2000, help="posterior samples per observation")
    parser.add_argument("--skip-nle", action="store_true", help="leave out the NLE arm")
    parser.add_argument("--skip-sbi-1thread", action="store_true", help="leave out sbi's defaults at one thread")
    parser.add_argument("--skip-sbi-default-threads", action="store_true", help="leave out sbi's defaults at torch's default thread count")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    problem = PowerSpectrumProblem(n_pixels=16)
    theta, fields = problem.simulate(args.n, np.random.default_rng(1))
    t = problem.summaries(fields)
    obs_theta = OBS_THETA[: args.n_obs]
    _, obs_fields = problem.simulate(len(obs_theta), np.random.default_rng(5), obs_theta)
    t_obs = problem.summaries(obs_fields)
    exact = [exact_posterior_samples(problem.simulator, f, args.n_samples, np.random.default_rng(6 + i)).samples for i, f in enumerate(obs_fields)]

    def score(samples):
        return [c2st(s, e, seed=0) for s, e in zip(samples, exact)]

    rows = []
    if not args.skip_sbi_default_threads:
        seconds, epochs, samples = sbi_defaults(problem, theta, t, t_obs, args.n_samples, None)
        rows.append(("sbi defaults (NPE, MAF 5x50, batch 200, lr 5e-4, patience 20)", torch.get_num_threads(), seconds, epochs, score(samples)))
    if not args.skip_sbi_1thread:
        seconds, epochs, samples = sbi_defaults(problem, theta, t, t_obs, args.n_samples, 1)
        rows.append(("sbi defaults (NPE, MAF 5x50, batch 200, lr 5e-4, patience 20), 1 thread", 1, seconds, epochs, score(samples)))
    if not rows:
        parser.error("keep at least one sbi-defaults arm as the baseline")
    npe = NPE(problem.prior, device="cpu").fit(theta, t, np.random.default_rng(2))
    samples = npe.sample(args.n_samples, t_obs, np.random.default_rng(3))
    rows.append(("cosmosbi NPE defaults (NSF 2x32, batch 512, lr 3e-3, patience 6)", npe.training.num_threads, npe.summary.seconds, npe.summary.epochs, score(samples)))
    if not args.skip_nle:
        nle = NLE(problem.prior, device="cpu").fit(theta, t, np.random.default_rng(2))
        samples = nle.sample(args.n_samples, t_obs, np.random.default_rng(3))
        rows.append(("cosmosbi NLE defaults (MAF 5x50, batch 512, lr 3e-3, patience 10; emcee)", nle.training.num_threads, nle.summary.seconds, nle.summary.epochs, score(samples)))

    print(f"# {args.n} simulations, {len(t_obs)} observations, {args.n_samples} samples each; "
          f"C2ST null sd {c2st_null_std(args.n_samples):.3f}; {platform.machine()}, torch {torch.__version__}")
    print("| arm | threads | train s | epochs | C2ST per observation | mean C2ST |")
    print("|---|---|---|---|---|---|")
    for name, threads, seconds, epochs, scores in rows:
        print(f"| {name} | {threads} | {seconds:.1f} | {epochs} | {', '.join(f'{s:.3f}' for s in scores)} | {np.mean(scores):.3f} |")
    base = rows[0][2]
    for name, _, seconds, _, _ in rows[1:]:
        print(f"speed-up of {name} over {rows[0][0]}: {base / seconds:.1f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([dict(zip(("arm", "threads", "seconds", "epochs", "c2st"), row)) for row in rows], handle, indent=2)


if __name__ == "__main__":
    main()
