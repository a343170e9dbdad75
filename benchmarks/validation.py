"""SBC speed: cosmosbi's batched validation vs sbi's run_sbc on the same posterior, in one run.

    python benchmarks/validation.py [--n-test 1000] [--n-samples 1000] [--n-train 10000] \\
        [--problem field|toy] [--dim D] [--model nsf]

Trains a cosmosbi NPE (default architecture: NSF) on a reference problem, then runs
simulation-based calibration for ``--n-test`` test simulations with ``--n-samples`` posterior
samples each:

- cosmosbi: ``validate_posterior`` (batched sampling of the flow with the log-density of each
  draw, rejection of draws outside the prior, then SBC, HPD coverage and TARP);
- sbi: ``run_sbc`` (default arguments: batched sampling) and ``check_sbc`` on a
  ``DirectPosterior`` wrapping the same trained network.

cosmosbi is timed before and after sbi (the machine may be shared: the two timings bracket
sbi's); the ratio uses their mean. Both arms run with the same torch thread count. sbi's
sampling time is measured by timing its ``get_posterior_samples_on_batch`` call inside
``run_sbc`` (without changing it).

Problems: ``field`` is the Gaussian-field reference problem (16 x 16 field, 11
log-bandpowers, 2 parameters); ``toy`` has ``--dim`` parameters theta ~ U(-2, 2)^D and
2 D summaries x = (theta + 0.3 n, theta^2 / 2 + 0.3 n').

Prints the seconds per stage, the speed ratios (target >= 3) and both calibration verdicts.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def toy_problem(dim: int):
    """(prior, simulate(n, rng) -> (theta, x)) of the D-parameter toy problem."""
    from cosmosbi.simulators import BoxUniform

    prior = BoxUniform([f"theta_{j}" for j in range(dim)], [-2.0] * dim, [2.0] * dim)

    def simulate(n, rng):
        theta = prior.sample(n, rng)
        x = np.concatenate(
            [theta + 0.3 * rng.standard_normal(theta.shape), theta**2 / 2 + 0.3 * rng.standard_normal(theta.shape)],
            axis=1,
        )
        return theta, x

    return prior, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--problem", choices=["field", "toy"], default="field")
    parser.add_argument("--dim", type=int, default=6, help="parameters of the toy problem")
    parser.add_argument("--model", default="nsf", help="cosmosbi FlowConfig model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both arms")
    parser.add_argument("--alpha", type=float, default=0.01, help="significance level of both verdicts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import sbi.diagnostics.sbc as sbi_sbc
    from sbi.diagnostics import check_sbc, run_sbc
    from sbi.inference.posteriors import DirectPosterior

    from cosmosbi.analyses.validation import validate_posterior
    from cosmosbi.estimators import NPE, FlowConfig, TrainingConfig

    rng = np.random.default_rng(0)
    if args.problem == "field":
        from cosmosbi.estimators.reference import PowerSpectrumProblem

        problem = PowerSpectrumProblem(n_pixels=16)
        prior = problem.prior

        def simulate(n, g):
            theta, fields = problem.simulate(n, g)
            return theta, problem.summaries(fields)

        label = "Gaussian-field reference problem (2 parameters, 11 log-bandpowers)"
    else:
        prior, simulate = toy_problem(args.dim)
        label = f"toy problem ({args.dim} parameters, {2 * args.dim} summaries)"
    theta, x = simulate(args.n_train, rng)
    npe = NPE(prior, FlowConfig(model=args.model), TrainingConfig(num_threads=args.threads), device="cpu")
    started = time.perf_counter()
    npe.fit(theta, x, rng)
    train_seconds = time.perf_counter() - started
    theta_test, x_test = simulate(args.n_test, rng)
    names = list(prior.names)

    def ours():
        started = time.perf_counter()
        result = validate_posterior(
            npe, theta_test, x_test, names, np.random.default_rng(1), n_samples=args.n_samples, alpha=args.alpha
        )
        return result, time.perf_counter() - started

    first, ours_before = ours()

    posterior = DirectPosterior(posterior_estimator=npe.network, prior=prior.to_torch())
    thetas = torch.as_tensor(theta_test, dtype=torch.float32)
    xs = torch.as_tensor(x_test, dtype=torch.float32)
    sampling = []
    original = sbi_sbc.get_posterior_samples_on_batch

    def timed(*a, **k):
        started = time.perf_counter()
        out = original(*a, **k)
        sampling.append(time.perf_counter() - started)
        return out

    sbi_sbc.get_posterior_samples_on_batch = timed
    try:
        torch.manual_seed(2)
        started = time.perf_counter()
        ranks, dap_samples = run_sbc(
            thetas, xs, posterior, num_posterior_samples=args.n_samples, show_progress_bar=False
        )
        run_seconds = time.perf_counter() - started
        stats = check_sbc(ranks, thetas, dap_samples, num_posterior_samples=args.n_samples)
        sbi_seconds = time.perf_counter() - started
    finally:
        sbi_sbc.get_posterior_samples_on_batch = original

    second, ours_after = ours()
    ours_seconds = (ours_before + ours_after) / 2

    print(
        f"NPE ({args.model}, {npe.summary.epochs} epochs, {train_seconds:.0f} s) on the {label}; "
        f"{args.n_test} test simulations x "
        f"{args.n_samples} samples; torch {torch.__version__}, "
        f"{args.threads} thread(s) for both arms, {platform.machine()}"
    )
    print(
        f"cosmosbi validate_posterior (SBC + HPD coverage + TARP): {ours_before:.1f} s before sbi, "
        f"{ours_after:.1f} s after "
        f"(mean {ours_seconds:.1f} s)"
    )
    for label_, result in (("before", first), ("after", second)):
        print(f"  stages ({label_}): " + ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items()))
    print(f"sbi run_sbc: {run_seconds:.1f} s (sampling {sum(sampling):.1f} s); + check_sbc: {sbi_seconds:.1f} s")
    print(
        f"speed ratio vs run_sbc: {run_seconds / ours_seconds:.1f}x; "
        f"vs run_sbc + check_sbc: {sbi_seconds / ours_seconds:.1f}x (target >= 3)"
    )
    print(
        f"sampling alone: sbi {sum(sampling):.1f} s "
        f"vs cosmosbi {(first.seconds['sampling'] + second.seconds['sampling']) / 2:.1f} s"
    )
    ours_verdicts = dict(zip(first.sbc.names, first.sbc.verdicts))
    ks = stats["ks_pvals"].numpy()
    sbi_verdicts = dict(zip(names, ["calibrated" if p >= args.alpha else "miscalibrated" for p in ks]))
    ours_p = dict(zip(first.sbc.names, np.minimum(first.sbc.ks_pvalue, first.sbc.chi2_pvalue).round(3).tolist()))
    print(
        f"cosmosbi SBC verdicts (min of chi^2 and KS p): {ours_verdicts} {ours_p}; "
        f"HPD: {first.coverage.verdict}, TARP: {first.tarp.verdict}"
    )
    print(f"sbi KS p-values: {dict(zip(names, ks.round(3).tolist()))} -> {sbi_verdicts}")
    same = all((ours_verdicts[n] == "calibrated") == (sbi_verdicts[n] == "calibrated") for n in names)
    print(f"same calibration verdict per parameter: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
