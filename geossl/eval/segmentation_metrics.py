"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy (numpy).

``confusion[i, j]`` counts the labelled pixels of true class i predicted as class j; pixels whose
label is ``ignore_index`` (255, "unlabelled") are left out, whatever their prediction.

IoU_c = TP_c / (TP_c + FP_c + FN_c). **mIoU rule**: the mean of IoU_c over the classes present in
the evaluation labels or in the predictions (TP_c + FP_c + FN_c > 0); a class in neither has an
undefined IoU and is left out (scikit-learn's ``jaccard_score(average="macro")`` over the labelled
pixels gives the same number: it averages over the classes of ``y_true`` ∪ ``y_pred``).
Pixel accuracy = Σ_c TP_c / labelled pixels. ``change_report``: precision, recall, F1 and IoU of
one class (change detection's "change").
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(labels, predictions, num_classes: int, *,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K) int64 counts of (true, predicted) class pairs; labels/predictions any equal shape.

    A label outside [0, K) other than ``ignore_index``, or a prediction outside [0, K), is an error."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {np.shape(labels)} and predictions {np.shape(predictions)} "
                         f"differ in size")
    keep = labels != ignore_index
    labels, predictions = labels[keep], predictions[keep]
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0]
            raise ValueError(f"{name} {int(bad)} outside the classes [0, {num_classes})"
                             + (f" and not the ignore index {ignore_index}" if name == "label"
                                else ""))
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion) -> np.ndarray:
    """(K,) float64 IoU per class; NaN where the class is in neither labels nor predictions."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def segmentation_report(confusion, class_names=None) -> dict:
    """{"miou", "pixel_accuracy", "iou_per_class": {name: IoU of each present class},
    "labelled_pixels"} of a (K, K) confusion matrix (rule in the module docstring)."""
    confusion = np.asarray(confusion)
    k = confusion.shape[0]
    names = [str(n) for n in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    iou = iou_per_class(confusion)
    present = ~np.isnan(iou)
    total = int(confusion.sum())
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "iou_per_class": {names[c]: float(iou[c]) for c in np.flatnonzero(present)},
        "labelled_pixels": total,
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def change_report(confusion, positive: int = 1) -> dict:
    """{"f1", "iou", "precision", "recall"} of the ``positive`` (change) class of a (K, K)
    confusion matrix, plus "accuracy", "miou" (over present classes, as ``segmentation_report``)
    and "labelled_pixels". With TP, FP, FN of that class: precision TP / (TP + FP), recall
    TP / (TP + FN), F1 2·TP / (2·TP + FP + FN), IoU TP / (TP + FP + FN); a ratio whose
    denominator is 0 is 0 (scikit-learn's ``zero_division=0``)."""
    confusion = np.asarray(confusion, np.float64)
    tp = confusion[positive, positive]
    fp = confusion[:, positive].sum() - tp
    fn = confusion[positive, :].sum() - tp
    overall = segmentation_report(confusion.astype(np.int64))
    return {"f1": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn),
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "accuracy": overall["pixel_accuracy"], "miou": overall["miou"],
            "labelled_pixels": overall["labelled_pixels"]}
