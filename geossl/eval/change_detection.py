"""Change detection probe: one encoder on both dates of an image pair, the absolute differences of
its feature levels, a decoder on them, change / no change per pixel; scored by F1, IoU, precision
and recall of the change class on held-out pairs.

Data (records of geossl shards):
- OSCD (``data_prep/oscd.py``): ``image`` (2, H, W, 13), the two dates, and ``change`` (H, W)
  uint8 (1 change, 0 no change, 255 unknown: ignored); split ``train`` trains, ``test`` tests;
- multi-season records with per-acquisition ``land_cover`` (T, H, W) (``synthetic``: the embedded
  data): the pair is acquisitions ``dates`` (default (0, T // 2), opposite phases of the seasonal
  cycle) and change = the two land-cover maps differ (255 where either is unlabelled). On the
  synthetic data change is snow coming or going on cold locations: about 7% of the pixels and 19%
  of the locations for dates (0, 2). Its ``heldout`` locations are divided into probe-train and
  probe-test by ``datasets.split_indices`` (seed 0, half each), so the pairs are of locations
  pretraining never saw.
Splits: ``eval_split`` default ``test`` where there are test shards, else ``heldout``;
``train_split`` default ``train`` where there are train shards and the data are not the
synthetic set; without a train split, or the same as the eval split, the eval split is divided as
above. A seeded ``label_fraction`` of the probe-train pairs is used (``datasets.subsample``),
stratified by whether a pair has changed pixels.
Model (``dense_probe``): ``Features(pair=True)`` runs the encoder once over both dates (frozen or
fine-tuned: the same weights for both) and gives |levels(date 2) − levels(date 1)| (PANGAEA's
SiamDiffUPerNet subtracts without the absolute value; with it the order of the dates does not
matter); the decoder is the segmentation probe's, UPerNet by default (PANGAEA's change-detection
decoder and recipe, ``dense_probe.UPERNET_RECIPE``). Loss: cross entropy weighted per class by
N / (2·N_c) over the labelled training pixels (scikit-learn's "balanced": the change class is
rare), as torch's ``CrossEntropyLoss(weight=…)`` (a weighted mean).
Metrics (``segmentation_metrics.change_report``): precision, recall, F1 and IoU of the change
class (0 where a denominator is 0), accuracy and mIoU, from the summed per-pair confusion matrices;
with ``bootstrap`` B > 0, ``ci95`` holds their 95% percentile intervals over B resamples of the
test pairs (``change_figures`` of each replicate's summed matrices: pairs, not pixels, are drawn).

Command line: ``python -m geossl.eval.change_detection`` (:mod:`geossl.cli.change_detection`).
"""

from __future__ import annotations

import numpy as np

from geossl.eval import datasets, dense_probe, segmentation
from geossl.eval import segmentation_heads as heads
from geossl.eval import segmentation_metrics as seg_metrics

CLASSES = ("no_change", "change")
IGNORE = heads.IGNORE_INDEX


def pair_dates(record, dates, where: str = "") -> tuple[int, int]:
    """The two acquisitions of a record that form its pair: OSCD's (0, 1) (a ``change`` record
    holds exactly two), else ``dates`` or (0, T // 2)."""
    seasons = np.shape(record["image"])[0] if np.ndim(record["image"]) == 4 else 1
    if "change" in record:
        if seasons != 2:
            raise ValueError(f"{where}a 'change' record holds {seasons} acquisitions; expected "
                             f"the two dates (2, H, W, C)")
        return 0, 1
    if seasons < 2:
        raise ValueError(f"{where}{seasons} acquisition: a pair needs two")
    first, second = dates if dates is not None else (0, seasons // 2)
    if first == second or not (0 <= first < seasons and 0 <= second < seasons):
        raise ValueError(f"{where}dates {first}, {second}: expected two distinct acquisitions "
                         f"of 0 … {seasons - 1}")
    return int(first), int(second)


def change_map(record, pair: tuple[int, int], where: str = "") -> np.ndarray:
    """(H, W) uint8: 1 change, 0 no change, 255 unknown (module docstring)."""
    if "change" in record:
        change = np.asarray(record["change"]).astype(np.uint8)
        bad = (change > 1) & (change != IGNORE)
        if bad.any():
            raise ValueError(f"{where}change value {int(change[bad][0])}: expected 0, 1 or 255")
        return change
    if "land_cover" not in record:
        raise ValueError(f"{where}neither a 'change' map (OSCD) nor per-acquisition "
                         f"'land_cover' maps; found {sorted(record)}")
    cover = np.asarray(record["land_cover"])
    if cover.ndim != 3 or cover.shape[0] != np.shape(record["image"])[0]:
        raise ValueError(f"{where}land_cover {cover.shape}: expected one map per acquisition "
                         f"(T, H, W) with T = {np.shape(record['image'])[0]}")
    a, b = cover[pair[0]], cover[pair[1]]
    return np.where((a == IGNORE) | (b == IGNORE), IGNORE, a != b).astype(np.uint8)


def read_pairs(split, indices, preprocess, dates=None, chunk: int = 64):
    """Yields (pairs (b, 2, H, W, C) float32, change maps (b, H, W) uint8) in ``indices`` order."""
    pairs, maps = [], []
    for i in indices:
        record = split.records[int(i)]
        where = f"{split.name} record {int(i)} ({record.get('key', '?')}): "
        pair = pair_dates(record, dates, where)
        image = np.asarray(record["image"])
        pairs.append(np.stack([preprocess(image[t], record["bands"], where=where)
                               for t in pair]))
        maps.append(change_map(record, pair, where))
        if maps[-1].shape != pairs[-1].shape[1:3]:
            raise ValueError(f"{where}change map {maps[-1].shape} for images "
                             f"{pairs[-1].shape[1:3]}")
        if len(maps) == chunk:
            yield np.stack(pairs), np.stack(maps)
            pairs, maps = [], []
    if maps:
        yield np.stack(pairs), np.stack(maps)


def balanced_weights(maps, num_classes: int = 2) -> np.ndarray:
    """(K,) float32 N / (K·N_c) over the labelled pixels of ``maps``; 0 for a class with none."""
    values = np.asarray(maps).reshape(-1)
    counts = np.bincount(values[values != IGNORE].astype(np.int64), minlength=num_classes)
    total = counts.sum()
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, total / (num_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def has_change(split, indices, dates=None) -> np.ndarray:
    """(N,) int: 1 where the pair ``split[i]`` has a changed pixel (reads the records)."""
    out = []
    for i in indices:
        record = split.records[int(i)]
        where = f"{split.name} record {int(i)}: "
        out.append(int((change_map(record, pair_dates(record, dates, where), where) == 1).any()))
    return np.asarray(out, np.int64)


def change_splits(dataset: str, train_split: str | None = None, eval_split: str | None = None,
                  *, label_fraction: float = 1.0, seed: int = 0,
                  holdout_train_fraction: float = 0.5, split_seed: int = 0, dates=None
                  ) -> datasets.ProbeData:
    """Probe-train / probe-test pairs of ``dataset`` (module docstring, "Splits"); a fraction
    below 1 is stratified by whether a pair has changed pixels."""
    folder = datasets.resolve_dataset(dataset)
    prefixes = datasets.shard_prefixes(folder)
    if eval_split is None:
        eval_split = "test" if "test" in prefixes else "heldout"
    if train_split is None:
        synthetic = datasets.synthetic_modality(dataset) is not None  # also synthetic:s1
        train_split = "train" if "train" in prefixes and not synthetic else None
    kw = {"num_classes": len(CLASSES), "multilabel": False}
    test = datasets.open_split(dataset, eval_split, **kw)
    if test is None:
        raise FileNotFoundError(f"--dataset {dataset}: no split {eval_split!r} "
                                f"({eval_split}-*.tfrecord); shard sets there: {prefixes}")
    train = (datasets.open_split(dataset, train_split, **kw)
             if train_split and train_split != eval_split else None)
    if train is not None:
        train_idx, test_idx = np.arange(len(train)), np.arange(len(test))
        note = f"probe-train = {train_split}, probe-test = {eval_split}"
    else:
        train = test
        train_idx, test_idx = datasets.split_indices(len(test), holdout_train_fraction, split_seed)
        note = (f"{eval_split!r} divided by seed {split_seed} into {len(train_idx)} probe-train / "
                f"{len(test_idx)} probe-test pairs")
    if label_fraction < 1:
        train_idx = datasets.subsample(train_idx, label_fraction, seed,
                                       labels=has_change(train, train_idx, dates))
    return datasets.ProbeData(train, train_idx, test, test_idx, note)


def _ratio(numerator, denominator):
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)


def change_figures(confusions, positive: int = 1) -> dict:
    """{"f1", "iou", "precision", "recall", "accuracy", "miou"}, each (b,), of confusion matrices
    (b, K, K), as ``segmentation_metrics.change_report`` computes them (0 for a 0 denominator)."""
    confusions = np.asarray(confusions, np.float64)
    tp = confusions[:, positive, positive]
    fp = confusions[:, :, positive].sum(axis=1) - tp
    fn = confusions[:, positive, :].sum(axis=1) - tp
    overall = segmentation.segmentation_figures(confusions)
    return {"f1": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn),
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "accuracy": overall["pixel_accuracy"], "miou": overall["miou"]}


def change_detection_probe(model, variables, train_split, train_indices, test_split,
                           test_indices, preprocess, *, img_size,
                           config: dense_probe.SegConfig = dense_probe.config_for("upernet"),
                           dates=None, class_weighting: bool = True,
                           feature_batch: int = 256, bootstrap: int = 0,
                           bootstrap_seed: int = 0, wavelengths=None) -> dict:
    """Trains on ``train_split[train_indices]`` pairs, scores on ``test_split[test_indices]``;
    ``change_report`` plus ``train_loss``, ``class_weights`` and the training
    ``change_fraction``; with ``bootstrap`` B > 0 also ``ci95`` (95% percentile intervals of the
    report's figures over B resamples of the test pairs, seeded by ``bootstrap_seed``).
    ``wavelengths`` (C,): those of ``preprocess``'s bands for a wavelength-conditioned encoder
    (DOFA), else None."""
    dense_probe.check_config(config)
    parts = list(read_pairs(train_split, train_indices, preprocess, dates))
    pairs, maps = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    weights = balanced_weights(maps) if class_weighting else np.ones(len(CLASSES), np.float32)
    batch = max(1, min(int(feature_batch), max(len(pairs), len(test_indices))))
    features = dense_probe.Features(model, img_size,
                                    blocks=dense_probe.feature_blocks(model, config), pair=True)
    segmenter = dense_probe.fit(features, variables, pairs, maps, num_classes=len(CLASSES),
                                config=config, batch=batch, class_weights=weights,
                                wavelengths=wavelengths)
    per_pair = dense_probe.image_confusions(
        segmenter, read_pairs(test_split, test_indices, preprocess, dates, chunk=batch),
        len(CLASSES))
    labelled = maps[maps != IGNORE]
    result = {**seg_metrics.change_report(per_pair.sum(axis=0)),
              "train_loss": segmenter.final_loss,
              "class_weights": [float(w) for w in weights],
              "change_fraction": float(np.mean(labelled == 1)) if labelled.size else float("nan")}
    if bootstrap:
        result["ci95"] = dense_probe.confusion_ci(per_pair, change_figures,
                                                  replicates=int(bootstrap), seed=bootstrap_seed)
    return result

if __name__ == "__main__":  # the `python -m` entry point of the command line
    from geossl.cli.change_detection import main
    from geossl.errors import run_command
    run_command(main, "python -m geossl.eval.change_detection")
