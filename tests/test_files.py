"""Safe file names and torch weights read without running code."""

import os

import pytest
import torch

from cosmosbi.files import load_weights, safe_name


class RunsCode:
    """A pickle that runs a command when it is loaded (a REDUCE of os.system)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_weights_file_that_would_run_code_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"weight": RunsCode(f"touch {marker}")}, tmp_path / "weights.pt")
    with pytest.raises(
        ValueError, match=f"{tmp_path / 'weights.pt'}: not a weights file that loads without running code"
    ) as info:
        load_weights(tmp_path / "weights.pt")
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_damaged_weights_files_are_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] if content is None else content)
    with pytest.raises(ValueError, match=f"{path}: not a weights file"):
        load_weights(path)


def test_weights_round_trip(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "weights.pt")
    assert torch.equal(load_weights(tmp_path / "weights.pt")["weight"], state["weight"])


@pytest.mark.parametrize("name", ["train", "test-2", "v1.0_a", "A"])
def test_safe_names(name):
    assert safe_name(name) == name


@pytest.mark.parametrize("name", ["../x", "/x", "a/b", "a\\b", ".x", "-x", "a..b", "", "é", "x" * 129, 3])
def test_unsafe_names(name):
    with pytest.raises(ValueError, match="dataset name .* is not a plain file name"):
        safe_name(name, "dataset name")
