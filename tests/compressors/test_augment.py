import healpy as hp
import numpy as np
import pytest
import torch

from cosmosbi.compressors.augment import Augmentation, healpix_rotation_indices, square_symmetry
from cosmosbi.compressors.healpix import HealpixCNN
from cosmosbi.compressors.hybrid import Hybrid2D, HybridHealpix
from cosmosbi.compressors.summaries import flat_power_spectrum, healpix_bandpowers

NSIDE = 8
POLAR_CAP = np.sort(hp.query_disc(NSIDE, [0.0, 0.0, 1.0], 0.9, nest=True))
OFF_POLE_CAP = np.sort(hp.query_disc(NSIDE, hp.ang2vec(0.7, 0.3), 0.8, nest=True))


def test_square_symmetries_form_the_dihedral_group_and_keep_the_power_spectrum():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((3, 16, 16)))
    images = [square_symmetry(x, g) for g in range(8)]
    assert len({tuple(img[0].flatten().tolist()) for img in images}) == 8  # eight distinct maps
    torch.testing.assert_close(square_symmetry(square_symmetry(x, 1), 3), x, rtol=0, atol=0)
    edges = np.arange(0.5, 9.0)
    reference = flat_power_spectrum(x.numpy(), edges)[1]
    for img in images:  # exact up to the rounding of the FFT
        np.testing.assert_allclose(flat_power_spectrum(img.numpy(), edges)[1], reference, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="0..7"):
        square_symmetry(x, 8)


def test_hybrid2d_bandpower_branch_is_invariant_under_the_augmentation():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.standard_normal((4, 2, 16, 16)), dtype=torch.float32)
    net = Hybrid2D(16, in_channels=2, width=4, depth=2)
    augmentation = Augmentation(net.config)
    assert augmentation.size == 8
    reference = net.bandpower_features(x)
    for g in range(8):
        torch.testing.assert_close(net.bandpower_features(augmentation.apply(x, g)), reference, rtol=1e-12, atol=1e-12)
    moved = augmentation(x, np.random.default_rng(2))
    torch.testing.assert_close(net.bandpower_features(moved), reference, rtol=1e-12, atol=1e-12)
    assert not torch.equal(moved, x)


@pytest.mark.parametrize("pixels", [None, POLAR_CAP], ids=["full-sky", "polar-cap"])
def test_healpix_rotations_are_exact_symmetries_of_the_hybrid(pixels):
    indices = healpix_rotation_indices(NSIDE, pixels)
    assert len(indices) == 4 and np.array_equal(indices[0], np.arange(len(indices[0])))
    for index in indices:
        assert np.array_equal(np.sort(index), np.arange(len(index)))  # a permutation of the footprint
    # the same rotation as the HEALPix CNN's tested symmetry: pixel p goes to ang2pix(phi + 90 deg)
    full = np.arange(12 * NSIDE**2)
    theta, phi = hp.pix2ang(NSIDE, full, nest=True)
    perm = hp.ang2pix(NSIDE, theta, phi + np.pi / 2, nest=True)
    m = np.random.default_rng(3).standard_normal(12 * NSIDE**2)
    rotated = np.empty_like(m)
    rotated[perm] = m
    footprint = full if pixels is None else pixels
    np.testing.assert_array_equal(m[footprint][healpix_rotation_indices(NSIDE, footprint)[1]], rotated[footprint])

    x = torch.as_tensor(np.random.default_rng(4).standard_normal((3, 2, len(indices[0]))), dtype=torch.float32)
    net = HybridHealpix(NSIDE, pixels, in_channels=2, width=4, depth=2).eval()
    net.set_bandpower_standardisation(x)
    augmentation = Augmentation(net.config)
    edges = np.asarray(net.config["ell_edges"])
    reference = healpix_bandpowers(x.numpy(), NSIDE, pixels, edges)[1]
    for g in range(augmentation.size):
        moved = augmentation.apply(x, g)
        # pseudo-C_ell of a footprint mapped onto itself is rotation invariant; float32 rounding of the SHT
        np.testing.assert_allclose(
            healpix_bandpowers(moved.numpy(), NSIDE, pixels, edges)[1],
            reference,
            rtol=1e-9,
            atol=1e-9 * np.abs(reference).max(),
        )
        # the network is equivariant (CNN) and invariant (bandpowers): the summaries, hence the loss, do not move
        torch.testing.assert_close(net(moved), net(x), rtol=1e-5, atol=1e-5)


def test_augmentation_is_refused_where_there_is_no_exact_symmetry():
    assert len(healpix_rotation_indices(NSIDE, OFF_POLE_CAP)) == 1
    with pytest.raises(ValueError, match="not mapped onto itself"):
        Augmentation(HealpixCNN(NSIDE, OFF_POLE_CAP, width=4, depth=2).config)
    with pytest.raises(ValueError, match="no symmetry group"):
        Augmentation({"kind": "mlp", "in_features": 4})
    with pytest.raises(ValueError, match="square"):
        Augmentation({"kind": "resnet2d"}).apply(torch.zeros(2, 8, 6), 1)
