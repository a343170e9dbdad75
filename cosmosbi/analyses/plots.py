"""Figures of the validation analyses; each function returns a matplotlib Figure."""

from __future__ import annotations

import numpy as np
from scipy import stats

from cosmosbi.analyses.calibration import CoverageResult, SBCResult, TARPResult
from cosmosbi.analyses.checks import PredictiveCheck
from cosmosbi.analyses.shift import MMDResult

__all__ = [
    "rank_histograms",
    "ecdf_differences",
    "coverage_curves",
    "mmd_null",
    "ood_histogram",
    "predictive_histograms",
    "corner",
    "loss_curves",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, size: float = 2.8):
    plt = _plt()
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def rank_histograms(result: SBCResult, band: float = 0.99):
    """SBC rank histograms with the ``band`` binomial interval of a calibrated posterior."""
    M, D = result.ranks.shape
    L, B = result.n_samples, result.n_bins
    fig, axes = _grid(D)
    bin_of_rank = np.floor(np.arange(L + 1) * B / (L + 1)).astype(int)
    p = np.bincount(bin_of_rank, minlength=B) / (L + 1)
    low, high = stats.binom.ppf((1 - band) / 2, M, p), stats.binom.ppf(1 - (1 - band) / 2, M, p)
    for j, ax in zip(range(D), axes):
        counts = np.bincount(bin_of_rank[result.ranks[:, j]], minlength=B)
        ax.fill_between(
            np.arange(B + 1),
            np.append(low, low[-1]),
            np.append(high, high[-1]),
            step="post",
            color="0.85",
            label=f"{band:.0%} band",
        )
        ax.stairs(counts, np.arange(B + 1), color="C0")
        ax.set_title(f"{result.names[j]}: {result.verdicts[j]}", fontsize=9)
        ax.set_xlabel("rank bin")
    axes[0].set_ylabel("simulations")
    fig.tight_layout()
    return fig


def ecdf_differences(result: SBCResult, band: float = 0.95):
    """ECDF of normalised ranks minus the uniform CDF, with the DKW simultaneous ``band``."""
    plt = _plt()
    M = len(result.ranks)
    u = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    eps = np.sqrt(np.log(2 / (1 - band)) / (2 * M))
    ax.fill_between(u, -eps, eps, color="0.85", label=f"{band:.0%} band")
    for j, name in enumerate(result.names):
        r = (result.ranks[:, j] + 0.5) / (result.n_samples + 1)
        ax.plot(u, np.mean(r[:, None] <= u[None, :], axis=0) - u, label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("normalised rank")
    ax.set_ylabel("ECDF - uniform")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def coverage_curves(
    coverage: CoverageResult | None = None, tarp: TARPResult | None = None, sbc_result: SBCResult | None = None
):
    """Empirical coverage against credibility level: HPD regions, TARP, central intervals."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="k", lw=0.7, ls="--")
    if coverage is not None:
        ax.plot(coverage.levels, coverage.coverage, label=f"HPD ({coverage.verdict})")
    if tarp is not None:
        ax.plot(tarp.levels, tarp.ecp, label=f"TARP ({tarp.verdict}, ATC {tarp.atc:+.2f})")
    if sbc_result is not None:
        for j, name in enumerate(sbc_result.names):
            ax.plot(sbc_result.coverage_levels, sbc_result.coverage[j], marker=".", lw=0.8, label=f"central, {name}")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("empirical coverage")
    ax.text(0.97, 0.03, "below the diagonal: overconfident", ha="right", fontsize=7, transform=ax.transAxes)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mmd_null(result: MMDResult, title: str = "training vs target"):
    """Permutation null distribution of MMD^2 and the observed value."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.hist(result.null, bins=30, color="0.7", label="permutations")
    ax.axvline(result.mmd2, color="C3", label=f"observed (p = {result.pvalue:.3g})")
    ax.set_xlabel("MMD$^2$")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def ood_histogram(scores: dict[str, np.ndarray]):
    """Histograms of per-observation OOD p-values (uniform when in distribution)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, values in scores.items():
        ax.hist(values, bins=20, range=(0, 1), histtype="step", label=label)
    ax.set_xlabel("OOD p-value")
    ax.set_ylabel("observations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def predictive_histograms(checks: dict[str, PredictiveCheck], title: str = "", per_group: int = 5):
    """Posterior predictive histograms with the observed value marked, one row per set of statistics.

    Each row shows the Mahalanobis distances of the draws with the observation's (and the combined
    p-value), then the ``per_group`` statistics with the smallest rank p-values.
    """
    plt = _plt()
    rows = max(len(checks), 1)
    cols = per_group + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), squeeze=False)
    for row, (label, check) in zip(axes, checks.items()):
        row[0].hist(check.distances, bins=20, color="0.6")
        row[0].axvline(check.distance, color="C3", lw=2)
        row[0].set_title(f"{label}: distance, p = {check.pvalue:.3g}", fontsize=8)
        shown = np.argsort(check.pvalues, kind="stable")[:per_group]
        for ax, j in zip(row[1:], shown):
            ax.hist(check.predictive[:, j], bins=20, color="0.6")
            ax.axvline(check.observed[j], color="C3", lw=2)
            ax.set_title(f"{check.names[j]}, p = {check.pvalues[j]:.3g}", fontsize=8)
        for ax in row[1 + len(shown) :]:
            ax.set_visible(False)
        for ax in row:
            ax.tick_params(labelsize=7)
    for ax in axes.flat[len(checks) * cols :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def corner(samples: dict[str, np.ndarray], names: list[str], truth: np.ndarray | None = None, title: str = ""):
    """GetDist triangle plot of one or more sample sets (label -> (L, D)), truth marked."""
    import getdist.chains
    from getdist import MCSamples, plots

    getdist.chains.print_load_details = False
    labels = [n.replace("_", r"\_") for n in names]
    sets = [
        MCSamples(samples=np.asarray(s), names=[f"p{j}" for j in range(len(names))], labels=labels, label=label)
        for label, s in samples.items()
    ]
    g = plots.get_subplot_plotter(width_inch=2.2 * len(names) + 1.5)
    g.settings.legend_fontsize = 8
    markers = {f"p{j}": float(v) for j, v in enumerate(truth)} if truth is not None else None
    g.triangle_plot(sets, filled=True, markers=markers, title_limit=0)
    if title:
        g.fig.suptitle(title, fontsize=9)
    return g.fig


def loss_curves(histories: dict[str, list[dict]]):
    """Training and validation loss per epoch for each named training run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for k, (label, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        if all("train_loss" in h for h in history):
            ax.plot(epochs, [h["train_loss"] for h in history], color=f"C{k}", ls="--", label=f"{label} (training)")
        ax.plot(epochs, [h["val_loss"] for h in history], color=f"C{k}", label=f"{label} (validation)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
