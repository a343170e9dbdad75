import numpy as np
import pytest

from cosmosbi.compressors.summaries import flat_power_spectrum


def test_white_noise_has_flat_spectrum_equal_to_its_variance():
    rng = np.random.default_rng(0)
    fields = 2.0 * rng.standard_normal((200, 16, 16))
    k, power, counts = flat_power_spectrum(fields, np.arange(0.5, 11.0, 1.0))
    assert power.shape == (200, 10) and k.shape == counts.shape == (10,)
    assert np.all(counts > 0) and np.all((k > 0.5) & (k < 11.0))
    # E[P] = sigma^2 = 4; Var of a bin mean over M fields = 2 * 16 / counts / M (paired modes)
    se = np.sqrt(2 * 16 / counts / len(fields))
    assert np.all(np.abs(power.mean(0) - 4.0) < 5 * se)


def test_single_field_and_bad_input():
    k, power, counts = flat_power_spectrum(np.ones((8, 8)), [0.5, 2.5, 4.5])
    assert power.shape == (1, 2)
    np.testing.assert_allclose(power, 0.0, atol=1e-20)  # a constant field has only the k = 0 mode
    with pytest.raises(ValueError, match="shape"):
        flat_power_spectrum(np.ones((4, 8)), [0.5, 1.5])
    with pytest.raises(ValueError, match="increasing"):
        flat_power_spectrum(np.ones((8, 8)), [2.0, 1.0])
    with pytest.raises(ValueError, match="holds no Fourier modes"):
        flat_power_spectrum(np.ones((8, 8)), [0.5, 1.05, 1.1])


def test_healpix_bandpowers_match_the_input_spectrum_on_the_full_sky():
    from scipy import stats

    from cosmosbi.compressors.summaries import healpix_bandpowers
    from cosmosbi.simulators import HealpixGaussianField

    sim = HealpixGaussianField(nside=16, dtype="float64")
    theta = np.tile([1.0, 2.0], (60, 1))
    maps = sim.simulate(theta, np.random.default_rng(1))["map"]
    noise = np.random.default_rng(2).standard_normal(maps.shape) * 0.1
    pair = np.stack([maps, maps + noise], axis=1)  # two maps sharing the signal
    edges = np.arange(2, 33, 5)
    ell, bp, pairs = healpix_bandpowers(pair, 16, None, edges)
    assert pairs == [(0, 0), (0, 1), (1, 1)] and bp.shape == (60, 3, len(edges) - 1)
    cl = np.zeros(33)
    cl[2:] = sim.spectrum.power(theta[:1], np.arange(2, 33))[0]
    ells = np.arange(33)
    band = np.digitize(ells, edges) - 1
    expected = np.array([cl[band == k].mean() for k in range(len(edges) - 1)])
    # Var of a band mean of C_ell estimates: mean over the band of 2 C_ell^2 / (2 ell + 1), / n^2 ell's
    variance = np.array(
        [
            np.sum(2 * cl[band == k] ** 2 / (2 * ells[band == k] + 1)) / (band == k).sum() ** 2
            for k in range(len(expected))
        ]
    )
    for p in (0, 1):  # auto and cross spectrum of the signal
        chi2 = np.sum((bp[:, p].mean(0) - expected) ** 2 / (variance / len(maps)))
        assert chi2 < stats.chi2.ppf(0.999, len(expected)), chi2


def test_healpix_bandpowers_of_white_noise_on_a_cap_are_unbiased():
    import healpy as hp

    from cosmosbi.compressors.summaries import healpix_bandpowers

    nside = 16
    cap = np.sort(hp.query_disc(nside, [0, 0, 1], 1.0, nest=True))
    noise = np.random.default_rng(3).standard_normal((40, len(cap)))
    _, bp, _ = healpix_bandpowers(noise, nside, cap, np.array([10, 20, 30, 40]))
    expected = 4 * np.pi / (12 * nside**2)  # C_ell of unit white noise
    spread = bp[:, 0].std(0) / np.sqrt(len(noise))
    assert np.all(np.abs(bp[:, 0].mean(0) - expected) < 5 * spread)


def test_peak_counts():
    from cosmosbi.compressors.summaries import flat_peak_counts, healpix_peak_counts

    image = np.zeros((10, 10))
    image[4, 6] = 3.0
    image[1, 1] = 1.5
    np.testing.assert_array_equal(flat_peak_counts(image, [1.0, 2.0, 4.0]), [[1, 1]])
    # iid noise: a pixel is the maximum of its 3 x 3 patch with probability 1/9
    noise = np.random.default_rng(4).standard_normal((50, 32, 32))
    total = flat_peak_counts(noise, [-10, 10]).sum(1)
    assert abs(total.mean() - 1024 / 9) < 5 * total.std() / np.sqrt(len(total))
    nside = 8
    healpix_map = np.zeros(768)
    healpix_map[300] = 2.0
    assert healpix_peak_counts(healpix_map[None], nside, None, [1.0, 3.0]).tolist() == [[1]]
    cap = np.arange(0, 300)
    assert healpix_peak_counts(healpix_map[None, cap], nside, cap, [1.0, 3.0]).tolist() == [[0]]  # 300 outside
