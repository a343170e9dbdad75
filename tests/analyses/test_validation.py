import numpy as np
import pytest

from cosmosbi.analyses.validation import validate_posterior

S2 = 0.25  # x = theta + N(0, S2), theta ~ N(0, 1)


class ConjugatePosterior:
    """The exact posterior of the conjugate Gaussian problem, with its width scaled by ``factor``."""

    def __init__(self, factor=1.0):
        self.sd = np.sqrt(S2 / (1 + S2)) * factor

    def sample(self, n, x, rng):
        mean = np.asarray(x) / (1 + S2)
        return mean[:, None, :] + self.sd * rng.standard_normal((len(mean), n, mean.shape[1]))

    def log_prob(self, theta, x):
        z = (np.asarray(theta) - np.asarray(x) / (1 + S2)) / self.sd
        return np.sum(-0.5 * z**2 - np.log(self.sd) - 0.5 * np.log(2 * np.pi), axis=1)


def test_exact_posterior_passes_and_a_shrunk_one_fails():
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((400, 2))
    x = theta + np.sqrt(S2) * rng.standard_normal(theta.shape)
    derived = {"sum": lambda t: t[..., 0] + t[..., 1]}
    good = validate_posterior(ConjugatePosterior(), theta, x, ["a", "b"], rng, n_samples=200, derived=derived)
    assert good.samples.shape == (400, 200, 2)
    assert good.sbc.names == ["a", "b", "sum"] and good.sbc.verdicts == ["calibrated"] * 3
    assert good.coverage.verdict == "calibrated" and good.tarp.verdict == "calibrated"
    bad = validate_posterior(ConjugatePosterior(0.6), theta, x, ["a", "b"], rng, n_samples=200, derived=derived)
    assert bad.sbc.verdicts == ["overconfident"] * 3
    assert bad.coverage.verdict == "overconfident" and bad.tarp.verdict == "overconfident"
    metrics = bad.to_dict()
    assert metrics["sbc"]["sum"]["verdict"] == "overconfident" and metrics["n_samples"] == 200


def test_wrong_sample_shape_is_reported():
    class Broken(ConjugatePosterior):
        def sample(self, n, x, rng):
            return super().sample(n, x, rng)[:, :, :1]

    with pytest.raises(ValueError, match="posterior.sample returned"):
        validate_posterior(
            Broken(), np.zeros((5, 2)), np.zeros((5, 2)), ["a", "b"], np.random.default_rng(0), n_samples=10
        )


def test_one_pass_log_densities_give_the_same_result_as_two_passes():
    class OnePass(ConjugatePosterior):
        calls = 0

        def log_prob(self, theta, x):
            OnePass.calls += len(theta)
            return super().log_prob(theta, x)

        def sample_and_log_prob(self, n, x, rng):
            samples = self.sample(n, x, rng)
            z = (samples - (np.asarray(x) / (1 + S2))[:, None, :]) / self.sd
            return samples, np.sum(-0.5 * z**2 - np.log(self.sd) - 0.5 * np.log(2 * np.pi), axis=2)

    rng = np.random.default_rng(1)
    theta = rng.standard_normal((300, 2))
    x = theta + np.sqrt(S2) * rng.standard_normal(theta.shape)
    one = validate_posterior(OnePass(0.8), theta, x, ["a", "b"], np.random.default_rng(2), n_samples=100)
    assert OnePass.calls == 300  # the log-density is evaluated at the truths only
    two = validate_posterior(ConjugatePosterior(0.8), theta, x, ["a", "b"], np.random.default_rng(2), n_samples=100)
    np.testing.assert_array_equal(one.samples, two.samples)
    np.testing.assert_allclose(one.coverage.credibility, two.coverage.credibility)
    assert one.coverage.verdict == two.coverage.verdict == "overconfident"
    assert set(one.seconds) == {"sampling", "sbc", "hpd_coverage", "tarp", "analyses"}


def test_mismatched_log_densities_are_reported():
    class Broken(ConjugatePosterior):
        def sample_and_log_prob(self, n, x, rng):
            return self.sample(n, x, rng), np.zeros((len(x), n + 1))

    with pytest.raises(ValueError, match="log-densities"):
        validate_posterior(
            Broken(), np.zeros((5, 2)), np.zeros((5, 2)), ["a", "b"], np.random.default_rng(0), n_samples=10
        )


def test_posterior_widths_compares_posterior_and_prior_standard_deviations():
    from cosmosbi.analyses.validation import posterior_widths
    from cosmosbi.simulators.priors import Prior, Uniform

    rng = np.random.default_rng(3)
    prior = Prior({"a": Uniform(0.0, 1.0), "b": Uniform(-2.0, 2.0)})
    # 60 posteriors of 2000 samples; a: std 0.1 everywhere, b: as wide as its prior
    samples = np.stack([rng.normal(0.5, 0.1, (60, 2000)), rng.uniform(-2.0, 2.0, (60, 2000))], axis=-1)
    widths = posterior_widths(samples, prior, ["a", "b"])
    # prior std from 1e5 draws: relative error ~0.2%; a posterior's std from 2000 samples: ~1.6%
    assert widths["a"]["prior_std"] == pytest.approx(1 / np.sqrt(12), rel=0.01)
    assert widths["b"]["prior_std"] == pytest.approx(4 / np.sqrt(12), rel=0.01)
    assert widths["a"]["posterior_std_median"] == pytest.approx(0.1, rel=0.03)
    assert widths["a"]["ratio_median"] == pytest.approx(0.1 * np.sqrt(12), rel=0.03)
    assert widths["b"]["ratio_median"] == pytest.approx(1.0, rel=0.03)
    assert widths["a"]["posterior_std_16"] <= widths["a"]["posterior_std_median"] <= widths["a"]["posterior_std_84"]
    with pytest.raises(ValueError, match=r"shape \(M, L, 2\)"):
        posterior_widths(samples[..., :1], prior, ["a", "b"])
