"""The quick-start compressor stage on a quiet machine and next to one competing CPU-bound process.

Trains the compressor of ``examples/quickstart.yaml`` (network, loss, summary size and training
settings as there) on its ``train`` dataset, simulated first into a temporary directory by the
simulate stage (``cosmosbi run --stage simulate``). Each training runs in a fresh process, in
two set-ups:

- ``old``: torch imported before cosmosbi with OpenMP's default wait policy (waiting threads
  spin), and the thread count the config names (``num_threads: 2`` in the quick start before
  this change; torch's own default on a 2-core machine is the same);
- ``new``: cosmosbi imported first (``OMP_WAIT_POLICY=PASSIVE`` unless set) and the default
  thread count, the cores this process may use (:func:`cosmosbi.cores.default_threads`);

each once on its own ("quiet") and once while a competing process spins on one core
(``while True: pass``). Printed: seconds per training and the ratio contended / quiet.

    python benchmarks/contention.py                 # 2 epochs per training (the quick start trains up to 30)
    python benchmarks/contention.py --epochs 5 --repeats 2

Epochs are cut to keep a run within a few minutes; the ratio is per epoch and does not depend
on it. The machine's own load (other users) adds to both conditions: report ``uptime`` with
the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def simulate_training_data(run_dir: Path, n: int) -> Path:
    """Write a config with the quick start's simulator and ``train`` dataset; run its simulate stage."""
    config = yaml.safe_load(QUICKSTART.read_text())
    train = dict(config["datasets"]["train"], n=n)
    small = {key: config[key] for key in ("simulator", "prior", "batch_size")}
    small.update(run_dir=str(run_dir), datasets={"train": train})
    path = run_dir.parent / "contention.yaml"
    path.write_text(yaml.safe_dump(small))
    command = [sys.executable, "-m", "cosmosbi", "run", str(path), "--stage", "simulate", "--quiet"]
    subprocess.run(command, check=True, env=_env())
    return run_dir / "sims" / "train"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def train_once(mode: str, dataset_dir: str, epochs: int, out_dir: str) -> dict:
    """Train the quick-start compressor in this process (``--child``). Returns seconds and threads."""
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    if mode == "old":
        import torch  # noqa: F401  (loads OpenMP before cosmosbi can set its wait policy)

    importlib.import_module("cosmosbi")  # sets OMP_WAIT_POLICY=PASSIVE when torch is not yet loaded
    import torch

    if mode == "new":
        policy = os.environ.get("OMP_WAIT_POLICY", "default")

    from cosmosbi.compressors.losses import make_loss
    from cosmosbi.compressors.trainer import TrainSettings, make_compressor, train_compressor
    from cosmosbi.simulators.store import SimulationDataset

    section = yaml.safe_load(QUICKSTART.read_text())["compressor"]
    train = {k: v for k, v in section["train"].items() if k != "num_threads"}
    threads = 2 if mode == "old" else None
    train.update(epochs=epochs, patience=epochs + 1, device="cpu", num_threads=threads)
    settings = TrainSettings(**train)
    dataset = SimulationDataset(dataset_dir)
    compressor = make_compressor(
        section["network"], dataset, section["input"], loss=section["loss"], summary_dim=section["summary_dim"]
    )
    loss = make_loss(section["loss"], compressor.parameter_dim, compressor.summary_dim)
    start = time.perf_counter()
    train_compressor(compressor, loss, dataset, out_dir, settings, progress=False)
    seconds = time.perf_counter() - start
    from cosmosbi.torch_runtime import torch_threads

    with torch_threads(settings.num_threads) as threads:
        pass
    return {"seconds": seconds, "threads": threads, "wait_policy": policy, "torch": torch.__version__}


def timed_training(mode: str, dataset_dir: Path, epochs: int, contended: bool, work: Path) -> dict:
    """One training in a fresh process, with or without a competing spinning process."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if contended else None
    try:
        out_dir = tempfile.mkdtemp(dir=work, prefix=f"compressor-{mode}-")
        command = [sys.executable, __file__, "--child", mode, "--dataset", str(dataset_dir), "--epochs", str(epochs)]
        child = subprocess.run([*command, "--out", out_dir], check=True, capture_output=True, text=True, env=_env())
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training (the quick start trains up to 30)")
    parser.add_argument("--n", type=int, default=10_000, help="training simulations (the quick start's: 10000)")
    parser.add_argument("--repeats", type=int, default=1, help="trainings per set-up and condition (median reported)")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_once(args.child, args.dataset, args.epochs, args.out)))
        return

    print(
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"
    )
    with tempfile.TemporaryDirectory(prefix="cosmosbi-contention-") as tmp:
        work = Path(tmp)
        dataset_dir = simulate_training_data(work / "run", args.n)
        print(
            f"quick-start compressor, {args.n} simulations, {args.epochs} epochs per training, median of {args.repeats}"
        )
        print(f"{'set-up':<6} {'threads':>7} {'wait policy':>11} {'quiet s':>8} {'contended s':>11} {'ratio':>6}")
        for mode in ("old", "new"):
            times = {}
            for contended in (False, True):
                runs = [timed_training(mode, dataset_dir, args.epochs, contended, work) for _ in range(args.repeats)]
                times[contended] = statistics.median(r["seconds"] for r in runs)
            info = runs[-1]
            print(
                f"{mode:<6} {info['threads']:>7} {info['wait_policy']:>11} {times[False]:>8.1f} {times[True]:>11.1f} "
                f"{times[True] / times[False]:>6.2f}",
                flush=True,
            )
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
