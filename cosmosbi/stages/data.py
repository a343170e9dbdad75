"""What the stages read: datasets of a run directory, the data as the estimator sees it, observations.

Shared by the estimate, validate, baseline and sample stages (and ``cosmosbi sample``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "open_dataset",
    "output_name",
    "estimator_inputs",
    "estimator_data",
    "observation_summaries",
    "read_observations",
    "observation_rows",
]


def open_dataset(path: Path, source: str = "config", hint: str = "run `cosmosbi simulate {source}` first"):
    """The dataset at ``path``; a missing one raises ValueError ending with ``hint``."""
    from cosmosbi.simulators.store import SimulationDataset

    try:
        return SimulationDataset(path)
    except ValueError as err:
        raise ValueError(f"{err} ({hint.format(source=source)})") from None


def output_name(dataset, settings) -> str:
    """The simulator output the estimator reads: ``estimator.output``, or the dataset's only one."""
    names = dataset.output_names
    if settings.output is not None:
        if settings.output not in names:
            raise ValueError(f"estimator.output: the dataset has outputs {list(names)}, not {settings.output!r}")
        return settings.output
    if len(names) != 1:
        raise ValueError(f"estimator.output: the dataset has outputs {list(names)}; name the one to use")
    return names[0]


def estimator_inputs(x: np.ndarray, settings) -> np.ndarray:
    """Summaries (N, d) of simulator outputs x: (N, ...) as the config's estimator section says
    (``summary: none`` flattens; ``power_spectrum``: log-bandpowers of square flat fields)."""
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


def estimator_data(config, layout, name: str, source: str = "config", *, hint: str = "run `cosmosbi compress` first"):
    """theta (M, D), the estimator's inputs t (M, d) and the raw outputs (M, ...) of dataset ``name``.

    With ``estimator.summary: compressor`` t are the summaries ``RUN_DIR/summaries/NAME`` and
    the raw outputs are None (read them from the simulations where needed).
    """
    settings = config.estimator
    if settings.summary == "compressor":
        path = layout.summaries(name)
        if not (path / "manifest.json").is_file():
            raise ValueError(f"{source}: estimator.summary is 'compressor' but {path} does not exist; {hint}")
        dataset = open_dataset(path, source)
        return dataset.theta, dataset.read("t"), None
    dataset = open_dataset(layout.sims(name), source)
    raw = dataset.read(output_name(dataset, settings))
    return dataset.theta, estimator_inputs(raw, settings), raw


def observation_summaries(config, layout, x: np.ndarray) -> np.ndarray:
    """Summaries (M, d) of simulator outputs x (M, ...) as the estimator was trained on them:
    by the trained compressor of ``RUN_DIR/compressor`` (``summary: compressor``) or by
    :func:`estimator_inputs`."""
    settings = config.estimator
    if settings.summary != "compressor":
        return estimator_inputs(x, settings)
    import torch

    from cosmosbi.compressors.trainer import load_compressor

    compressor, _ = load_compressor(layout.compressor)
    with torch.no_grad():
        return compressor(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy()


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


def observation_rows(config, layout, source: str = "config") -> dict[str, np.ndarray]:
    """The config's observations: {name: one simulator output}, from files or dataset rows."""
    out = {}
    for name, obs in (config.observations or {}).items():
        if obs.file is not None:
            out[name] = read_observations(obs.file, obs.key)
            continue
        dataset = open_dataset(layout.sims(obs.dataset), source)
        if not 0 <= obs.index < len(dataset):
            raise ValueError(
                f"{source}: observations.{name}.index {obs.index} is outside dataset {obs.dataset!r}"
                f" ({len(dataset)} rows)"
            )
        out[name] = dataset.read(output_name(dataset, config.estimator))[obs.index]
    return out
