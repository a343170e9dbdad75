"""Saving and loading estimators and posterior samples, without pickle.

An estimator directory holds ``estimator.json`` (format version, kind, prior, architecture,
training settings and summary, data shape, ensemble weights) and ``weights.pt`` (the network's
``state_dict``, read back with ``torch.load(weights_only=True)``); an ensemble keeps each
member in ``member-<k>/``. Loading rebuilds the network from the JSON description and loads
the weights, so a saved estimator survives upgrades of cosmosbi, sbi and torch that keep the
architecture's parameter names.

Posterior samples are written as HDF5 (``samples``: (n, D) or (M, n, D), parameter names
and attributes) and as GetDist chains (``root.txt`` with columns weight, -log posterior,
parameters; ``root.paramnames``; ``root.ranges`` from the prior), which
``getdist.loadMCSamples(root)`` reads directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cosmosbi.estimators.ensemble import NLEEnsemble, NPEEnsemble
from cosmosbi.estimators.networks import FlowConfig, TrainingConfig, TrainingSummary, build_network
from cosmosbi.estimators.nle import NLE
from cosmosbi.estimators.npe import NPE
from cosmosbi.files import atomic_path, atomic_write_json, load_weights, provenance, read_json
from cosmosbi.simulators.priors import prior_from_config
from cosmosbi.torch_runtime import resolve_device, torch_generator

__all__ = [
    "FORMAT_VERSION",
    "save_estimator",
    "load_estimator",
    "save_samples_hdf5",
    "load_samples_hdf5",
    "write_getdist_chain",
    "check_observations",
]

FORMAT_VERSION = 1
META = "estimator.json"
WEIGHTS = "weights.pt"


def save_estimator(estimator, directory: str | Path) -> Path:
    """Write a trained NPE, NLE or ensemble to ``directory`` (created). Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": "cosmosbi-estimator",
        "format_version": FORMAT_VERSION,
        "kind": estimator.kind,
        "prior": estimator.prior.to_config(),
        "x_shape": list(estimator.x_shape) if estimator.x_shape is not None else None,
        "created": provenance(),
    }
    if isinstance(estimator, (NPEEnsemble, NLEEnsemble)):
        meta["ensemble"] = {
            "weights": estimator.weights.tolist(),
            "members": [f"member-{k}" for k in range(len(estimator.members))],
        }
        for name, member in zip(meta["ensemble"]["members"], estimator.members):
            save_estimator(member, directory / name)
    else:
        network = estimator._require_network()
        meta["flow"] = estimator.flow.to_dict()
        meta["training"] = estimator.training.to_dict()
        meta["summary"] = estimator.summary.to_dict() if estimator.summary else None
        embedding = estimator.embedding_net
        meta["embedding_net"] = (
            None if embedding is None else f"{type(embedding).__module__}.{type(embedding).__qualname__}"
        )
        state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        with atomic_path(directory / WEIGHTS) as tmp:
            torch.save(state, tmp)
    atomic_write_json(directory / META, meta)  # written last: its presence marks a complete save
    return directory


def load_estimator(directory: str | Path, *, embedding_net: torch.nn.Module | None = None, device: str = "cpu"):
    """Load what :func:`save_estimator` wrote.

    Args:
        directory: the estimator directory.
        embedding_net: a fresh instance of the embedding network the estimator was trained
            with (required when it had one; its weights are restored from the file).
        device: torch device for the loaded network (``"auto"``: CUDA when available).
    """
    directory = Path(directory)
    if not (directory / META).is_file():
        raise ValueError(f"{directory}: no {META}; not a saved cosmosbi estimator")
    meta = read_json(directory / META)
    if meta.get("format") != "cosmosbi-estimator":
        raise ValueError(f"{directory / META}: not a cosmosbi estimator file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / META}: format version {meta.get('format_version')} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    kind = meta["kind"]
    if "ensemble" in meta:
        members = [load_estimator(directory / name, device=device) for name in meta["ensemble"]["members"]]
        cls = NPEEnsemble if kind == "npe" else NLEEnsemble
        return cls(members, meta["ensemble"]["weights"])
    prior = prior_from_config(meta["prior"], where=f"{directory / META}: prior")
    flow = FlowConfig(**meta["flow"])
    training = TrainingConfig(**meta["training"])
    if meta.get("embedding_net") and embedding_net is None:
        raise ValueError(
            f"{directory}: trained with embedding network {meta['embedding_net']}; "
            "pass a fresh instance as embedding_net"
        )
    if kind == "npe":
        estimator = NPE(prior, flow, training, embedding_net=embedding_net, device=device)
    elif kind == "nle":
        estimator = NLE(prior, flow, training, device=device)
    else:
        raise ValueError(f"{directory / META}: unknown estimator kind {kind!r}")
    x_shape = tuple(meta["x_shape"])
    generator = torch_generator(0)  # shape-only placeholders; the state dict overwrites z-score buffers
    theta_dummy = torch.randn(64, prior.dim, generator=generator)
    x_dummy = torch.randn(64, *x_shape, generator=generator)
    network = build_network(kind, flow, theta_dummy, x_dummy, embedding_net)
    state = load_weights(directory / WEIGHTS)
    network.load_state_dict(state)
    estimator.device = resolve_device(device)
    estimator.network = network.to(estimator.device).eval()
    estimator.x_shape = x_shape
    if meta.get("summary"):
        estimator.summary = TrainingSummary(**meta["summary"])
    return estimator


def check_observations(x: np.ndarray, path: str | Path) -> np.ndarray:
    """Return ``x`` if it holds usable observations: a non-empty array of real numbers (integer
    or floating dtype), all finite. Otherwise raise ``ValueError`` naming ``path``, the file
    they were read from (a complex array would lose its imaginary part, an empty one would give
    no posterior, and a NaN or inf would only fail deep inside the sampler)."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        kind = "complex numbers" if np.issubdtype(x.dtype, np.complexfloating) else f"values of dtype {x.dtype}"
        raise ValueError(f"{path}: observations must be real numbers (integer or floating dtype), got {kind}")
    if x.size == 0:
        raise ValueError(f"{path}: no observations (an array of shape {x.shape})")
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}: observations must be finite; {int(bad.sum())} of {x.size} values are NaN or inf "
            f"(the first at index {first}: {x[first]})"
        )
    return x


def save_samples_hdf5(
    path: str | Path,
    samples: np.ndarray,
    names: Sequence[str],
    *,
    attrs: dict[str, Any] | None = None,
    log_prob: np.ndarray | None = None,
) -> Path:
    """Write samples (n, D) or (M, n, D) with parameter names (and optional log_prob) to HDF5, atomically."""
    import h5py

    samples = np.asarray(samples, dtype=float)
    if samples.shape[-1] != len(names):
        raise ValueError(f"samples have {samples.shape[-1]} parameters but {len(names)} names were given")
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("samples", data=samples)
            if log_prob is not None:
                handle.create_dataset("log_prob", data=np.asarray(log_prob, dtype=float))
            handle.attrs["parameter_names"] = json.dumps(list(names))
            handle.attrs["format"] = "cosmosbi-samples"
            handle.attrs["format_version"] = FORMAT_VERSION
            for key, value in (attrs or {}).items():
                handle.attrs[key] = json.dumps(value, default=_json_value)
    return path


def load_samples_hdf5(path: str | Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Read :func:`save_samples_hdf5` output: (samples, parameter names, other attributes)."""
    import h5py

    with h5py.File(path, "r") as handle:
        samples = handle["samples"][()]
        names = json.loads(handle.attrs["parameter_names"])
        attrs = {
            k: json.loads(v)
            for k, v in handle.attrs.items()
            if k not in ("parameter_names", "format", "format_version")
        }
        if "log_prob" in handle:
            attrs["log_prob"] = handle["log_prob"][()]
    return samples, names, attrs


def write_getdist_chain(
    root: str | Path,
    samples: np.ndarray,
    names: Sequence[str],
    *,
    log_prob: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    prior=None,
) -> Path:
    """Write a GetDist chain ``root.txt`` + ``root.paramnames`` (+ ``root.ranges`` from ``prior``).

    Args:
        root: chain root path (no extension).
        samples: (n, D).
        names: D parameter names (GetDist names: letters, digits, ``_``).
        log_prob: (n,) log posterior (GetDist stores its negative); zeros when not given.
        weights: (n,) sample weights (default ones).
        labels: D LaTeX labels (default: the names).
        prior: cosmosbi Prior whose finite bounds become the GetDist ranges.

    Returns:
        the path of ``root.txt``; ``getdist.loadMCSamples(str(root))`` reads the chain.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != len(names):
        raise ValueError(f"samples must have shape (n, {len(names)}), got {samples.shape}")
    n = len(samples)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    minus_log = np.zeros(n) if log_prob is None else -np.asarray(log_prob, dtype=float)
    if weights.shape != (n,) or minus_log.shape != (n,):
        raise ValueError(f"weights and log_prob must have shape ({n},)")
    labels = list(labels) if labels is not None else list(names)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    chain = root.with_name(root.name + ".txt")
    with atomic_path(chain) as tmp:
        np.savetxt(tmp, np.column_stack([weights, minus_log, samples]), fmt="%.10e")
    with atomic_path(root.with_name(root.name + ".paramnames")) as tmp:
        tmp.write_text("".join(f"{name}\t{label}\n" for name, label in zip(names, labels)))
    if prior is not None:
        lines = []
        for name, low, high in zip(names, prior.low, prior.high):
            lines.append(f"{name}\t{_bound(low)}\t{_bound(high)}\n")
        with atomic_path(root.with_name(root.name + ".ranges")) as tmp:
            tmp.write_text("".join(lines))
    return chain


def _bound(value: float) -> str:
    return "N" if not math.isfinite(value) else repr(float(value))


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
