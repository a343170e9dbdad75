import healpy as hp
import numpy as np
import pytest
import torch

from cosmosbi.compressors.healpix import HealpixCNN, HealpixConv, HealpixPool, footprint_from_ranges, footprint_ranges
from cosmosbi.compressors.networks import MLP, ResNet2D, build_network

CAP = np.sort(hp.query_disc(8, hp.ang2vec(0.7, 0.3), 0.8, nest=True))

NETWORKS = {
    "resnet2d": (lambda: ResNet2D(in_channels=2, out_features=3, width=4, depth=2), (5, 2, 16, 16)),
    "resnet2d-single-map": (lambda: ResNet2D(out_features=2, width=4, depth=2, periodic=False), (5, 16, 16)),
    "resnet2d-no-norm": (lambda: ResNet2D(out_features=2, width=4, depth=2, norm="none"), (5, 16, 16)),
    "resnet2d-linear-stem": (
        lambda: ResNet2D(out_features=2, width=4, depth=2, norm="none", stem_kernel=5, linear_stem=True),
        (5, 16, 16),
    ),
    "resnet2d-linear-stem-batch-norm": (
        lambda: ResNet2D(in_channels=2, out_features=3, width=4, depth=2, stem_kernel=7, linear_stem=True),
        (5, 2, 12, 12),
    ),
    "mlp": (lambda: MLP(in_features=12, out_features=3), (5, 12)),
    "healpix-full-sky": (lambda: HealpixCNN(8, None, in_channels=2, out_features=3, width=4, depth=2), (5, 2, 768)),
    "healpix-cap": (lambda: HealpixCNN(8, CAP, in_channels=1, out_features=2, width=4, depth=3), (5, len(CAP))),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_shapes_gradients_and_round_trip(name):
    make, shape = NETWORKS[name]
    torch.manual_seed(0)
    net = make()
    x = torch.randn(shape)
    t = net(x)
    assert t.shape == (shape[0], net.out_features)
    t.pow(2).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"no gradient reaches {pname}"
    # rebuild from the JSON config and the state_dict: identical outputs
    net.eval()
    clone = build_network(net.config)
    clone.load_state_dict(net.state_dict())
    clone.eval()
    torch.testing.assert_close(clone(x), net(x))


def rotation_permutation(nside):
    """Pixel p goes to perm[p] under a 90-degree rotation about the polar axis (NESTED)."""
    theta, phi = hp.pix2ang(nside, np.arange(12 * nside**2), nest=True)
    return hp.ang2pix(nside, theta, phi + np.pi / 2, nest=True)


def test_healpix_convolution_commutes_with_the_pixelisation_symmetry():
    nside = 8
    perm = rotation_permutation(nside)
    assert np.array_equal(np.sort(perm), np.arange(12 * nside**2))  # it is a permutation
    conv = HealpixConv(nside, np.arange(12 * nside**2), 3, 4)
    x = torch.randn(2, 12 * nside**2, 3)
    rotated = torch.empty_like(x)
    rotated[:, perm] = x
    expected = torch.empty(2, 12 * nside**2, 4)
    expected[:, perm] = conv(x)
    torch.testing.assert_close(conv(rotated), expected, rtol=0, atol=1e-5)
    # the whole network is invariant on the full sky
    net = HealpixCNN(nside, None, in_channels=3, out_features=2, width=4, depth=2).eval()
    torch.testing.assert_close(net(rotated.transpose(1, 2)), net(x.transpose(1, 2)), rtol=1e-5, atol=1e-5)


def test_healpix_convolution_uses_neighbours_only():
    nside = 8
    conv = HealpixConv(nside, np.arange(768), 1, 1, bias=False)
    x = torch.zeros(1, 768, 1)
    x[0, 100, 0] = 1.0
    out = conv(x)[0, :, 0].detach().numpy()
    touched = set(np.nonzero(out)[0])
    assert touched <= {100, *hp.get_all_neighbours(nside, 100, nest=True).tolist()}
    assert 100 in touched and len(touched) >= 8


def test_healpix_pool_averages_nested_children():
    pixels = np.array([0, 1, 2, 3, 4, 6, 40])  # parent 0 full, parent 1 half, parent 10 one child
    pool = HealpixPool(pixels)
    assert pool.parent_pixels.tolist() == [0, 1, 10]
    x = torch.arange(7.0).view(1, 7, 1)
    torch.testing.assert_close(pool(x)[0, :, 0], torch.tensor([1.5, 4.5, 6.0]))


def test_footprint_ranges_round_trip_and_errors():
    assert footprint_ranges(CAP) and np.array_equal(footprint_from_ranges(footprint_ranges(CAP)), CAP)
    with pytest.raises(ValueError, match="sorted unique NESTED"):
        HealpixCNN(8, CAP[::-1])
    with pytest.raises(ValueError, match="power of two"):
        HealpixCNN(12)
    with pytest.raises(ValueError, match="depth must be in"):
        HealpixCNN(4, depth=3)
    with pytest.raises(ValueError, match="footprint pixels"):
        HealpixCNN(8, CAP, width=2, depth=1)(torch.randn(2, 10))


def test_build_network_errors():
    with pytest.raises(ValueError, match="unknown network 'transformer'"):
        build_network({"kind": "transformer"})
    with pytest.raises(ValueError, match="resnet2d.*unexpected keyword"):
        build_network({"kind": "resnet2d", "colour": 3})
    with pytest.raises(ValueError, match="width must be a positive integer"):
        ResNet2D(width=0)


def test_linear_stem_moments_are_bandpowers_of_the_kernel_window():
    """The pooled mean square of a linear stem channel is sum_k |H(k)|^2 |X(k)|^2 / n^4 (Parseval),
    H the DFT of the kernel wrapped on the periodic n x n grid."""
    n, kernel = 12, 5
    torch.manual_seed(1)
    net = ResNet2D(out_features=2, width=3, depth=1, norm="none", stem_kernel=kernel, linear_stem=True).double()
    x = torch.randn(4, n, n, dtype=torch.float64)
    seen = []
    net.head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    net(x)
    pooled = seen[0][:, 3:6]  # head input: stem means, stem mean squares, then the stages'
    x = net.normalise(x.unsqueeze(1))[:, 0]
    X = torch.fft.fft2(x)
    for c in range(3):
        w = net.stem.weight[c, 0].detach()
        grid = torch.zeros(n, n, dtype=torch.float64)
        # Conv2d is a cross-correlation: output(i) = sum_u w(u) x(i + u - kernel // 2)
        for a in range(kernel):
            for b in range(kernel):
                grid[(kernel // 2 - a) % n, (kernel // 2 - b) % n] = w[a, b]
        window = torch.fft.fft2(grid).abs().pow(2)
        expected = (window * X.abs().pow(2)).sum(dim=(1, 2)) / n**4
        torch.testing.assert_close(pooled[:, c], expected, rtol=1e-10, atol=1e-12)
    # a stem with its activation is not quadratic: doubling the input does not quadruple its moments
    net_act = ResNet2D(out_features=2, width=3, depth=1, norm="none", stem_kernel=kernel).double()
    m1, m2 = (net_act.stem(net_act.normalise(v.unsqueeze(1))).pow(2).mean(dim=(2, 3)) for v in (x, 2 * x))
    assert not torch.allclose(m2, 4 * m1, rtol=1e-3)


def test_resnet2d_defaults_and_old_configs_are_unchanged():
    net = ResNet2D(out_features=2, width=4, depth=2)
    assert net.config["stem_kernel"] == 3 and net.config["linear_stem"] is False
    assert [k for k in net.state_dict() if k.startswith("stem")] == [
        "stem.0.weight",
        "stem.1.weight",
        "stem.1.bias",
        "stem.1.running_mean",
        "stem.1.running_var",
        "stem.1.num_batches_tracked",
    ]
    old = {
        k: v for k, v in net.config.items() if k not in ("stem_kernel", "linear_stem")
    }  # a config saved before these options existed
    clone = build_network(old)
    clone.load_state_dict(net.state_dict())


def test_resnet2d_stem_option_errors():
    with pytest.raises(ValueError, match="stem_kernel must be odd, got 4"):
        ResNet2D(stem_kernel=4)
    with pytest.raises(ValueError, match="stem_kernel must be a positive integer, got 0"):
        ResNet2D(stem_kernel=0)
    with pytest.raises(ValueError, match="linear_stem must be true or false, got 'yes'"):
        ResNet2D(linear_stem="yes")
