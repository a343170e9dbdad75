import json
import math

import numpy as np
import pytest
import torch

from cosmosbi.compressors.losses import GaussianNLLLoss, MSELoss, VMIMLoss, make_loss
from cosmosbi.compressors.trainer import (
    TrainSettings,
    compress_dataset,
    load_compressor,
    make_compressor,
    train_compressor,
)
from cosmosbi.simulators import BoxUniform, as_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset

PRIOR = BoxUniform(["a", "b"], [-1.0, -1.0], [1.0, 1.0])


def linear_model(theta, rng):
    """Eight noisy linear combinations of (a, b)."""
    mixing = np.array([[1.0, 0.5, -0.3, 0.8, 0.0, 0.2, -1.0, 0.4], [0.2, -1.0, 0.7, 0.1, 1.0, -0.5, 0.3, 0.9]])
    return theta @ mixing + 0.05 * rng.standard_normal(8)


@pytest.fixture(scope="module")
def vector_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train"
    run_simulations(as_simulator(linear_model, prior=PRIOR), 1200, path, seed=0, progress=False)
    return SimulationDataset(path)


FAST = TrainSettings(epochs=4, batch_size=64, learning_rate=3e-3, seed=1, device="cpu")


def train(dataset, out_dir, loss_kind="vmim", settings=FAST):
    compressor = make_compressor({"kind": "mlp", "hidden": 32}, dataset, "x", loss=loss_kind, seed=settings.seed)
    loss = make_loss(
        loss_kind, 2, 2, seed=settings.seed, **({"transforms": 2, "hidden": 32} if loss_kind == "vmim" else {})
    )
    return compressor, loss, train_compressor(compressor, loss, dataset, out_dir, settings, progress=False)


@pytest.mark.parametrize("loss_kind", ["vmim", "mse", "gaussian_nll"])
def test_training_learns_the_parameters(vector_dataset, tmp_path, loss_kind):
    compressor, _, result = train(
        vector_dataset,
        tmp_path / loss_kind,
        loss_kind,
        TrainSettings(epochs=12, batch_size=64, learning_rate=3e-3, device="cpu"),
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    with torch.no_grad():
        t = compressor(torch.as_tensor(vector_dataset.read("x"), dtype=torch.float32)).numpy()
    # each parameter is (almost) a function of the summaries: linear R^2 of theta on t
    design = np.column_stack([t, np.ones(len(t))])
    for j in range(2):
        y = vector_dataset.theta[:, j]
        residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
        assert 1 - residual.var() / y.var() > 0.9


def test_resume_reproduces_an_uninterrupted_run(vector_dataset, tmp_path):
    straight, loss_a, result_a = train(vector_dataset, tmp_path / "straight")
    # the same training killed after 2 epochs, then resumed to 4
    train(vector_dataset, tmp_path / "resumed", settings=TrainSettings(**{**FAST.__dict__, "epochs": 2}))
    resumed, loss_b, result_b = train(vector_dataset, tmp_path / "resumed")
    assert [h["epoch"] for h in result_b.history] == [1, 2, 3, 4]
    assert [h["val_loss"] for h in result_b.history] == [h["val_loss"] for h in result_a.history]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    for key, value in loss_a.state_dict().items():
        torch.testing.assert_close(loss_b.state_dict()[key], value, rtol=0, atol=0)


def test_outputs_written_and_round_trip(vector_dataset, tmp_path):
    compressor, loss, result = train(vector_dataset, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "checkpoint.pt",
        "compressor.pt",
        "compressor.json",
        "loss.pt",
        "history.json",
        "history.csv",
        "loss.png",
    } <= files
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 4 and result.best_epoch == min(history, key=lambda h: h["val_loss"])["epoch"]
    loaded, loaded_loss = load_compressor(tmp_path / "run")
    x = torch.as_tensor(vector_dataset.read("x", np.arange(10)), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), compressor(x))
        theta_s = compressor.standardise(torch.as_tensor(vector_dataset.theta[:10], dtype=torch.float32))
        torch.testing.assert_close(loaded_loss(loaded(x), theta_s), loss(compressor(x), theta_s))
    summaries = compress_dataset(loaded, vector_dataset, tmp_path / "summaries", device="cpu")
    assert summaries.output_names == ("t",) and summaries.read("t").shape == (len(vector_dataset), 2)
    np.testing.assert_array_equal(summaries.theta, vector_dataset.theta)
    np.testing.assert_array_equal(summaries.index, vector_dataset.index)


def test_checkpoint_of_another_setup_is_refused(vector_dataset, tmp_path):
    train(vector_dataset, tmp_path / "run", "vmim")
    with pytest.raises(ValueError, match="different training setup"):
        train(vector_dataset, tmp_path / "run", "mse")


def test_loss_values():
    theta = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, -1.0], [1.0, 1.0]])
    assert MSELoss(2, 2)(t, theta).item() == pytest.approx((0.25 + 0 + 1 + 1) / 2)
    out = torch.cat([t, torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])], dim=1)
    reference = -torch.distributions.Normal(t, torch.tensor([[1.0, 2.0], [0.5, 1.0]])).log_prob(theta).sum(1).mean()
    assert GaussianNLLLoss(2, 2)(out, theta).item() == pytest.approx(reference.item(), rel=1e-6)
    # the VMIM flow is a normalised density in theta for any context
    torch.manual_seed(0)
    vmim = VMIMLoss(1, 3)
    grid = torch.linspace(-12, 12, 4001)[:, None]
    context = torch.randn(1, 3).expand(len(grid), 3)
    density = torch.exp(vmim.flow.log_prob(grid, context=context))
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-3)


def test_bad_setups_are_refused(vector_dataset):
    with pytest.raises(ValueError, match="summary_dim must equal the 2 parameters"):
        make_loss("mse", 2, 3)
    with pytest.raises(ValueError, match="unknown loss 'kl'"):
        make_loss("kl", 2, 2)
    with pytest.raises(ValueError, match="'kappa' is not an output"):
        make_compressor({"kind": "mlp"}, vector_dataset, "kappa")
    with pytest.raises(ValueError, match="resnet2d needs images"):
        make_compressor({"kind": "resnet2d"}, vector_dataset, "x")
    with pytest.raises(ValueError, match="val_fraction"):
        TrainSettings(val_fraction=1.5)


def test_streaming_from_disk_gives_the_in_memory_result(vector_dataset, tmp_path):
    in_memory, _, a = train(vector_dataset, tmp_path / "memory", "mse", TrainSettings(**{**FAST.__dict__, "epochs": 2}))
    streamed, _, b = train(
        vector_dataset,
        tmp_path / "stream",
        "mse",
        TrainSettings(**{**FAST.__dict__, "epochs": 2, "in_memory_bytes": 0}),
    )
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    for key, value in in_memory.state_dict().items():
        torch.testing.assert_close(streamed.state_dict()[key], value, rtol=0, atol=0)
