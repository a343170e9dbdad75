import numpy as np
import pytest

from cosmosbi.estimators.baselines import exact_posterior_samples
from cosmosbi.estimators.reference import PowerSpectrumProblem

THETA_OBS = np.array([[1.0, 2.0]])


@pytest.fixture(scope="session")
def problem():
    return PowerSpectrumProblem(n_pixels=16)


@pytest.fixture(scope="session")
def small_data(problem):
    """2000 training simulations: theta (2000, 2) and log-bandpowers (2000, 11)."""
    theta, fields = problem.simulate(2000, np.random.default_rng(1))
    return theta, problem.summaries(fields)


@pytest.fixture(scope="session")
def observation(problem):
    """One field at THETA_OBS, its summaries (11,) and 1000 exact-posterior samples."""
    _, fields = problem.simulate(1, np.random.default_rng(5), THETA_OBS)
    exact = exact_posterior_samples(problem.simulator, fields[0], 1000, np.random.default_rng(6))
    return fields[0], problem.summaries(fields)[0], exact.samples
