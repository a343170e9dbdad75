"""Data-parallel compressor training: 2 CPU processes (gloo) started by ``torchrun``."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cosmosbi.compressors.distributed import Launch, launch_of, rank_share
from cosmosbi.compressors.losses import make_loss
from cosmosbi.compressors.trainer import (
    TrainSettings,
    make_compressor,
    train_compressor,
)
from cosmosbi.simulators import BoxUniform, as_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset

PRIOR = BoxUniform(["a", "b"], [-1.0, -1.0], [1.0, 1.0])
# 300 training rows at a global batch of 64: the last batch (44 rows) and the validation set split unevenly
SETTINGS = {"epochs": 4, "batch_size": 64, "learning_rate": 3e-3, "seed": 1, "device": "cpu", "num_threads": 1}

WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from cosmosbi.compressors import trainer
    from cosmosbi.compressors.losses import make_loss
    from cosmosbi.simulators.store import SimulationDataset

    data, out, epochs, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dataset = SimulationDataset(data)
    settings = trainer.TrainSettings(**{**SETTINGS, "epochs": epochs})
    compressor = trainer.make_compressor({"kind": "mlp", "hidden": 32}, dataset, "x", loss="vmim", seed=settings.seed)
    loss = make_loss("vmim", 2, 2, seed=settings.seed, transforms=2, hidden=32)
    if kill_after:  # rank 0 is killed right after writing its kill_after-th checkpoint
        atomic_path, written = trainer.atomic_path, []

        def killing_atomic_path(path):
            class Wrapped:
                def __enter__(self):
                    self.inner = atomic_path(path)
                    return self.inner.__enter__()

                def __exit__(self, *exc):
                    self.inner.__exit__(*exc)
                    written.append(path)
                    if sum(p.name == "checkpoint.pt" for p in written) == kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
            return Wrapped()

        trainer.atomic_path = killing_atomic_path
    trainer.train_compressor(compressor, loss, dataset, out, settings, progress=False)
    """
)


def linear_model(theta, rng):
    mixing = np.array([[1.0, 0.5, -0.3, 0.8, 0.0, 0.2, -1.0, 0.4], [0.2, -1.0, 0.7, 0.1, 1.0, -0.5, 0.3, 0.9]])
    return theta @ mixing + 0.05 * rng.standard_normal(8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train"
    run_simulations(as_simulator(linear_model, prior=PRIOR), 333, path, seed=0, progress=False)
    return SimulationDataset(path)


def torchrun(tmp_path, dataset, out, epochs=SETTINGS["epochs"], kill_after=0):
    script = tmp_path / "worker.py"
    script.write_text(f"SETTINGS = {SETTINGS!r}\n" + WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(dataset.path),
        str(out),
        str(epochs),
        str(kill_after),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def single_process(dataset, out):
    settings = TrainSettings(**SETTINGS)
    compressor = make_compressor({"kind": "mlp", "hidden": 32}, dataset, "x", loss="vmim", seed=settings.seed)
    loss = make_loss("vmim", 2, 2, seed=settings.seed, transforms=2, hidden=32)
    return train_compressor(compressor, loss, dataset, out, settings, progress=False)


def val_losses(out):
    return np.array([h["val_loss"] for h in json.loads((out / "history.json").read_text())])


@pytest.mark.slow  # two torchrun launches: ~1 minute each on a loaded 2-core machine
def test_two_processes_follow_the_single_process_curve(dataset, tmp_path):
    done = torchrun(tmp_path, dataset, tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    single = np.array([h["val_loss"] for h in single_process(dataset, tmp_path / "one").history])
    ddp = val_losses(tmp_path / "ddp")
    assert len(ddp) == len(single) == SETTINGS["epochs"]
    # the runs differ only in the order of float32 sums (a gradient is the weighted mean of two
    # shares instead of one mean, ~1e-7 relative per step); Adam amplifies that over the
    # ~20 steps of 4 epochs to well under 1e-4, while the loss itself moves by O(1) between epochs
    np.testing.assert_allclose(ddp, single, rtol=1e-4)
    assert np.ptp(single) > 0.1
    assert json.loads((tmp_path / "ddp" / "compressor.json").read_text())["loss"] == "vmim"


@pytest.mark.slow
def test_two_processes_resume_after_a_kill(dataset, tmp_path):
    straight = torchrun(tmp_path, dataset, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = torchrun(tmp_path, dataset, tmp_path / "resumed", kill_after=2)
    assert killed.returncode != 0
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and not (tmp_path / "resumed" / "compressor.pt").exists()
    resumed = torchrun(tmp_path, dataset, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the same processes, data order and reductions: the resumed run is the uninterrupted one
    np.testing.assert_array_equal(val_losses(tmp_path / "resumed"), val_losses(tmp_path / "straight"))
    a = torch.load(tmp_path / "straight" / "compressor.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "compressor.pt", weights_only=True)
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0)


def test_launch_from_the_environment():
    assert launch_of({}) == Launch()
    assert launch_of({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch()  # no rendezvous address
    torchrun_env = {"MASTER_ADDR": "node1", "MASTER_PORT": "29500", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert launch_of(torchrun_env) == Launch(3, 4, 1)
    srun_env = {"MASTER_ADDR": "node1", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert launch_of(srun_env) == Launch(5, 8, 1) and launch_of(srun_env).distributed
    with pytest.raises(ValueError, match="RANK=4 is not in"):
        launch_of({**torchrun_env, "RANK": "4"})
    with pytest.raises(ValueError, match="SLURM_NTASKS='x'"):
        launch_of({**srun_env, "SLURM_NTASKS": "x"})


def test_shares_cover_a_batch_once():
    batch = np.arange(10)
    shares = [rank_share(batch, r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(shares), batch)
    assert [len(s) for s in shares] == [4, 3, 3]
    assert [len(rank_share(np.arange(1), r, 2)) for r in range(2)] == [1, 0]


@pytest.mark.mpi
@pytest.mark.slow
def test_compress_stage_over_two_mpi_ranks_follows_one_process(tmp_path, mpiexec):
    """`cosmosbi run --stage compress` under `mpiexec -n 2` with a rendezvous trains on both ranks."""
    import socket

    import yaml

    config = {
        "run_dir": "run",
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "datasets": {"train": {"n": 300, "seed": 1}},
        "compressor": {
            "input": "field",
            "network": {"kind": "mlp", "hidden": 32},
            "loss": "mse",
            "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "num_threads": 1},
        },
    }
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "c.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cosmosbi = [sys.executable, "-m", "cosmosbi", "run", "c.yaml", "-q", "--stage"]
    for name in ("one", "two"):
        done = subprocess.run(
            [*cosmosbi, "simulate"],
            cwd=tmp_path / name,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*cosmosbi, "compress"], cwd=tmp_path / "one", env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rendezvous = ["-genv", "MASTER_ADDR", "127.0.0.1", "-genv", "MASTER_PORT", str(port)]
    done = subprocess.run(
        [mpiexec, "-n", "2", *rendezvous, *cosmosbi, "compress"],
        cwd=tmp_path / "two",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    one, two = (val_losses(tmp_path / name / "run" / "compressor") for name in ("one", "two"))
    np.testing.assert_allclose(two, one, rtol=1e-4)  # the tolerance of the torchrun test above


@pytest.mark.slow
def test_cosmosbi_run_under_torchrun_simulates_and_trains_on_both_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m cosmosbi run`: the processes coordinate over torch.distributed."""
    import yaml

    config = {
        "run_dir": "run",
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "datasets": {"train": {"n": 300, "seed": 1}},
        "compressor": {
            "input": "field",
            "network": {"kind": "mlp", "hidden": 32},
            "loss": "mse",
            "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "num_threads": 1},
        },
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = {
        "one": [sys.executable],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    }
    for name, launcher in launchers.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "c.yaml").write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [*launcher, "-m", "cosmosbi", "run", "c.yaml", "-q"],
            cwd=tmp_path / name,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (SimulationDataset(tmp_path / name / "run" / "sims" / "train") for name in launchers)
    np.testing.assert_array_equal(two.read("field"), one.read("field"))  # simulations do not depend on the ranks
    assert two.manifest["runs"][-1]["n_ranks"] == 2
    np.testing.assert_allclose(
        val_losses(tmp_path / "two" / "run" / "compressor"),
        val_losses(tmp_path / "one" / "run" / "compressor"),
        rtol=1e-4,
    )
    # `cosmosbi compress` under torchrun: every process joins the (finished) training, rank 0 writes the summaries
    done = subprocess.run(
        [*launchers["two"], "-m", "cosmosbi", "compress", "c.yaml", "-q"],
        cwd=tmp_path / "two",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert SimulationDataset(tmp_path / "two" / "run" / "summaries" / "train").read("t").shape == (300, 2)
