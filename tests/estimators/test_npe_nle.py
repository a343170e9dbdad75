"""NPE and NLE on the Gaussian-field reference problem, against the exact posterior."""

import numpy as np
import pytest
import torch

from cosmosbi.analyses.metrics import c2st, c2st_null_std
from cosmosbi.estimators import NLE, NPE, FlowConfig, TrainingConfig
from cosmosbi.estimators.baselines import exact_posterior_samples
from cosmosbi.estimators.npe import rejection_sample

# The acceptance criterion is C2ST <= 0.6 (at 10^4 simulations, 2000 samples: the slow tests).
# The fast tests compare 1000 samples, whose C2ST scatters by c2st_null_std(1000) more.
FAST_BOUND = 0.6 + 3 * c2st_null_std(1000)


@pytest.fixture(scope="module")
def npe(problem, small_data):
    theta, t = small_data
    return NPE(problem.prior, device="cpu").fit(theta, t, np.random.default_rng(2))


@pytest.fixture(scope="module")
def nle(problem, small_data):
    theta, t = small_data
    return NLE(problem.prior, device="cpu").fit(theta, t, np.random.default_rng(2))


def test_npe_matches_exact_posterior(npe, observation):
    _, t_obs, exact = observation
    samples = npe.sample(1000, t_obs, np.random.default_rng(3))
    assert samples.shape == (1000, 2)
    assert c2st(samples, exact, seed=0) <= FAST_BOUND


def test_nle_emcee_matches_exact_posterior_and_reports_chain(nle, observation):
    _, t_obs, exact = observation
    samples = nle.sample(1000, t_obs, np.random.default_rng(3))
    assert samples.shape == (1000, 2)
    assert c2st(samples, exact, seed=0) <= FAST_BOUND
    (report,) = nle.mcmc_reports
    assert report["method"] == "emcee" and report["burn_in"] > 0 and report["thin"] >= 1
    assert len(report["autocorr_time"]) == 2 and 0.2 < report["acceptance"] < 0.9
    assert report["n_steps"] >= report["burn_in"] + report["thin"] * (1000 // 32)


def test_nle_batched_sampling_over_many_observations(nle, observation, small_data):
    _, t_obs, exact = observation
    x = np.vstack([t_obs[None], small_data[1][:5]])
    samples = nle.sample(1000, x, np.random.default_rng(8), method="batched")
    assert samples.shape == (6, 1000, 2) and nle.prior.contains(samples.reshape(-1, 2)).all()
    assert len(nle.mcmc_reports) == 6 and all(r["burn_in"] > 0 for r in nle.mcmc_reports)
    assert c2st(samples[0], exact, seed=0) <= FAST_BOUND


def test_nle_sbi_slice_sampler_runs_inside_the_prior(nle, observation):
    _, t_obs, _ = observation
    a = nle.sample(20, t_obs, np.random.default_rng(4), method="sbi", num_chains=4, warmup_steps=10, thin=1)
    assert a.shape == (20, 2) and nle.prior.contains(a).all()
    assert nle.mcmc_reports[0]["method"].startswith("sbi")


@pytest.mark.slow
def test_nle_sbi_slice_sampler_agrees_with_emcee(nle, observation):
    _, t_obs, _ = observation
    a = nle.sample(300, t_obs, np.random.default_rng(4), method="sbi")
    b = nle.sample(1000, t_obs, np.random.default_rng(4))
    assert a.shape == (300, 2) and nle.prior.contains(a).all()
    # both sets are thinned to roughly independent draws: 5 standard errors of the mean difference
    se = b.std(0) * np.sqrt(1 / 300 + 1 / 1000)
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se), (a.mean(0), b.mean(0), se)


def test_npe_batched_sampling_is_vectorised_and_inside_prior(npe, problem, small_data):
    _, t = small_data
    x = t[:50]
    samples = npe.sample(200, x, np.random.default_rng(7))
    assert samples.shape == (50, 200, 2)
    assert problem.prior.contains(samples.reshape(-1, 2)).all()
    again = npe.sample(200, x, np.random.default_rng(7))
    np.testing.assert_array_equal(samples, again)
    # the posterior follows its observation: mean samples correlate with the true parameters
    theta = small_data[0][:50]
    assert np.corrcoef(samples.mean(1)[:, 1], theta[:, 1])[0, 1] > 0.8


def test_npe_log_prob_is_minus_inf_outside_support_and_batched(npe, small_data):
    theta, t = small_data
    lp = npe.log_prob(theta[:10], t[:10])
    assert lp.shape == (10,) and np.all(np.isfinite(lp))
    outside = np.array([[5.0, 2.0], [1.0, 0.0]])
    assert np.all(npe.log_prob(outside, t[0]) == -np.inf)


def test_nle_log_prob_is_likelihood_plus_prior(nle, small_data):
    theta, t = small_data
    lp = nle.log_prob(theta[:5], t[0])
    np.testing.assert_allclose(lp, nle.log_likelihood(theta[:5], t[0]) + nle.prior.log_prob(theta[:5]), rtol=1e-6)
    assert nle.log_prob(np.array([[9.0, 2.0]]), t[0])[0] == -np.inf


def test_rejection_sampler_keeps_only_supported_draws_with_the_right_law():
    gen = torch.Generator().manual_seed(0)

    def draw(k, idx):
        return torch.randn(k, len(idx), 1, generator=gen)

    out = rejection_sample(draw, lambda s: (s >= 0).all(-1), 4000, 3, 1)
    assert out.shape == (3, 4000, 1) and np.all(out >= 0)
    from scipy import stats

    # kept draws of N(0, 1) restricted to [0, inf) are half-normal
    assert stats.kstest(out[0, :, 0], stats.halfnorm.cdf).pvalue > 1e-3


def test_rejection_sampler_stops_proposing_for_finished_observations():
    calls = []

    def draw(k, idx):
        calls.append(len(idx))
        out = torch.ones(k, len(idx), 1)
        out[:, idx == 1] = -1.0  # observation 1 never lands in the support
        return out

    with pytest.raises(RuntimeError, match="observation 1 kept 0"):
        rejection_sample(draw, lambda s: (s >= 0).all(-1), 50, 2, 1, max_draws=10_000)
    assert calls[0] == 2 and calls[-1] == 1


def test_rejection_sampler_gives_up_on_an_empty_support():
    with pytest.raises(RuntimeError, match="no mass"):
        rejection_sample(
            lambda k, idx: torch.zeros(k, len(idx), 1),
            lambda s: torch.zeros(s.shape[:2], dtype=torch.bool),
            10,
            1,
            1,
            max_draws=1000,
        )


@pytest.mark.parametrize("model", ["maf", "nsf", "mdn"])
def test_each_architecture_trains_and_samples(model, problem, small_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    theta, t = small_data
    est = NPE(
        problem.prior,
        FlowConfig(model=model, hidden_features=16, num_transforms=2),
        TrainingConfig(max_epochs=2),
        device="cpu",
    )
    est.fit(theta[:500], t[:500], np.random.default_rng(0))
    assert est.summary.epochs == 2 and np.isfinite(est.summary.best_validation_loss)
    assert est.sample(20, t[:3], np.random.default_rng(0)).shape == (3, 20, 2)
    assert not any(tmp_path.iterdir())  # no TensorBoard logs (sbi's default tracker) left behind


def test_npe_trains_an_embedding_net_jointly_and_reloads_it(problem, tmp_path):
    from cosmosbi.estimators.io import load_estimator, save_estimator

    def make_embedding():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4))

    theta, fields = problem.simulate(300, np.random.default_rng(0))
    embedding = make_embedding()
    before = embedding[1].weight.detach().clone()
    est = NPE(problem.prior, training=TrainingConfig(max_epochs=2), embedding_net=embedding, device="cpu")
    est.fit(theta, fields, np.random.default_rng(0))
    assert not torch.equal(before, embedding[1].weight.detach())  # trained with the flow
    assert est.sample(5, fields[:2], np.random.default_rng(0)).shape == (2, 5, 2)
    save_estimator(est, tmp_path / "est")
    with pytest.raises(ValueError, match="embedding network"):
        load_estimator(tmp_path / "est")
    loaded = load_estimator(tmp_path / "est", embedding_net=make_embedding())
    np.testing.assert_array_equal(loaded.log_prob(theta[:20], fields[:20]), est.log_prob(theta[:20], fields[:20]))


def test_bad_inputs_raise_clear_errors(problem, npe, small_data):
    theta, t = small_data
    with pytest.raises(RuntimeError, match="not trained"):
        NPE(problem.prior).log_prob(theta[:2], t[:2])
    with pytest.raises(ValueError, match="theta must have shape"):
        NPE(problem.prior).fit(theta[:, :1], t, np.random.default_rng(0))
    with pytest.raises(ValueError, match="x must have shape"):
        npe.sample(10, t[0, :5], np.random.default_rng(0))
    with pytest.raises(ValueError, match="rows"):
        npe.log_prob(theta[:3], t[:4])
    with pytest.raises(ValueError, match="model"):
        FlowConfig(model="glow")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    with pytest.raises(TypeError, match="Prior"):
        NPE({"A": (0, 1)})
    with pytest.raises(ValueError, match="non-finite"):
        bad = t[:100].copy()
        bad[3, 0] = np.nan
        NPE(problem.prior).fit(theta[:100], bad, np.random.default_rng(0))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npe", "nle"])
def test_estimators_at_ten_thousand_simulations_pass_c2st(kind, problem):
    theta, fields = problem.simulate(10_000, np.random.default_rng(11))
    t = problem.summaries(fields)
    _, obs = problem.simulate(1, np.random.default_rng(12), np.array([[1.0, 2.0]]))
    exact = exact_posterior_samples(problem.simulator, obs[0], 2000, np.random.default_rng(13)).samples
    est = (NPE if kind == "npe" else NLE)(problem.prior, device="cpu").fit(theta, t, np.random.default_rng(14))
    samples = est.sample(2000, problem.summaries(obs)[0], np.random.default_rng(15))
    assert c2st(samples, exact, seed=0) <= 0.6
