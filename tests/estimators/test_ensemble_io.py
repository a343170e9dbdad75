"""Ensembles, save/load round trips, HDF5 samples and GetDist chains."""

import numpy as np
import pytest
from scipy import optimize

from cosmosbi.estimators import NLE, NPE, FlowConfig, TrainingConfig
from cosmosbi.estimators.ensemble import NLEEnsemble, NPEEnsemble, fit_ensemble, stacking_weights
from cosmosbi.estimators.io import (
    load_estimator,
    load_samples_hdf5,
    save_estimator,
    save_samples_hdf5,
    write_getdist_chain,
)

QUICK = TrainingConfig(max_epochs=3)
SMALL = FlowConfig(hidden_features=16, num_transforms=2)


@pytest.fixture(scope="module")
def npe_ensemble(problem, small_data):
    theta, t = small_data
    flows = [SMALL, FlowConfig(model="mdn", hidden_features=16, num_components=3)]
    return fit_ensemble(
        "npe",
        problem.prior,
        theta[:600],
        t[:600],
        np.random.default_rng(0),
        n_members=3,
        flows=flows,
        training=QUICK,
        device="cpu",
    )


def test_stacking_weights_maximise_the_heldout_mixture_likelihood():
    rng = np.random.default_rng(0)
    log_probs = rng.normal(size=(3, 200)) + np.array([[0.0], [0.5], [-3.0]])
    w = stacking_weights(log_probs)
    assert w.shape == (3,) and np.isclose(w.sum(), 1) and np.all(w >= 0)

    def objective(z):
        v = np.exp(z) / np.exp(z).sum()
        return -np.mean(np.logaddexp.reduce(np.log(v)[:, None] + log_probs, axis=0))

    best = optimize.minimize(
        objective, np.zeros(3), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}
    )
    assert objective(np.log(np.maximum(w, 1e-300))) <= best.fun + 1e-6
    # identical members share the weight equally
    np.testing.assert_allclose(stacking_weights(np.stack([log_probs[0]] * 4)), 0.25, atol=1e-12)


def test_ensemble_log_prob_is_the_weighted_mixture(npe_ensemble, small_data):
    theta, t = small_data
    assert isinstance(npe_ensemble, NPEEnsemble) and len(npe_ensemble.members) == 3
    assert np.isclose(npe_ensemble.weights.sum(), 1.0) and npe_ensemble.holdout_log_prob.shape == (3,)
    members = np.stack([m.log_prob(theta[:20], t[:20]) for m in npe_ensemble.members])
    expected = np.log(np.sum(npe_ensemble.weights[:, None] * np.exp(members), axis=0))
    np.testing.assert_allclose(npe_ensemble.log_prob(theta[:20], t[:20]), expected, rtol=1e-5, atol=1e-5)


def test_ensemble_samples_follow_the_mixture_weights(problem, small_data):
    theta, t = small_data
    members = [
        NPE(problem.prior, SMALL, QUICK, device="cpu").fit(theta[:400], t[:400], np.random.default_rng(k))
        for k in range(2)
    ]
    # a 0 / 1 weighting reproduces the chosen member's samples' distribution exactly
    only_second = NPEEnsemble(members, [0.0, 1.0])
    x = t[0]
    assert np.all(np.isfinite(only_second.log_prob(theta[:5], x)))
    np.testing.assert_allclose(only_second.log_prob(theta[:5], x), members[1].log_prob(theta[:5], x), rtol=1e-6)
    samples = NPEEnsemble(members, [0.3, 0.7]).sample(500, t[:4], np.random.default_rng(1))
    assert samples.shape == (4, 500, 2) and problem.prior.contains(samples.reshape(-1, 2)).all()


def test_nle_ensemble_mixes_likelihoods(problem, small_data):
    theta, t = small_data
    ens = fit_ensemble(
        "nle",
        problem.prior,
        theta[:400],
        t[:400],
        np.random.default_rng(3),
        n_members=2,
        flows=[SMALL],
        training=QUICK,
        weighting="uniform",
        device="cpu",
    )
    assert isinstance(ens, NLEEnsemble)
    np.testing.assert_allclose(ens.weights, [0.5, 0.5])
    members = np.stack([m.log_likelihood(theta[:10], t[0]) for m in ens.members])
    np.testing.assert_allclose(
        ens.log_likelihood(theta[:10], t[0]), np.logaddexp.reduce(members + np.log(0.5), axis=0), rtol=1e-5
    )


def test_fit_ensemble_rejects_bad_options(problem, small_data):
    theta, t = small_data
    with pytest.raises(ValueError, match="kind"):
        fit_ensemble("abc", problem.prior, theta, t, np.random.default_rng(0))
    with pytest.raises(ValueError, match="weighting"):
        fit_ensemble("npe", problem.prior, theta, t, np.random.default_rng(0), weighting="best")
    with pytest.raises(TypeError, match="NPE"):
        NPEEnsemble([NLE(problem.prior)])


@pytest.mark.parametrize("kind", ["npe", "nle", "ensemble"])
def test_save_then_load_gives_identical_log_prob(kind, problem, small_data, npe_ensemble, tmp_path):
    theta, t = small_data
    if kind == "ensemble":
        est = npe_ensemble
    else:
        est = (NPE if kind == "npe" else NLE)(problem.prior, SMALL, QUICK, device="cpu").fit(
            theta[:400], t[:400], np.random.default_rng(0)
        )
    save_estimator(est, tmp_path / "est")
    loaded = load_estimator(tmp_path / "est")
    assert type(loaded) is type(est) and loaded.prior == est.prior
    np.testing.assert_array_equal(loaded.log_prob(theta[:50], t[:50]), est.log_prob(theta[:50], t[:50]))
    if kind == "npe":
        assert loaded.summary.epochs == est.summary.epochs
        np.testing.assert_array_equal(
            loaded.sample(10, t[:2], np.random.default_rng(9)), est.sample(10, t[:2], np.random.default_rng(9))
        )
    # nothing but JSON and a weights-only state dict is on disk
    names = sorted(p.name for p in (tmp_path / "est").iterdir())
    assert "estimator.json" in names


def test_load_rejects_foreign_or_future_files(tmp_path):
    import json

    with pytest.raises(ValueError, match="not a saved cosmosbi estimator"):
        load_estimator(tmp_path)
    (tmp_path / "estimator.json").write_text(json.dumps({"format": "cosmosbi-estimator", "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        load_estimator(tmp_path)


def test_samples_round_trip_through_hdf5(tmp_path):
    samples = np.random.default_rng(0).normal(size=(3, 50, 2))
    save_samples_hdf5(
        tmp_path / "s.h5", samples, ["A", "B"], attrs={"x_obs": np.arange(3.0)}, log_prob=np.zeros((3, 50))
    )
    back, names, attrs = load_samples_hdf5(tmp_path / "s.h5")
    np.testing.assert_array_equal(back, samples)
    assert names == ["A", "B"] and attrs["x_obs"] == [0.0, 1.0, 2.0] and attrs["log_prob"].shape == (3, 50)
    with pytest.raises(ValueError, match="names"):
        save_samples_hdf5(tmp_path / "t.h5", samples, ["A"])


def test_getdist_reads_the_written_chain(tmp_path, problem):
    from getdist import loadMCSamples

    rng = np.random.default_rng(0)
    samples = np.column_stack([rng.uniform(0.5, 2.0, 4000), rng.normal(2.0, 0.1, 4000)])
    write_getdist_chain(
        tmp_path / "chains" / "post",
        samples,
        ["A", "B"],
        log_prob=-np.ones(4000),
        labels=["A", r"\beta"],
        prior=problem.prior,
    )
    chain = loadMCSamples(str(tmp_path / "chains" / "post"), settings={"ignore_rows": 0})
    np.testing.assert_allclose(chain.getMeans(), samples.mean(0), rtol=1e-9)
    assert [p.name for p in chain.getParamNames().names] == ["A", "B"]
    assert chain.getParamNames().parWithName("B").label == r"\beta"
    assert chain.ranges.getLower("A") == 0.5 and chain.ranges.getUpper("B") == 3.0
    np.testing.assert_allclose(chain.loglikes, 1.0)
