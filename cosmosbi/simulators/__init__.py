"""Priors, the simulator protocol and registry, built-in simulators, the MPI runner and the HDF5 store."""

from cosmosbi.simulators import (
    gaussian_field,  # noqa: F401  (registers built-in simulators)
    strong_lens,  # noqa: F401  (registers strong_lens)
    weak_lensing,  # noqa: F401  (registers weak_lensing)
)
from cosmosbi.simulators.base import (
    FunctionSimulator,
    OutputSpec,
    Simulator,
    as_simulator,
    make_simulator,
    register_simulator,
    row_generators,
    simulator_names,
    simulator_options,
)
from cosmosbi.simulators.camels import CamelsLike, camels_prior
from cosmosbi.simulators.camels_data import CamelsMultifieldDataset
from cosmosbi.simulators.gaussian_field import GaussianField2D, HealpixGaussianField
from cosmosbi.simulators.lss import LSSField, power_spectrum
from cosmosbi.simulators.priors import (
    BoxUniform,
    Gaussian,
    LogUniform,
    Normal,
    Prior,
    TruncatedNormal,
    Uniform,
    prior_from_config,
)
from cosmosbi.simulators.strong_lens import Instrument, StrongLensSimulator
from cosmosbi.simulators.weak_lensing import WeakLensingSimulator
from cosmosbi.simulators.weak_lensing_flat import FlatWeakLensingSimulator  # registers weak_lensing_flat

__all__ = [
    "BoxUniform",
    "CamelsLike",
    "CamelsMultifieldDataset",
    "FlatWeakLensingSimulator",
    "FunctionSimulator",
    "Gaussian",
    "GaussianField2D",
    "HealpixGaussianField",
    "Instrument",
    "LSSField",
    "LogUniform",
    "Normal",
    "OutputSpec",
    "Prior",
    "Simulator",
    "StrongLensSimulator",
    "TruncatedNormal",
    "Uniform",
    "WeakLensingSimulator",
    "as_simulator",
    "camels_prior",
    "make_simulator",
    "power_spectrum",
    "prior_from_config",
    "register_simulator",
    "row_generators",
    "simulator_names",
    "simulator_options",
]
