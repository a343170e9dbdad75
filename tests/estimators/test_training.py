"""The training loop of the density networks: best weights kept, learning-rate decay, quiet output."""

import numpy as np
import pytest
import torch

from cosmosbi.estimators import NPE, FlowConfig, TrainingConfig
from cosmosbi.estimators.networks import train_network
from cosmosbi.simulators import BoxUniform

SMALL = FlowConfig(hidden_features=8, num_transforms=1, num_bins=4)


def linear_data(n, rng):
    theta = rng.uniform(-1, 1, (n, 2))
    return theta, theta @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]]) + 0.1 * rng.standard_normal((n, 3))


def test_fit_prints_nothing_and_keeps_the_best_weights(capfd):
    theta, x = linear_data(400, np.random.default_rng(0))
    prior = BoxUniform(["a", "b"], low=[-1, -1], high=[1, 1])
    npe = NPE(prior, SMALL, TrainingConfig(max_epochs=8, stop_after_epochs=3, learning_rate=3e-2), device="cpu")
    npe.fit(theta, x, np.random.default_rng(1))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    history = npe.summary.validation_loss
    assert 1 <= len(history) <= 8 and npe.summary.epochs == len(history)
    assert npe.summary.best_validation_loss == min(history)


def test_returned_network_has_the_best_validation_loss():
    """The validation rows are the first 10% of the seeded permutation: recompute their loss."""
    rng_data = np.random.default_rng(0)
    theta, x = (torch.as_tensor(a, dtype=torch.float32) for a in linear_data(300, rng_data))
    # a learning rate that makes the loss jump around, so that the last epoch is rarely the best
    training = TrainingConfig(max_epochs=6, stop_after_epochs=6, learning_rate=0.3)
    net, summary = train_network("npe", SMALL, training, theta, x, np.random.default_rng(4), device="cpu")
    best = int(np.argmin(summary.validation_loss))
    assert summary.best_validation_loss == pytest.approx(summary.validation_loss[best])
    # retrain for exactly the best epoch count: same seed, same data, same validation rows -> same loss
    again, _ = train_network(
        "npe",
        SMALL,
        TrainingConfig(max_epochs=best + 1, stop_after_epochs=6, learning_rate=0.3),
        theta,
        x,
        np.random.default_rng(4),
        device="cpu",
    )
    with torch.no_grad():
        expected = float(again.loss(theta, condition=x).mean())
        assert float(net.loss(theta, condition=x).mean()) == pytest.approx(expected, rel=1e-5)


def test_progress_goes_to_stderr(capfd):
    theta, x = (torch.as_tensor(a, dtype=torch.float32) for a in linear_data(200, np.random.default_rng(0)))
    train_network(
        "nle", SMALL, TrainingConfig(max_epochs=2), theta, x, np.random.default_rng(0), device="cpu", progress=True
    )
    out, err = capfd.readouterr()
    assert out == "" and err.count("validation loss") == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr_decay_factor": 0.0}, "lr_decay_factor"),
        ({"lr_decay_factor": 1.5}, "lr_decay_factor"),
        ({"min_learning_rate": 1.0}, "min_learning_rate"),
        ({"lr_decay_after_epochs": 0}, "lr_decay_after_epochs"),
    ],
)
def test_training_config_checks_the_schedule(options, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**options)


def test_too_few_simulations_is_a_clear_error():
    theta, x = torch.randn(1, 2), torch.randn(1, 3)
    with pytest.raises(ValueError, match="leave none for training"):
        train_network("npe", SMALL, TrainingConfig(), theta, x, np.random.default_rng(0), device="cpu")


def test_automatic_batch_size_gives_small_sets_enough_steps():
    from cosmosbi.estimators.networks import automatic_batch_size

    assert [automatic_batch_size(n) for n in (100, 1800, 9000, 10**6)] == [16, 56, 256, 256]
    assert TrainingConfig().batch_size is None
