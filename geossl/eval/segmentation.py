"""Segmentation probe: an encoder from a workdir + a decoder, scored by mIoU on held-out scenes.

Records carry ``land_cover`` (T, H, W) uint8, a class per pixel aligned with ``image`` (T, H, W, C),
255 = unlabelled (data_prep.synthetic; data_prep.bigearthnet with ``--reference_maps``); a map with
T = 1 serves every acquisition. The probe-train / probe-test scenes are those of the classification
probes (``datasets.probe_splits``): the labelled train split (or a seeded half of the eval split)
trains, the eval split (default ``heldout``) tests, and a seeded ``label_fraction`` of the training
scenes (at least one, ``datasets.subsample``) is used.

Decoders (``SegConfig.head``, ``segmentation_heads``): ``auto`` = a linear classifier per patch
token for ViTs, a small FPN over the stage maps for ResNets / Swins (also by name: ``linear``,
``fpn``); ``upernet`` = UPerNet (``upernet``) on four ViT blocks (``blocks``, default mmseg's
(3, 5, 7, 11) of 12) through its ×4 / ×2 / ×1 / ×0.5 neck, or on the ResNet / Swin stages, with
PANGAEA's recipe (``dense_probe.UPERNET_RECIPE``: AdamW lr 1e-4, weight decay 0.05, lr × 0.1 at
60% and 90% of the steps, 512 channels, dropout 0.1; fine-tuned, the encoder at the same lr).
Logits are upsampled bilinearly to the label map; encoder features standardised per channel with
statistics of the training scenes. Training (``dense_probe``): per-pixel softmax cross entropy
over the labelled pixels, a fixed number of steps whatever the fraction, no augmentation; images
resized (bilinear) to the model's input size, without cropping. ``frozen``: the encoder is fixed
and its features of the training scenes are computed once; ``finetune``: encoder and decoder
train together (encoder lr = lr · ``encoder_lr_scale`` · a ViT's layer-wise decay).
The scenes of the training subset are held in host memory (images, maps; frozen: features).
Report: ``<workdir>/segmentation_<mode>_<fraction>[_<head>][_random_init].json`` unless
``--output``. Metrics (``segmentation_metrics``): ``miou`` = mean IoU over the classes present in
the evaluation labels or predictions, per-class IoU, pixel accuracy, from the summed per-image
confusion matrices; with ``bootstrap`` B > 0, ``ci95`` holds their 95% percentile intervals over B
resamples of the test images (``segmentation_ci``: a replicate's confusion matrix is the sum of
its images' ones, so images, not pixels, are resampled).

Command line: ``python -m geossl.eval.segmentation`` (:mod:`geossl.cli.segmentation`).
"""

from __future__ import annotations

import numpy as np

from geossl.eval import dense_probe
from geossl.eval import segmentation_heads as heads
from geossl.eval import segmentation_metrics as seg_metrics
from geossl.eval.dense_probe import (MODES, Encoder, Features, SegConfig, Segmenter,  # noqa: F401
                                     config_for, feature_blocks, level_stats, resize_input,
                                     train_finetune, train_frozen)

MIOU_RULE = ("mean IoU over the classes present in the evaluation labels or predictions; "
             "pixels labelled 255 are ignored")


# ----- data ---------------------------------------------------------------------------------------
def _first_file(split) -> str:
    paths = getattr(split.records, "paths", None)
    return paths[0] if paths else split.name


def check_land_cover(split) -> None:
    """Raises naming the file when the split's records have no ``land_cover`` map."""
    records = getattr(split, "records", None)
    if records is None:
        raise ValueError(f"{split.name}: the segmentation probe reads per-pixel maps from geossl "
                         f"shards ('land_cover'); this dataset has none")
    if "land_cover" not in records[0]:
        raise ValueError(
            f"{_first_file(split)}: no 'land_cover' feature (a per-pixel class map (T, H, W) uint8) "
            f"in the records of {split.name}; found {sorted(records[0])}. data_prep.synthetic "
            f"writes it; data_prep.bigearthnet with --reference_maps")


def land_cover_of(record, acquisition: int, num_classes: int, where: str) -> np.ndarray:
    """The (H, W) uint8 map of the acquisition read; values in [0, num_classes) or 255."""
    if "land_cover" not in record:
        raise ValueError(f"{where}no 'land_cover' feature")
    cover = np.asarray(record["land_cover"])
    if cover.ndim == 2:
        cover = cover[None]
    image_shape = np.shape(record["image"])
    seasons = image_shape[0] if len(image_shape) == 4 else 1
    if cover.ndim != 3 or cover.shape[0] not in (1, seasons):
        raise ValueError(f"{where}land_cover {cover.shape}: expected (T, H, W) with T = 1 or the "
                         f"image's {seasons} acquisitions")
    cover = cover[acquisition if cover.shape[0] > 1 else 0]
    if cover.shape != tuple(image_shape[-3:-1]):
        raise ValueError(f"{where}land_cover {cover.shape} does not match the image's "
                         f"{tuple(image_shape[-3:-1])} pixels")
    bad = (cover >= num_classes) & (cover != heads.IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{where}land_cover value {int(cover[bad][0])} outside the "
                         f"{num_classes} classes and not 255 (unlabelled)")
    return cover.astype(np.uint8)


def read_scenes(split, indices, preprocess, chunk: int = 64):
    """Yields (images (b, H, W, C) float32, maps (b, H, W) uint8) of ``split[indices]`` in order."""
    images, maps = [], []
    for i in indices:
        record = split.records[int(i)]
        where = f"{split.name} record {int(i)} ({record.get('key', '?')}): "
        images.append(preprocess(record["image"], record["bands"], where=where))
        maps.append(land_cover_of(record, preprocess.acquisition, split.num_classes, where))
        if len(images) == chunk:
            yield np.stack(images), np.stack(maps)
            images, maps = [], []
    if images:
        yield np.stack(images), np.stack(maps)


def load_scenes(split, indices, preprocess) -> tuple[np.ndarray, np.ndarray]:
    parts = list(read_scenes(split, indices, preprocess))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def segmentation_figures(confusions) -> dict:
    """{"miou" (b,), "pixel_accuracy" (b,), "iou_per_class" (b, K)} of confusion matrices
    (b, K, K), each as ``segmentation_metrics.segmentation_report`` computes it (NaN IoU for a
    class in neither labels nor predictions; NaN mIoU / accuracy without labelled pixels)."""
    confusions = np.asarray(confusions, np.float64)
    tp = np.diagonal(confusions, axis1=1, axis2=2)
    union = confusions.sum(axis=1) + confusions.sum(axis=2) - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1.0), np.nan)
    count = present.sum(axis=1)
    miou = np.where(count > 0, np.where(present, iou, 0.0).sum(axis=1) / np.maximum(count, 1),
                    np.nan)
    total = confusions.sum(axis=(1, 2))
    accuracy = np.where(total > 0, tp.sum(axis=1) / np.maximum(total, 1.0), np.nan)
    return {"miou": miou, "pixel_accuracy": accuracy, "iou_per_class": iou}


def segmentation_ci(per_image, class_names=None, *, replicates: int, seed: int = 0) -> dict:
    """Bootstrapped 95% intervals of ``segmentation_report``'s figures over per-image confusion
    matrices (N, K, K), resampling images: {"miou": [lo, hi], "pixel_accuracy": [lo, hi],
    "iou_per_class": {name: [lo, hi]} for the classes the test set's report lists}."""
    per_image = np.asarray(per_image)
    k = per_image.shape[1]
    names = [str(n) for n in (class_names if class_names is not None else range(k))]
    out = dense_probe.confusion_ci(per_image, segmentation_figures, replicates=replicates,
                                   seed=seed)
    listed = seg_metrics.segmentation_report(per_image.sum(axis=0), names)["iou_per_class"]
    out["iou_per_class"] = {name: out["iou_per_class"][names.index(name)] for name in listed}
    return out


def evaluate(segmenter: Segmenter, split, indices, preprocess, num_classes: int, *,
             chunk: int = 256, class_names=None, bootstrap: int = 0,
             bootstrap_seed: int = 0) -> dict:
    """Confusion matrices over ``split[indices]`` → ``segmentation_metrics.segmentation_report``;
    with ``bootstrap`` B > 0 also ``ci95`` (:func:`segmentation_ci`, B replicates seeded by
    ``bootstrap_seed``)."""
    per_image = dense_probe.image_confusions(
        segmenter, read_scenes(split, indices, preprocess, chunk=chunk), num_classes)
    report = seg_metrics.segmentation_report(per_image.sum(axis=0), class_names)
    if bootstrap:
        report["ci95"] = segmentation_ci(per_image, class_names, replicates=int(bootstrap),
                                         seed=bootstrap_seed)
    return report


def segmentation_probe(model, variables, train_split, train_indices, test_split, test_indices,
                       preprocess, *, img_size, config: SegConfig = SegConfig(),
                       feature_batch: int = 256, class_names=None, bootstrap: int = 0,
                       bootstrap_seed: int = 0, wavelengths=None) -> dict:
    """Trains on ``train_split[train_indices]``, scores on ``test_split[test_indices]``; the
    metrics (with ``ci95`` when ``bootstrap`` > 0) plus ``train_loss``. ``wavelengths`` (C,):
    those of ``preprocess``'s bands for a wavelength-conditioned encoder (DOFA), else None."""
    dense_probe.check_config(config)
    for split in (train_split, test_split):
        check_land_cover(split)
    num_classes = test_split.num_classes
    images, maps = load_scenes(train_split, train_indices, preprocess)
    batch = max(1, min(int(feature_batch), max(len(images), len(test_indices))))
    features = Features(model, img_size, blocks=feature_blocks(model, config))
    segmenter = dense_probe.fit(features, variables, images, maps, num_classes=num_classes,
                                config=config, batch=batch, wavelengths=wavelengths)
    result = evaluate(segmenter, test_split, test_indices, preprocess, num_classes,
                      class_names=class_names, bootstrap=bootstrap,
                      bootstrap_seed=bootstrap_seed)
    return {**result, "train_loss": segmenter.final_loss}

if __name__ == "__main__":  # the `python -m` entry point of the command line
    from geossl.cli.segmentation import main
    from geossl.errors import run_command
    run_command(main, "python -m geossl.eval.segmentation")
