"""Fisher information of learned summaries vs the analytic Fisher information (Gaussian field).

    python benchmarks/compressor_information.py [--n-train 20000] [--epochs 40] [--loss vmim]

Trains a CNN compressor on simulations of the Gaussian-field reference problem (n x n,
P(k) = A (k / (n/4))^-B, the default prior), then estimates the Fisher matrix of its summaries at
the fiducial point theta0 = (1, 2): F_t = dmu^T C^-1 dmu, with the covariance C from
``--n-cov`` simulations at theta0 (Hartlap-corrected) and the derivatives dmu / dtheta_j
from ``--n-deriv`` seed-matched simulations at theta0 +- delta_j (the same seeds on both
sides, so the noise cancels). Prints det(F_t) / det(F_exact) (target >= 0.9) and the
marginal errors sqrt(F^-1)_jj of both. The analytic Fisher matrix comes from
``GaussianField2D.fisher_matrix``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cosmosbi.compressors.losses import make_loss
from cosmosbi.compressors.trainer import TrainSettings, compress_dataset, make_compressor, train_compressor
from cosmosbi.simulators import make_simulator
from cosmosbi.simulators.runner import run_simulations
from cosmosbi.simulators.store import SimulationDataset


def summaries_at(sim, compressor, theta, n, seed, work: Path, name: str) -> np.ndarray:
    """Summaries (n, d) of n simulations at one theta with root seed ``seed``."""
    run_simulations(sim, n, work / name, seed, theta=np.tile(theta, (n, 1)), progress=False)
    return compress_dataset(compressor, SimulationDataset(work / name), work / f"{name}-t", device="cpu").read("t").astype(np.float64)


def summary_fisher(sim, compressor, theta0, step, n_cov, n_deriv, work: Path) -> np.ndarray:
    t0 = summaries_at(sim, compressor, theta0, n_cov, 101, work, "fiducial")
    d = t0.shape[1]
    cov = np.cov(t0.T).reshape(d, d)
    hartlap = (n_cov - d - 2) / (n_cov - 1)
    precision = hartlap * np.linalg.inv(cov)
    derivs = []
    for j in range(len(theta0)):
        shift = np.zeros(len(theta0))
        shift[j] = step[j]
        plus = summaries_at(sim, compressor, theta0 + shift, n_deriv, 202, work, f"plus{j}")
        minus = summaries_at(sim, compressor, theta0 - shift, n_deriv, 202, work, f"minus{j}")
        derivs.append((plus - minus).mean(0) / (2 * step[j]))
    dmu = np.stack(derivs)  # (D, d)
    return dmu @ precision @ dmu.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-pixels", type=int, default=32, help="grid side of the Gaussian field")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--summary-dim", type=int, default=2, help="number of learned summaries d")
    parser.add_argument("--norm", default="batch", choices=["batch", "none"])
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", default="vmim", choices=["vmim", "mse", "gaussian_nll"])
    parser.add_argument("--n-cov", type=int, default=2000)
    parser.add_argument("--n-deriv", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads while training")
    parser.add_argument("--work-dir", type=Path, help="keep the simulations and the compressor here (default: a temporary directory)")
    args = parser.parse_args()

    sim = make_simulator("gaussian_field", {"n_pixels": args.n_pixels})
    theta0 = np.array([1.0, 2.0])
    exact = sim.fisher_matrix(theta0)
    step = 0.5 * np.sqrt(np.diag(np.linalg.inv(exact)))  # half a marginal standard deviation
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.time()
        run_simulations(sim, args.n_train, work / "train", seed=1, progress=False)
        dataset = SimulationDataset(work / "train")
        settings = TrainSettings(epochs=args.epochs, batch_size=128, learning_rate=args.lr, patience=args.patience, seed=0, device="auto", num_threads=args.threads)
        compressor = make_compressor({"kind": "resnet2d", "width": args.width, "depth": args.depth, "norm": args.norm}, dataset, "field", loss=args.loss, summary_dim=args.summary_dim)
        loss = make_loss(args.loss, 2, args.summary_dim)
        result = train_compressor(compressor, loss, dataset, work / "compressor", settings, progress=True)
        trained = time.time() - started
        learned = summary_fisher(sim, compressor.cpu(), theta0, step, args.n_cov, args.n_deriv, work)
    ratio = np.linalg.det(learned) / np.linalg.det(exact)
    print(f"Gaussian field {args.n_pixels}x{args.n_pixels}, theta0 = {theta0.tolist()}, {args.n_train} training simulations, "
          f"resnet2d width {args.width} depth {args.depth} norm {args.norm}, loss {args.loss}, d = {args.summary_dim}; torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads")
    print(f"training: {len(result.history)} epochs (best {result.best_epoch}), {trained:.0f} s")
    print(f"marginal sigma exact:   {np.sqrt(np.diag(np.linalg.inv(exact))).round(5).tolist()}")
    print(f"marginal sigma learned: {np.sqrt(np.diag(np.linalg.inv(learned))).round(5).tolist()}")
    print(f"det(F_learned) / det(F_exact) = {ratio:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
