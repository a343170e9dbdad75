"""The ``compress`` stage: train the config's compressor on its ``train_on`` dataset into
``RUN_DIR/compressor`` (resuming from ``checkpoint.pt`` after a kill).

Key: the compressor section (without the settings that change no result and ``apply_to``,
which the ``summarise:NAME`` stages hash; ``train.mixed_precision`` only when switched on) and
the simulations it trains on. Under ``srun`` or ``mpiexec`` with ``MASTER_ADDR`` set (the compress job of
``cosmosbi slurm submit`` with ``ntasks`` above one) every MPI rank is one data-parallel
training process (:mod:`cosmosbi.compressors.distributed`); else rank 0 trains. ``cosmosbi
compress`` also writes the summaries of ``apply_to`` (see :mod:`cosmosbi.stages.summarise`).
"""

from __future__ import annotations

from cosmosbi.files import hashed_settings, read_json
from cosmosbi.stages.base import Declaration, StageType
from cosmosbi.stages.data import open_dataset

__all__ = ["STAGE", "network_for", "train_compressor_of", "compress"]


def declare(config, dump: dict, layout):
    if config.compressor is not None:
        part = {"compressor": hashed_settings(dump["compressor"], drop={"apply_to"})}
        yield Declaration("compress", part, (layout.compressor,), (f"simulate:{config.compressor.train_on}",))


def network_for(network: dict, simulator) -> dict:
    """Fill a HEALPix network's nside and footprint from the simulator when the config omits them."""
    network = dict(network)
    if network.get("kind") in ("healpix_cnn", "hybrid_healpix") and "nside" not in network:
        nside = getattr(simulator, "nside", None)
        if nside is None:
            raise ValueError(f"compressor.network: {network['kind']} needs nside (the simulator does not say)")
        network["nside"] = int(nside)
        pixels = getattr(simulator, "pixels", None)
        if pixels is not None and "footprint" not in network:
            from cosmosbi.compressors.healpix import footprint_ranges

            network["footprint"] = footprint_ranges(pixels)
    return network


def section_of(config, source: str):
    """The config's compressor section; a ValueError if it has none."""
    if config.compressor is None:
        raise ValueError(f"{source}: no compressor section; see `cosmosbi compress --help` and the README")
    return config.compressor


def train_compressor_of(config, layout, source: str = "config", progress: bool = True):
    """Train the config's compressor on its ``train_on`` dataset (resuming from a checkpoint).

    Returns (compressor, :class:`~cosmosbi.compressors.trainer.TrainResult`).
    """
    from cosmosbi.compressors.losses import make_loss
    from cosmosbi.compressors.trainer import TrainSettings, make_compressor, train_compressor

    section = section_of(config, source)
    dataset = open_dataset(layout.sims(section.train_on), source)
    settings = TrainSettings(**section.train.model_dump())
    network = network_for(section.network, config.build_simulator(source))
    compressor = make_compressor(
        network, dataset, section.input, loss=section.loss, summary_dim=section.summary_dim, seed=settings.seed
    )
    loss = make_loss(
        section.loss, compressor.parameter_dim, compressor.summary_dim, seed=settings.seed, **section.loss_options
    )
    return compressor, train_compressor(compressor, loss, dataset, layout.compressor, settings, progress=progress)


def compress(config, layout, source: str = "config", *, progress: bool = True, summaries: bool = True) -> str:
    """Train the compressor and (unless ``summaries`` is false) write the summaries of ``apply_to``
    (default: every dataset). Returns a one-line description."""
    from cosmosbi.stages.summarise import write_summaries

    compressor, result = train_compressor_of(config, layout, source, progress=progress)
    message = (
        f"compressor: best validation loss {result.best_val_loss:.4g}"
        f" at epoch {result.best_epoch} of {len(result.history)}"
        f"{' (stopped early)' if result.stopped_early else ''} -> {layout.compressor}"
    )
    if summaries:
        names = config.compressor.apply_to or list(config.datasets)
        written = write_summaries(config, layout, names, source, compressor)
        message += "; summaries (rows x dimension) of " + ", ".join(
            f"{name} ({len(ds)} x {compressor.summary_dim})" for name, ds in written.items()
        )
    return message


def run(stage, config, layout, source: str, *, comm=None, progress: bool = True) -> str:
    from cosmosbi.compressors.distributed import launch_of

    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    launch = launch_of()
    if launch.distributed and launch.world_size != size:
        raise ValueError(
            f"compress: the launch has {launch.world_size} training processes but {size} MPI rank(s); "
            "start every training process as an MPI rank (srun --mpi=...)"
        )
    if rank != 0 and not launch.distributed:
        return ""
    return compress(config, layout, source, progress=progress and rank == 0, summaries=False)


def progress(stage, layout) -> str | None:
    """Epochs checkpointed by an unfinished training."""
    history = layout.compressor / "history.json"
    return f"{len(read_json(history))} epoch(s) checkpointed" if history.is_file() else None


# every rank enters run(): the ranks of a data-parallel launch all train, else rank 0 alone
STAGE = StageType("compress", "compress", declare, run, all_ranks=True, progress=progress)
