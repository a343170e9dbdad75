import numpy as np
import pytest

from cosmosbi.analyses.calibration import hpd_coverage, sbc, tarp

NOISE = 0.5  # x = theta + N(0, NOISE^2), theta ~ N(0, 1): the posterior is N(x / (1 + s^2), s^2 / (1 + s^2))


def gaussian_posteriors(width_factor=1.0, bias_sigma=0.0, m=600, l=300, d=2, seed=0):
    """Posterior samples, log-densities and truths of the conjugate Gaussian problem, distorted on purpose."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((m, d))
    x = theta + NOISE * rng.standard_normal((m, d))
    mean = x / (1 + NOISE**2)
    sd = np.sqrt(NOISE**2 / (1 + NOISE**2)) * width_factor
    centre = mean + bias_sigma * sd
    samples = centre[:, None, :] + sd * rng.standard_normal((m, l, d))

    def log_q(values, c):
        return np.sum(-0.5 * ((values - c) / sd) ** 2, axis=-1)

    return samples, theta, log_q(samples, centre[:, None, :]), log_q(theta, centre)


CASES = {
    "exact": ((1.0, 0.0), "calibrated"),
    "overconfident": ((0.5, 0.0), "overconfident"),
    "conservative": ((2.0, 0.0), "conservative"),
    "biased": ((1.0, 1.0), "overconfident"),
}


@pytest.mark.parametrize("case", CASES)
def test_sbc_coverage_and_tarp_verdicts(case):
    (width, bias), expected = CASES[case]
    samples, theta, lp_samples, lp_true = gaussian_posteriors(width, bias)
    result = sbc(samples, theta, names=["a", "b"])
    assert result.ranks.shape == (600, 2) and result.ranks.max() <= 300
    assert result.verdicts == [expected, expected], result.reasons
    coverage = hpd_coverage(lp_samples, lp_true)
    assert coverage.verdict == expected, coverage.reason
    t = tarp(samples, theta, np.random.default_rng(1))
    if case == "biased":
        assert t.verdict != "calibrated", t.reason  # TARP flags a bias as miscalibration of either sign
    else:
        assert t.verdict == expected, t.reason
    if case == "exact":
        assert abs(coverage.area) < 0.03 and result.chi2_pvalue.min() > 0.01
    if case == "biased":
        assert all("biased" in r for r in result.reasons)


def test_calibrated_pvalues_are_uniform_over_repetitions():
    # over independent repetitions of an exact posterior, the SBC chi^2 p-values are U(0, 1)
    from scipy import stats

    pvalues = [sbc(*gaussian_posteriors(m=200, l=99, d=1, seed=s)[:2]).chi2_pvalue[0] for s in range(40)]
    assert stats.kstest(pvalues, "uniform").pvalue > 0.001


def test_input_checks():
    with pytest.raises(ValueError, match=r"samples \(M, L, D\) and theta \(M, D\)"):
        sbc(np.zeros((5, 10, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="log_prob_samples"):
        hpd_coverage(np.zeros((5, 10)), np.zeros(4))
