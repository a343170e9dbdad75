"""Neural posterior estimation: a conditional density q(theta | x) trained on simulations.

Example::

    npe = NPE(prior).fit(theta, t, rng)         # theta: (N, D), t: (N, d) summaries
    samples = npe.sample(1000, t_obs, rng)      # t_obs: (d,) -> (1000, D); (M, d) -> (M, 1000, D)
    npe.log_prob(theta, t_obs)                  # (N,)
    samples, log_q = npe.sample_and_log_prob(1000, t_obs_many, rng)   # (M, 1000, D), (M, 1000)

Samples outside the prior support are rejected (the flow's support is unbounded); sampling
is vectorised over many observations at once. Flows built by sbi on nflows are sampled with
:class:`~cosmosbi.estimators.networks.FlowSampler`, which evaluates the observation-dependent
part of the network once per observation and returns each draw's log-density from the same
pass; other networks (mixture density networks) use their own ``sample`` and ``log_prob``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cosmosbi.estimators.network_estimator import NetworkEstimator
from cosmosbi.estimators.networks import FlowSampler
from cosmosbi.torch_runtime import seeded_torch

__all__ = ["NPE", "rejection_sample"]


def rejection_sample(
    draw,
    in_support,
    n: int,
    n_obs: int,
    dim: int,
    *,
    max_draws: int = 1_000_000,
    with_log_prob: bool = False,
):
    """Draw n samples per observation, keeping only those in the support.

    Only the observations that still lack samples are proposed for, so one observation whose
    estimate leaks out of the support does not slow down the others. The first round proposes
    exactly n per observation (nothing is wasted when everything is accepted). Each later round
    proposes, per observation, the expected number of draws still needed at its observed
    acceptance rate plus three binomial standard deviations; observations needing similar
    numbers (within a factor 1.25) are proposed for together.

    Args:
        draw: (k, idx) -> (k, len(idx), D) tensor of proposals for the observations ``idx``;
            with ``with_log_prob``, a pair (proposals, (k, len(idx)) log-densities).
        in_support: (k, m, D) -> (k, m) bool tensor.
        n: samples wanted per observation; n_obs: M; dim: D.
        max_draws: give up (``RuntimeError``) after this many proposals for one observation.
        with_log_prob: also return the log-density of each kept sample.

    Returns:
        (M, n, D) float64 array; with ``with_log_prob``, also the (M, n) float64 log-densities.
    """
    out = np.empty((n_obs, n, dim))
    out_lp = np.empty((n_obs, n)) if with_log_prob else None
    have = np.zeros(n_obs, dtype=np.int64)
    drawn = np.zeros(n_obs, dtype=np.int64)
    accepted_total = np.zeros(n_obs, dtype=np.int64)

    def propose(idx: np.ndarray, k: int) -> None:
        result = draw(k, idx)
        proposals, log_probs = result if with_log_prob else (result, None)
        ok = in_support(proposals).cpu().numpy()
        proposals = proposals.detach().cpu().numpy()
        if with_log_prob:
            log_probs = log_probs.detach().cpu().numpy()
        drawn[idx] += k
        accepted = ok.sum(0)
        accepted_total[idx] += accepted
        if k == n and np.all(have[idx] == 0) and ok.all():  # every draw kept: copy as a block
            out[idx] = proposals.transpose(1, 0, 2)
            if with_log_prob:
                out_lp[idx] = log_probs.T
        else:
            rank = np.cumsum(ok, axis=0) - 1 + have[idx][None, :]  # (k, m) slot of each accepted proposal
            i, m = np.nonzero(ok & (rank < n))
            out[idx[m], rank[i, m]] = proposals[i, m]
            if with_log_prob:
                out_lp[idx[m], rank[i, m]] = log_probs[i, m]
        have[idx] = np.minimum(have[idx] + accepted, n)

    while True:
        idx = np.nonzero(have < n)[0]
        if idx.size == 0:
            return (out, out_lp) if with_log_prob else out
        if drawn[idx].max() >= max_draws:
            worst = idx[np.argmax(drawn[idx])]
            raise RuntimeError(
                f"rejection sampling: observation {worst} kept {have[worst]} of {n} samples "
                f"after {drawn[worst]} draws; "
                "the estimate puts almost no mass inside the prior support "
                "(is the observation unlike the training data?)"
            )
        missing = n - have[idx]
        # acceptance estimate (a + 1) / (k + 2) after k draws with a accepted; 1 before any draw
        acceptance = np.where(drawn[idx] == 0, 1.0, (accepted_total[idx] + 1) / (drawn[idx] + 2))
        needed = np.ceil(missing / acceptance + 3 * np.sqrt(missing * (1 - acceptance)) / acceptance)
        group = np.floor(np.log(needed) / np.log(1.25)).astype(np.int64)
        for g in np.unique(group):
            members = idx[group == g]
            k = int(min(needed[group == g].max(), 200_000, max(64, 2_000_000 // len(members))))
            propose(members, max(k, 1))


class NPE(NetworkEstimator):
    """Neural posterior estimator q(theta | x) on sbi flows (MAF, NSF) or mixture density networks.

    Args:
        prior: the prior the training parameters were drawn from.
        flow: architecture (default :class:`FlowConfig`: a 3-transform NSF of 50 units, 10 bins).
        training: optimiser settings (default :class:`TrainingConfig`).
        embedding_net: a torch module applied to x before the flow and trained jointly with it
            (e.g. a compressor CNN); None to use x (summaries from a frozen compressor) as is.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """

    kind = "npe"

    def _net_log_prob(self, theta_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """log q(theta | x) for rows theta_t: (N, D), x_t: (N, ...). Returns (N,)."""
        return self._require_network().log_prob(theta_t[None], x_t)[0]

    def _flow_sampler(self) -> FlowSampler | None:
        """The fast batched sampler of this estimator's flow, or None when the network is of another kind."""
        if self.network is None or not FlowSampler.supports(self.network):
            return None
        return FlowSampler(self.network)

    def _net_sample(self, k: int, x_t: torch.Tensor) -> torch.Tensor:
        """k draws for each of x_t: (M, ...). Returns (k, M, D)."""
        sampler = self._flow_sampler()
        if sampler is not None:
            return sampler.sample_and_log_prob(k, x_t)[0]
        return self._require_network().sample(torch.Size([k]), condition=x_t)

    def _net_sample_and_log_prob(self, k: int, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k draws for each of x_t: (M, ...) and their log q(theta | x). Returns (k, M, D) and (k, M)."""
        sampler = self._flow_sampler()
        if sampler is not None:
            return sampler.sample_and_log_prob(k, x_t)
        samples = self._net_sample(k, x_t)
        m = len(x_t)
        repeated = x_t.expand(k, *x_t.shape).reshape(k * m, *x_t.shape[1:])
        return samples, self._net_log_prob(samples.reshape(k * m, -1), repeated).reshape(k, m)

    @torch.no_grad()
    def log_prob(self, theta, x) -> np.ndarray:
        """log q(theta | x) for theta: (N, D) and x: (N, ...) or one x. Returns (N,).

        -inf outside the prior support. The density is that of the network restricted to the
        support, not renormalised by the mass it places inside it.
        """
        theta_t, x_t = self._pairs(theta, x)
        with self._threads():
            value = self._net_log_prob(theta_t, x_t)
        value = torch.where(self._in_support(theta_t), value, torch.full_like(value, -math.inf))
        return value.double().cpu().numpy()

    @torch.no_grad()
    def sample(self, n: int, x, rng: np.random.Generator, *, batch_obs: int = 1024) -> np.ndarray:
        """Posterior samples inside the prior support.

        Args:
            n: samples per observation.
            x: one observation (d,) or M observations (M, d) (or (M, *x_shape)).
            rng: numpy Generator (seeds the network's sampling).
            batch_obs: observations sampled together per network call.

        Returns:
            (n, D) for one observation, (M, n, D) for M observations.
        """
        return self._sample(n, x, rng, batch_obs, with_log_prob=False)

    @torch.no_grad()
    def sample_and_log_prob(
        self, n: int, x, rng: np.random.Generator, *, batch_obs: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior samples inside the prior support and their log q(theta | x), from one pass of the flow.

        The log-densities are those :meth:`log_prob` gives for the same (theta, x) (up to
        float32 rounding), without a second pass through the network.

        Returns:
            samples (n, D) and log-densities (n,) for one observation; (M, n, D) and (M, n)
            for M observations.
        """
        return self._sample(n, x, rng, batch_obs, with_log_prob=True)

    def _sample(self, n: int, x, rng: np.random.Generator, batch_obs: int, with_log_prob: bool):
        if int(n) < 0:
            raise ValueError(f"n: expected a non-negative number of samples, got {n}")
        if int(batch_obs) < 1:
            raise ValueError(f"batch_obs: expected a positive integer, got {batch_obs}")
        x_t, single = self._batch_x(x)
        sampler = self._flow_sampler()  # made once for all rounds and chunks
        if sampler is not None:
            draw = (
                sampler.sample_and_log_prob
                if with_log_prob
                else (lambda k, x_chunk: sampler.sample_and_log_prob(k, x_chunk)[0])
            )
        else:
            draw = self._net_sample_and_log_prob if with_log_prob else self._net_sample
        parts = []
        with seeded_torch(rng), self._threads():
            for start in range(0, len(x_t), batch_obs):
                chunk = x_t[start : start + batch_obs]
                parts.append(
                    rejection_sample(
                        lambda k, idx: draw(k, chunk[idx]),
                        self._in_support,
                        int(n),
                        len(chunk),
                        self.prior.dim,
                        with_log_prob=with_log_prob,
                    )
                )
        dim = self.prior.dim
        if with_log_prob:
            samples = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, int(n), dim))
            log_probs = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, int(n)))
            return (samples[0], log_probs[0]) if single else (samples, log_probs)
        out = np.concatenate(parts) if parts else np.empty((0, int(n), dim))
        return out[0] if single else out
