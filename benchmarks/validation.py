"""SBC speed: cosmosbi's batched validation vs sbi's run_sbc on the same posterior, in one run.

    python benchmarks/validation.py [--n-test 1000] [--n-samples 1000] [--n-train 10000]

Trains the default cosmosbi NPE on the Gaussian-field reference problem (16 x 16 field, 11
log-bandpowers, 2 parameters), then runs simulation-based calibration for ``--n-test`` test
simulations with ``--n-samples`` posterior samples each:

- cosmosbi: ``validate_posterior`` (batched rejection sampling over all observations, then
  SBC, HPD coverage and TARP);
- sbi: ``run_sbc`` + ``check_sbc`` on a ``DirectPosterior`` wrapping the same trained network
  (batched sampling, as sbi does by default).

Prints both times, their ratio (target >= 3) and both calibration verdicts.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both arms")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sbi.diagnostics import check_sbc, run_sbc
    from sbi.inference.posteriors import DirectPosterior

    from cosmosbi.analyses.validation import validate_posterior
    from cosmosbi.estimators import NPE
    from cosmosbi.estimators.reference import PowerSpectrumProblem

    rng = np.random.default_rng(0)
    problem = PowerSpectrumProblem(n_pixels=16)
    theta, fields = problem.simulate(args.n_train, rng)
    npe = NPE(problem.prior).fit(theta, problem.summaries(fields), rng)
    theta_test, fields_test = problem.simulate(args.n_test, rng)
    t_test = problem.summaries(fields_test)
    names = list(problem.prior.names)

    started = time.perf_counter()
    ours = validate_posterior(npe, theta_test, t_test, names, rng, n_samples=args.n_samples)
    ours_seconds = time.perf_counter() - started

    posterior = DirectPosterior(posterior_estimator=npe.network, prior=problem.prior.to_torch())
    thetas = torch.as_tensor(theta_test, dtype=torch.float32)
    xs = torch.as_tensor(t_test, dtype=torch.float32)
    started = time.perf_counter()
    ranks, dap_samples = run_sbc(thetas, xs, posterior, num_posterior_samples=args.n_samples, show_progress_bar=False)
    stats = check_sbc(ranks, thetas, dap_samples, num_posterior_samples=args.n_samples)
    sbi_seconds = time.perf_counter() - started

    print(f"NPE on the Gaussian-field reference problem, {args.n_test} test simulations x {args.n_samples} samples; "
          f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}")
    print(f"cosmosbi validate_posterior (SBC + HPD coverage + TARP): {ours_seconds:.1f} s (sampling {ours.seconds['sampling']} s)")
    print(f"sbi run_sbc + check_sbc:                                  {sbi_seconds:.1f} s")
    print(f"speed ratio: {sbi_seconds / ours_seconds:.1f}x (target >= 3)")
    print(f"cosmosbi SBC verdicts: {dict(zip(ours.sbc.names, ours.sbc.verdicts))}")
    ks = stats["ks_pvals"].numpy()
    print(f"sbi KS p-values: {dict(zip(names, ks.round(3).tolist()))} -> "
          f"{dict(zip(names, ['calibrated' if p >= 0.01 else 'miscalibrated' for p in ks]))}")


if __name__ == "__main__":
    main()
