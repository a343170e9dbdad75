"""cosmosbi: simulation-based inference for galaxy surveys.

Simulators produce mock observations, compressors turn them into summaries, estimators
turn summaries into posteriors, and analyses check whether those posteriors can be trusted.

The names of a first analysis in Python are importable from here::

    from cosmosbi import BoxUniform, as_simulator, run_simulations, SimulationDataset, NPE, validate_posterior

They are loaded on first use, so ``import cosmosbi`` stays fast (it imports neither torch nor
the simulators). Importing cosmosbi also sets the OpenMP wait policy and, where the process
may use fewer cores than the machine has, the default thread counts of OpenMP and BLAS (see
:mod:`cosmosbi.cores`); import cosmosbi before torch for these to apply.
"""

import importlib

from cosmosbi.cores import set_thread_environment

set_thread_environment()

__version__ = "0.1.0"

# public name -> module defining it
_EXPORTS = {
    "BoxUniform": "cosmosbi.simulators.priors",
    "Prior": "cosmosbi.simulators.priors",
    "as_simulator": "cosmosbi.simulators.base",
    "make_simulator": "cosmosbi.simulators.base",
    "run_simulations": "cosmosbi.simulators.runner",
    "SimulationDataset": "cosmosbi.simulators.store",
    "NPE": "cosmosbi.estimators.npe",
    "NLE": "cosmosbi.estimators.nle",
    "validate_posterior": "cosmosbi.analyses.validation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cosmosbi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
