"""Two-sample metrics for comparing posterior samples.

:func:`c2st` is the classifier two-sample test: a classifier learns to tell samples of ``a``
from samples of ``b`` and its k-fold cross-validated accuracy is returned. 0.5 means the two
sets cannot be told apart; 1.0 means they are separable. Under the null hypothesis (same
distribution) with n samples in each set, the accuracy is approximately normal with mean 0.5
and standard deviation ``c2st_null_std(n)`` = 0.5 / sqrt(2 n).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["c2st", "c2st_null_std"]


def c2st(
    a: np.ndarray,
    b: np.ndarray,
    seed: int = 0,
    *,
    n_folds: int = 5,
    classifier: str = "mlp",
    hidden_factor: int = 10,
    max_iter: int = 1000,
) -> float:
    """Classifier two-sample test accuracy between samples a: (N, D) and b: (M, D).

    The features are z-scored with the mean and standard deviation of ``a``; the classes are
    balanced by truncating the larger set to the size of the smaller one.

    Args:
        a, b: the two sample sets (numpy arrays or torch tensors).
        seed: seed of the fold split and of the classifier's initialisation.
        n_folds: number of cross-validation folds.
        classifier: ``"mlp"`` (two hidden layers of ``hidden_factor * D`` ReLU units, as in
            sbi's benchmark, trained with Adam and early stopping on 10% of each training
            fold) or ``"rf"`` (random forest).
        hidden_factor: width of the MLP's hidden layers per dimension.
        max_iter: maximal training iterations of the MLP.

    Returns:
        mean accuracy over the folds, in [0, 1].
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    a = _as_2d(a, "a")
    b = _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"c2st: a has {a.shape[1]} dimensions but b has {b.shape[1]}")
    n = min(len(a), len(b))
    if n < n_folds:
        raise ValueError(f"c2st: need at least n_folds={n_folds} samples in each set, got {len(a)} and {len(b)}")
    a, b = a[:n], b[:n]
    mean, std = a.mean(0), a.std(0)
    std = np.where(std > 0, std, 1.0)
    data = (np.concatenate([a, b]) - mean) / std
    labels = np.concatenate([np.zeros(n), np.ones(n)])
    dim = data.shape[1]
    if classifier == "mlp":
        clf = MLPClassifier(
            activation="relu",
            hidden_layer_sizes=(hidden_factor * dim, hidden_factor * dim),
            max_iter=max_iter,
            solver="adam",
            early_stopping=True,
            random_state=seed,
        )
    elif classifier == "rf":
        clf = RandomForestClassifier(random_state=seed)
    else:
        raise ValueError(f"c2st: classifier must be 'mlp' or 'rf', got {classifier!r}")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with threadpool_limits(1):  # small dense layers: extra BLAS threads only contend for cores
        scores = cross_val_score(clf, data, labels, cv=folds, scoring="accuracy")
    return float(np.mean(scores))


def c2st_null_std(n: int) -> float:
    """Standard deviation of the C2ST accuracy for two sets of n samples from one distribution."""
    return 0.5 / math.sqrt(2 * n)


def _as_2d(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value, dtype=float)
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2:
        raise ValueError(f"c2st: {name} must have shape (N, D), got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"c2st: {name} holds non-finite values")
    return value
