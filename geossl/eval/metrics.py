"""Evaluation metrics in numpy: average precision (scikit-learn semantics), mAP, top-1 accuracy.

Average precision is the step-wise area under the precision-recall curve, exactly as
``sklearn.metrics.average_precision_score``:  AP = Σ_k (R_k − R_{k−1}) · P_k  over the distinct score
thresholds in decreasing order; examples with equal scores enter together (one threshold), so ties
are handled as scikit-learn does, without interpolation.

Classes without a positive example: scikit-learn warns and gives them AP = 0, and its macro average
includes those zeros. ``average_precision`` does the same per class, but ``mean_average_precision``
with ``average="macro"`` skips such classes by default (``skip_empty=True``): a class absent from an
evaluation subset says nothing about the model. Pass ``skip_empty=False`` for scikit-learn's number.
"""

from __future__ import annotations

import numpy as np


def _as_2d(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must have the same shape")
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.ndim != 2:
        raise ValueError(f"expected (N,) or (N, K) arrays, found {y.ndim} dimensions")
    _check_finite(s)
    return (y > 0).astype(np.float64), s


def _check_finite(scores: np.ndarray) -> None:
    """Scores with NaN or ±inf rank arbitrarily: refused (as scikit-learn refuses them)."""
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"scores: {int(bad.sum())} of {bad.size} are not finite (first at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])})")


def tie_run_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """For scores (N, K) sorted in decreasing order along axis 0: the index (N, K) of the last
    position of each position's run of equal scores, the threshold at which the run is counted."""
    n = sorted_scores.shape[0]
    is_end = np.ones(sorted_scores.shape, dtype=bool)
    is_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    index = np.broadcast_to(np.arange(n).reshape((n,) + (1,) * (sorted_scores.ndim - 1)),
                            sorted_scores.shape)
    end = np.where(is_end, index, n)
    return np.minimum.accumulate(end[::-1], axis=0)[::-1]


def average_precision(y_true, scores) -> np.ndarray:
    """Per-class AP. y_true (N, K) in {0, 1}, scores (N, K) → (K,); (N,) inputs → a 0-d array.

    A class with no positive example gets 0.0 (scikit-learn's value)."""
    squeeze = np.ndim(y_true) == 1
    y, s = _as_2d(y_true, scores)
    n = y.shape[0]
    if n == 0:
        raise ValueError("average_precision of an empty set")
    order = np.argsort(-s, axis=0, kind="mergesort")
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    tps = np.cumsum(y_sorted, axis=0)
    end = tie_run_ends(s_sorted)
    precision_at_end = np.take_along_axis(tps, end, axis=0) / (end + 1.0)
    # Σ_k ΔR_k P_k: each positive contributes 1/P times the precision of its tie run.
    positives = y.sum(axis=0)
    ap = (y_sorted * precision_at_end).sum(axis=0) / np.maximum(positives, 1.0)
    ap = np.where(positives > 0, ap, 0.0)
    return ap[0] if squeeze else ap


def mean_average_precision(y_true, scores, *, average: str = "micro",
                           skip_empty: bool = True) -> float:
    """mAP of multi-label scores (N, K).

    ``"micro"``: AP of all (example, class) pairs pooled (scikit-learn ``average="micro"``);
    ``"macro"``: mean of per-class AP, over classes with a positive unless ``skip_empty=False``."""
    y, s = _as_2d(y_true, scores)
    if average == "micro":
        return float(average_precision(y.reshape(-1), s.reshape(-1)))
    if average == "macro":
        ap = average_precision(y, s)
        keep = y.sum(axis=0) > 0 if skip_empty else np.ones(ap.shape, dtype=bool)
        return float(ap[keep].mean()) if keep.any() else 0.0
    raise ValueError(f"average: expected 'micro' or 'macro', found {average!r}")


def top1_accuracy(labels, logits) -> float:
    """Fraction of rows whose arg-max over classes is the true class. labels (N,) int, logits (N, K)."""
    labels = np.asarray(labels)
    logits = np.asarray(logits)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected labels (N,) and logits (N, K), found {labels.shape} and {logits.shape}")
    _check_finite(logits)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def multilabel_report(y_true, scores) -> dict:
    """{"map_micro", "map_macro", "ap_per_class" (list, None where a class has no positive)}."""
    y, s = _as_2d(y_true, scores)
    ap = average_precision(y, s)
    has_positive = y.sum(axis=0) > 0
    return {"map_micro": mean_average_precision(y, s, average="micro"),
            "map_macro": mean_average_precision(y, s, average="macro"),
            "ap_per_class": [float(v) if p else None for v, p in zip(ap, has_positive)]}


def multiclass_report(labels, logits) -> dict:
    """{"top1"} (and "top5" when there are more than 5 classes)."""
    labels = np.asarray(labels)
    logits = np.asarray(logits)
    report = {"top1": top1_accuracy(labels, logits)}
    if logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        report["top5"] = float(np.mean((top5 == labels[:, None]).any(axis=-1)))
    return report
