"""One posterior contract: NPE, NLE and their ensembles sample and evaluate with the same calls."""

import numpy as np
import pytest

from cosmosbi.estimators import NLE, NPE, NLEEnsemble, NPEEnsemble, Posterior, PosteriorWithLogDensities, TrainingConfig


@pytest.fixture(scope="module")
def fitted(small_data, problem):
    theta, t = small_data
    training = TrainingConfig(max_epochs=2)
    return {
        cls.kind: cls(problem.prior, training=training, device="cpu").fit(
            theta[:500], t[:500], np.random.default_rng(1)
        )
        for cls in (NPE, NLE)
    }


def test_every_estimator_is_a_posterior_and_one_call_samples_many_observations(fitted, small_data):
    npe, nle = fitted["npe"], fitted["nle"]
    x = small_data[1][:3]
    short = {"pilot_steps": 40, "max_steps": 200}  # short MCMC runs: this checks calls and shapes, not accuracy
    for estimator, options in [
        (npe, {}),
        (NPEEnsemble([npe, npe]), {}),
        (nle, short),
        (NLEEnsemble([nle, nle]), short),
    ]:
        assert isinstance(estimator, Posterior)
        samples = estimator.sample(20, x, np.random.default_rng(2), **options)
        assert samples.shape == (3, 20, 2) and np.isfinite(estimator.log_prob(samples[0], x[0])).all()
    assert isinstance(npe, PosteriorWithLogDensities) and not isinstance(nle, PosteriorWithLogDensities)
    # many observations: NLE's default is the batched sampler (one network call per step for all)
    nle.sample(20, x, np.random.default_rng(2), **short)
    assert [r["method"] for r in nle.mcmc_reports] == ["batched-stretch"] * 3
    nle.sample(20, x[0], np.random.default_rng(2), **short)
    assert [r["method"] for r in nle.mcmc_reports] == ["emcee"]
    with pytest.raises(ValueError, match="'auto', 'emcee', 'batched' or 'sbi'"):
        nle.sample(20, x, np.random.default_rng(2), method="gibbs")
