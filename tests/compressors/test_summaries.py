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
