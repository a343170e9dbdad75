"""Sequential inference for one observation: rounds of simulations focused on its posterior.

Two methods share one round loop:

- :func:`sequential_npe`, truncated sequential NPE (Deistler et al. 2022, TSNPE). Round 0
  simulates from the prior; round k > 0 from the prior restricted to the highest-probability
  region (HPR) of the current posterior estimate q(theta | x_obs), the region holding all but
  ``epsilon`` of its mass. Because every proposal is the prior up to a truncation that
  contains the posterior's support, an NPE trained with the ordinary loss on all rounds
  together estimates the posterior at x_obs without any correction. The estimate is only
  valid for x_obs (and observations whose posterior lies inside the truncated region).
- :func:`sequential_nle`, sequential NLE (Papamakarios et al. 2019). Round k > 0 simulates
  at MCMC draws from the current posterior q(x_obs | theta) p(theta); the likelihood
  q(x | theta) needs no correction for the proposal, so NLE is retrained on all rounds.

Each round's simulations are an ordinary dataset written by
:func:`~cosmosbi.simulators.runner.run_simulations` in ``out_dir/round-K/``, and each
round's proposal parameters are saved (``out_dir/proposals/round-K.npy``, described in
``round-K.json``) before it is simulated, so a killed run resumes: finished rounds are read
back, a partly simulated round simulates only its missing rows, and a round whose
successor's proposal is already saved is not retrained. ``out_dir/rounds.json`` records the
observation and what each round did.

Example::

    result = sequential_npe(simulator, t_obs, "run/sims", seed=1, rounds=4,
                            simulations_per_round=1000, summarize=lambda out: my_summaries(out["field"]))
    samples = result.estimator.sample(2000, t_obs, rng)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmosbi.estimators.networks import FlowConfig, TrainingConfig
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.npe import NPE
from cosmosbi.files import atomic_path, atomic_write_json, read_json
from cosmosbi.simulators.base import as_simulator
from cosmosbi.simulators.priors import Prior
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset

__all__ = [
    "SequentialResult",
    "highest_probability_threshold",
    "sequential_nle",
    "sequential_npe",
    "truncated_prior_sample",
]

ROUNDS_FILE = "rounds.json"


@dataclass
class SequentialResult:
    """What a sequential run produced.

    Attributes:
        estimator: the NPE or NLE trained on all rounds (valid for ``x_obs``).
        x_obs: (d,) the observation the posterior is for.
        rounds: one record per round: ``round``, ``simulations``, ``proposal``, ``path``,
            ``trained`` (whether this call trained after the round) and, for truncated
            rounds, ``acceptance`` (fraction of prior draws inside the HPR: the truncated
            region's prior mass).
        theta: (N, D) parameters of all rounds' simulations; x: (N, d) their summaries.
    """

    estimator: NPE | NLE
    x_obs: np.ndarray
    rounds: list[dict] = field(default_factory=list)
    theta: np.ndarray | None = None
    x: np.ndarray | None = None


def highest_probability_threshold(log_q: np.ndarray, epsilon: float) -> float:
    """The log-density above which a density holds 1 - epsilon of its mass.

    Args:
        log_q: (L,) log-densities of L draws from that density.
        epsilon: excluded mass, in [0, 1).
    """
    log_q = np.asarray(log_q, dtype=float).ravel()
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon: expected a mass in [0, 1), got {epsilon!r}")
    if log_q.size == 0 or not np.all(np.isfinite(log_q)):
        raise ValueError("log_q: expected finite log-densities of at least one draw")
    return float(np.quantile(log_q, epsilon))


def truncated_prior_sample(
    npe: NPE,
    x_obs: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    epsilon: float = 1e-4,
    n_reference: int = 10_000,
    margin: float = 0.1,
    max_draws: int = 50_000_000,
) -> tuple[np.ndarray, float]:
    """Draw n parameters from the prior restricted to the HPR of q(theta | x_obs).

    The HPR is {theta: log q(theta | x_obs) >= the epsilon-quantile of log q over
    ``n_reference`` posterior draws}. Prior draws outside the bounding box of those draws
    (widened by ``margin`` of its width on each side) are rejected without evaluating the
    network; the others are kept when they lie in the HPR.

    Args:
        npe: a trained NPE.
        x_obs: (d,) the observation.
        n: draws wanted.
        rng: numpy Generator.
        epsilon: posterior mass outside the region.
        n_reference: posterior draws that fix the threshold and the box.
        margin: widening of the bounding box, as a fraction of its width per side.
        max_draws: give up (``RuntimeError``) after this many prior draws.

    Returns:
        theta: (n, D) and the acceptance fraction (the prior mass of the region).
    """
    prior = npe.prior
    reference, log_q = npe.sample_and_log_prob(int(n_reference), x_obs, rng)
    threshold = highest_probability_threshold(log_q, epsilon)
    width = reference.max(0) - reference.min(0)
    low = np.maximum(reference.min(0) - margin * width, prior.low)
    high = np.minimum(reference.max(0) + margin * width, prior.high)
    kept: list[np.ndarray] = []
    n_kept = drawn = 0
    batch = max(10_000, 4 * int(n))
    while n_kept < n:
        if drawn >= max_draws:
            raise RuntimeError(
                f"truncated prior: {n_kept} of {n} draws inside the posterior's region after {drawn} prior draws; "
                "the posterior estimate puts its mass on a region of negligible prior mass"
            )
        theta = prior.sample(batch, rng)
        drawn += batch
        theta = theta[np.all((theta >= low) & (theta <= high), axis=1)]
        if len(theta):
            theta = theta[npe.log_prob(theta, x_obs) >= threshold]
            kept.append(theta)
            n_kept += len(theta)
    return np.concatenate(kept)[:n], n_kept / drawn


def sequential_npe(
    simulator,
    x_obs: np.ndarray,
    out_dir: str | Path,
    seed: int,
    *,
    rounds: int = 4,
    simulations_per_round: int | Sequence[int] = 1000,
    summarize: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    prior: Prior | None = None,
    flow: FlowConfig | None = None,
    training: TrainingConfig | None = None,
    epsilon: float = 1e-4,
    batch_size: int = 256,
) -> SequentialResult:
    """Truncated sequential NPE for the observation x_obs (see the module docstring).

    Args:
        simulator: a simulator or ``f(theta, rng)`` function (then ``prior`` is required).
        x_obs: (d,) the observation, in the form the estimator sees (the output of
            ``summarize`` for one simulation).
        out_dir: directory of the rounds' datasets (``round-K/``), proposals and record.
        seed: root seed (non-negative integer); round K simulates with seed derived from (seed, K).
        rounds: number of rounds (1 is amortised NPE on prior simulations).
        simulations_per_round: one count for every round, or a count per round.
        summarize: maps a dataset's outputs {name: (N, ...)} to the estimator's input (N, d);
            default: the single output as is, flattened to (N, d).
        prior: prior of the parameters (default: the simulator's).
        flow, training: NPE architecture and optimiser settings.
        epsilon: posterior mass left outside each truncated region.
        batch_size: simulations per simulator call and part file.

    Returns:
        :class:`SequentialResult` with the NPE trained on all rounds.
    """

    def make(p):
        return NPE(p, flow, training, device="cpu")

    def propose(npe, n, rng):
        theta, acceptance = truncated_prior_sample(npe, x_obs, n, rng, epsilon=epsilon)
        return theta, {"proposal": "truncated prior", "epsilon": epsilon, "acceptance": acceptance}

    return _run_rounds(
        simulator,
        x_obs,
        out_dir,
        seed,
        rounds,
        simulations_per_round,
        summarize,
        prior,
        make,
        propose,
        batch_size,
        "npe",
    )


def sequential_nle(
    simulator,
    x_obs: np.ndarray,
    out_dir: str | Path,
    seed: int,
    *,
    rounds: int = 4,
    simulations_per_round: int | Sequence[int] = 1000,
    summarize: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    prior: Prior | None = None,
    flow: FlowConfig | None = None,
    training: TrainingConfig | None = None,
    batch_size: int = 256,
    **mcmc_options,
) -> SequentialResult:
    """Sequential NLE for the observation x_obs: round K > 0 simulates at emcee draws of the posterior.

    Arguments as for :func:`sequential_npe`; ``mcmc_options`` go to :meth:`NLE.sample`
    (emcee). Sample the final posterior with ``result.estimator.sample(n, x_obs, rng)``.
    """

    def make(p):
        return NLE(p, flow, training, device="cpu")

    def propose(nle, n, rng):
        theta = nle.sample(n, x_obs, rng, **mcmc_options)
        return theta, {"proposal": "posterior (emcee)", "mcmc": nle.mcmc_reports[0]}

    return _run_rounds(
        simulator,
        x_obs,
        out_dir,
        seed,
        rounds,
        simulations_per_round,
        summarize,
        prior,
        make,
        propose,
        batch_size,
        "nle",
    )


def _round_counts(rounds: int, simulations_per_round) -> list[int]:
    if not isinstance(rounds, (int, np.integer)) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds: expected a positive integer, got {rounds!r}")
    counts = [simulations_per_round] * rounds if np.ndim(simulations_per_round) == 0 else list(simulations_per_round)
    if len(counts) != rounds:
        raise ValueError(
            f"simulations_per_round: expected one count or {rounds} counts (one per round), got {len(counts)}"
        )
    for k, count in enumerate(counts):
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 10:
            raise ValueError(f"simulations_per_round[{k}]: expected an integer >= 10, got {count!r}")
    return [int(c) for c in counts]


def _round_seeds(seed: int, k: int) -> tuple[int, np.random.Generator, np.random.Generator]:
    """(simulation seed, proposal rng, training rng) of round k."""
    sim_seq, proposal_seq, train_seq = np.random.SeedSequence([seed, k]).spawn(3)
    return int(sim_seq.generate_state(1)[0]), np.random.default_rng(proposal_seq), np.random.default_rng(train_seq)


def _read_round(path: Path, summarize) -> tuple[np.ndarray, np.ndarray]:
    dataset = SimulationDataset(path)
    outputs = {name: dataset.read(name) for name in dataset.output_names}
    if summarize is not None:
        x = np.asarray(summarize(outputs))
    elif len(outputs) == 1:
        x = next(iter(outputs.values()))
        x = x.reshape(len(x), -1)
    else:
        raise ValueError(
            f"{path}: the dataset holds outputs {sorted(outputs)}; give summarize to map them to the estimator's input"
        )
    if x.ndim != 2 or len(x) != len(dataset.theta):
        raise ValueError(
            f"summarize: expected an array (N, d) with N = {len(dataset.theta)} rows for {path}, got shape {x.shape}"
        )
    return dataset.theta, x.astype(np.float32)


def _save_proposal(path: Path, theta: np.ndarray, details: dict) -> None:
    """Write the round's parameters (path, .npy) after their description (same name, .json)."""
    atomic_write_json(path.with_suffix(".json"), details)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, theta)


def _run_rounds(
    simulator, x_obs, out_dir, seed, rounds, simulations_per_round, summarize, prior, make, propose, batch_size, method
) -> SequentialResult:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    counts = _round_counts(rounds, simulations_per_round)
    simulator = as_simulator(simulator) if prior is None else as_simulator(simulator, prior=prior)
    prior = prior or simulator.prior
    x_obs = np.asarray(x_obs, dtype=np.float32)
    if x_obs.ndim != 1 or not np.all(np.isfinite(x_obs)):
        raise ValueError(f"x_obs: expected one finite observation (d,), got shape {x_obs.shape}")
    out_dir = Path(out_dir)
    proposals = out_dir / "proposals"
    record = {"method": method, "x_obs": x_obs.tolist(), "seed": int(seed), "rounds": []}
    thetas: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    estimator = None
    for k, count in enumerate(counts):
        sim_seed, proposal_rng, train_rng = _round_seeds(int(seed), k)
        info = {"round": k, "simulations": count, "path": f"round-{k}"}
        theta = None
        if k == 0:
            info["proposal"] = "prior"
        else:
            proposal_path = proposals / f"round-{k}.npy"
            if proposal_path.is_file():
                theta = np.load(proposal_path, allow_pickle=False)
                if theta.shape != (count, prior.dim):
                    raise ValueError(
                        f"{proposal_path}: holds parameters of shape {theta.shape}, expected ({count}, {prior.dim}); "
                        "use a new out_dir"
                    )
                details_path = proposal_path.with_suffix(".json")
                info.update(read_json(details_path) if details_path.is_file() else {"proposal": "saved"})
                info["resumed"] = True
            else:  # the previous round trained the estimator, since this proposal was not saved
                theta, details = propose(estimator, count, proposal_rng)
                _save_proposal(proposal_path, theta, details)
                info.update(details)
        run_simulations(
            simulator,
            count,
            out_dir / f"round-{k}",
            sim_seed,
            theta=theta,
            prior=prior,
            batch_size=batch_size,
            progress=False,
        )
        theta_k, x_k = _read_round(out_dir / f"round-{k}", summarize)
        if x_k.shape[1:] != x_obs.shape:
            raise ValueError(f"x_obs has shape {x_obs.shape} but the summaries of round {k} have shape {x_k.shape[1:]}")
        thetas.append(theta_k)
        xs.append(x_k)
        last = k == len(counts) - 1
        info["trained"] = last or not (proposals / f"round-{k + 1}.npy").is_file()
        estimator = make(prior).fit(np.concatenate(thetas), np.concatenate(xs), train_rng) if info["trained"] else None
        record["rounds"].append(info)
        atomic_write_json(out_dir / ROUNDS_FILE, record)
    return SequentialResult(estimator, x_obs, record["rounds"], np.concatenate(thetas), np.concatenate(xs))
