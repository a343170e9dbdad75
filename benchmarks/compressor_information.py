"""Fisher information of learned summaries vs the analytic Fisher information (Gaussian field).

    python benchmarks/compressor_information.py [--n-train 20000] [--epochs 40] [--loss vmim]
    python benchmarks/compressor_information.py --n-pixels 16 --check-estimator
    python benchmarks/compressor_information.py --n-pixels 16 --network hybrid2d [--augment]

Trains a CNN compressor on simulations of the Gaussian-field reference problem (n x n,
P(k) = A (k / (n/4))^-B, the default prior), then estimates the Fisher matrix of its summaries at
the fiducial point theta0 = (1, 2): F_t = dmu^T C^-1 dmu, with the covariance C from
``--n-cov`` simulations at theta0 (Hartlap-corrected) and the derivatives dmu / dtheta_j
from ``--n-deriv`` seed-matched simulations at theta0 +- delta_j (the same seeds on both
sides, so most of the noise cancels); the defaults, 5 x 10^4 and 10^4, make the standard
error of the ratio about 0.01 on 16 x 16 fields (0.045 with 2000 and 1000). Prints
det(F_t) / det(F_exact) (target >= 0.9), its bootstrap
standard error, the same ratio with the noise bias of the quadratic form dmu^T C^-1 dmu
removed, and the marginal errors sqrt(F^-1)_jj. The analytic Fisher matrix comes from
``GaussianField2D.fisher_matrix`` (same grid size).

``--check-estimator`` runs the same estimator on the optimal summaries (the score of the exact
likelihood at theta0, computed from the Fourier shell powers) instead of a trained network:
their Fisher information equals the analytic one, so the printed ratio measures the
estimator's own error. ``--network hybrid2d`` trains the hybrid compressor (bandpowers of the
field next to the CNN, :mod:`cosmosbi.compressors.hybrid`) instead of the CNN alone.
``--ensemble K`` trains K networks (seeds 0..K-1) and concatenates
their summaries.
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


def fiducial_design(sim, theta0, step, n_cov: int, n_deriv: int, work: Path) -> dict[str, SimulationDataset]:
    """Simulations for the Fisher estimate: ``fiducial`` (n_cov at theta0, root seed 101) and
    ``plus{j}`` / ``minus{j}`` (n_deriv at theta0 +- step_j e_j, all with root seed 202, so
    simulation i of every one of them shares its random numbers)."""
    design = {"fiducial": (theta0, n_cov, 101)}
    for j in range(len(theta0)):
        shift = np.zeros(len(theta0))
        shift[j] = step[j]
        design[f"plus{j}"] = (theta0 + shift, n_deriv, 202)
        design[f"minus{j}"] = (theta0 - shift, n_deriv, 202)
    out = {}
    for name, (theta, n, seed) in design.items():
        run_simulations(sim, n, work / name, seed, theta=np.tile(theta, (n, 1)), progress=False)
        out[name] = SimulationDataset(work / name)
    return out


def compress_design(compressor, design: dict, work: Path, tag: str) -> dict[str, np.ndarray]:
    """Summaries (n, d) of every design dataset under ``compressor``."""
    return {
        name: compress_dataset(compressor, ds, work / f"{name}-{tag}", device="cpu").read("t").astype(np.float64)
        for name, ds in design.items()
    }


def simulation_fisher(t: dict[str, np.ndarray], step, n_boot: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Fisher matrix of summaries from simulations.

    Args:
        t: ``fiducial`` (n_cov, d) and ``plus{j}`` / ``minus{j}`` (n_deriv, d) summaries of
            :func:`fiducial_design`'s datasets.
        step: the finite-difference steps (D,).

    Returns a dict: ``F`` = dmu C^-1 dmu^T (Hartlap-corrected precision); ``F_debiased`` = F
    minus the expected contribution tr(C^-1 Cov(dmu_i, dmu_j)) of the noise in the estimated
    derivatives; ``boot`` (n_boot, D, D) the bootstrap replicates of F (fiducial rows and
    derivative rows resampled).
    """
    fid = t["fiducial"]
    n, d = fid.shape
    D = len(step)
    if n <= d + 2:
        raise ValueError(f"need more than d + 2 = {d + 2} fiducial simulations for the covariance, got {n}")
    diffs = np.stack([(t[f"plus{j}"] - t[f"minus{j}"]) / (2 * step[j]) for j in range(D)])  # (D, n_deriv, d)
    n_deriv = diffs.shape[1]

    def fisher(fid_rows, diff_rows):
        cov = np.atleast_2d(np.cov(fid_rows.T))
        precision = (len(fid_rows) - d - 2) / (len(fid_rows) - 1) * np.linalg.inv(cov)
        dmu = diff_rows.mean(1)
        return dmu @ precision @ dmu.T, precision

    F, precision = fisher(fid, diffs)
    centred = diffs - diffs.mean(1, keepdims=True)
    cross = np.einsum("ina,jnb->ijab", centred, centred) / (n_deriv - 1)  # Cov(diff_i, diff_j) per row
    bias = np.einsum("ab,ijab->ij", precision, cross) / n_deriv
    rng = np.random.default_rng(seed)
    boot = np.stack(
        [fisher(fid[rng.integers(0, n, n)], diffs[:, rng.integers(0, n_deriv, n_deriv)])[0] for _ in range(n_boot)]
    )
    return {"F": F, "F_debiased": F - bias, "boot": boot}


def score_summaries(sim, x: np.ndarray, theta0) -> np.ndarray:
    """The score d ln L / d theta at theta0 of fields x (N, n, n): the optimal summaries. Returns (N, D)."""
    shells = sim.shell_power(x)
    P = sim.spectrum.power(np.asarray(theta0)[None], sim.shell_k)[0]
    dlog = sim.spectrum.dlog_power(np.asarray(theta0)[None], sim.shell_k)[0]  # (S, D)
    return 0.5 * (shells / P - sim.shell_counts) @ dlog


def report(name: str, est: dict, exact: np.ndarray) -> float:
    det_exact = np.linalg.det(exact)
    ratio = np.linalg.det(est["F"]) / det_exact
    se = np.std(np.linalg.det(est["boot"]) / det_exact, ddof=1)
    debiased = np.linalg.det(est["F_debiased"]) / det_exact
    print(f"marginal sigma {name}: {np.sqrt(np.diag(np.linalg.inv(est['F']))).round(5).tolist()}")
    print(
        f"det(F_{name}) / det(F_exact) = {ratio:.3f} +- {se:.3f} (bootstrap); "
        f"derivative-noise bias removed: {debiased:.3f}"
    )
    return ratio


def report_with_subset(
    name: str, t: dict[str, np.ndarray], step, exact: np.ndarray, n_cov: int = 2000, n_deriv: int = 1000
) -> None:
    """Report the estimate from all simulations and, when there are more, from the first
    ``n_cov`` fiducial / ``n_deriv`` derivative simulations (the same simulations as a run
    with those sizes: simulation i has its own seed)."""
    report(name, simulation_fisher(t, step), exact)
    if len(t["fiducial"]) > n_cov and len(t["plus0"]) > n_deriv:
        subset = {key: value[: n_cov if key == "fiducial" else n_deriv] for key, value in t.items()}
        report(f"{name} [first {n_cov} / {n_deriv} simulations]", simulation_fisher(subset, step), exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-pixels", type=int, default=32, help="grid side of the Gaussian field")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--stem-kernel", type=int, default=3, help="kernel size of the stem convolution")
    parser.add_argument(
        "--linear-stem", action="store_true", help="pool the moments of the stem convolution before its activation"
    )
    parser.add_argument("--summary-dim", type=int, default=2, help="number of learned summaries d")
    parser.add_argument("--norm", default="batch", choices=["batch", "none"])
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loss", default="vmim", choices=["vmim", "mse", "gaussian_nll"])
    parser.add_argument(
        "--network",
        default="resnet2d",
        choices=["resnet2d", "hybrid2d"],
        help="CNN only, or the hybrid: unit-width |k| bandpowers of every mode next to the CNN branch",
    )
    parser.add_argument("--cnn-features", type=int, default=16, help="hybrid2d: outputs of the CNN branch")
    parser.add_argument("--augment", action="store_true", help="train on randomly flipped / 90-degree rotated fields")
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="train this many networks (seeds 0, 1, ...) and concatenate their summaries",
    )
    parser.add_argument("--n-cov", type=int, default=50000, help="fiducial simulations for the covariance")
    parser.add_argument(
        "--n-deriv", type=int, default=10000, help="seed-matched pairs per parameter for the derivatives"
    )
    parser.add_argument(
        "--check-estimator",
        action="store_true",
        help="estimate the Fisher matrix of the exact score instead of training",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads while training")
    parser.add_argument(
        "--work-dir", type=Path, help="keep the simulations and the compressor here (default: a temporary directory)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sim = make_simulator("gaussian_field", {"n_pixels": args.n_pixels})
    theta0 = np.array([1.0, 2.0])
    exact = sim.fisher_matrix(theta0)
    step = 0.5 * np.sqrt(np.diag(np.linalg.inv(exact)))  # half a marginal standard deviation
    print(
        f"Gaussian field {args.n_pixels}x{args.n_pixels}, theta0 = {theta0.tolist()}; "
        f"Fisher from {args.n_cov} fiducial "
        f"simulations and {args.n_deriv} seed-matched pairs per parameter; "
        f"torch {torch.__version__}, {platform.machine()}"
    )
    print(f"marginal sigma exact: {np.sqrt(np.diag(np.linalg.inv(exact))).round(5).tolist()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        design = fiducial_design(sim, theta0, step, args.n_cov, args.n_deriv, work)
        if args.check_estimator:
            t = {name: score_summaries(sim, ds.read("field"), theta0) for name, ds in design.items()}
            report_with_subset("score", t, step, exact)
            return
        started = time.time()
        run_simulations(sim, args.n_train, work / "train", seed=1, progress=False)
        dataset = SimulationDataset(work / "train")
        network = {
            "kind": args.network,
            "width": args.width,
            "depth": args.depth,
            "norm": args.norm,
            "stem_kernel": args.stem_kernel,
            "linear_stem": args.linear_stem,
        }
        if args.network == "hybrid2d":  # unit-width bins up to the corner of the grid: every mode is in a bin
            network.update(
                cnn_features=args.cnn_features, bin_edges=np.arange(0.5, args.n_pixels / np.sqrt(2) + 1.0).tolist()
            )
        print(
            f"{args.n_train} training simulations, network {network}, loss {args.loss}, d = {args.summary_dim}, "
            f"lr {args.lr}, batch {args.batch_size}, {torch.get_num_threads()} threads"
        )
        summaries = []
        for member in range(args.ensemble):
            settings = TrainSettings(
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                patience=args.patience,
                seed=member,
                device="auto",
                num_threads=args.threads,
                augment=args.augment,
            )
            compressor = make_compressor(
                network, dataset, "field", loss=args.loss, summary_dim=args.summary_dim, seed=member
            )
            loss = make_loss(args.loss, 2, args.summary_dim, seed=member)
            result = train_compressor(compressor, loss, dataset, work / f"compressor{member}", settings, progress=False)
            print(
                f"network {member}: {len(result.history)} epochs (best {result.best_epoch}, "
                f"validation loss {result.best_val_loss:.4f}), "
                f"{time.time() - started:.0f} s since start"
            )
            t = compress_design(compressor.cpu(), design, work, f"t{member}")
            if args.ensemble > 1:
                report(f"network{member}", simulation_fisher(t, step), exact)
            summaries.append(t)
        t = {name: np.concatenate([s[name] for s in summaries], axis=1) for name in summaries[0]}
        report_with_subset("learned", t, step, exact)
    print("(target: det(F_learned) / det(F_exact) >= 0.9)")


if __name__ == "__main__":
    main()
