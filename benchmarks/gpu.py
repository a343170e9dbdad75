"""CNN training and strong-lens rendering throughput on CPU and, where torch sees one, on a GPU.

Prints, for each device:

- CNN training: images per second of the compressor's training step (the ``resnet2d``
  network, width 16, depth 3, on 64 x 64 images, batch 64, MSE loss, AdamW, gradient clipping:
  the step of :func:`cosmosbi.compressors.trainer.train_compressor`), in float32 and with bf16
  autocast (``mixed_precision: true``; the trainer uses it on CUDA only, the CPU figure is
  for comparison);
- strong-lens rendering: noiseless images per second of ``StrongLensSimulator.render``
  (``euclid_like``, 64 x 64 pixels, 10 subhalos per image, batches of 32), float32 (the
  default) and float64;

and the GPU / CPU ratio of each figure. Each figure is the best of repeated timed calls over
about ``--seconds`` of wall time, after a warm-up call; CUDA work is synchronised before the
clock is read. Without CUDA it says so and prints the CPU figures (well under a minute).

Run: python benchmarks/gpu.py [--seconds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from cosmosbi.compressors.losses import make_loss
from cosmosbi.compressors.networks import build_network
from cosmosbi.simulators.strong_lens import StrongLensSimulator


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn, n_items: int, seconds: float, device: torch.device) -> float:
    """Items per second of one call of fn (producing n_items), best over calls for about ``seconds``."""
    fn()  # warm-up: kernels, caches, allocator
    synchronise(device)
    best = np.inf
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or not np.isfinite(best):
        t = time.perf_counter()
        fn()
        synchronise(device)
        best = min(best, time.perf_counter() - t)
    return n_items / best


def cnn_training_rate(device: torch.device, mixed_precision: bool, seconds: float, batch: int = 64) -> float:
    """Training images per second of the resnet2d compressor step."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = build_network({"kind": "resnet2d", "width": 16, "depth": 3, "in_channels": 1, "out_features": 2}).to(
            device
        )
    loss = make_loss("mse", 2, 2).to(device)
    x = torch.randn(batch, 1, 64, 64, generator=generator).to(device)
    theta = torch.randn(batch, 2, generator=generator).to(device)
    params = list(network.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            value = loss(network(x), theta)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    network.train()
    return best_rate(step, batch, seconds, device)


def strong_lens_rate(device: torch.device, dtype: str, seconds: float, batch: int = 32) -> float:
    """Noiseless strong-lens images per second."""
    sim = StrongLensSimulator(device=str(device), dtype=dtype)
    rngs = [np.random.default_rng([7, i]) for i in range(batch)]
    nuisance, populations = sim.draw_parameters(np.tile([[0.1, -1.9]], (batch, 1)), rngs, n_subhalos=10)
    return best_rate(lambda: sim.render(nuisance, populations), batch, seconds, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per figure")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    print(
        f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} CPU thread(s)); load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        print("GPU: not available (torch.cuda.is_available() is False); CPU figures only")
    rows = {
        "CNN training, float32 (img/s)": lambda d: cnn_training_rate(d, False, args.seconds),
        "CNN training, bf16 autocast (img/s)": lambda d: cnn_training_rate(d, True, args.seconds),
        "strong lens, float32 (img/s)": lambda d: strong_lens_rate(d, "float32", args.seconds),
        "strong lens, float64 (img/s)": lambda d: strong_lens_rate(d, "float64", args.seconds),
    }
    header = (
        "| figure | " + " | ".join(d.type.upper() for d in devices) + (" | GPU / CPU |" if len(devices) > 1 else " |")
    )
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    for name, measure in rows.items():
        rates = [measure(d) for d in devices]
        ratio = f" | {rates[1] / rates[0]:.1f}x" if len(rates) > 1 else ""
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + ratio + " |", flush=True)


if __name__ == "__main__":
    main()
