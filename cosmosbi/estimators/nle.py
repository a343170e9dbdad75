"""Neural likelihood estimation: a conditional density q(x | theta), sampled with MCMC.

Example::

    nle = NLE(prior).fit(theta, t, rng)
    samples = nle.sample(1000, t_obs, rng)                 # (n, D), emcee; (M, n, D), batched for M > 1
    samples = nle.sample(1000, t_obs, rng, method="sbi")   # sbi's vectorised slice sampler
    nle.mcmc_reports                                       # burn-in, thinning, tau per observation

The posterior density is q(x | theta) p(theta) up to a constant (:meth:`NLE.log_prob`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cosmosbi.estimators.mcmc import MCMCResult, sample_emcee, sample_stretch_batched
from cosmosbi.estimators.network_estimator import NetworkEstimator, as_tensor
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.torch_runtime import seeded_torch

__all__ = ["NLE", "sample_posterior_emcee"]


def sample_posterior_emcee(
    log_posterior,
    prior,
    n: int,
    rng: np.random.Generator,
    *,
    n_candidates: int = 2000,
    **emcee_options,
) -> MCMCResult:
    """Sample a posterior with emcee, starting near the best of ``n_candidates`` prior draws.

    Args:
        log_posterior: vectorised theta: (W, D) -> (W,), -inf outside the support.
        prior: cosmosbi Prior (for the starting candidates).
        n: samples wanted.
        rng: numpy Generator.
        emcee_options: passed to :func:`~cosmosbi.estimators.mcmc.sample_emcee`.
    """
    candidates = prior.sample(n_candidates, rng)
    values = log_posterior(candidates)
    if not np.isfinite(values).any():
        raise ValueError("log-posterior is -inf at every starting candidate drawn from the prior")
    order = np.argsort(values)[::-1]
    x0 = candidates[order[0]]
    top = candidates[order[: max(10, prior.dim + 2)]]
    scale = np.clip(0.1 * top.std(0), 1e-6, None)
    return sample_emcee(log_posterior, x0, n, rng, scale=scale, **emcee_options)


class NLE(NetworkEstimator):
    """Neural likelihood estimator q(x | theta) with emcee or sbi MCMC posterior sampling.

    Args: as for :class:`~cosmosbi.estimators.npe.NPE` (no embedding net: NLE models the
    density of the summaries themselves). The default architecture is a 5-transform MAF of
    50 units with patience 10 (the density of several summaries given theta needs more
    capacity than the posterior of a few parameters), trained with batches of 512 at learning
    rate 3e-3.
    """

    kind = "nle"
    default_flow = FlowConfig(model="maf", hidden_features=50, num_transforms=5)
    default_training = TrainingConfig(stop_after_epochs=10)

    def __init__(self, prior, flow=None, training=None, *, device: str = "auto"):
        super().__init__(prior, flow, training, device=device)
        self.mcmc_reports: list[dict] = []

    def _net_log_prob(self, theta_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """log q(x | theta) for rows theta_t: (N, D), x_t: (N, d). Returns (N,)."""
        return self._require_network().log_prob(x_t[None], theta_t)[0]

    @torch.no_grad()
    def log_likelihood(self, theta, x) -> np.ndarray:
        """log q(x | theta) for theta: (N, D) and x: (N, d) or one x. Returns (N,)."""
        theta_t, x_t = self._pairs(theta, x)
        with self._threads():
            return self._net_log_prob(theta_t, x_t).double().cpu().numpy()

    def log_prob(self, theta, x) -> np.ndarray:
        """Unnormalised log posterior log q(x | theta) + log p(theta). Returns (N,); -inf outside the prior."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        lp = self.prior.log_prob(theta)
        out = np.full(len(theta), -math.inf)
        ok = np.isfinite(lp)
        if ok.any():
            x_arr = np.asarray(x)
            x_rows = x_arr if x_arr.shape == tuple(self.x_shape) else x_arr[ok]  # one x, or one per theta
            out[ok] = lp[ok] + self.log_likelihood(theta[ok], x_rows)
        return out

    def sample(self, n: int, x, rng: np.random.Generator, *, method: str = "auto", **options) -> np.ndarray:
        """Posterior samples by MCMC, one chain ensemble per observation.

        Args:
            n: samples per observation.
            x: one observation (d,) or M observations (M, d).
            rng: numpy Generator.
            method: ``"auto"`` (the default: ``"batched"`` for more than one observation,
                ``"emcee"`` for one), ``"emcee"`` (emcee's affine-invariant ensemble, one run per observation;
                burn-in and thinning from the autocorrelation time), ``"batched"`` (the same
                stretch move run for all observations in lock-step, one network call per step
                for every walker of every observation: for many observations), or ``"sbi"``
                (sbi's vectorised slice sampler).
            options: passed to :func:`~cosmosbi.estimators.mcmc.sample_emcee` (emcee),
                :func:`~cosmosbi.estimators.mcmc.sample_stretch_batched` (batched) or to
                ``sbi``'s ``MCMCPosterior`` (sbi: e.g. ``num_chains``, ``warmup_steps``, ``thin``).

        Returns:
            (n, D) for one observation, (M, n, D) for M observations. The diagnostics of each
            run (burn-in, thinning, autocorrelation time, acceptance) are in ``mcmc_reports``.
        """
        x_t, single = self._batch_x(x)
        x_np = x_t.cpu().numpy()
        self.mcmc_reports = []
        if method == "auto":
            method = "batched" if len(x_np) > 1 else "emcee"
        if method == "batched":
            samples = self._sample_batched(int(n), x_np, rng, **options)
            return samples[0] if single else samples
        out = []
        for row in x_np:
            if method == "emcee":
                result = sample_posterior_emcee(lambda th: self.log_prob(th, row), self.prior, int(n), rng, **options)
                out.append(result.samples)
                self.mcmc_reports.append(_report("emcee", result))
            elif method == "sbi":
                out.append(self._sample_sbi(int(n), row, rng, **options))
            else:
                raise ValueError(f"method: expected 'auto', 'emcee', 'batched' or 'sbi', got {method!r}")
        samples = np.stack(out)
        return samples[0] if single else samples

    def _batched_log_prob(self, theta: np.ndarray, x_np: np.ndarray) -> np.ndarray:
        """Log posterior of theta: (M, K, D) given x_np: (M, d), row m with x_np[m]. Returns (M, K)."""
        m_obs, k, dim = theta.shape
        flat = theta.reshape(-1, dim)
        return self.log_prob(flat, np.repeat(x_np, k, axis=0)).reshape(m_obs, k)

    def _sample_batched(
        self, n: int, x_np: np.ndarray, rng: np.random.Generator, *, n_candidates: int = 500, **options
    ) -> np.ndarray:
        candidates = self.prior.sample(n_candidates, rng)
        values = np.concatenate(
            [
                self._batched_log_prob(np.broadcast_to(candidates, (len(chunk), *candidates.shape)).copy(), chunk)
                for chunk in np.array_split(x_np, max(1, len(x_np) // 64))
            ]
        )  # (M, C)
        order = np.argsort(values, axis=1)[:, ::-1]
        x0 = candidates[order[:, 0]]
        top = candidates[order[:, : max(10, self.prior.dim + 2)]]  # (M, T, D)
        scale = np.clip(0.1 * top.std(axis=1), 1e-6, None)
        results = sample_stretch_batched(
            lambda th: self._batched_log_prob(th, x_np), x0, n, rng, scale=scale, **options
        )
        self.mcmc_reports = [_report("batched-stretch", r) for r in results]
        return np.stack([r.samples for r in results])

    def _sample_sbi(
        self,
        n: int,
        x_row: np.ndarray,
        rng: np.random.Generator,
        *,
        num_chains: int = 20,
        warmup_steps: int = 100,
        thin: int = 5,
    ) -> np.ndarray:
        from sbi.inference.posteriors import MCMCPosterior

        estimator = self
        x_o = as_tensor(x_row, self.device)[None]

        def potential(theta, x_o):
            with torch.no_grad():
                value = estimator.log_prob(theta.detach().cpu().double().numpy(), x_o[0].cpu().numpy())
            return torch.as_tensor(value, dtype=torch.float32)

        prior_t = self.prior.to_torch(self.device)
        posterior = MCMCPosterior(
            potential,
            proposal=prior_t,
            method="slice_np_vectorized",
            num_chains=num_chains,
            warmup_steps=warmup_steps,
            thin=thin,
        )
        with seeded_torch(rng):
            samples = posterior.sample((n,), x=x_o, show_progress_bars=False)
        self.mcmc_reports.append(
            {"method": "sbi-slice_np_vectorized", "num_chains": num_chains, "warmup_steps": warmup_steps, "thin": thin}
        )
        return samples.double().cpu().numpy()


def _report(method: str, result: MCMCResult) -> dict:
    return {
        "method": method,
        "burn_in": result.burn_in,
        "thin": result.thin,
        "autocorr_time": result.autocorr_time.tolist(),
        "acceptance": result.acceptance,
        "n_steps": result.n_steps,
        "converged": result.converged,
    }
