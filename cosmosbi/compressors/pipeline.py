"""The compress stage of a config: ``cosmosbi compress`` and a stage of ``cosmosbi run``.

Trains the configured compressor on its ``train_on`` dataset (resuming from
``RUN_DIR/compressor/checkpoint.pt`` after a kill) and writes the summaries ``t`` of every
dataset in ``apply_to`` to ``RUN_DIR/summaries/NAME/``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["compress_from_config", "train_from_config", "summarise_from_config", "compressor_dir", "summaries_dir", "network_for"]


def compressor_dir(config) -> Path:
    return Path(config.run_dir) / "compressor"


def summaries_dir(config, name: str) -> Path:
    return Path(config.run_dir) / "summaries" / name


def network_for(network: dict, simulator) -> dict:
    """Fill a HEALPix network's nside and footprint from the simulator when the config omits them."""
    network = dict(network)
    if network.get("kind") == "healpix_cnn" and "nside" not in network:
        nside = getattr(simulator, "nside", None)
        if nside is None:
            raise ValueError("compressor.network: healpix_cnn needs nside (the simulator does not say)")
        network["nside"] = int(nside)
        pixels = getattr(simulator, "pixels", None)
        if pixels is not None and "footprint" not in network:
            from cosmosbi.compressors.healpix import footprint_ranges

            network["footprint"] = footprint_ranges(pixels)
    return network


def train_from_config(config, source: str = "config", progress: bool = True):
    """Train the config's compressor on its ``train_on`` dataset (resuming from a checkpoint).

    Returns (compressor, :class:`~cosmosbi.compressors.trainer.TrainResult`).
    """
    from cosmosbi.compressors.losses import make_loss
    from cosmosbi.compressors.trainer import TrainSettings, make_compressor, train_compressor

    section = _section(config, source)
    dataset = _dataset(config, section.train_on, source)
    settings = TrainSettings(**section.train.model_dump())
    network = network_for(section.network, config.build_simulator(source))
    compressor = make_compressor(network, dataset, section.input, loss=section.loss, summary_dim=section.summary_dim, seed=settings.seed)
    loss = make_loss(section.loss, compressor.parameter_dim, compressor.summary_dim, seed=settings.seed, **section.loss_options)
    return compressor, train_compressor(compressor, loss, dataset, compressor_dir(config), settings, progress=progress)


def summarise_from_config(config, names: list[str] | None = None, source: str = "config", compressor=None) -> dict:
    """Write the summaries of datasets ``names`` (default: ``apply_to``) with the trained compressor.

    Returns {name: summaries dataset}.
    """
    from cosmosbi.compressors.trainer import compress_dataset, load_compressor
    from cosmosbi.torch_runtime import torch_threads

    section = _section(config, source)
    if compressor is None:
        if not (compressor_dir(config) / "compressor.json").is_file():
            raise ValueError(f"{source}: no trained compressor in {compressor_dir(config)}; run `cosmosbi compress {source}` first")
        compressor, _ = load_compressor(compressor_dir(config))
    if names is None:
        names = section.apply_to or list(config.datasets)
    with torch_threads(section.train.num_threads):  # the training's thread setting applies here too
        return {name: compress_dataset(compressor, _dataset(config, name, source), summaries_dir(config, name), device=section.train.device) for name in names}


def compress_from_config(config, source: str = "config", progress: bool = True):
    """Train the config's compressor and compress every dataset of ``apply_to``.

    Returns (train result, {dataset name: summaries dataset}).
    """
    compressor, result = train_from_config(config, source, progress)
    return result, summarise_from_config(config, None, source, compressor)


def _section(config, source: str):
    if config.compressor is None:
        raise ValueError(f"{source}: no compressor section; see `cosmosbi compress --help` and the README")
    return config.compressor


def _dataset(config, name: str, source: str):
    from cosmosbi.simulators.store import SimulationDataset

    try:
        return SimulationDataset(config.dataset_dir(name))
    except ValueError as err:
        raise ValueError(f"{err} (run `cosmosbi simulate {source}` first)") from None
