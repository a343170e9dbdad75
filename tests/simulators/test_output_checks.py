"""Every simulation's outputs are checked before they are stored; slow simulations time out."""

import json
import signal
import time

import numpy as np
import pytest

from cosmosbi.simulators import BoxUniform, OutputSpec, as_simulator
from cosmosbi.simulators.runner import run_simulations, simulation_seeds
from cosmosbi.simulators.store import SimulationDataset

PRIOR = BoxUniform(["mu", "sigma"], [-1.0, 0.1], [1.0, 1.0])
N = 40


def prior_draws(seed: int, n: int = N) -> np.ndarray:
    return np.stack([PRIOR.sample(1, np.random.default_rng(simulation_seeds(seed, i)[0]))[0] for i in range(n)])


def too_short(theta, rng):
    return rng.normal(size=3 if theta[0] > 0.5 else 4)


def scalar(theta, rng):
    return float(theta[0]) if theta[0] > 0.5 else rng.normal(size=4)


def too_long(theta, rng):
    return rng.normal(size=5 if theta[0] > 0.5 else 4)


def string(theta, rng):
    return "diverged" if theta[0] > 0.5 else rng.normal(size=4)


def complex_valued(theta, rng):
    return rng.normal(size=4) * (1j if theta[0] > 0.5 else 1)


@pytest.mark.parametrize(
    "function, message",
    [
        (too_short, "output 'x' has shape (3,) per simulation; expected (4,)"),
        (scalar, "output 'x' has shape () per simulation; expected (4,)"),
        (too_long, "output 'x' has shape (5,) per simulation; expected (4,)"),
        (string, "output 'x' has dtype <U8; expected numbers"),
        (complex_valued, "output 'x' has dtype complex128; expected float64"),
    ],
)
def test_a_wrong_output_fails_that_simulation_and_is_never_stored(tmp_path, function, message):
    theta = prior_draws(3)
    bad = theta[:, 0] > 0.5
    assert 0 < bad.sum() < N and not bad[0]  # the first simulation defines the output shape
    summary = run_simulations(
        as_simulator(function, prior=PRIOR), N, tmp_path / "ds", seed=3, batch_size=8, progress=False
    )
    ds = SimulationDataset(tmp_path / "ds")
    assert (summary.status, summary.failed, len(ds)) == ("complete", bad.sum(), N - bad.sum())
    np.testing.assert_array_equal(ds.index, np.nonzero(~bad)[0])
    assert ds.read("x").shape == (N - bad.sum(), 4) and ds.output_spec["x"] == {"shape": [4], "dtype": "float64"}
    assert {f["index"] for f in ds.failures} == set(np.nonzero(bad)[0].tolist())
    assert all(f["message"].startswith(message) for f in ds.failures)


def test_varying_lengths_keep_the_first_shape_and_record_the_others(tmp_path):
    def varying(theta, rng):
        return rng.normal(size=int(rng.integers(3, 6)))

    summary = run_simulations(
        as_simulator(varying, prior=PRIOR), N, tmp_path / "ds", seed=1, batch_size=8, progress=False
    )
    ds = SimulationDataset(tmp_path / "ds")
    length = ds.output_spec["x"]["shape"][0]
    assert summary.failed > 0 and len(ds) + summary.failed == N and ds.read("x").shape == (len(ds), length)
    assert all(f"expected ({length},)" in f["message"] for f in ds.failures)


def test_declared_output_spec_is_enforced_on_batched_simulators(tmp_path):
    def batched(theta, rngs):
        rows = [rng.normal(size=4) for rng in rngs]
        return np.stack(rows).astype(np.float64)

    spec = {"x": OutputSpec((4,), "float32")}
    good = as_simulator(batched, prior=PRIOR, batched=True, output_spec=spec)
    run_simulations(good, 10, tmp_path / "good", seed=1, batch_size=4, progress=False)
    assert SimulationDataset(tmp_path / "good").read("x").dtype == np.float32
    wrong = as_simulator(batched, prior=PRIOR, batched=True, output_spec={"x": OutputSpec((5,), "float32")})
    with pytest.raises(ValueError, match=r"output 'x' has shape \(4,\) per simulation; expected \(5,\).*the run stops"):
        run_simulations(wrong, 10, tmp_path / "wrong", seed=1, batch_size=4, progress=False)
    manifest = json.loads((tmp_path / "wrong" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "expected (5,)" in manifest["error"]


def test_a_simulator_that_only_returns_strings_stops_the_run_and_leaves_it_resumable(tmp_path):
    def words(theta, rng):
        return "no numbers here"

    sim = as_simulator(words, prior=PRIOR)
    for _ in range(2):  # rerunning meets the same clear error, not a dataset stuck in 'running'
        with pytest.raises(ValueError, match="output 'x' has dtype <U15; expected numbers"):
            run_simulations(sim, 10, tmp_path / "ds", seed=1, batch_size=4, progress=False)
        assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["status"] == "interrupted"
    assert not list((tmp_path / "ds").glob("**/*.h5"))


def test_a_hanging_simulation_times_out_and_the_run_goes_on(tmp_path):
    theta = prior_draws(4, 12)
    hangs = theta[:, 0] > 0.6
    assert 0 < hangs.sum() <= 3

    def sometimes_hangs(theta, rng):
        if theta[0] > 0.6:
            time.sleep(60)
        return theta[0] + rng.normal(size=2)

    handler = signal.getsignal(signal.SIGALRM)
    started = time.time()
    summary = run_simulations(
        as_simulator(sometimes_hangs, prior=PRIOR),
        12,
        tmp_path / "ds",
        seed=4,
        batch_size=4,
        progress=False,
        simulation_timeout_s=0.3,
    )
    assert time.time() - started < 10
    assert (summary.status, summary.failed) == ("complete", hangs.sum())
    assert {f["index"] for f in summary.failures} == set(np.nonzero(hangs)[0].tolist())
    assert all(f["message"] == "simulation exceeded simulation_timeout_s=0.3 s" for f in summary.failures)
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_hanging_row_of_a_batched_simulator_is_found_by_retrying_row_by_row(tmp_path):
    def batched(theta, rngs):
        if np.any(theta[:, 0] > 0.6):
            time.sleep(60)
        return np.stack([t[0] + rng.normal(size=2) for t, rng in zip(theta, rngs)])

    hangs = prior_draws(4, 8)[:, 0] > 0.6
    summary = run_simulations(
        as_simulator(batched, prior=PRIOR, batched=True),
        8,
        tmp_path / "ds",
        seed=4,
        batch_size=4,
        progress=False,
        simulation_timeout_s=0.1,
    )
    assert summary.failed == hangs.sum() and summary.simulated == 8 - hangs.sum()


@pytest.mark.parametrize("value", [0, -1, float("nan"), True, "1"])
def test_timeout_must_be_a_positive_number(tmp_path, value):
    with pytest.raises(ValueError, match="simulation_timeout_s must be a positive number of seconds"):
        run_simulations(
            as_simulator(too_short, prior=PRIOR), 4, tmp_path / "ds", seed=1, simulation_timeout_s=value, progress=False
        )


def test_simulation_timeout_from_a_config(tmp_path, monkeypatch):
    import yaml

    from cosmosbi.cli import main

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hang_model.py").write_text(
        "import time\nfrom cosmosbi.simulators import BoxUniform, as_simulator\n"
        "def hang(theta, rng):\n"
        "    if theta[0] > 0.6:\n"
        "        time.sleep(60)\n"
        "    return theta[0] + rng.normal(size=2)\n"
        "def make():\n"
        "    return as_simulator(hang, prior=BoxUniform(['mu', 'sigma'], [-1.0, 0.1], [1.0, 1.0]))\n"
    )
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": "hang_model:make"},
        "datasets": {"train": {"n": 12, "seed": 4, "simulation_timeout_s": 0.3}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["simulate", "-q", str(tmp_path / "c.yaml")]) == 0
    ds = SimulationDataset(tmp_path / "run" / "sims" / "train")
    hangs = prior_draws(4, 12)[:, 0] > 0.6
    assert len(ds.failures) == hangs.sum() > 0 and len(ds) == 12 - hangs.sum()
    assert all("simulation_timeout_s=0.3" in f["message"] for f in ds.failures)
    config["datasets"]["train"]["simulation_timeout_s"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["simulate", "-q", str(tmp_path / "c.yaml")]) != 0


def test_a_checkpoint_of_failures_only_is_stored(tmp_path):
    calls = {"n": 0}

    def first_batch_only(theta, rng):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("diverged")
        return rng.normal(size=2)

    sim = as_simulator(first_batch_only, prior=PRIOR)
    summary = run_simulations(sim, 12, tmp_path / "ds", seed=1, batch_size=4, progress=False, checkpoint_s=0)
    assert (summary.simulated, summary.failed, summary.status) == (4, 8, "complete")
