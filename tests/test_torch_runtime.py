"""Tests of the torch helpers: device names, seeded generators, the thread scope."""

import numpy as np
import pytest
import torch

from cosmosbi.cores import default_threads
from cosmosbi.torch_runtime import resolve_device, seeded_torch, torch_generator, torch_threads


def test_resolve_device_gives_torch_devices_and_names_bad_ones():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu'.*'tpu'"):
        resolve_device("tpu")
    with pytest.raises(TypeError, match="device"):
        resolve_device(0)


def test_seeded_generators_repeat_and_leave_the_global_state_alone():
    a = torch.rand(5, generator=torch_generator(3))
    assert torch.equal(a, torch.rand(5, generator=torch_generator(3)))
    assert not torch.equal(a, torch.rand(5, generator=torch_generator(4)))
    # a numpy Generator seeds through one draw, so equal generators give equal torch draws
    b = torch.rand(5, generator=torch_generator(np.random.default_rng(1)))
    assert torch.equal(b, torch.rand(5, generator=torch_generator(np.random.default_rng(1))))

    before = torch.random.get_rng_state()
    with seeded_torch(7):
        first = torch.rand(3)
    with seeded_torch(7):
        assert torch.equal(first, torch.rand(3))
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded_torch(np.random.default_rng(0)):
        c = torch.rand(3)
    with seeded_torch(np.random.default_rng(0)):
        assert torch.equal(c, torch.rand(3))
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="seed"):
            torch_generator(bad)


def test_thread_scope_sets_and_restores_and_explicit_counts_win():
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None) as n:
        assert n == default_threads() and torch.get_num_threads() == n
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="num_threads"):
            with torch_threads(bad):
                pass
