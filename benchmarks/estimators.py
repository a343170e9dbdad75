"""Accuracy and training time of cosmosbi's NPE defaults vs sbi's own defaults, on several problems.

    python benchmarks/estimators.py [--n 10000] [--n-obs 3] [--n-samples 1000] [--problems ...]

Every problem has a reference posterior; both arms train on the same n simulations, with one
torch thread. Accuracy is the C2ST accuracy (5-fold MLP classifier, 0.5 = indistinguishable)
between n-samples estimator samples and n-samples reference samples, for n-obs observations
simulated at fixed parameters.

Problems (the sbi benchmark's definitions, Lueckmann et al. 2021, for the last three):

- ``gaussian_field``: a 16 x 16 Gaussian field with P(k) = A (k / 4)^-B summarised by its 11
  log-bandpowers (:class:`cosmosbi.estimators.reference.PowerSpectrumProblem`); reference:
  emcee on the exact field likelihood.
- ``two_moons``: theta ~ U(-1, 1)^2; x = (r cos a + 0.25, r sin a) + (-|t1 + t2| / sqrt 2,
  (t2 - t1) / sqrt 2) with a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2): a crescent-shaped, bimodal
  posterior. Reference: exact, by drawing (a, r), inverting the (two-to-one, volume-preserving)
  map for theta and keeping draws inside the prior.
- ``gaussian_mixture``: theta ~ U(-10, 10)^2; x ~ N(theta, I) / 2 + N(theta, 0.01 I) / 2: a
  posterior with a narrow core and wide wings. Reference: the same mixture centred on x,
  restricted to the prior by rejection.
- ``linear_gaussian``: theta ~ N(0, 0.1 I) in 10 dimensions; x ~ N(theta, 0.1 I). Reference:
  exact, N(x / 2, 0.05 I).

Training time is given as wall-clock and as the CPU time of the process (one thread: on a
machine shared with other jobs the CPU time is the fairer comparison).

Arms:

- ``sbi defaults``: ``sbi.inference.NPE(prior).append_simulations(theta, x).train()`` with every
  sbi default (MAF 5 x 50, batch 200, learning rate 5e-4, patience 20);
- ``cosmosbi NPE``: ``cosmosbi.estimators.NPE(prior).fit(theta, x, rng)`` with its defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import time

import numpy as np
import torch

from cosmosbi.analyses.metrics import c2st, c2st_null_std
from cosmosbi.estimators import NPE
from cosmosbi.estimators.baselines import exact_posterior_samples
from cosmosbi.estimators.networks import NullTracker
from cosmosbi.estimators.reference import PowerSpectrumProblem
from cosmosbi.simulators.priors import BoxUniform, Gaussian
from cosmosbi.torch_runtime import seeded_torch


class GaussianFieldProblem:
    """The Gaussian-field reference problem: log-bandpowers of a 16 x 16 field."""

    name = "gaussian_field"
    obs_theta = np.array([[1.0, 2.0], [0.7, 1.5], [1.6, 2.6], [1.2, 1.8], [0.9, 2.3]])

    def __init__(self):
        self.field = PowerSpectrumProblem(n_pixels=16)
        self.prior = self.field.prior
        self._fields: dict[int, np.ndarray] = {}

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Summaries (N, 11) for theta: (N, 2)."""
        _, fields = self.field.simulate(len(theta), rng, theta)
        self._last_fields = fields
        return self.field.summaries(fields)

    def observe(self, n_obs: int, rng: np.random.Generator) -> np.ndarray:
        x = self.simulate(self.obs_theta[:n_obs], rng)
        self._obs_fields = self._last_fields
        return x

    def reference(self, i: int, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return exact_posterior_samples(self.field.simulator, self._obs_fields[i], n, rng).samples


class TwoMoons:
    """sbi benchmark's two moons: a bimodal, crescent-shaped posterior in 2 dimensions."""

    name = "two_moons"
    prior = BoxUniform(["t1", "t2"], low=[-1, -1], high=[1, 1])
    obs_theta = np.array([[0.3, 0.4], [-0.5, 0.2], [0.6, -0.6], [0.1, 0.8], [-0.3, -0.3]])

    @staticmethod
    def _moon(n: int, rng: np.random.Generator) -> np.ndarray:
        a = rng.uniform(-np.pi / 2, np.pi / 2, n)
        r = rng.normal(0.1, 0.01, n)
        return np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1)

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x (N, 2) for theta: (N, 2)."""
        z0 = np.abs(theta[:, 0] + theta[:, 1]) / np.sqrt(2)
        z1 = (theta[:, 1] - theta[:, 0]) / np.sqrt(2)
        return self._moon(len(theta), rng) + np.stack([-z0, z1], axis=1)

    def observe(self, n_obs: int, rng: np.random.Generator) -> np.ndarray:
        return self.simulate(self.obs_theta[:n_obs], rng)

    def reference(self, i: int, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((0, 2))
        while len(out) < n:
            q = x[None, :] - self._moon(4 * n, rng)  # q = (-|z0|, z1)
            z0 = -q[:, 0] * rng.choice([-1.0, 1.0], len(q))  # either sign of t1 + t2, equally likely
            theta = np.stack([(z0 - q[:, 1]) / np.sqrt(2), (z0 + q[:, 1]) / np.sqrt(2)], axis=1)
            keep = (q[:, 0] <= 0) & np.all(np.abs(theta) <= 1, axis=1)
            out = np.concatenate([out, theta[keep]])
        return out[:n]


class GaussianMixture:
    """sbi benchmark's Gaussian mixture: N(theta, I) / 2 + N(theta, 0.01 I) / 2 in 2 dimensions."""

    name = "gaussian_mixture"
    prior = BoxUniform(["t1", "t2"], low=[-10, -10], high=[10, 10])
    obs_theta = np.array([[0.0, 0.0], [3.0, -5.0], [-7.0, 2.0], [5.0, 5.0], [-2.0, -8.0]])

    @staticmethod
    def _mixture(center: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale = np.where(rng.random(len(center)) < 0.5, 1.0, 0.1)[:, None]
        return center + scale * rng.standard_normal(center.shape)

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._mixture(theta, rng)

    def observe(self, n_obs: int, rng: np.random.Generator) -> np.ndarray:
        return self.simulate(self.obs_theta[:n_obs], rng)

    def reference(self, i: int, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((0, 2))
        while len(out) < n:
            theta = self._mixture(np.repeat(x[None, :], 2 * n, axis=0), rng)
            out = np.concatenate([out, theta[np.all(np.abs(theta) <= 10, axis=1)]])
        return out[:n]


class LinearGaussian:
    """sbi benchmark's linear Gaussian: theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I) in 10 dimensions."""

    name = "linear_gaussian"
    dim = 10
    prior = Gaussian([f"t{i}" for i in range(dim)], mean=[0.0] * dim, std=[np.sqrt(0.1)] * dim)

    def sbi_prior(self):
        """The same prior as a torch distribution that sbi's posterior accepts (its check of
        ``prior.to_torch()`` for unbounded marginals fails)."""
        return torch.distributions.MultivariateNormal(torch.zeros(self.dim), 0.1 * torch.eye(self.dim))

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return theta + np.sqrt(0.1) * rng.standard_normal(theta.shape)

    def observe(self, n_obs: int, rng: np.random.Generator) -> np.ndarray:
        return self.simulate(self.prior.sample(n_obs, np.random.default_rng(11)), rng)

    def reference(self, i: int, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return x / 2 + np.sqrt(0.05) * rng.standard_normal((n, self.dim))


PROBLEMS = {p.name: p for p in (GaussianFieldProblem, TwoMoons, GaussianMixture, LinearGaussian)}


def train_sbi_defaults(
    prior: torch.distributions.Distribution, theta: np.ndarray, x: np.ndarray, rng: np.random.Generator
):
    """sbi's NPE with every default. Returns (posterior, wall seconds, CPU seconds, epochs)."""
    from sbi.inference import NPE as SbiNPE

    with seeded_torch(rng), contextlib.redirect_stdout(io.StringIO()):
        start, cpu_start = time.perf_counter(), time.process_time()
        # NullTracker: no TensorBoard files in the working directory (does not change training)
        inference = SbiNPE(prior=prior, show_progress_bars=False, tracker=NullTracker())
        theta_t, x_t = torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
        inference.append_simulations(theta_t, x_t)
        inference.train()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return inference.build_posterior(), seconds, cpu_seconds, len(inference._summary["validation_loss"])


def sample_sbi(posterior, x_obs: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    with seeded_torch(rng):
        return [
            posterior.sample((n,), x=torch.as_tensor(row, dtype=torch.float32), show_progress_bars=False).numpy()
            for row in x_obs
        ]


def run_problem(problem, n: int, n_obs: int, n_samples: int, arms: dict) -> list[dict]:
    """Train every arm on the same simulations of ``problem``; C2ST of each against the reference."""
    rng = np.random.default_rng(1)
    theta = problem.prior.sample(n, rng)
    x = problem.simulate(theta, rng).astype(np.float32)
    x_obs = problem.observe(n_obs, np.random.default_rng(5)).astype(np.float32)
    reference = [problem.reference(i, row, n_samples, np.random.default_rng(6 + i)) for i, row in enumerate(x_obs)]
    rows = []
    for arm, train_and_sample in arms.items():
        seconds, cpu_seconds, epochs, samples = train_and_sample(problem, theta, x, x_obs, n_samples)
        scores = [c2st(s, r, seed=0) for s, r in zip(samples, reference)]
        rows.append(
            {
                "problem": problem.name,
                "arm": arm,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "epochs": epochs,
                "c2st": scores,
            }
        )
    return rows


def sbi_arm(problem, theta, x, x_obs, n_samples):
    prior = problem.sbi_prior() if hasattr(problem, "sbi_prior") else problem.prior.to_torch()
    posterior, seconds, cpu_seconds, epochs = train_sbi_defaults(prior, theta, x, np.random.default_rng(2))
    return seconds, cpu_seconds, epochs, sample_sbi(posterior, x_obs, n_samples, np.random.default_rng(3))


def cosmosbi_arm(problem, theta, x, x_obs, n_samples):
    cpu_start = time.process_time()
    npe = NPE(problem.prior, device="cpu").fit(theta, x, np.random.default_rng(2))
    samples = list(npe.sample(n_samples, x_obs, np.random.default_rng(3)))
    return npe.summary.seconds, time.process_time() - cpu_start, npe.summary.epochs, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="training simulations")
    parser.add_argument("--n-obs", type=int, default=3, help="observations per problem (at most 5)")
    parser.add_argument("--n-samples", type=int, default=1000, help="posterior and reference samples per observation")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(1)
    arms = {"sbi defaults": sbi_arm, "cosmosbi NPE": cosmosbi_arm}
    rows = []
    for name in args.problems:
        rows += run_problem(PROBLEMS[name](), args.n, args.n_obs, args.n_samples, arms)

    print(
        f"# {args.n} simulations, {args.n_obs} observations x {args.n_samples} samples per problem; "
        f"C2ST null sd {c2st_null_std(args.n_samples):.3f} per observation; 1 torch thread; "
        f"{platform.machine()}, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}"
    )
    print(
        "| problem | arm | train s (wall) | train s (CPU) | epochs | C2ST per observation | mean C2ST | CPU speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for row in rows:
        base.setdefault(row["problem"], row["cpu_seconds"])
        print(
            f"| {row['problem']} | {row['arm']} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | "
            f"{row['epochs']} | "
            f"{', '.join(f'{s:.3f}' for s in row['c2st'])} | {np.mean(row['c2st']):.3f} | "
            f"{base[row['problem']] / row['cpu_seconds']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
