"""Bootstrapped confidence intervals of evaluation figures (torchgeo-bench reports 95% intervals).

A replicate resamples the N test examples with replacement: replicate b draws N indices uniformly,
row b of ``numpy.random.default_rng(seed).integers(0, N, (B, N))`` (drawn in chunks of rows from
that one generator: the same seed gives the same replicates whatever the chunking). It is held as
its counts (B, N), how often each example was drawn, and each metric is recomputed exactly from
them: a count-weighted metric equals the metric of the resampled set (the copies of an example
share its score, so they fall in one tie run of a precision-recall curve). The interval is the
percentile interval of the B values, [2.5, 97.5] for ``level`` 0.95.

Any metric: ``bootstrap_ci(statistic, n, replicates=B, seed=s)`` with ``statistic(counts (b, N)
float64) → {name: (b,) or (b, K) values}``. Segmentation resamples images, not pixels: with the
per-image confusion matrices ``per_image`` (N, K, K), a replicate's confusion matrices are
``(counts @ per_image.reshape(N, K * K)).reshape(-1, K, K)``, and the statistic returns the mIoU
(and per-class IoU, NaN where a class is absent) of each.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from geossl.eval import metrics

DEFAULT_REPLICATES = 1000
#: Numbers per chunk of replicates (b · row_cost), which bounds the memory of a statistic.
MAX_ELEMENTS = 1 << 20


def replicate_counts(n: int, replicates: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Counts (b, n) float64 of ``replicates`` resamples of n examples, ``chunk`` rows at a time
    (the last chunk smaller)."""
    if n < 1 or replicates < 1:
        raise ValueError(f"bootstrap: expected n >= 1 examples and >= 1 replicates, found {n} "
                         f"and {replicates}")
    rng = np.random.default_rng(seed)
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        draws = rng.integers(0, n, size=(b, n))
        flat = (draws + n * np.arange(b)[:, None]).reshape(-1)
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_values(statistic: Callable[[np.ndarray], dict], n: int, *,
                     replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                     row_cost: int | None = None) -> dict[str, np.ndarray]:
    """{name: (B,) or (B, K)} values of ``statistic`` on each replicate; ``row_cost``: the numbers
    a statistic handles per replicate (default n), which sizes the chunks."""
    chunk = max(1, MAX_ELEMENTS // max(1, int(row_cost or n)))
    parts: dict[str, list] = {}
    for counts in replicate_counts(n, replicates, seed, chunk):
        for name, value in statistic(counts).items():
            parts.setdefault(name, []).append(np.asarray(value, np.float64))
    return {name: np.concatenate(values) for name, values in parts.items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> np.ndarray:
    """(2,) or (K, 2): the [(1 − level)/2, (1 + level)/2] percentiles of values (B,) or (B, K)
    over the replicates, NaN replicates left out (all NaN: NaN)."""
    values = np.asarray(values, np.float64)
    tails = [50 * (1 - level), 50 * (1 + level)]
    columns = values.reshape(len(values), -1)
    out = np.full((columns.shape[1], 2), np.nan)
    finite = np.isfinite(columns).any(axis=0)
    if finite.any():
        out[finite] = np.nanpercentile(columns[:, finite], tails, axis=0).T
    return out[0] if values.ndim == 1 else out


def bootstrap_ci(statistic: Callable[[np.ndarray], dict], n: int, *,
                 replicates: int = DEFAULT_REPLICATES, seed: int = 0, level: float = 0.95,
                 row_cost: int | None = None) -> dict[str, list]:
    """{name: [lo, hi]} (per-column values: a list of [lo, hi] or None) of ``statistic``."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level: expected a value in (0, 1), found {level}")
    out = {}
    for name, values in bootstrap_values(statistic, n, replicates=replicates, seed=seed,
                                         row_cost=row_cost).items():
        interval = percentile_interval(values, level)
        if interval.ndim == 1:
            out[name] = [float(interval[0]), float(interval[1])]
        else:
            out[name] = [None if np.isnan(lo) else [float(lo), float(hi)] for lo, hi in interval]
    return out


def weighted_average_precision(y_true, scores, counts, item_example=None) -> np.ndarray:
    """AP (b, K) of each class on each replicate: y_true (M, K) in {0, 1}, scores (M, K),
    counts (b, N) of the examples of the M items (``item_example`` (M,), default the identity);
    NaN where a replicate holds no positive of the class (``metrics`` gives 0)."""
    return resampled_average_precision(y_true, scores, item_example)(counts)


def resampled_average_precision(y_true, scores, item_example=None) -> Callable:
    """counts (b, N) → AP (b, K) (:func:`weighted_average_precision`), with the sort and the
    tie runs computed once. AP = Σ_positives w_i · TP(run end of i) / SEEN(run end of i) / P,
    with TP, SEEN and P the count-weighted positives and examples."""
    y = np.asarray(y_true) > 0
    s = np.asarray(scores, np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"expected y_true and scores (M, K) of one shape, found {y.shape} and "
                         f"{s.shape}")
    m, k = y.shape
    example = np.arange(m) if item_example is None else np.asarray(item_example)
    order = np.argsort(-s, axis=0, kind="mergesort")
    end = metrics.tie_run_ends(np.take_along_axis(s, order, axis=0))
    hit_sorted = np.take_along_axis(y, order, axis=0)
    width = max(1, int(hit_sorted.sum(axis=0).max()))
    # Per class, padded to ``width``: sorted positions of the positives, their run ends, and the
    # index among the positives of the last positive at or before each run end.
    positive_example = np.zeros((width, k), np.int64)
    positive_end = np.zeros((width, k), np.int64)
    last_positive = np.zeros((width, k), np.int64)
    real = np.zeros((width, k), bool)
    for c in range(k):
        pos = np.flatnonzero(hit_sorted[:, c])
        positive_example[:len(pos), c] = example[order[pos, c]]
        positive_end[:len(pos), c] = end[pos, c]
        last_positive[:len(pos), c] = np.searchsorted(pos, end[pos, c], side="right") - 1
        real[:len(pos), c] = True
    sorted_example = example[order]                                   # (M, K)
    no_ties = bool(np.all(end == np.arange(m)[:, None]))

    def ap(counts):
        # integer counts: float32 sums are exact below 2**24 (M · N), and faster
        small = np.asarray(counts, np.float32)
        seen = np.cumsum(small[:, sorted_example], axis=1)            # (b, M, K)
        seen_end = np.take_along_axis(seen, positive_end[None], axis=1).astype(np.float64)
        weight = np.asarray(counts, np.float64)[:, positive_example] * real   # (b, width, K)
        true_positives = np.cumsum(weight, axis=1)
        tp_end = (true_positives if no_ties else
                  np.take_along_axis(true_positives, last_positive[None], axis=1))
        positives = true_positives[:, -1]
        value = (weight * tp_end / np.maximum(seen_end, 1.0)).sum(axis=1)
        return np.where(positives > 0, value / np.maximum(positives, 1.0), np.nan)

    return ap


def multilabel_statistic(y_true, scores) -> Callable[[np.ndarray], dict]:
    """counts (b, N) → {"map_micro" (b,), "map_macro" (b,), "ap_per_class" (b, K)}, as
    ``metrics.multilabel_report`` computes them on the resampled set."""
    y = (np.asarray(y_true) > 0).astype(np.float64)
    s = np.asarray(scores, np.float64)
    per_class_ap = resampled_average_precision(y, s)
    # micro: every (example, class) pair an item, weighted by its example's count
    micro_ap = resampled_average_precision(y.reshape(-1, 1), s.reshape(-1, 1),
                                           np.arange(y.size) // y.shape[1])

    def statistic(counts):
        per_class = per_class_ap(counts)
        present = np.isfinite(per_class)
        macro = np.where(present, per_class, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
        micro = micro_ap(counts)[:, 0]
        return {"map_micro": np.nan_to_num(micro, nan=0.0), "map_macro": macro,
                "ap_per_class": per_class}

    return statistic


def multiclass_statistic(labels, logits) -> Callable[[np.ndarray], dict]:
    """counts (b, N) → {"top1" (b,)[, "top5" (b,) when K > 5]}, as
    ``metrics.multiclass_report``."""
    labels = np.asarray(labels)
    logits = np.asarray(logits)
    n = len(labels)
    hits = {"top1": (np.argmax(logits, axis=-1) == labels).astype(np.float64)}
    if logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        hits["top5"] = (top5 == labels[:, None]).any(axis=-1).astype(np.float64)
    return lambda counts: {name: counts @ hit / n for name, hit in hits.items()}


def classification_ci(labels, scores, *, multilabel: bool, replicates: int = DEFAULT_REPLICATES,
                      seed: int = 0, level: float = 0.95) -> dict:
    """Intervals of the figures of ``metrics.multilabel_report`` / ``multiclass_report``, keyed
    alike: [lo, hi] each; ``ap_per_class`` a list of [lo, hi], None where the test set has no
    positive of the class."""
    if multilabel:
        y = np.asarray(labels) > 0
        out = bootstrap_ci(multilabel_statistic(labels, scores), len(y), replicates=replicates,
                           seed=seed, level=level, row_cost=y.size)
        out["ap_per_class"] = [iv if has else None
                               for iv, has in zip(out["ap_per_class"], y.any(axis=0))]
        return out
    return bootstrap_ci(multiclass_statistic(labels, scores), len(labels), replicates=replicates,
                        seed=seed, level=level)


def classification_report(labels, scores, *, multilabel: bool, replicates: int = 0,
                          seed: int = 0, level: float = 0.95) -> dict:
    """``metrics.multilabel_report`` / ``multiclass_report`` of class scores (N, K), plus
    ``"ci95"`` (:func:`classification_ci`) when ``replicates`` > 0."""
    report = (metrics.multilabel_report(labels, scores) if multilabel
              else metrics.multiclass_report(labels, scores))
    if replicates:
        report["ci95"] = classification_ci(labels, scores, multilabel=multilabel,
                                           replicates=int(replicates), seed=seed, level=level)
    return report
