import math

import numpy as np
import pytest
import torch
from scipy import stats

from cosmosbi.simulators.priors import (
    BoxUniform,
    Gaussian,
    LogUniform,
    Normal,
    Prior,
    TruncatedNormal,
    Uniform,
    prior_from_config,
)

MARGINALS = {
    "uniform": (Uniform(-1.0, 3.0), stats.uniform(-1.0, 4.0)),
    "log_uniform": (LogUniform(0.25, 4.0), stats.loguniform(0.25, 4.0)),
    "normal": (Normal(0.3, 0.2), stats.norm(0.3, 0.2)),
    "truncated_normal": (TruncatedNormal(0.0, 1.0, -0.5, 2.0), stats.truncnorm(-0.5, 2.0, loc=0.0, scale=1.0)),
    "half_truncated": (TruncatedNormal(1.0, 2.0, 0.0, math.inf), stats.truncnorm(-0.5, math.inf, loc=1.0, scale=2.0)),
}


@pytest.mark.parametrize("name", MARGINALS)
def test_marginal_matches_scipy(name):
    marginal, reference = MARGINALS[name]
    rng = np.random.default_rng(0)
    x = marginal.sample(20000, rng)
    # Kolmogorov-Smirnov against the reference distribution at the 0.1% level
    assert stats.kstest(x, reference.cdf).pvalue > 1e-3
    grid = reference.ppf(np.linspace(0.01, 0.99, 17))
    np.testing.assert_allclose(marginal.log_prob(grid), reference.logpdf(grid), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        marginal.log_prob_torch(torch.as_tensor(grid)).numpy(), reference.logpdf(grid), rtol=1e-10, atol=1e-12
    )
    u = np.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(marginal.icdf_torch(torch.as_tensor(u)).numpy(), marginal.icdf(u), rtol=1e-10)


@pytest.mark.parametrize("name", [k for k in MARGINALS if k != "normal"])
def test_log_prob_is_minus_inf_outside_support(name):
    marginal, _ = MARGINALS[name]
    outside = np.array(
        [marginal.low - 1.0, (marginal.high + 1.0) if math.isfinite(marginal.high) else marginal.low - 2.0]
    )
    assert np.all(marginal.log_prob(outside) == -np.inf)
    assert torch.all(marginal.log_prob_torch(torch.as_tensor(outside)) == -math.inf)


def test_prior_sample_shape_bounds_and_log_prob():
    prior = BoxUniform(["A", "B"], [0.5, 1.0], [2.0, 3.0])
    theta = prior.sample(1000, np.random.default_rng(1))
    assert theta.shape == (1000, 2)
    assert np.all(prior.contains(theta))
    np.testing.assert_allclose(prior.log_prob(theta), -math.log(1.5 * 2.0))
    assert prior.log_prob(np.array([0.4, 2.0])) == -np.inf
    assert prior.names == ("A", "B") and prior.dim == 2


def test_prior_sampling_is_reproducible_with_explicit_rng():
    prior = Gaussian(["a", "b"], [0.0, 1.0], [1.0, 0.1], low=[-1.0, -math.inf], high=[1.0, math.inf])
    a = prior.sample(10, np.random.default_rng(7))
    b = prior.sample(10, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert isinstance(prior.marginals["a"], TruncatedNormal)
    assert isinstance(prior.marginals["b"], Normal)


def test_check_names_the_parameter_and_value():
    prior = BoxUniform(["Omega_m", "sigma_8"], [0.1, 0.6], [0.5, 1.0])
    with pytest.raises(ValueError, match=r"theta\[1\] has sigma_8=1.2.*outside the prior support"):
        prior.check([[0.3, 0.8], [0.3, 1.2]])
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        prior.check([0.3, 0.8, 0.1])
    with pytest.raises(ValueError, match="nan"):
        prior.check([[np.nan, 0.8]])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"uniform": [1.0, 0.0]}, "low < high"),
        ({"uniform": [0.0]}, "list of two numbers"),
        ({"uniform": [0, 1], "normal": [0, 1]}, "exactly one of"),
        ({"uniform": [0, 1], "bounds": [0, 1]}, "exactly one of"),
        ({"normal": [0.0, -1.0]}, "std > 0"),
        ({"log_uniform": [0.0, 1.0]}, "low > 0"),
        ({"gamma": [1.0, 1.0]}, "exactly one of"),
        ({"normal": [0.0, 1.0], "bounds": [5.0, 5.0]}, "low < high"),
    ],
)
def test_prior_config_errors_name_the_parameter(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        prior_from_config({"A": spec})
    assert "prior.A" in str(info.value)


def test_prior_config_round_trip():
    prior = prior_from_config(
        {
            "A": {"uniform": [0.5, 2.0]},
            "B": {"log_uniform": [0.25, 4.0]},
            "C": {"normal": [0.0, 1.0]},
            "D": {"normal": [0.0, 1.0], "bounds": [0.0, math.inf]},
        }
    )
    assert prior_from_config(prior.to_config()) == prior
    assert prior.names == ("A", "B", "C", "D")


def test_torch_prior_agrees_with_numpy_and_is_accepted_by_sbi():
    from sbi.utils.user_input_checks import process_prior

    prior = prior_from_config({"A": {"uniform": [0.5, 2.0]}, "B": {"normal": [2.0, 0.5], "bounds": [1.0, 3.0]}})
    torch_prior = prior.to_torch()
    samples = torch_prior.sample((5000,), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5000, 2) and samples.dtype == torch.float32
    assert np.all(prior.contains(samples.numpy()))
    np.testing.assert_allclose(
        torch_prior.log_prob(samples.double()).numpy(), prior.log_prob(samples.double().numpy()), rtol=1e-6
    )
    assert torch_prior.log_prob(torch.tensor([[0.1, 2.0]])).item() == -math.inf
    # the two marginals match their numpy counterparts in distribution
    reference = prior.sample(5000, np.random.default_rng(0))
    for j in range(2):
        assert stats.ks_2samp(samples[:, j].numpy(), reference[:, j]).pvalue > 1e-3
    processed, _, _ = process_prior(torch_prior)
    assert processed.sample((3,)).shape == (3, 2)


def test_prior_rejects_bad_construction():
    with pytest.raises(ValueError, match="at least one parameter"):
        Prior({})
    with pytest.raises(TypeError, match="expected a Marginal"):
        Prior({"A": (0, 1)})
    with pytest.raises(ValueError, match="2 names but 1 lows"):
        BoxUniform(["A", "B"], [0.0], [1.0, 2.0])
