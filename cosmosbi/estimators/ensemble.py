"""Ensembles of neural estimators combined as a weighted mixture.

K members are trained with different seeds (and optionally different architectures) on the
same simulations, minus a held-out set shared by all. The mixture weights maximise the
held-out log-likelihood of the mixture, sum_i log sum_k w_k q_k(i) ("stacking", solved by EM
on the simplex), so a poor member gets a small weight and members that are equally good share
the weight; ``weighting="uniform"`` gives 1/K each.

The ensemble is used as one estimator: ``NPEEnsemble.sample`` / ``log_prob`` and
``NLEEnsemble.sample`` / ``log_likelihood`` / ``log_prob`` behave as for
:class:`~cosmosbi.estimators.npe.NPE` and :class:`~cosmosbi.estimators.nle.NLE`, with
log q = log sum_k w_k q_k.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.npe import NPE

__all__ = ["NPEEnsemble", "NLEEnsemble", "fit_ensemble", "stacking_weights"]


def stacking_weights(log_probs: np.ndarray, n_iter: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """Mixture weights maximising sum_i log sum_k w_k exp(log_probs[k, i]).

    Args:
        log_probs: (K, N) held-out log-densities of each member.

    Returns:
        (K,) non-negative weights summing to one.
    """
    log_probs = np.asarray(log_probs, dtype=float)
    if log_probs.ndim != 2 or len(log_probs) == 0:
        raise ValueError(f"log_probs must have shape (K, N), got {log_probs.shape}")
    log_probs = np.where(np.isfinite(log_probs), log_probs, -1e30)
    k = len(log_probs)
    w = np.full(k, 1.0 / k)
    previous = -np.inf
    for _ in range(n_iter):
        joint = np.log(np.maximum(w, 1e-300))[:, None] + log_probs
        total = np.logaddexp.reduce(joint, axis=0)
        objective = float(total.mean())
        w = np.exp(joint - total).mean(axis=1)
        w /= w.sum()
        if objective - previous < tol:
            break
        previous = objective
    return w


class _Mixture:
    """Mixture of member networks: log q = logsumexp_k (log w_k + log q_k)."""

    members: list
    weights: np.ndarray

    def _setup(self, members: Sequence, weights) -> None:
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        kinds = {m.kind for m in members}
        if kinds != {self.kind}:
            raise TypeError(
                f"{type(self).__name__}: every member must be a trained {self.kind.upper()}, got kinds {sorted(kinds)}"
            )
        shapes = {m.x_shape for m in members}
        if len(shapes) != 1 or None in shapes:
            raise ValueError(f"members must be trained on data of one shape, got {sorted(map(str, shapes))}")
        weights = np.full(len(members), 1.0 / len(members)) if weights is None else np.asarray(weights, dtype=float)
        if weights.shape != (len(members),) or np.any(weights < 0) or not weights.sum() > 0:
            raise ValueError(
                f"weights must be {len(members)} non-negative numbers with a positive sum, got {weights!r}"
            )
        self.members = members
        self.weights = weights / weights.sum()
        first = members[0]
        self.prior, self.device, self.x_shape = first.prior, first.device, first.x_shape
        self.flow, self.training, self.embedding_net = first.flow, first.training, None
        self.network, self.summary = None, None

    def _net_log_prob(self, theta_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        terms = [math.log(w) + m._net_log_prob(theta_t, x_t) for m, w in zip(self.members, self.weights) if w > 0]
        return torch.logsumexp(torch.stack(terms), dim=0)


class NPEEnsemble(_Mixture, NPE):
    """Weighted mixture of :class:`NPE` members; samples and log_prob as one NPE.

    Args:
        members: trained NPEs on the same data shape and prior.
        weights: (K,) mixture weights (default: uniform).
    """

    def __init__(self, members: Sequence[NPE], weights=None):
        self._setup(members, weights)

    def _net_sample(self, k: int, x_t: torch.Tensor) -> torch.Tensor:
        """k draws per observation: member counts ~ Multinomial(k, w), then shuffled. Returns (k, M, D)."""
        counts = torch.distributions.Multinomial(k, probs=torch.as_tensor(self.weights)).sample().long().tolist()
        parts = [m._net_sample(c, x_t) for m, c in zip(self.members, counts) if c > 0]
        draws = torch.cat(parts, dim=0)
        return draws[torch.randperm(k, device=draws.device)]


class NLEEnsemble(_Mixture, NLE):
    """Weighted mixture of :class:`NLE` likelihoods; sampled with MCMC as one NLE.

    Args:
        members: trained NLEs on the same data shape and prior.
        weights: (K,) mixture weights (default: uniform).
    """

    def __init__(self, members: Sequence[NLE], weights=None):
        self._setup(members, weights)
        self.mcmc_reports = []


def fit_ensemble(
    kind: str,
    prior,
    theta,
    x,
    rng: np.random.Generator,
    *,
    n_members: int = 5,
    flows: Sequence[FlowConfig] | None = None,
    training: TrainingConfig | None = None,
    holdout_fraction: float = 0.1,
    weighting: str = "stacking",
    device: str = "auto",
    embedding_nets: Sequence[torch.nn.Module] | None = None,
):
    """Train an ensemble of NPEs or NLEs with different seeds (and architectures).

    Args:
        kind: ``"npe"`` or ``"nle"``.
        prior: cosmosbi Prior.
        theta: (N, D) parameters; x: (N, ...) data or summaries.
        rng: numpy Generator; member k is seeded from it.
        n_members: K.
        flows: architectures, cycled over the members (default: the NPE / NLE default).
        training: optimiser settings shared by all members.
        holdout_fraction: fraction of simulations held out (from every member) to fit the weights.
        weighting: ``"stacking"`` (maximise the held-out mixture likelihood) or ``"uniform"``.
        device: torch device (``"auto"``: CUDA when available).
        embedding_nets: one fresh embedding network per member (NPE only).

    Returns:
        :class:`NPEEnsemble` or :class:`NLEEnsemble`; its ``holdout_log_prob`` holds the
        (K,) mean held-out log-density of each member.
    """
    if kind not in ("npe", "nle"):
        raise ValueError(f"kind: expected 'npe' or 'nle', got {kind!r}")
    if weighting not in ("stacking", "uniform"):
        raise ValueError(f"weighting: expected 'stacking' or 'uniform', got {weighting!r}")
    if n_members < 1:
        raise ValueError(f"n_members: expected a positive integer, got {n_members!r}")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction: expected a number in (0, 1), got {holdout_fraction!r}")
    if embedding_nets is not None and (kind != "npe" or len(embedding_nets) != n_members):
        raise ValueError("embedding_nets: give one network per member, and only for NPE")
    theta = np.asarray(theta, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    order = rng.permutation(len(theta))
    n_hold = max(1, int(round(holdout_fraction * len(theta))))
    hold, train = order[:n_hold], order[n_hold:]
    flows = list(flows) if flows else [None]  # None: the estimator class's default architecture
    members = []
    for k in range(n_members):
        member_rng = np.random.default_rng(rng.integers(2**62))
        if kind == "npe":
            member = NPE(
                prior,
                flows[k % len(flows)],
                training,
                embedding_net=embedding_nets[k] if embedding_nets else None,
                device=device,
            )
        else:
            member = NLE(prior, flows[k % len(flows)], training, device=device)
        members.append(member.fit(theta[train], x[train], member_rng))
    with torch.no_grad():
        log_probs = np.stack([_member_log_prob(m, theta[hold], x[hold]) for m in members])
    weights = stacking_weights(log_probs) if weighting == "stacking" else None
    ensemble = NPEEnsemble(members, weights) if kind == "npe" else NLEEnsemble(members, weights)
    ensemble.holdout_log_prob = np.where(np.isfinite(log_probs), log_probs, np.nan).mean(axis=1)
    return ensemble


def _member_log_prob(member, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    theta_t, x_t = member._pairs(theta, x)
    return member._net_log_prob(theta_t, x_t).double().cpu().numpy()
