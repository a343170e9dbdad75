"""Observation files are checked before any summary or sampling: real, finite, not empty; errors name the file."""

import h5py
import numpy as np
import pytest

from cosmosbi.estimators.io import check_observations
from cosmosbi.stages.data import read_observations


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int64, np.uint8])
def test_real_finite_observations_pass_unchanged(dtype):
    x = np.arange(12, dtype=dtype).reshape(3, 4)
    assert check_observations(x, "obs.npy") is x


@pytest.mark.parametrize(
    "x, message",
    [
        (
            np.ones((2, 3)) + 1j,
            "obs.npy: observations must be real numbers (integer or floating dtype), got complex numbers",
        ),
        (
            np.array(["1.0", "2.0"]),
            "obs.npy: observations must be real numbers (integer or floating dtype), got values of dtype <U3",
        ),
        (np.array([b"1.0"], dtype=object), "got values of dtype object"),
        (np.array([True, False]), "got values of dtype bool"),
        (np.zeros((0, 8, 8)), r"obs.npy: no observations (an array of shape (0, 8, 8))"),
        (
            np.array([[1.0, np.nan], [np.inf, 2.0]]),
            "obs.npy: observations must be finite; 2 of 4 values are NaN or inf (the first at index (0, 1): nan)",
        ),
        (np.array([1.0, -np.inf]), "1 of 2 values are NaN or inf (the first at index (1,): -inf)"),
    ],
)
def test_unusable_observations_are_refused_naming_the_file(x, message):
    with pytest.raises(ValueError) as info:
        check_observations(x, "obs.npy")
    assert message in str(info.value)


def test_read_observations_checks_every_format(tmp_path):
    np.save(tmp_path / "complex.npy", np.ones(4, dtype=complex))
    with pytest.raises(ValueError, match=f"{tmp_path / 'complex.npy'}: observations must be real numbers"):
        read_observations(tmp_path / "complex.npy")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)))
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty.npz'}: no observations"):
        read_observations(tmp_path / "empty.npz")
    with h5py.File(tmp_path / "strings.h5", "w") as f:
        f["x"] = np.array([b"a", b"b"])
    with pytest.raises(ValueError, match=f"{tmp_path / 'strings.h5'}: observations must be real numbers"):
        read_observations(tmp_path / "strings.h5")
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["x"] = np.array([1.0, np.nan])
    with pytest.raises(ValueError, match=f"{tmp_path / 'nan.h5'}: observations must be finite"):
        read_observations(tmp_path / "nan.h5")
    np.save(tmp_path / "good.npy", np.ones((2, 3), dtype=np.float32))
    assert read_observations(tmp_path / "good.npy").shape == (2, 3)
