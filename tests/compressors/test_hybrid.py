import healpy as hp
import numpy as np
import pytest
import torch

from cosmosbi.analyses.baseline import bandpower_vector
from cosmosbi.compressors.hybrid import Hybrid2D, HybridHealpix
from cosmosbi.compressors.losses import make_loss
from cosmosbi.compressors.networks import build_network, network_options
from cosmosbi.compressors.summaries import flat_power_spectrum, healpix_bandpowers
from cosmosbi.compressors.trainer import TrainSettings, make_compressor, train_compressor
from cosmosbi.simulators import BoxUniform, as_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset

NSIDE = 8
POLAR_CAP = np.sort(hp.query_disc(NSIDE, [0.0, 0.0, 1.0], 0.9, nest=True))


def lognormal_maps(rng, shape):
    """Positive, correlated, non-Gaussian test maps (channel 1 correlates with channel 0)."""
    g = rng.standard_normal(shape)
    if len(shape) > 2:
        g[:, 1] = 0.6 * g[:, 0] + 0.8 * g[:, 1]
    return np.exp(0.5 * g) - 1.0


def test_flat_bandpower_branch_is_the_classic_power_spectrum():
    rng = np.random.default_rng(0)
    x = lognormal_maps(rng, (4, 3, 16, 16))
    edges = [0.5, 2.5, 4.5, 6.5, 8.5]
    net = Hybrid2D(16, in_channels=3, bin_edges=edges, width=4, depth=2)
    power = net.bandpowers(torch.as_tensor(x, dtype=torch.float32)).numpy()  # (N, pairs, B)
    x32 = x.astype(np.float32).astype(float)  # the network reads float32 maps
    for p, (i, j) in enumerate(net.bandpowers.pairs):
        # cross-spectra by polarisation: P_ij = (P(x_i + x_j) - P(x_i) - P(x_j)) / 2
        expected = (
            (
                flat_power_spectrum(x32[:, i] + x32[:, j], edges)[1]
                - flat_power_spectrum(x32[:, i], edges)[1]
                - flat_power_spectrum(x32[:, j], edges)[1]
            )
            / 2
            if i != j
            else flat_power_spectrum(x32[:, i], edges)[1]
        )
        np.testing.assert_allclose(power[:, p], expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    # one map: the features are the baseline's log-power data vector
    single = Hybrid2D(16, bin_edges=edges, width=4, depth=2)
    features = single.bandpower_features(torch.as_tensor(x[:, 0], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(features, bandpower_vector(x32[:, 0], "power_spectrum", edges), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pixels", [None, POLAR_CAP], ids=["full-sky", "cap"])
def test_healpix_bandpower_branch_is_the_classic_pseudo_cl(pixels):
    rng = np.random.default_rng(1)
    n_pix = 12 * NSIDE**2 if pixels is None else len(pixels)
    x = lognormal_maps(rng, (3, 2, n_pix)).astype(np.float32)
    net = HybridHealpix(NSIDE, pixels, in_channels=2, ell_edges=[2, 6, 10, 17], width=4, depth=2)
    power = net.bandpowers(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(power, healpix_bandpowers(x, NSIDE, pixels, np.array([2, 6, 10, 17]))[1])

    class Footprint:
        nside = NSIDE

    Footprint.pixels = pixels
    features = net.bandpower_features(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(
        features, bandpower_vector(x, "healpix_bandpowers", [2, 6, 10, 17], simulator=Footprint), rtol=1e-14, atol=0
    )


HYBRIDS = {
    "hybrid2d": (
        lambda: Hybrid2D(12, in_channels=2, out_features=3, width=4, depth=2, cnn_features=5, hidden=16),
        (6, 2, 12, 12),
    ),
    "hybrid2d-single-map": (
        lambda: Hybrid2D(12, out_features=2, width=4, depth=2, bin_edges=[0.5, 3.5, 6.5]),
        (6, 12, 12),
    ),
    "hybrid-healpix-cap": (
        lambda: HybridHealpix(NSIDE, POLAR_CAP, in_channels=2, out_features=2, width=4, depth=2),
        (6, 2, len(POLAR_CAP)),
    ),
    "hybrid-healpix-single-map": (
        lambda: HybridHealpix(NSIDE, None, out_features=2, width=4, depth=2),
        (6, 12 * NSIDE**2),
    ),
}


@pytest.mark.parametrize("name", HYBRIDS)
def test_hybrid_shapes_gradients_and_round_trip(name):
    make, shape = HYBRIDS[name]
    torch.manual_seed(0)
    net = make()
    x = torch.as_tensor(lognormal_maps(np.random.default_rng(2), shape), dtype=torch.float32)
    net.set_bandpower_standardisation(x)
    bands = net.bandpower_normalise(net.bandpower_features(x))
    torch.testing.assert_close(bands.mean(0), torch.zeros_like(bands[0]), atol=1e-6, rtol=0)  # standardised
    t = net(x)
    assert t.shape == (shape[0], net.out_features)
    t.pow(2).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"no gradient reaches {pname}"
    net.eval()
    clone = build_network(net.config)
    clone.load_state_dict(net.state_dict())
    clone.eval()
    torch.testing.assert_close(clone(x), net(x))


def test_hybrid_options_are_validated_like_the_other_networks():
    from cosmosbi.config import CompressorConfig

    assert "footprint" in network_options("hybrid_healpix") and "pixels" not in network_options("hybrid_healpix")
    assert {"size", "bin_edges", "cnn_features", "width"} <= set(network_options("hybrid2d"))
    section = CompressorConfig(input="x", network={"kind": "hybrid2d", "bin_edges": [0.5, 2.5, 8], "width": 8})
    assert section.network == {"kind": "hybrid2d", "bin_edges": [0.5, 2.5, 8.0], "width": 8}
    with pytest.raises(ValueError, match="widht"):
        CompressorConfig(input="x", network={"kind": "hybrid2d", "widht": 8})
    with pytest.raises(ValueError, match="cnn_features"):
        CompressorConfig(input="x", network={"kind": "hybrid_healpix", "cnn_features": "many"})
    with pytest.raises(ValueError, match="ell_edges"):
        HybridHealpix(NSIDE, ell_edges=[2, 30])
    with pytest.raises(ValueError, match="size"):
        Hybrid2D(0)
    with pytest.raises(ValueError, match="12 x 12"):
        Hybrid2D(12, width=4, depth=2)(torch.zeros(2, 10, 10))


def gaussian_field(theta, rng, n=12):
    """Two correlated Gaussian fields with power A k^-s (theta = (log A, s))."""
    k = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2) * n
    amplitude = np.exp(0.5 * theta[0]) * np.where(k > 0, np.maximum(k, 1.0) ** (-theta[1] / 2), 0.0)
    white = np.fft.fft2(rng.standard_normal((2, n, n)))
    fields = np.fft.ifft2(amplitude * white).real
    return np.stack([fields[0], 0.7 * fields[0] + 0.7 * fields[1]]).astype(np.float32)


@pytest.fixture(scope="module")
def field_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("fields") / "train"
    prior = BoxUniform(["log_amplitude", "slope"], [-1.0, 0.5], [1.0, 2.5])
    run_simulations(as_simulator(gaussian_field, prior=prior), 400, path, seed=0, progress=False)
    return SimulationDataset(path)


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_vmim_training_of_the_hybrid_lowers_the_loss(field_dataset, tmp_path, augment):
    settings = TrainSettings(
        epochs=3, batch_size=50, learning_rate=3e-3, seed=0, device="cpu", num_threads=1, augment=augment
    )
    network = {
        "kind": "hybrid2d",
        "bin_edges": [0.5, 2.5, 4.5, 6.5],
        "width": 4,
        "depth": 2,
        "cnn_features": 4,
        "hidden": 32,
    }
    compressor = make_compressor(network, field_dataset, "x", loss="vmim", seed=0)
    loss = make_loss("vmim", 2, 2, seed=0, transforms=2, hidden=32)
    x = torch.as_tensor(field_dataset.read("x"))
    theta = compressor.standardise(torch.as_tensor(field_dataset.theta, dtype=torch.float32))
    with torch.no_grad():
        before = loss(compressor.eval().raw(x), theta).item()
    result = train_compressor(compressor, loss, field_dataset, tmp_path / "compressor", settings, progress=False)
    with torch.no_grad():
        after = loss(compressor.raw(x), theta).item()
    # the untrained flow is near a standard normal (about 2.8 nats for 2 parameters); the log
    # bandpowers alone determine (log A, s) to a few per cent of the prior width
    assert after < before - 1.0, (before, after, result.history)
