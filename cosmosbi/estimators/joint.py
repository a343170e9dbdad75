"""Joint inference of population parameters from N independent observations.

The observations x_1..x_N share the population parameters theta; anything a simulator draws
per observation (a nuisance: an object's own offset, noise, source properties) is marginalised
by training on simulations that draw it afresh for each observation. Two routes:

- NLE: an :class:`~cosmosbi.estimators.nle.NLE` trained on single observations estimates
  q(x | theta); the joint posterior is p(theta) prod_i q(x_i | theta), sampled with emcee
  (:func:`sample_joint_nle`), one network call per step for all walkers and observations.
- NPE on sets: :class:`DeepSetEmbedding` maps a set of up to ``n_max`` observations to a
  fixed-length vector that does not depend on their order (Zaheer et al. 2017: per-observation
  network, masked mean, set size, then a second network), trained jointly with the flow of an
  :class:`~cosmosbi.estimators.npe.NPE` on simulated sets of varying size (:func:`deep_set_npe`).
  Sets are stored padded, (n_max, d + 1): the d features of each observation and a last
  column that is 1 for an observation and 0 for padding (:func:`pad_sets`).

Example::

    nle = NLE(prior).fit(theta, x, rng)                          # x: (M, d) single observations
    samples = sample_joint_nle(nle, x_set, 2000, rng).samples    # x_set: (N, d)

    sets = simulate_sets(simulator, theta, counts, rng)          # counts: (M,) set sizes
    npe = deep_set_npe(prior, pad_sets(sets, n_max)).fit(theta, pad_sets(sets, n_max), rng)
    samples = npe.sample(2000, pad_sets([x_set], n_max)[0], rng)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from cosmosbi.estimators.mcmc import MCMCResult, sample_stretch_batched
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.estimators.nle import NLE, sample_posterior_emcee
from cosmosbi.estimators.npe import NPE
from cosmosbi.simulators.base import as_simulator
from cosmosbi.simulators.priors import Prior

__all__ = [
    "DeepSetEmbedding",
    "deep_set_npe",
    "joint_log_posterior",
    "pad_sets",
    "sample_joint_nle",
    "sample_joint_nle_many",
    "set_sizes",
    "simulate_sets",
]


def joint_log_posterior(nle: NLE, x_set: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The unnormalised joint log posterior log p(theta) + sum_i log q(x_i | theta).

    Args:
        nle: a trained NLE on single observations (d,).
        x_set: (N, d) the observations.

    Returns:
        A vectorised function theta: (W, D) -> (W,), -inf outside the prior support.
    """
    x_set = np.asarray(x_set, dtype=np.float32)
    if nle.x_shape is None:
        raise RuntimeError("nle is not trained: call fit() or load it first")
    if x_set.ndim != 2 or x_set.shape[1:] != tuple(nle.x_shape) or len(x_set) == 0:
        raise ValueError(f"x_set: expected (N, {nle.x_shape[0]}) observations with N >= 1, got shape {x_set.shape}")
    n_obs = len(x_set)

    def log_posterior(theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        out = np.asarray(nle.prior.log_prob(theta), dtype=float).copy()
        ok = np.isfinite(out)
        if ok.any():
            inside = theta[ok]
            pairs_theta = np.repeat(inside, n_obs, axis=0)  # walker w with every observation in turn
            pairs_x = np.tile(x_set, (len(inside), 1))
            out[ok] += nle.log_likelihood(pairs_theta, pairs_x).reshape(len(inside), n_obs).sum(1)
        return out

    return log_posterior


def sample_joint_nle(nle: NLE, x_set: np.ndarray, n: int, rng: np.random.Generator, **emcee_options) -> MCMCResult:
    """n emcee draws of the joint posterior of theta given x_set: (N, d) (see :func:`joint_log_posterior`).

    ``emcee_options`` go to :func:`~cosmosbi.estimators.nle.sample_posterior_emcee`.
    Returns an :class:`~cosmosbi.estimators.mcmc.MCMCResult` (``samples``: (n, D)).
    """
    return sample_posterior_emcee(joint_log_posterior(nle, x_set), nle.prior, int(n), rng, **emcee_options)


def sample_joint_nle_many(
    nle: NLE,
    x_sets: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    n_candidates: int = 500,
    **stretch_options,
) -> list[MCMCResult]:
    """Joint posteriors of M populations at once: x_sets (M, N, d), N observations each.

    The M walker ensembles move in lock-step
    (:func:`~cosmosbi.estimators.mcmc.sample_stretch_batched`), one network call per step
    for all walkers, observations and populations: for calibration over many populations.
    Each ensemble starts around the best of ``n_candidates`` prior draws for its population.

    Returns:
        M :class:`~cosmosbi.estimators.mcmc.MCMCResult` records (``samples``: (n, D) each).
    """
    x_sets = np.asarray(x_sets, dtype=np.float32)
    if x_sets.ndim != 3:
        raise ValueError(f"x_sets: expected (M, N, d) observations, got shape {x_sets.shape}")
    joint_log_posterior(nle, x_sets[0])  # checks the shape of one set against the network
    m_sets, n_obs, d = x_sets.shape

    def log_prob(theta: np.ndarray) -> np.ndarray:  # (M, K, D) -> (M, K)
        k = theta.shape[1]
        flat = theta.reshape(m_sets * k, -1)
        out = np.asarray(nle.prior.log_prob(flat), dtype=float).copy()
        ok = np.isfinite(out)
        if ok.any():
            pairs_x = np.broadcast_to(x_sets[:, None], (m_sets, k, n_obs, d)).reshape(m_sets * k, n_obs, d)[ok]
            pairs_theta = np.repeat(flat[ok], n_obs, axis=0)
            out[ok] += nle.log_likelihood(pairs_theta, pairs_x.reshape(-1, d)).reshape(-1, n_obs).sum(1)
        return out.reshape(m_sets, k)

    candidates = nle.prior.sample(n_candidates, rng)
    values = log_prob(np.broadcast_to(candidates, (len(x_sets), *candidates.shape)))
    order = np.argsort(values, axis=1)[:, ::-1]
    x0 = candidates[order[:, 0]]
    top = candidates[order[:, : max(10, nle.prior.dim + 2)]]
    scale = np.clip(0.1 * top.std(axis=1), 1e-6, None)
    return sample_stretch_batched(log_prob, x0, int(n), rng, scale=scale, **stretch_options)


class DeepSetEmbedding(torch.nn.Module):
    """Permutation-invariant embedding of a padded set of observations.

    Input (B, n_max, d + 1): features and a presence column (1 observation, 0 padding).
    Each observation's standardised features go through ``phi`` (two hidden layers); the
    outputs are averaged over the observations present, the log of their number is appended,
    and ``rho`` (two hidden layers) gives the (B, output_dim) embedding.

    Args:
        n_features: d.
        shift, scale: (d,) standardisation of the features (e.g. their mean and standard
            deviation over the training observations).
        hidden: width of the hidden layers; pooled: width of the pooled representation;
        output_dim: embedding size.
    """

    def __init__(
        self, n_features: int, shift=None, scale=None, *, hidden: int = 64, pooled: int = 32, output_dim: int = 16
    ):
        super().__init__()
        self.n_features = int(n_features)
        shift = torch.zeros(self.n_features) if shift is None else torch.as_tensor(np.asarray(shift, dtype=np.float32))
        scale = torch.ones(self.n_features) if scale is None else torch.as_tensor(np.asarray(scale, dtype=np.float32))
        if shift.shape != (self.n_features,) or scale.shape != (self.n_features,) or not torch.all(scale > 0):
            raise ValueError(f"shift and scale: expected ({self.n_features},) arrays with positive scale")
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        self.phi = torch.nn.Sequential(
            torch.nn.Linear(self.n_features, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, pooled),
        )
        self.rho = torch.nn.Sequential(
            torch.nn.Linear(pooled + 1, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, output_dim),
        )

    @classmethod
    def from_padded(cls, padded: np.ndarray, **options) -> DeepSetEmbedding:
        """An embedding standardised by the mean and std of the observations in padded: (M, n_max, d + 1)."""
        padded = np.asarray(padded, dtype=float)
        present = padded[..., -1] > 0.5
        features = padded[..., :-1][present]
        if len(features) < 2:
            raise ValueError("padded: expected at least two observations to standardise the features")
        return cls(features.shape[1], features.mean(0), np.clip(features.std(0), 1e-8, None), **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, mask = x[..., : self.n_features], x[..., self.n_features :]
        h = self.phi((features - self.shift) / self.scale) * mask
        count = mask.sum(-2).clamp(min=1.0)
        pooled = h.sum(-2) / count
        return self.rho(torch.cat([pooled, torch.log(count)], dim=-1))


def pad_sets(sets: Sequence[np.ndarray], n_max: int) -> np.ndarray:
    """Padded array (M, n_max, d + 1) float32 of M sets of observations, each (N_m, d) with 1 <= N_m <= n_max."""
    sets = [np.atleast_2d(np.asarray(s, dtype=np.float32)) for s in sets]
    if not sets:
        raise ValueError("sets: expected at least one set of observations")
    d = sets[0].shape[1]
    out = np.zeros((len(sets), int(n_max), d + 1), dtype=np.float32)
    for m, s in enumerate(sets):
        if s.ndim != 2 or s.shape[1] != d or not 1 <= len(s) <= n_max:
            raise ValueError(
                f"sets[{m}]: expected (N, {d}) observations with 1 <= N <= n_max={n_max}, got shape {s.shape}"
            )
        out[m, : len(s), :d] = s
        out[m, : len(s), d] = 1.0
    return out


def simulate_sets(
    simulator,
    theta: np.ndarray,
    counts: Sequence[int],
    rng: np.random.Generator,
    *,
    summarize: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Simulate set m of counts[m] independent observations at theta[m] (each with its own nuisances).

    Args:
        simulator: a simulator whose single output (or ``summarize`` of its outputs) is one
            observation (d,).
        theta: (M, D); counts: (M,) positive set sizes; rng: numpy Generator.

    Returns:
        M arrays (counts[m], d).
    """
    simulator = as_simulator(simulator)
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(theta),) or np.any(counts < 1):
        raise ValueError(f"counts: expected {len(theta)} positive set sizes, got {counts.tolist()}")
    outputs = simulator.simulate(np.repeat(theta, counts, axis=0), rng)
    if summarize is not None:
        x = np.asarray(summarize(outputs))
    elif len(outputs) == 1:
        x = next(iter(outputs.values()))
    else:
        raise ValueError(
            f"the simulator returns outputs {sorted(outputs)}; give summarize to map them to one observation"
        )
    x = x.reshape(len(x), -1)
    return np.split(x, np.cumsum(counts)[:-1])


def deep_set_npe(
    prior: Prior,
    padded: np.ndarray,
    flow: FlowConfig | None = None,
    training: TrainingConfig | None = None,
    **embedding_options,
) -> NPE:
    """An untrained NPE whose embedding is a :class:`DeepSetEmbedding` standardised on padded: (M, n_max, d + 1).

    The flow does not z-score its (already standardised, padded) input. ``embedding_options``
    go to :class:`DeepSetEmbedding` (hidden, pooled, output_dim).
    """
    flow = replace(flow or NPE.default_flow, z_score_x="none")
    embedding = DeepSetEmbedding.from_padded(padded, **embedding_options)
    return NPE(prior, flow, training, embedding_net=embedding, device="cpu")


def set_sizes(n: int, n_max: int, rng: np.random.Generator, *, n_min: int = 1) -> np.ndarray:
    """n set sizes drawn log-uniformly between n_min and n_max (integers), so small and large sets are both common."""
    if not 1 <= n_min <= n_max:
        raise ValueError(f"set sizes: expected 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    u = rng.uniform(math.log(n_min), math.log(n_max + 1), size=int(n))
    return np.minimum(np.floor(np.exp(u)).astype(np.int64), n_max)
