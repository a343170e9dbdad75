"""Typed analysis configs, read from YAML and validated on load.

A config names a run directory, a simulator (a registered name and its options), an optional
prior (default: the simulator's), and the datasets to simulate::

    run_dir: runs/gaussian_field        # relative paths are relative to the working directory
    simulator:
      name: gaussian_field
      options: {n_pixels: 32}
    prior:                              # optional
      A: {uniform: [0.5, 2.0]}
      B: {normal: [2.0, 0.3], bounds: [1.0, 3.0]}
    datasets:
      train: {n: 1000, seed: 1}
      test: {n: 200, seed: 2}
      fiducial: {n: 100, seed: 3, fixed: {A: 1.0, B: 2.0}}   # every row at the same theta
      variant: {n: 200, seed: 4, simulator: {name: gaussian_field, options: {k_pivot: 4}}}
    batch_size: 64
    compressor:                         # optional: `cosmosbi compress`
      input: field                      # which simulator output to compress
      network: {kind: resnet2d, width: 16, depth: 3}
      loss: vmim                        # vmim | mse | gaussian_nll
      train_on: train
      apply_to: [train, test]           # default: every dataset
      train: {epochs: 30, batch_size: 128, learning_rate: 0.001}

Every error (malformed YAML, unknown key, missing field, wrong type, unknown simulator, bad
prior) is a :class:`ConfigError` naming the file and the key. Nested option sections
(``compressor.network``, ``compressor.loss_options``, ``estimator.flow``, ``estimator.training``)
are checked against the options of what they configure; integers are refused as booleans
(``n: true``) and must fit in 64 bits; dataset and observation names must be plain file names.

A simulator named ``module:function`` is the user's code: reading and validating a config
(``load_config``, ``cosmosbi status --config``, ``cosmosbi slurm submit --dry-run``) checks the
form of the name only and neither imports the module nor calls the function; its options are
checked when a stage builds the simulator (``SimulateConfig.build_simulator``), which runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import operator
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from cosmosbi.files import safe_name
from cosmosbi.simulators.base import Simulator, make_simulator, simulator_names
from cosmosbi.simulators.priors import Prior, prior_from_config

__all__ = [
    "ConfigError",
    "OptionError",
    "SimulateConfig",
    "DatasetConfig",
    "SimulatorConfig",
    "EstimatorConfig",
    "BaselineConfig",
    "TuneConfig",
    "TuneRange",
    "load_config",
    "default_config_path",
    "check_options",
    "is_factory_name",
    "with_setting",
    "TUNABLE",
    "Int",
    "Seed",
    "Real",
]


class ConfigError(ValueError):
    """An invalid config; the message names the file and the offending key."""


INT64_MAX = 2**63 - 1


def _not_bool(value):
    if isinstance(value, bool):  # a ValueError, which pydantic reports with the key (a TypeError would escape)
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")  # noqa: TRY004
    return value


# Integers as numpy stores them (int64), never booleans; seeds are stored with the simulations.
Int = Annotated[int, BeforeValidator(_not_bool), Field(le=INT64_MAX)]
Seed = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=INT64_MAX)]
Real = Annotated[float, BeforeValidator(_not_bool)]

FACTORY_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_factory_name(name: str) -> bool:
    """Whether a simulator name is a user's ``module:function`` (not a registered simulator)."""
    return ":" in name and name not in simulator_names()


class OptionError(ValueError):
    """An invalid entry of a nested option section; ``key`` (or None) names the entry."""

    def __init__(self, key: str | None, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


def _config_type(annotation):
    """``annotation`` with int and float replaced by :data:`Int` and :data:`Real` (also inside unions)."""
    if annotation is int:
        return Int
    if annotation is float:
        return Real
    if annotation is inspect.Parameter.empty:
        return Any
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, (_config_type(a) for a in args))
    return annotation


def check_options(options: dict, fields: dict[str, tuple[Any, Any]]) -> dict:
    """Validate a nested option section against ``fields`` ({name: (annotation, default)}).

    Returns the given options with their values converted to the annotated types; an unknown
    key or a value of the wrong type raises :class:`OptionError` naming the key.
    """
    if not isinstance(options, dict):
        raise OptionError(None, f"expected a mapping of options, got {type(options).__name__}")
    model = pydantic.create_model(
        "Options",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **{
            name: (_config_type(annotation), None if default is inspect.Parameter.empty else default)
            for name, (annotation, default) in fields.items()
        },
    )
    try:
        validated = model.model_validate(options)
    except pydantic.ValidationError as err:
        item = err.errors()[0]
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            raise OptionError(key, f"unknown key; the keys are {sorted(fields)}") from None
        raise OptionError(key, f"{_message(item)} (got {item.get('input')!r})") from None
    return {key: getattr(validated, key) for key in options}


def _dataclass_options(cls, options: dict) -> dict:
    """Options of dataclass ``cls`` (types and checks from the dataclass itself)."""
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: (hints[f.name], None if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(cls)
        if f.init
    }
    values = check_options(options, fields)
    try:
        cls(**values)
    except ValueError as err:
        raise OptionError(None, str(err)) from None
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatorConfig(_Strict):
    name: str = Field(description="a registered simulator, or module:function returning one (code run by the stages)")
    options: dict[str, Any] = Field(default_factory=dict)

    @pydantic.field_validator("name")
    @classmethod
    def _name_form(cls, name: str) -> str:
        if ":" in name and not FACTORY_NAME.match(name):
            raise ValueError(f"{name!r} is neither a registered simulator nor of the form module:function")
        return name


class DatasetConfig(_Strict):
    n: Int = Field(gt=0, description="number of simulations")
    seed: Seed = Field(description="root seed in [0, 2^63); simulation i uses SeedSequence([seed, i])")
    fixed: dict[str, Real] | None = Field(
        default=None, description="simulate every row at these parameter values instead of prior draws"
    )
    simulator: SimulatorConfig | None = Field(
        default=None, description="a variant simulator for this dataset (same parameters), e.g. another feedback model"
    )
    simulation_timeout_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="seconds one simulation may take; a slower one is recorded as failed (a SIGALRM guard)",
    )

    @field_validator("simulation_timeout_s", mode="before")
    @classmethod
    def _seconds_not_bool(cls, value):
        if isinstance(value, bool):
            raise ValueError("expected a number of seconds, not a boolean")
        return value


class TrainConfig(_Strict):
    """Settings of :class:`cosmosbi.compressors.trainer.TrainSettings`."""

    epochs: Int = Field(default=50, gt=0)
    batch_size: Int = Field(default=128, gt=0)
    learning_rate: Real = Field(default=1e-3, gt=0)
    weight_decay: Real = Field(default=1e-5, ge=0)
    patience: Int = Field(default=8, gt=0)
    lr_patience: Int = Field(default=3, gt=0)
    lr_factor: Real = Field(default=0.5, gt=0, lt=1)
    val_fraction: Real = Field(default=0.1, gt=0, lt=1)
    seed: Seed = 0
    device: str = "auto"
    mixed_precision: bool = False
    num_workers: Int = Field(default=0, ge=0)
    num_threads: Int | None = Field(default=None, gt=0)
    augment: bool = Field(
        default=False, description="move training maps by random exact symmetries (flips, 90-degree rotations)"
    )


class CompressorConfig(_Strict):
    input: str = Field(description="name of the simulator output to compress")
    network: dict[str, Any] = Field(
        description="{kind: resnet2d | healpix_cnn | hybrid2d | hybrid_healpix | mlp, options...}"
    )
    loss: str = "vmim"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    summary_dim: Int | None = Field(default=None, gt=0)
    train_on: str = "train"
    apply_to: list[str] | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

    @pydantic.field_validator("network")
    @classmethod
    def _network_options(cls, network: dict) -> dict:
        from cosmosbi.compressors.networks import NETWORKS, network_options

        kind = network.get("kind")
        if kind not in NETWORKS:
            raise OptionError("kind", f"expected one of {sorted(NETWORKS)}, got {kind!r}")
        options = {k: v for k, v in network.items() if k != "kind"}
        params = network_options(kind)
        return {"kind": kind, **check_options(options, {k: (p.annotation, p.default) for k, p in params.items()})}

    @pydantic.field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        from cosmosbi.compressors.losses import LOSSES

        if loss not in LOSSES:
            raise ValueError(f"expected one of {sorted(LOSSES)}, got {loss!r}")
        return loss

    @pydantic.field_validator("loss_options")
    @classmethod
    def _loss_options(cls, options: dict, info: pydantic.ValidationInfo) -> dict:
        from cosmosbi.compressors.losses import LOSSES

        if info.data.get("loss") not in LOSSES:
            return options  # the loss itself is reported
        loss = LOSSES[info.data["loss"]]
        params = list(inspect.signature(loss, eval_str=True).parameters.values())[2:]  # after (D, d)
        return check_options(options, {p.name: (p.annotation, p.default) for p in params})


class EstimatorConfig(_Strict):
    """The optional ``estimator`` section, read by ``cosmosbi train`` and ``cosmosbi sample``.

    ``flow`` and ``training`` take the fields of :class:`cosmosbi.estimators.FlowConfig`
    (model, hidden_features, num_transforms, ...) and :class:`cosmosbi.estimators.TrainingConfig`
    (batch_size, learning_rate, stop_after_epochs, ...); unset fields keep their defaults.
    """

    kind: Literal["npe", "nle"] = "npe"
    dataset: str = Field(default="train", description="the dataset to train on")
    output: str | None = Field(default=None, description="simulator output to use (default: the only one)")
    summary: Literal["power_spectrum", "none", "compressor"] = Field(
        default="power_spectrum",
        description="log-bandpowers of a flat field, the flattened output, or the trained compressor's summaries",
    )
    bin_edges: list[Real] | None = Field(default=None, description="wavenumber bin edges (default: unit-width bins)")
    flow: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    ensemble: Int = Field(default=1, ge=1, description="number of ensemble members")
    seed: Seed = 0
    n_samples: Int = Field(default=1000, gt=0, description="posterior samples per observation")
    ppc_simulations: Int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="simulations at posterior draws for each observation's posterior predictive check "
        "(default 100; 0: no check)",
    )
    device: str = "auto"

    @pydantic.field_validator("ppc_simulations")
    @classmethod
    def _enough_simulations(cls, n: int | None) -> int | None:
        if n is not None and 0 < n < 10:
            raise ValueError(f"expected 0 (no posterior predictive check) or at least 10 simulations, got {n}")
        return n

    @pydantic.field_validator("flow")
    @classmethod
    def _flow_options(cls, flow: dict) -> dict:
        from cosmosbi.estimators.networks import FlowConfig

        return _dataclass_options(FlowConfig, flow)

    @pydantic.field_validator("training")
    @classmethod
    def _training_options(cls, training: dict) -> dict:
        from cosmosbi.estimators.networks import TrainingConfig

        return _dataclass_options(TrainingConfig, training)


class ValidationConfig(_Strict):
    """The optional ``validation`` section, read by ``cosmosbi validate``."""

    test: str = Field(default="test", description="dataset of test simulations")
    n_test: Int | None = Field(default=None, gt=0, description="use only the first n_test test simulations")
    n_samples: Int = Field(default=1000, gt=1, description="posterior samples per test simulation")
    corner: Int = Field(default=3, ge=0, description="test simulations shown in triangle plots")
    exact: bool = Field(default=True, description="compare with the exact posterior where the simulator has one")
    exact_on: str | None = Field(
        default=None,
        description=(
            "dataset whose first `corner` simulations are shown and compared with the exact posterior "
            "(default: the test dataset)"
        ),
    )
    derived: list[str] = Field(default_factory=list, description="derived quantities to calibrate, e.g. [S_8]")
    shift: list[str] = Field(
        default_factory=list, description="datasets (e.g. another variant) to check domain shift on"
    )
    alpha: Real = Field(default=0.01, gt=0, lt=1, description="significance level of the calibration tests")
    seed: Seed = 0


class SlurmJobConfig(_Strict):
    """Resources of one batch job of ``cosmosbi slurm submit`` (unset: the site's defaults)."""

    time: str | None = Field(default=None, description="wall-clock limit, e.g. 04:00:00")
    nodes: Int | None = Field(default=None, gt=0, description="nodes (--nodes)")
    ntasks: Int | None = Field(
        default=None,
        gt=0,
        description="MPI tasks of the simulate job; data-parallel training processes of the compress job",
    )
    cpus_per_task: Int | None = Field(default=None, gt=0)
    mem: str | None = Field(default=None, description="memory per node, e.g. 16G")
    gpus: Int | None = Field(default=None, ge=0, description="GPUs (--gpus)")
    partition: str | None = Field(default=None, description="overrides slurm.partition for this job")
    array: Int | None = Field(
        default=None,
        gt=0,
        description="simulate only: run as a job array of this many independent chunks instead of one MPI job",
    )


class SlurmConfig(_Strict):
    """The ``slurm`` section: how ``cosmosbi slurm submit`` writes and submits the batch jobs."""

    partition: str | None = None
    account: str | None = None
    modules: list[str] = Field(default_factory=list, description="modules to `module load` in every job")
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before cosmosbi, e.g. `source venv/bin/activate`"
    )
    python: str = Field(default="python", description="the Python interpreter that has cosmosbi installed")
    mpi: str = Field(default="pmi2", description="srun --mpi= plugin for the MPI simulate job")
    sbatch_options: list[str] = Field(
        default_factory=list, description="extra #SBATCH options for every job, e.g. --qos=normal"
    )
    jobs: dict[
        Literal["simulate", "compress", "estimate", "validate", "baseline", "sample", "tune"], SlurmJobConfig
    ] = Field(default_factory=dict)


class ObservationConfig(_Strict):
    """One observation to infer the parameters of (``cosmosbi run``'s sample stage): a file
    (``.npy``, ``.npz`` or ``.h5``, with ``key`` naming the array where needed) or a row of one
    of the config's datasets (a mock observation with known parameters)."""

    file: str | None = Field(default=None, description="path of the observed simulator output")
    key: str | None = Field(default=None, description="array name inside a .npz / .h5 file")
    dataset: str | None = Field(default=None, description="take the observation from this dataset ...")
    index: Int = Field(default=0, ge=0, description="... at this row")

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.dataset is None):
            raise ValueError("give exactly one of file or dataset")
        return self


class BaselineConfig(_Strict):
    """The optional ``baseline`` section (``cosmosbi run``'s baseline stage): the power-spectrum
    Gaussian-likelihood posterior of test observations against the full-field estimator's
    (see :mod:`cosmosbi.analyses.baseline`)."""

    summary: Literal["healpix_bandpowers", "power_spectrum"] = Field(
        description="tomographic pseudo-C_ell on the footprint, or the power spectrum of a flat field"
    )
    input: str | None = Field(
        default=None, description="simulator output to take bandpowers of (default: the only map output)"
    )
    bin_edges: list[Real] | None = Field(default=None, description="multipole (or wavenumber) bin edges")
    transform: Literal["log_auto", "none"] = Field(
        default="log_auto", description="log of the auto-spectrum bandpowers, or none"
    )
    fiducial: str = Field(description="dataset simulated at one fixed theta, for the covariance")
    correction: Literal["hartlap", "sellentin-heavens", "none"] = "hartlap"
    mean_dataset: str = Field(default="train", description="dataset the polynomial mean mu(theta) is fitted to")
    mean_degree: Int = Field(default=2, ge=1, description="total degree of the polynomial mean")
    test: str = Field(default="test", description="dataset of the test observations")
    n_test: Int = Field(default=50, gt=1, description="compare on the first n_test test simulations")
    n_samples: Int = Field(default=2000, gt=1, description="posterior samples per observation and method")
    pair: list[str] | None = Field(
        default=None, min_length=2, max_length=2, description="parameters of the area ratio (default: the first two)"
    )
    figure_dpi: Int = Field(default=80, gt=0)
    seed: Seed = 0


# settings ``cosmosbi tune`` may search: the options under these sections, and these keys
TUNABLE = (
    "compressor.network.",
    "compressor.train.",
    "compressor.loss_options.",
    "compressor.summary_dim",
    "estimator.flow.",
    "estimator.training.",
)


class TuneRange(_Strict):
    """A numeric search range: integers when ``low`` and ``high`` are both integers, else reals;
    ``log``: sampled uniformly in the logarithm (``low`` > 0)."""

    low: Annotated[int | float, BeforeValidator(_not_bool)]
    high: Annotated[int | float, BeforeValidator(_not_bool)]
    log: bool = False

    @pydantic.model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: needs low > 0, got low={self.low!r}")
        return self


Choice = str | int | float | bool | None


class TuneConfig(_Strict):
    """The optional ``tune`` section, read by ``cosmosbi tune`` (see :mod:`cosmosbi.tune`)::

        tune:
          trials: 20
          parallel: 2
          space:
            compressor.network.width: [8, 16, 32]            # a choice
            estimator.training.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
            estimator.flow.hidden_features: {low: 16, high: 128}   # integers

    Keys are dotted paths to settings of the compressor (``network``, ``train``,
    ``loss_options``, ``summary_dim``) or the estimator (``flow``, ``training``); every value
    a key can take is checked when the config is read.
    """

    trials: Int = Field(default=20, gt=0, description="trials of the search (finished trials count across resumes)")
    parallel: Int = Field(default=1, gt=0, description="trials run at once (processes, or SLURM array tasks)")
    sampler: Literal["tpe", "random"] = "tpe"
    seed: Seed = 0
    space: dict[str, Annotated[list[Choice], Field(min_length=1)] | TuneRange] = Field(min_length=1)


class SimulateConfig(_Strict):
    run_dir: str = "cosmosbi-run"
    simulator: SimulatorConfig
    prior: dict[str, dict[str, Any]] | None = None
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    batch_size: Int = Field(default=64, gt=0)
    compressor: CompressorConfig | None = None
    estimator: EstimatorConfig | None = None
    validation: ValidationConfig | None = None
    observations: dict[str, ObservationConfig] | None = None
    baseline: BaselineConfig | None = None
    tune: TuneConfig | None = None
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @pydantic.field_validator("datasets", "observations", mode="before")
    @classmethod
    def _plain_names(cls, section, info: pydantic.ValidationInfo):
        what = {"datasets": "dataset name", "observations": "observation name"}[info.field_name]
        for name in section if isinstance(section, dict) else []:
            try:
                safe_name(name, what)
            except ValueError as err:
                raise OptionError(None, str(err)) from None
        return section

    # ------------------------------------------------------------- derived objects

    def build_simulator(self, source: str = "config", dataset: str | None = None) -> Simulator:
        """The configured simulator (or dataset ``dataset``'s own variant), with the configured
        prior (if any) replacing its default."""
        section = self.simulator
        where = "simulator"
        if dataset is not None and self.datasets[dataset].simulator is not None:
            section, where = self.datasets[dataset].simulator, f"datasets.{dataset}.simulator"
        try:
            simulator = make_simulator(section.name, section.options, where=where)
            if self.prior is not None:
                prior = prior_from_config(self.prior)
                if prior.names != tuple(simulator.parameter_names):
                    raise ValueError(
                        f"prior: parameters {list(prior.names)} must match the simulator's "
                        f"parameters {list(simulator.parameter_names)} (same names, same order)"
                    )
                simulator.prior = prior
            if dataset is not None and tuple(simulator.parameter_names) != tuple(
                self.build_simulator(source).parameter_names
            ):
                raise ValueError(
                    f"{where}: the variant's parameters {list(simulator.parameter_names)} "
                    "differ from the main simulator's"
                )
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
        return simulator

    def declared_parameter_names(self, source: str = "config") -> list[str] | None:
        """The parameter names, known without running user code: those of a registered
        simulator or of the prior section; None for a ``module:function`` simulator without a
        prior section (only its factory can tell)."""
        if self.prior is not None:
            try:
                return list(prior_from_config(self.prior).names)
            except ValueError as err:
                raise ConfigError(f"{source}: {err}") from None
        if is_factory_name(self.simulator.name):
            return None
        return list(self.build_simulator(source).parameter_names)

    def dataset_theta(self, name: str, prior: Prior, source: str = "config") -> np.ndarray | None:
        """Fixed theta (n, D) for dataset ``name`` if it sets ``fixed``, else None."""
        dataset = self.datasets[name]
        if dataset.fixed is None:
            return None
        missing = [p for p in prior.names if p not in dataset.fixed]
        extra = [p for p in dataset.fixed if p not in prior.names]
        if missing or extra:
            raise ConfigError(
                f"{source}: datasets.{name}.fixed must give exactly the parameters {list(prior.names)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
            )
        row = np.array([dataset.fixed[p] for p in prior.names], dtype=float)
        try:
            prior.check(row)
        except ValueError as err:
            raise ConfigError(f"{source}: datasets.{name}.fixed: {err}") from None
        return np.tile(row, (dataset.n, 1))


def default_config_path(name: str = "default") -> Path:
    """A built-in config: ``default`` (a small Gaussian-field dataset, `cosmosbi simulate`) or
    ``quickstart`` (the whole Gaussian-field analysis, `cosmosbi run`)."""
    return Path(str(resources.files("cosmosbi") / "data" / f"{name}.yaml"))


def load_config(path: str | Path, model: type[BaseModel] = SimulateConfig) -> SimulateConfig:
    """Read and validate a YAML config; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        config = model.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{path}: " + _describe(err)) from None
    if isinstance(config, SimulateConfig):
        _check_simulators(config, path)
        if config.estimator is not None and config.estimator.dataset not in config.datasets:
            name = config.estimator.dataset
            raise ConfigError(f"{path}: estimator.dataset: no dataset {name!r}; datasets are {list(config.datasets)}")
        if config.compressor is not None:
            for key, name in [
                ("train_on", config.compressor.train_on),
                *(("apply_to", n) for n in config.compressor.apply_to or []),
            ]:
                if name not in config.datasets:
                    raise ConfigError(
                        f"{path}: compressor.{key}: no dataset {name!r}; the config defines {list(config.datasets)}"
                    )
        v = config.validation
        for key, name in (
            [
                ("validation.test", v.test),
                ("validation.exact_on", v.exact_on),
                *(("validation.shift", n) for n in v.shift),
            ]
            if v
            else []
        ):
            if name is not None and name not in config.datasets:
                raise ConfigError(f"{path}: {key}: no dataset {name!r}; the config defines {list(config.datasets)}")
        if config.baseline is not None:
            _check_baseline(config, path)
        if config.tune is not None:
            _check_tune(config, path)
        for name, obs in (config.observations or {}).items():
            if config.estimator is None:
                raise ConfigError(f"{path}: observations need an estimator section to sample their posteriors")
            if obs.dataset is not None and obs.dataset not in config.datasets:
                raise ConfigError(
                    f"{path}: observations.{name}.dataset: no dataset {obs.dataset!r}; "
                    f"the config defines {list(config.datasets)}"
                )
    return config


def _check_simulators(config: SimulateConfig, path) -> None:
    """Build the registered simulators (unknown names, bad options or a prior that does not
    match fail now); check only the prior of a ``module:function`` simulator, whose code runs
    when a stage builds it, never when a config is read."""
    main_is_factory = is_factory_name(config.simulator.name)
    if main_is_factory:
        if config.prior is not None:
            try:
                prior_from_config(config.prior)
            except ValueError as err:
                raise ConfigError(f"{path}: {err}") from None
    else:
        config.build_simulator(str(path))
    for name, dataset in config.datasets.items():
        section = dataset.simulator
        if section is None or is_factory_name(section.name):
            continue
        if main_is_factory:  # its options only: the parameters are compared when the stage runs
            try:
                make_simulator(section.name, section.options, where=f"datasets.{name}.simulator")
            except ValueError as err:
                raise ConfigError(f"{path}: {err}") from None
        else:
            config.build_simulator(str(path), name)


def _check_baseline(config: SimulateConfig, path) -> None:
    section = config.baseline
    if config.estimator is None:
        raise ConfigError(f"{path}: baseline needs an estimator section (the full-field posterior it is compared with)")
    for key in ("fiducial", "mean_dataset", "test"):
        name = getattr(section, key)
        if name not in config.datasets:
            raise ConfigError(
                f"{path}: baseline.{key}: no dataset {name!r}; the config defines {list(config.datasets)}"
            )
    if config.datasets[section.fiducial].fixed is None:
        raise ConfigError(
            f"{path}: baseline.fiducial: dataset {section.fiducial!r} must set `fixed` "
            "(simulations at one theta give the covariance)"
        )
    names = config.declared_parameter_names(str(path))
    for name in section.pair if names is not None and section.pair else []:
        if name not in names:
            raise ConfigError(f"{path}: baseline.pair: unknown parameter {name!r}; parameters are {names}")
    if section.pair is not None and section.pair[0] == section.pair[1]:
        raise ConfigError(f"{path}: baseline.pair: two different parameters needed, got {section.pair}")


def with_setting(dump: dict, key: str, value) -> dict:
    """A copy of config data ``dump`` with the setting at dotted path ``key`` set to ``value``
    (``compressor.network.width``); a KeyError names a missing section."""
    dump = copy.deepcopy(dump)
    *sections, last = key.split(".")
    node = dump
    for depth, section in enumerate(sections):
        if not isinstance(node.get(section), dict):
            raise KeyError(f"the config has no {'.'.join(sections[: depth + 1])} section")
        node = node[section]
    node[last] = value
    return dump


def _check_tune(config: SimulateConfig, path) -> None:
    """Every key of the search space names a tunable setting, and every value it can take
    (each choice; both ends of a range) is valid there."""
    if config.compressor is None and config.estimator is None:
        raise ConfigError(
            f"{path}: tune: needs a compressor or an estimator section (whose validation loss scores a trial)"
        )
    dump = config.model_dump(mode="json")
    for key, spec in config.tune.space.items():
        where = f"{path}: tune.space.{key}"
        if not any(key.startswith(p) if p.endswith(".") else key == p for p in TUNABLE):
            prefixes = [p for p in TUNABLE if p.endswith(".")]
            raise ConfigError(
                f"{where}: not a tunable setting; keys start with {prefixes}"
                f" or are {[p for p in TUNABLE if p not in prefixes]}"
            )
        if key.endswith(".") or key.split(".")[-1] == "kind":
            raise ConfigError(f"{where}: not a tunable setting (name one option, e.g. compressor.network.width)")
        for value in spec if isinstance(spec, list) else [spec.low, spec.high]:
            try:
                SimulateConfig.model_validate(with_setting(dump, key, value))
            except KeyError as err:
                raise ConfigError(f"{where}: {err.args[0]}") from None
            except pydantic.ValidationError as err:
                raise ConfigError(f"{where}: value {value!r} is not valid there: {_describe(err)}") from None


def _message(item) -> str:
    """Pydantic's message for one error, without its "Value error, " prefix."""
    error = item.get("ctx", {}).get("error")
    return str(error) if isinstance(error, ValueError) else item["msg"]


def _describe(err: pydantic.ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        error = item.get("ctx", {}).get("error")
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif isinstance(error, OptionError):
            lines.append(f"{key}.{error.key}: {error.message}" if error.key else f"{key}: {error.message}")
        elif isinstance(error, ValueError):
            lines.append(f"{key}: {error}")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)
