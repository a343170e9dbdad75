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
