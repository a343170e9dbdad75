"""Train a compressor on a simulation dataset, with checkpoints that resume after a kill.

    compressor = make_compressor({"kind": "resnet2d", "width": 16}, dataset, "field", loss="vmim")
    loss = make_loss("vmim", compressor.parameter_dim, compressor.summary_dim)
    result = train_compressor(compressor, loss, dataset, "runs/x/compressor", TrainSettings(epochs=30))
    compress_dataset(compressor, test_dataset, "runs/x/summaries/test")

Training streams batches from :class:`~cosmosbi.simulators.store.SimulationDataset` through a
``DataLoader`` (a dataset larger than ``in_memory_bytes`` is never loaded whole), splits
train / validation by simulation index, stops early on the validation loss, lowers the
learning rate on plateaus, writes a checkpoint after every epoch and resumes from it, and
logs the losses (``history.json``, ``history.csv``, ``loss.png``). On CPU a given seed gives
the same weights, also across a kill and resume: epoch e shuffles with its own seed.

Started by ``torchrun`` or ``srun`` over several processes, training is data-parallel
(:mod:`cosmosbi.compressors.distributed`): each process takes its share of every global batch
of ``batch_size`` rows, gradients are averaged over the processes, the validation loss is summed
over them, and rank 0 writes the checkpoints and the results. The losses per epoch are those of
one process at the same batch size up to the order of float sums; a network with batch
normalisation normalises each process's share on its own (DDP's batch statistics).

Files in the output directory: ``checkpoint.pt`` (latest epoch, with the optimiser), and at
the end ``compressor.pt`` + ``compressor.json`` (the best epoch's weights and everything needed
to rebuild it), ``loss.pt`` + the loss config inside ``compressor.json`` (for VMIM: the flow
q(theta | t)). Weights load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cosmosbi.compressors.augment import Augmentation
from cosmosbi.compressors.distributed import device_of, distributed_session, launch_of, rank_share
from cosmosbi.compressors.hybrid import HybridNetwork
from cosmosbi.compressors.losses import make_loss, network_outputs
from cosmosbi.compressors.networks import build_network
from cosmosbi.files import atomic_path, atomic_write_json, config_hash, hashed_settings, load_weights, read_json
from cosmosbi.torch_runtime import resolve_device, seeded_torch, torch_threads

__all__ = [
    "FORMAT_VERSION",
    "Compressor",
    "TrainSettings",
    "TrainResult",
    "make_compressor",
    "train_compressor",
    "save_compressor",
    "load_compressor",
    "compress_dataset",
]

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class Compressor(nn.Module):
    """A network with the bookkeeping to use it as a compressor: x -> t (N, d).

    Holds the standardisation of theta used in training (shift, scale: (D,)), the loss kind
    (which decides which network outputs are the summaries) and the input name.
    """

    def __init__(
        self,
        network: nn.Module,
        parameter_names: Sequence[str],
        theta_shift,
        theta_scale,
        loss: str,
        summary_dim: int,
        input_name: str,
    ):
        super().__init__()
        self.network = network
        self.parameter_names = tuple(parameter_names)
        self.loss_kind = loss
        self.summary_dim = int(summary_dim)
        self.input_name = input_name
        self.register_buffer("theta_shift", torch.as_tensor(np.asarray(theta_shift), dtype=torch.float32))
        self.register_buffer("theta_scale", torch.as_tensor(np.asarray(theta_scale), dtype=torch.float32))

    @property
    def parameter_dim(self) -> int:
        return len(self.parameter_names)

    def standardise(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.theta_shift) / self.theta_scale

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """All network outputs (what the loss sees)."""
        return self.network(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Summaries t: (N, d)."""
        out = self.network(x)
        return out[:, : self.summary_dim]

    @property
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "network": self.network.config,
            "parameter_names": list(self.parameter_names),
            "loss": self.loss_kind,
            "summary_dim": self.summary_dim,
            "input_name": self.input_name,
        }


def make_compressor(
    network: dict[str, Any],
    dataset,
    input_name: str,
    loss: str = "vmim",
    summary_dim: int | None = None,
    seed: int = 0,
    sample_rows: int = 1000,
) -> Compressor:
    """Build a compressor for ``dataset``'s output ``input_name``.

    The network's input size/channels and its input normalisation (per-channel mean and std)
    and the theta standardisation are set from up to ``sample_rows`` rows of the dataset.
    Weights are initialised from ``seed`` without touching torch's global random state.

    Args:
        network: {"kind": "resnet2d" | "healpix_cnn" | "hybrid2d" | "hybrid_healpix" | "mlp", options...}.
        dataset: a :class:`SimulationDataset` (training data).
        input_name: which output of the dataset the compressor reads.
        loss: "vmim", "mse" or "gaussian_nll".
        summary_dim: d (default: the number of parameters).
    """
    if input_name not in dataset.output_names:
        raise ValueError(
            f"compressor input {input_name!r} is not an output of {dataset.path}; "
            f"outputs are {list(dataset.output_names)}"
        )
    if len(dataset) < 2:
        raise ValueError(f"{dataset.path}: need at least 2 simulations to train a compressor, got {len(dataset)}")
    D = len(dataset.parameter_names)
    d = D if summary_dim is None else int(summary_dim)
    shape = tuple(dataset.output_spec[input_name]["shape"])
    kind = network.get("kind")
    config = dict(network)
    config["out_features"] = network_outputs(loss, D, d)
    if kind in ("resnet2d", "hybrid2d"):
        if len(shape) not in (2, 3):
            raise ValueError(f"network {kind} needs images (H, W) or (C, H, W); {input_name!r} has shape {shape}")
        config.setdefault("in_channels", shape[0] if len(shape) == 3 else 1)
        if kind == "hybrid2d":
            config.setdefault("size", shape[-1])
    elif kind in ("healpix_cnn", "hybrid_healpix"):
        if len(shape) not in (1, 2):
            raise ValueError(f"network {kind} needs maps (P,) or (C, P); {input_name!r} has shape {shape}")
        config.setdefault("in_channels", shape[0] if len(shape) == 2 else 1)
    elif kind == "mlp":
        config.setdefault("in_features", int(np.prod(shape)))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=min(sample_rows, len(dataset)), replace=False))
    x = dataset.read(input_name, rows).astype(np.float64)
    theta = dataset.theta
    with seeded_torch(seed):
        net = build_network(config)
        make_loss(loss, D, d)  # validates the loss / summary_dim combination early
    channel_axis_x = x.reshape(len(x), net.normalise.shift.numel(), -1)
    net.normalise.shift.copy_(torch.as_tensor(channel_axis_x.mean(axis=(0, 2))))
    net.normalise.scale.copy_(torch.as_tensor(np.maximum(channel_axis_x.std(axis=(0, 2)), 1e-12)))
    if isinstance(net, HybridNetwork):
        net.set_bandpower_standardisation(torch.as_tensor(x))
    return Compressor(net, dataset.parameter_names, theta.mean(0), np.maximum(theta.std(0), 1e-12), loss, d, input_name)


@dataclass(frozen=True)
class TrainSettings:
    """Training settings (all have defaults sensible for 10^3-10^5 simulations).

    ``epochs`` may be raised on a finished run to train further from its checkpoint.
    ``num_threads`` sets torch's CPU threads while training (None: the cores this process may
    use, :func:`cosmosbi.cores.default_threads`); small networks often train faster on one
    thread. ``augment`` moves every training map by a random exact symmetry of its geometry
    (:mod:`cosmosbi.compressors.augment`; epoch e draws them from its own seed).
    """

    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 8
    lr_patience: int = 3
    lr_factor: float = 0.5
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = False
    num_workers: int = 0
    in_memory_bytes: int = 2**31
    num_threads: int | None = None
    augment: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience", "lr_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be positive, got {self.learning_rate}")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    out_dir: Path | None = None


class _Rows(torch.utils.data.Dataset):
    """Batches of rows -> (x, theta_s); from memory when small, else read from HDF5 per batch."""

    def __init__(self, dataset, input_name: str, theta_s: np.ndarray, in_memory_bytes: int):
        self.dataset, self.input_name = dataset, input_name
        self.theta_s = torch.as_tensor(theta_s, dtype=torch.float32)
        spec = dataset.output_spec[input_name]
        size = len(dataset) * int(np.prod(spec["shape"])) * 4
        self.x = torch.as_tensor(dataset.read(input_name), dtype=torch.float32) if size <= in_memory_bytes else None

    def __len__(self):
        return len(self.theta_s)

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        if self.x is not None:
            x = self.x[rows]
        else:
            x = torch.as_tensor(self.dataset.read(self.input_name, rows), dtype=torch.float32)
        return x, self.theta_s[rows]


def _split(dataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training and validation sets, decided by simulation index."""
    index = dataset.index
    u = np.random.default_rng([seed, 7919]).random(int(index.max()) + 1 if len(index) else 0)
    is_val = u[index] < fraction
    if is_val.all() or not is_val.any():  # tiny datasets: keep at least one row on each side
        is_val = np.zeros(len(index), dtype=bool)
        is_val[:: max(2, int(round(1 / fraction)))] = True
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


def _global_batches(rows: np.ndarray, batch_size: int, shuffle_seed: list[int] | None) -> list[np.ndarray]:
    """Row positions of each batch (sorted within a batch), shuffled by ``shuffle_seed`` if given."""
    if shuffle_seed is not None:
        rows = np.random.default_rng(shuffle_seed).permutation(rows)
    return [np.sort(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def _loader(rows_dataset, batches: list[np.ndarray], num_workers: int):
    return torch.utils.data.DataLoader(rows_dataset, sampler=batches, batch_size=None, num_workers=num_workers)


class _Objective(nn.Module):
    """Compressor and loss as one module (what DDP wraps): (x, theta_s) -> mean loss."""

    def __init__(self, compressor: Compressor, loss: nn.Module):
        super().__init__()
        self.compressor, self.loss = compressor, loss

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.loss(self.compressor.raw(x), theta)


def _fingerprint(compressor: Compressor, loss: nn.Module, dataset, settings: TrainSettings) -> str:
    return config_hash(
        {
            "compressor": compressor.config,
            "loss": loss.config,
            "dataset": dataset.manifest.get("identity"),
            "rows": len(dataset),
            "settings": hashed_settings(asdict(settings), drop={"epochs"}),  # more epochs resume the same training
        }
    )


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def train_compressor(
    compressor: Compressor,
    loss: nn.Module,
    dataset,
    out_dir: str | Path,
    settings: TrainSettings = TrainSettings(),
    progress: bool = True,
) -> TrainResult:
    """Train ``compressor`` and ``loss`` (jointly) on ``dataset``; resume from ``out_dir``'s checkpoint.

    Returns a :class:`TrainResult`; the best epoch's weights are loaded into ``compressor``
    and ``loss`` and saved to ``out_dir`` (see the module docstring).
    """
    launch = launch_of()
    device = device_of(settings.device, launch)
    with torch_threads(settings.num_threads), distributed_session(launch, device) as distributed:
        return _train(compressor, loss, dataset, Path(out_dir), settings, progress, device, distributed)


def _train(
    compressor: Compressor,
    loss: nn.Module,
    dataset,
    out_dir: Path,
    settings: TrainSettings,
    progress: bool,
    device: torch.device,
    distributed: bool,
) -> TrainResult:
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    compressor.to(device)
    loss.to(device)
    theta_s = compressor.standardise(torch.as_tensor(dataset.theta, dtype=torch.float32, device=device)).cpu().numpy()
    rows = _Rows(dataset, compressor.input_name, theta_s, settings.in_memory_bytes)
    train_rows, val_rows = _split(dataset, settings.val_fraction, settings.seed)
    params = list(compressor.parameters()) + list(loss.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.lr_factor, patience=settings.lr_patience
    )
    fingerprint = _fingerprint(compressor, loss, dataset, settings)
    augmentation = Augmentation(compressor.network.config) if settings.augment else None
    state = {"epoch": 0, "best_val": math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    best = {"compressor": _clone(compressor.state_dict()), "loss": _clone(loss.state_dict())}

    objective = _Objective(compressor, loss)
    if distributed:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device] if device.type == "cuda" else None
        )

    checkpoint_path = out_dir / "checkpoint.pt"
    if distributed:
        torch.distributed.barrier()  # every rank sees the checkpoint rank 0 may just have written
    if checkpoint_path.exists():
        checkpoint = load_weights(checkpoint_path, map_location=device)
        if checkpoint.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{checkpoint_path} belongs to a different training setup (network, loss, dataset or settings); "
                "use another output directory or delete it"
            )
        compressor.load_state_dict(checkpoint["compressor"])
        loss.load_state_dict(checkpoint["loss"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        best = {"compressor": checkpoint["best_compressor"], "loss": checkpoint["best_loss"]}
        state = {k: checkpoint[k] for k in state}
        log.info("%s: resuming after epoch %d", out_dir, state["epoch"])

    autocast = device.type == "cuda" and settings.mixed_precision
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=settings.epochs,
            initial=min(state["epoch"], settings.epochs),
            desc=f"training {out_dir.name}",
            unit="epoch",
        )
    stopped_early = state["bad_epochs"] >= settings.patience
    while state["epoch"] < settings.epochs and not stopped_early:
        epoch = state["epoch"]
        started = time.time()
        compressor.train()
        loss.train()
        total, count = 0.0, 0
        batches = _global_batches(train_rows, settings.batch_size, [settings.seed, epoch])
        if distributed:  # this rank's share of each batch, weighed by its size (DDP averages gradients over ranks)
            sizes = [len(batch) for batch in batches]
            shares = [rank_share(batch, rank, world) for batch in batches]
            weights = [len(share) * world / size for share, size in zip(shares, sizes)]
            # an empty share computes on one row with weight zero: every rank takes part in every step
            batches = [share if len(share) else batch[:1] for share, batch in zip(shares, batches)]
        symmetries = np.random.default_rng([settings.seed, epoch, 31]) if augmentation is not None else None
        for step, (x, theta) in enumerate(_loader(rows, batches, settings.num_workers)):
            x, theta = x.to(device), theta.to(device)
            if augmentation is not None:
                x = augmentation(x, symmetries)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                value = objective(x, theta)
                if distributed:
                    value = value * weights[step]
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            if distributed:  # the summed loss of this rank's rows: value * size / world
                total += value.item() * sizes[step] / world
                count += len(shares[step])
            else:
                total += value.item() * len(x)
                count += len(x)
        if distributed:
            total, count = _summed([total, count], device)
        val_loss = evaluate_loss(compressor, loss, rows, val_rows, settings.batch_size, device, distributed)
        scheduler.step(val_loss)
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train_loss": total / count,
                "val_loss": val_loss,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "seconds": round(time.time() - started, 3),
            }
        )
        if val_loss < state["best_val"]:
            state.update(best_val=val_loss, best_epoch=epoch + 1, bad_epochs=0)
            best = {"compressor": _clone(compressor.state_dict()), "loss": _clone(loss.state_dict())}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        stopped_early = state["bad_epochs"] >= settings.patience
        if rank == 0:
            with atomic_path(checkpoint_path) as tmp:
                torch.save(
                    {
                        **state,
                        "fingerprint": fingerprint,
                        "compressor": compressor.state_dict(),
                        "loss": loss.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "best_compressor": best["compressor"],
                        "best_loss": best["loss"],
                    },
                    tmp,
                )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{total / count:.4g}", val=f"{val_loss:.4g}")
    if bar is not None:
        bar.close()

    compressor.load_state_dict(best["compressor"])
    loss.load_state_dict(best["loss"])
    compressor.eval()
    loss.eval()
    if rank == 0:
        save_compressor(compressor, out_dir, loss)
        _write_history(state["history"], out_dir)
    if distributed:
        torch.distributed.barrier()  # the results are on disk when any rank returns
    return TrainResult(state["history"], state["best_epoch"], state["best_val"], stopped_early, out_dir)


def _summed(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over the ranks of the process group (in float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate_loss(
    compressor: Compressor,
    loss: nn.Module,
    rows: _Rows,
    positions: np.ndarray,
    batch_size: int,
    device,
    distributed: bool = False,
) -> float:
    """Mean loss over ``positions`` in evaluation mode (``distributed``: each rank evaluates its
    share of every batch, and the sums are added over the ranks)."""
    compressor.eval()
    loss.eval()
    total, count = 0.0, 0
    batches = _global_batches(positions, batch_size, None)
    if distributed:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        batches = [share for share in (rank_share(batch, rank, world) for batch in batches) if len(share)]
    for x, theta in _loader(rows, batches, 0):
        x, theta = x.to(device), theta.to(device)
        total += loss(compressor.raw(x), theta).item() * len(x)
        count += len(x)
    if distributed:
        total, count = _summed([total, count], device)
    return total / max(count, 1)


def _write_history(history: list[dict], out_dir: Path) -> None:
    atomic_write_json(out_dir / "history.json", history)
    with atomic_path(out_dir / "history.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "train_loss", "val_loss", "learning_rate", "seconds"])
            writer.writeheader()
            writer.writerows(history)
    if history:
        plot_history(history, out_dir / "loss.png")


def plot_history(history: list[dict], path: Path) -> None:
    """Training and validation loss per epoch, best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], label="training")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    best = min(history, key=lambda h: h["val_loss"])
    ax.axvline(best["epoch"], color="grey", ls=":", label=f"best (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def save_compressor(compressor: Compressor, out_dir: str | Path, loss: nn.Module | None = None) -> None:
    """Write ``compressor.pt`` (+ ``loss.pt``) weights and ``compressor.json`` atomically."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "compressor.pt") as tmp:
        torch.save(compressor.state_dict(), tmp)
    config = compressor.config
    if loss is not None:
        with atomic_path(out_dir / "loss.pt") as tmp:
            torch.save(loss.state_dict(), tmp)
        config["loss_config"] = loss.config
    atomic_write_json(out_dir / "compressor.json", config)


def load_compressor(out_dir: str | Path, device: str = "cpu") -> tuple[Compressor, nn.Module | None]:
    """Rebuild a saved compressor (and its trained loss, e.g. the VMIM flow, if saved)."""
    out_dir = Path(out_dir)
    path = out_dir / "compressor.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir}: no compressor.json (not a saved compressor)")
    config = read_json(path)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {config.get('format_version')!r}; this cosmosbi reads {FORMAT_VERSION}"
        )
    network = build_network(config["network"])
    D = len(config["parameter_names"])
    compressor = Compressor(
        network,
        config["parameter_names"],
        np.zeros(D),
        np.ones(D),
        config["loss"],
        config["summary_dim"],
        config["input_name"],
    )
    compressor.load_state_dict(load_weights(out_dir / "compressor.pt", map_location=device))
    compressor.eval()
    loss = None
    if "loss_config" in config and (out_dir / "loss.pt").is_file():
        options = {k: v for k, v in config["loss_config"].items() if k != "kind"}
        loss = make_loss(config["loss"], D, config["summary_dim"], **options)
        loss.load_state_dict(load_weights(out_dir / "loss.pt", map_location=device))
        loss.eval()
    return compressor.to(device), loss


@torch.no_grad()
def compress_dataset(compressor: Compressor, dataset, out_dir: str | Path, batch_size: int = 256, device: str = "auto"):
    """Apply the compressor to every row of ``dataset``; write a summaries dataset (output ``t``).

    The result is a dataset directory that :class:`SimulationDataset` reads, with the same
    theta and simulation indices as the input. Returns that dataset.
    """
    from cosmosbi.simulators.store import write_dataset

    if compressor.input_name not in dataset.output_names:
        raise ValueError(f"{dataset.path} has no output {compressor.input_name!r} (the compressor's input)")
    dev = resolve_device(device)
    compressor = compressor.to(dev).eval()
    parts = []
    for batch in dataset.iter_batches(batch_size, [compressor.input_name]):
        x = torch.as_tensor(batch[compressor.input_name], dtype=torch.float32, device=dev)
        parts.append(compressor(x).float().cpu().numpy())
    t = np.concatenate(parts) if parts else np.zeros((0, compressor.summary_dim), np.float32)
    identity = {
        "compressed_from": str(dataset.path),
        "source": dataset.manifest.get("identity"),
        "compressor": compressor.config,
    }
    return write_dataset(
        out_dir, dataset.theta, dataset.index, {"t": t}, dataset.parameter_names, identity, seed=dataset.seed
    )
