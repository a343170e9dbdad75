"""The batched flow sampler behind NPE.sample / NPE.sample_and_log_prob, against nflows' own passes."""

import numpy as np
import pytest
import torch
from scipy import stats

from cosmosbi.estimators import NPE, FlowConfig, TrainingConfig
from cosmosbi.estimators.networks import FlowSampler, build_network, rational_quadratic_inverse
from cosmosbi.estimators.npe import rejection_sample


def _random_network(model, dim, context, seed, embedding_net=None, z_score="independent", **config):
    """An untrained sbi flow with all weights perturbed away from their (near-identity) initialisation."""
    torch.manual_seed(seed)
    theta = torch.randn(200, dim) * 2 + 1
    x = torch.randn(200, context) * 3 - 1
    cfg = FlowConfig(
        model=model,
        hidden_features=16,
        num_transforms=2,
        num_bins=5,
        z_score_theta=z_score,
        z_score_x=z_score,
        **config,
    )
    net = build_network("npe", cfg, theta, x, embedding_net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    # float64: the comparison is then not limited by float32 rounding in ill-conditioned spline roots
    return net.eval().double(), x.double()


@pytest.mark.parametrize(
    "model, dim, z_score, kinds",
    [
        ("nsf", 2, "independent", ["linear", "spline", "linear", "spline", "affine"]),
        ("nsf", 3, "none", ["linear", "spline", "linear", "spline"]),
        ("nsf", 5, "structured", ["linear", "spline", "linear", "spline", "affine"]),
        ("maf", 3, "independent", ["permutation", "made", "permutation", "made", "affine"]),
        ("maf", 6, "none", ["permutation", "made", "permutation", "made"]),
        ("maf", 1, "independent", ["permutation", "made", "permutation", "made", "affine"]),
        ("maf_rqs", 3, "independent", None),  # autoregressive splines: applied through nflows' own inverse
    ],
)
def test_sampler_inverse_and_log_prob_match_nflows(model, dim, z_score, kinds):
    net, x = _random_network(model, dim, 4, seed=dim, z_score=z_score)
    sampler = FlowSampler(net)
    if kinds is not None:
        assert [kind for kind, _ in sampler.steps] == kinds
    else:
        assert "generic" in [kind for kind, _ in sampler.steps]
    m, k = 7, 300
    x = x[:m]
    noise = 1.5 * torch.randn(
        dim, k, m, dtype=torch.float64
    )  # wide enough that some values leave the spline's tail bound
    with torch.no_grad():
        embedded = sampler.embedding(x)
        theta, logdet = sampler._inverse(noise, embedded, sampler._per_observation(embedded))
        flat_noise = noise.permute(1, 2, 0).reshape(k * m, dim)
        repeated = embedded.expand(k, *embedded.shape).reshape(k * m, -1)
        expected, expected_logdet = net.net._transform.inverse(flat_noise, context=repeated)
    np.testing.assert_allclose(
        theta.permute(1, 2, 0).reshape(k * m, dim).numpy(), expected.numpy(), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(logdet.reshape(-1).numpy(), expected_logdet.numpy(), rtol=1e-9, atol=1e-9)

    torch.manual_seed(1)
    samples, log_prob = sampler.sample_and_log_prob(k, x)
    assert samples.shape == (k, m, dim) and log_prob.shape == (k, m) and samples.dtype == torch.float64
    with torch.no_grad():
        reference = net.log_prob(samples, x)  # forward pass of nflows
    np.testing.assert_allclose(log_prob.numpy(), reference.numpy(), rtol=1e-8, atol=1e-8)


def test_sampler_handles_residual_made_blocks():
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms import CompositeTransform, MaskedAffineAutoregressiveTransform, ReversePermutation
    from sbi.neural_nets.estimators import NFlowsFlow

    torch.manual_seed(0)
    layers = []
    for _ in range(2):
        layers += [
            MaskedAffineAutoregressiveTransform(4, 12, context_features=3, use_residual_blocks=True),
            ReversePermutation(4),
        ]
    flow = NFlowsFlow(
        Flow(CompositeTransform(layers), StandardNormal([4])),
        input_shape=torch.Size([4]),
        condition_shape=torch.Size([3]),
    )
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow = flow.eval().double()
    sampler = FlowSampler(flow)
    assert [kind for kind, _ in sampler.steps] == ["permutation", "made", "permutation", "made"]
    x = torch.randn(5, 3, dtype=torch.float64)
    samples, log_prob = sampler.sample_and_log_prob(200, x)
    with torch.no_grad():
        reference = flow.log_prob(samples, x)
    np.testing.assert_allclose(log_prob.numpy(), reference.numpy(), rtol=1e-8, atol=1e-8)


def test_sampler_chunking_keeps_the_law_and_edge_cases():
    net, x = _random_network("nsf", 2, 4, seed=0)
    sampler = FlowSampler(net)
    torch.manual_seed(3)
    whole, whole_lp = sampler.sample_and_log_prob(40, x[:5])
    sampler.rows_per_chunk = 15  # 3 draws x 5 observations per chunk
    torch.manual_seed(3)
    chunked, chunked_lp = sampler.sample_and_log_prob(40, x[:5])
    assert chunked.shape == whole.shape
    # the same law (different draws): log-densities under the same flow agree in distribution
    assert stats.ks_2samp(whole_lp.reshape(-1).numpy(), chunked_lp.reshape(-1).numpy()).pvalue > 1e-3
    empty, empty_lp = sampler.sample_and_log_prob(0, x[:5])
    assert empty.shape == (0, 5, 2) and empty_lp.shape == (0, 5)
    with pytest.raises(ValueError, match="k: expected a non-negative"):
        sampler.sample_and_log_prob(-1, x[:5])


def test_sampler_handles_an_embedding_net():
    embedding = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.Tanh())
    torch.manual_seed(0)
    theta, x = torch.randn(100, 2), torch.randn(100, 3, 4)
    net = build_network("npe", FlowConfig(hidden_features=8), theta, x, embedding).eval()
    sampler = FlowSampler(net)
    samples, log_prob = sampler.sample_and_log_prob(50, x[:4])
    with torch.no_grad():
        reference = net.log_prob(samples, x[:4])
    np.testing.assert_allclose(log_prob.numpy(), reference.numpy(), rtol=1e-4, atol=2e-4)


def test_sampler_rejects_other_networks():
    torch.manual_seed(0)
    net = build_network("npe", FlowConfig(model="mdn"), torch.randn(50, 2), torch.randn(50, 3))
    assert not FlowSampler.supports(net)
    with pytest.raises(TypeError, match="FlowSampler: expected an sbi NFlowsFlow"):
        FlowSampler(net)


@pytest.mark.parametrize("tails", ["linear", None])
def test_rational_quadratic_inverse_matches_nflows(tails):
    from nflows.transforms import splines

    gen = torch.Generator().manual_seed(4)
    n, bins = 5000, 6
    f64 = dict(generator=gen, dtype=torch.float64)
    widths, heights = torch.randn(n, bins, **f64) * 2, torch.randn(n, bins, **f64) * 2
    derivatives = torch.randn(n, bins - 1 if tails == "linear" else bins + 1, **f64)
    if tails == "linear":
        bounds = (-3.0, 3.0)
        inputs = 8 * torch.rand(n, **f64) - 4  # a quarter outside the bounds
        expected = splines.unconstrained_rational_quadratic_spline(
            inputs, widths.clone(), heights.clone(), derivatives.clone(), inverse=True, tails="linear", tail_bound=3.0
        )
    else:
        bounds = (0.0, 1.0)
        inputs = torch.rand(n, **f64)
        expected = splines.rational_quadratic_spline(
            inputs, widths.clone(), heights.clone(), derivatives.clone(), inverse=True
        )
    values, logabsdet = rational_quadratic_inverse(
        inputs,
        widths.T.contiguous(),
        heights.T.contiguous(),
        derivatives.T.contiguous(),
        tails,
        bounds,
        1e-3,
        1e-3,
        1e-3,
    )
    np.testing.assert_allclose(values.numpy(), expected[0].numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(logabsdet.numpy(), expected[1].numpy(), rtol=1e-9, atol=1e-9)
    outside = (inputs.abs() > bounds[1]).numpy()
    assert (tails is None or outside.sum() > 1000) and np.array_equal(values.numpy()[outside], inputs.numpy()[outside])
    with pytest.raises(ValueError, match="tails: expected"):
        rational_quadratic_inverse(inputs, widths.T, heights.T, derivatives.T, "cubic", bounds, 1e-3, 1e-3, 1e-3)
    if tails is None:
        with pytest.raises(ValueError, match="outside the bounds"):
            rational_quadratic_inverse(inputs + 2, widths.T, heights.T, derivatives.T, None, bounds, 1e-3, 1e-3, 1e-3)


def test_rejection_sampler_returns_the_log_density_of_each_kept_draw():
    gen = torch.Generator().manual_seed(0)

    def draw(k, idx):
        proposals = (
            torch.randn(k, len(idx), 1, generator=gen) + torch.as_tensor(idx, dtype=torch.float32)[None, :, None]
        )
        return proposals, -0.5 * proposals[..., 0] ** 2

    out, lp = rejection_sample(draw, lambda s: (s >= 0).all(-1), 500, 3, 1, with_log_prob=True)
    assert out.shape == (3, 500, 1) and lp.shape == (3, 500) and np.all(out >= 0)
    np.testing.assert_allclose(lp, -0.5 * out[..., 0] ** 2, rtol=1e-6)


def test_rejection_sampler_proposes_little_for_observations_that_need_little():
    counts = np.zeros(2, dtype=int)
    gen = torch.Generator().manual_seed(1)

    def draw(k, idx):
        counts[idx] += k
        out = torch.ones(k, len(idx), 1)
        low = torch.as_tensor(idx == 1)
        out[:, low] = torch.where(torch.rand(k, int(low.sum()), 1, generator=gen) < 0.1, 1.0, -1.0)  # 10% accepted
        return out

    rejection_sample(draw, lambda s: (s >= 0).all(-1), 1000, 2, 1)
    assert counts[0] == 1000  # all accepted: proposed for exactly once
    assert counts[1] > 5000  # about 10^4 draws needed


@pytest.fixture(scope="module")
def trained(problem, small_data):
    theta, t = small_data
    return NPE(problem.prior, device="cpu").fit(theta, t, np.random.default_rng(2)), t


def test_npe_sample_and_log_prob_agrees_with_log_prob(trained):
    npe, t = trained
    samples, log_prob = npe.sample_and_log_prob(300, t[:20], np.random.default_rng(0))
    assert samples.shape == (20, 300, 2) and log_prob.shape == (20, 300)
    assert npe.prior.contains(samples.reshape(-1, 2)).all()
    expected = npe.log_prob(samples.reshape(-1, 2), np.repeat(t[:20], 300, axis=0)).reshape(20, 300)
    # float32 inverse vs forward pass: agree to rounding (ill-conditioned spline roots lose a few digits)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-3, atol=1e-3)
    one, one_lp = npe.sample_and_log_prob(10, t[0], np.random.default_rng(1))
    assert one.shape == (10, 2) and one_lp.shape == (10,)
    again = npe.sample_and_log_prob(300, t[:20], np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], samples)
    with pytest.raises(ValueError, match="n: expected"):
        npe.sample(-1, t[:2], np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch_obs: expected"):
        npe.sample(5, t[:2], np.random.default_rng(0), batch_obs=0)


def test_npe_samples_follow_the_flow_restricted_to_the_prior(trained):
    """The batched path draws from the same law as nflows' sampler followed by truncation to the prior."""
    npe, t = trained
    x = t[:3]
    ours = npe.sample(4000, x, np.random.default_rng(5))
    torch.manual_seed(6)
    with torch.no_grad():
        reference = npe.network.sample(torch.Size([6000]), condition=torch.as_tensor(x, dtype=torch.float32)).numpy()
    pvalues = []
    for i in range(len(x)):
        kept = reference[:, i][npe.prior.contains(reference[:, i])]
        for j in range(2):
            pvalues.append(stats.ks_2samp(ours[i, :, j], kept[:, j]).pvalue)
    # 6 tests at level 1e-3 each: a false alarm in fewer than 1 run in 150 (seeds fixed)
    assert min(pvalues) > 1e-3, pvalues


def test_npe_without_a_flow_falls_back_to_two_passes(problem, small_data):
    theta, t = small_data
    mdn = NPE(problem.prior, FlowConfig(model="mdn", hidden_features=16), TrainingConfig(max_epochs=3), device="cpu")
    mdn.fit(theta[:500], t[:500], np.random.default_rng(0))
    assert mdn._flow_sampler() is None
    samples, log_prob = mdn.sample_and_log_prob(50, t[:4], np.random.default_rng(0))
    expected = mdn.log_prob(samples.reshape(-1, 2), np.repeat(t[:4], 50, axis=0)).reshape(4, 50)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=2e-4)
