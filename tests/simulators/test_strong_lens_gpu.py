"""Strong-lens rendering on the device (marked ``gpu``; the CPU case runs everywhere)."""

import numpy as np
import pytest

from cosmosbi.simulators.strong_lens import StrongLensSimulator

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# float32 rounding only: pixels reach ~240 background sigma, float32 keeps ~1e-7 of that per
# operation (~3e-5 sigma), and the sums over rays and subhalos add up a few tens of such
# errors in any order (CPU: 7e-5 sigma measured); the approximations of the fast settings
# (ray selection, far field) are identical on both devices
BOUND_SIGMA = 1e-3


@pytest.fixture(scope="module")
def lenses():
    """4 lenses with 10 subhalos each, and their exact (float64, CPU) images."""
    exact = StrongLensSimulator(device="cpu", dtype="float64")
    rngs = [np.random.default_rng([3, i]) for i in range(4)]
    nuisance, populations = exact.draw_parameters(np.tile([[0.1, -1.9]], (4, 1)), rngs, n_subhalos=10)
    return nuisance, populations, exact.render(nuisance, populations, exact=True).numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_float32_rendering_on_the_device_matches_float64(lenses, device):
    nuisance, populations, reference = lenses
    sim = StrongLensSimulator(device=device)
    sigma = sim.instrument.background_sigma
    image = sim.render(nuisance, populations, exact=True)
    assert image.device.type == device and image.shape == reference.shape
    assert np.abs(image.double().cpu().numpy() - reference).max() / sigma < BOUND_SIGMA
    fast = sim.render(nuisance, populations).double().cpu().numpy()
    on_cpu = StrongLensSimulator(device="cpu").render(nuisance, populations).double().numpy()
    assert np.abs(fast - on_cpu).max() / sigma < BOUND_SIGMA


@pytest.mark.parametrize("device", DEVICES)
def test_simulate_on_the_device_gives_noisy_images_on_the_host(device):
    sim = StrongLensSimulator(device=device)
    out = sim.simulate(np.tile([[0.1, -1.9]], (3, 1)), np.random.default_rng(0))
    assert out["image"].shape == (3, sim.instrument.n_pixels, sim.instrument.n_pixels)
    assert out["image"].dtype == np.float32 and np.isfinite(out["image"]).all()
