"""The estimator stages of a config: ``cosmosbi train`` and ``cosmosbi sample``.

``train`` reads the config's training dataset, turns each simulation into summaries
(``summary: power_spectrum`` gives log-bandpowers of a flat field; ``none`` flattens the
output; ``compressor`` uses the summaries that ``cosmosbi compress`` wrote), fits the configured NPE / NLE (or an ensemble of them) and saves it to
``RUN_DIR/estimator/``. ``sample`` loads it, summarises the observation(s) in ``--obs`` the
same way and writes posterior samples as HDF5 and as GetDist chains.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from cosmosbi.files import atomic_write_json

__all__ = ["summarise", "observation_summaries", "train_from_config", "sample_from_config", "estimator_dir", "read_observations"]

log = logging.getLogger("cosmosbi.estimators")


def estimator_dir(config) -> Path:
    return Path(config.run_dir) / "estimator"


def summarise(x: np.ndarray, settings) -> np.ndarray:
    """Summaries (N, d) of simulator outputs x: (N, ...) as the config's estimator section says."""
    x = np.asarray(x)
    if settings.summary == "none":
        return x.reshape(len(x), -1).astype(np.float32)
    from cosmosbi.compressors.summaries import flat_power_spectrum

    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"estimator.summary: power_spectrum needs square flat fields (N, n, n), got {x.shape}")
    n = x.shape[-1]
    edges = settings.bin_edges
    if edges is None:
        edges = np.arange(0.5, np.sqrt(2) * (n // 2) + 1.0, 1.0)
    power = flat_power_spectrum(x, np.asarray(edges, dtype=float))[1]
    return np.log(np.maximum(power, np.finfo(float).tiny)).astype(np.float32)


def observation_summaries(config, x: np.ndarray) -> np.ndarray:
    """Summaries (M, d) of simulator outputs x (M, ...) as the estimator was trained on them:
    the trained compressor of ``RUN_DIR/compressor`` (``summary: compressor``) or :func:`summarise`."""
    settings = config.estimator
    if settings.summary != "compressor":
        return summarise(x, settings)
    import torch

    from cosmosbi.compressors.trainer import load_compressor

    compressor, _ = load_compressor(Path(config.run_dir) / "compressor")
    with torch.no_grad():
        return compressor(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy()


def _output_name(dataset, settings) -> str:
    names = dataset.output_names
    if settings.output is not None:
        if settings.output not in names:
            raise ValueError(f"estimator.output: the dataset has outputs {list(names)}, not {settings.output!r}")
        return settings.output
    if len(names) != 1:
        raise ValueError(f"estimator.output: the dataset has outputs {list(names)}; name the one to use")
    return names[0]


def train_from_config(config, source: str = "config", progress: bool = False):
    """Fit the configured estimator on its dataset and save it. Returns (estimator, directory)."""
    from cosmosbi.estimators.ensemble import fit_ensemble
    from cosmosbi.estimators.io import save_estimator
    from cosmosbi.estimators.nle import NLE
    from cosmosbi.estimators.npe import NPE
    from cosmosbi.simulators.store import SimulationDataset

    settings = config.estimator
    if settings is None:
        raise ValueError(f"{source}: no estimator section; add one to train an estimator")
    if settings.dataset not in config.datasets:
        raise ValueError(f"{source}: estimator.dataset {settings.dataset!r} is not one of the datasets {list(config.datasets)}")
    simulator = config.build_simulator(source)
    if settings.summary == "compressor":
        summaries_dir = Path(config.run_dir) / "summaries" / settings.dataset
        if not (summaries_dir / "manifest.json").is_file():
            raise ValueError(f"{source}: estimator.summary is 'compressor' but {summaries_dir} does not exist; run `cosmosbi compress` first")
        dataset = SimulationDataset(summaries_dir)
        theta, t = dataset.theta, dataset.read("t")
    else:
        dataset = SimulationDataset(config.dataset_dir(settings.dataset))
        theta = dataset.theta
        t = summarise(dataset.read(_output_name(dataset, settings)), settings)
    cls = NPE if settings.kind == "npe" else NLE
    try:  # the config's fields override the estimator's defaults
        flow = dataclasses.replace(cls.default_flow, **settings.flow)
        training = dataclasses.replace(cls.default_training, **settings.training)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: estimator: {err}") from None
    rng = np.random.default_rng(settings.seed)
    if settings.ensemble > 1:
        estimator = fit_ensemble(settings.kind, simulator.prior, theta, t, rng, n_members=settings.ensemble, flows=[flow], training=training, device=settings.device)
    else:
        estimator = cls(simulator.prior, flow, training, device=settings.device).fit(theta, t, rng, progress=progress)
    directory = save_estimator(estimator, estimator_dir(config))
    atomic_write_json(directory / "config.json", config.model_dump(mode="json"))
    return estimator, directory


def read_observations(path: str | Path, key: str | None = None) -> np.ndarray:
    """Observations from ``.npy``, ``.npz`` (``key`` or the only array) or HDF5 (dataset ``key``, default ``x``),
    checked by :func:`~cosmosbi.estimators.io.check_observations` (real, finite, not empty)."""
    from cosmosbi.estimators.io import check_observations

    path = Path(path)
    return check_observations(_read_array(path, key), path)


def _read_array(path: Path, key: str | None) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"--obs: {path} not found")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if key is None:
                if len(data.files) != 1:
                    raise ValueError(f"--obs: {path} holds arrays {data.files}; choose one with --obs-key")
                key = data.files[0]
            return data[key]
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as handle:
            key = key or "x"
            if key not in handle:
                raise ValueError(f"--obs: {path} has no dataset {key!r}; choose one with --obs-key")
            return handle[key][()]
    raise ValueError(f"--obs: {path}: expected a .npy, .npz or .h5 file")


def sample_from_config(config, obs_path: str | Path, out: str | Path | None = None, *, n_samples: int | None = None, obs_key: str | None = None, source: str = "config") -> dict:
    """Sample the saved estimator's posterior for the observations in ``obs_path``.

    The file holds one simulator output (e.g. a field (n, n)) or a batch (M, n, n). Writes
    ``OUT.h5`` (samples (n, D) or (M, n, D)) and GetDist chains ``OUT.txt`` (one observation)
    or ``OUT_<m>.txt``. Returns a dict of what was written.
    """
    from cosmosbi.estimators.io import load_estimator, save_samples_hdf5, write_getdist_chain

    settings = config.estimator
    if settings is None:
        raise ValueError(f"{source}: no estimator section")
    directory = estimator_dir(config)
    estimator = load_estimator(directory, device=settings.device)
    simulator = config.build_simulator(source)
    x = read_observations(obs_path, obs_key)
    spec = simulator.output_spec
    name = settings.output or next(iter(spec))
    shape = tuple(spec[name].shape)
    single = tuple(x.shape) == shape
    if not single and tuple(x.shape[1:]) != shape:
        raise ValueError(f"--obs: expected one {name} of shape {shape} or a batch (M, *{shape}), got {x.shape}")
    t = observation_summaries(config, x[None] if single else x)
    n = int(n_samples or settings.n_samples)
    rng = np.random.default_rng(settings.seed + 1)
    samples = estimator.sample(n, t, rng)  # (M, n, D)
    out = Path(out) if out is not None else directory.parent / "posterior" / "samples"
    names = list(simulator.parameter_names)
    h5 = save_samples_hdf5(out.with_name(out.name + ".h5"), samples[0] if single else samples, names, attrs={"observations": str(obs_path), "estimator": str(directory)})
    chains = []
    for m, block in enumerate(samples):
        root = out if single else out.with_name(f"{out.name}_{m}")
        chains.append(write_getdist_chain(root, block, names, prior=estimator.prior))
    return {"hdf5": h5, "chains": chains, "n_observations": len(samples), "n_samples": n}
