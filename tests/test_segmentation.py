"""geossl.eval.segmentation: IoU metrics, per-pixel loss, decoders that learn, label-fraction
seeding; its CLI (geossl.cli.segmentation): reports, flag and data errors."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.cli import segmentation as segmentation_cli
from geossl.eval import datasets, segmentation
from geossl.eval import segmentation_heads as heads
from geossl.eval import segmentation_metrics as seg_metrics

BANDS = ["B2", "B3", "B4", "B8"]
SIZE, BLOCK, CLASSES = 16, 4, 4


# ----- metrics ------------------------------------------------------------------------------------
def _iou_by_sets(labels, predictions, k):
    """IoU per class from boolean masks over labelled pixels; None where the class is nowhere."""
    keep = labels != 255
    y, p = labels[keep], predictions[keep]
    out = []
    for c in range(k):
        inter = np.sum((y == c) & (p == c))
        union = np.sum((y == c) | (p == c))
        out.append(inter / union if union else None)
    return out


def test_iou_matches_numpy_sets_and_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    k = 6
    labels = rng.choice([0, 1, 2, 3, 255], size=(3, 10, 12), p=[0.3, 0.3, 0.2, 0.1, 0.1])
    predictions = rng.choice([0, 1, 2, 4], size=labels.shape)  # 4: only predicted; 5: nowhere
    predictions = np.where(rng.random(labels.shape) < 0.5, np.where(labels == 255, 0, labels),
                           predictions)
    confusion = seg_metrics.confusion_matrix(labels, predictions, k)
    keep = labels != 255
    loop = np.zeros((k, k), np.int64)
    for t, q in zip(labels[keep], predictions[keep]):
        loop[t, q] += 1
    np.testing.assert_array_equal(confusion, loop)

    report = seg_metrics.segmentation_report(confusion)
    want = _iou_by_sets(labels, predictions, k)
    assert want[5] is None and want[4] == 0.0  # absent class left out; predicted-only counts 0
    assert set(report["iou_per_class"]) == {"0", "1", "2", "3", "4"}
    for c, value in enumerate(want):
        if value is not None:
            assert report["iou_per_class"][str(c)] == pytest.approx(value, abs=1e-12)
    present = [v for v in want if v is not None]
    assert report["miou"] == pytest.approx(np.mean(present), abs=1e-12)
    y, p = labels[keep], predictions[keep]
    assert report["miou"] == pytest.approx(
        sklearn_metrics.jaccard_score(y, p, average="macro"), abs=1e-12)
    np.testing.assert_allclose([report["iou_per_class"][str(c)] for c in range(5)],
                               sklearn_metrics.jaccard_score(y, p, average=None), atol=1e-12)
    assert report["pixel_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    assert report["labelled_pixels"] == keep.sum()


def test_confusion_matrix_rejects_classes_out_of_range():
    with pytest.raises(ValueError, match="label 7 outside the classes"):
        seg_metrics.confusion_matrix(np.array([0, 7, 255]), np.array([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="prediction 3 outside"):
        seg_metrics.confusion_matrix(np.array([0, 1, 255]), np.array([0, 3, 1]), 3)


def test_pixel_cross_entropy_ignores_unlabelled_pixels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 2
    labels = rng.integers(0, 5, size=(2, 3, 4))
    labels[0, 0, :] = 255
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = labels != 255
    want = -np.mean(np.take_along_axis(log_p, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep])
    got = heads.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(want, rel=1e-5)
    none = heads.pixel_cross_entropy(jnp.asarray(logits), jnp.full(labels.shape, 255))
    assert float(none) == 0.0


# ----- data ---------------------------------------------------------------------------------------
def _records(n, seed, with_cover=True):
    """Scenes of 4x4-pixel blocks, each block one of 4 classes with its own spectrum; 5% of the
    pixels unlabelled (255)."""
    rng = np.random.default_rng(seed)
    spectra = np.random.default_rng(99).uniform(500, 3000, size=(CLASSES, len(BANDS)))
    records = []
    for i in range(n):
        blocks = rng.integers(0, CLASSES, size=(SIZE // BLOCK, SIZE // BLOCK))
        cover = np.kron(blocks, np.ones((BLOCK, BLOCK), np.int64))
        image = spectra[cover] * rng.uniform(0.9, 1.1) + rng.normal(size=cover.shape + (4,)) * 60
        cover = np.where(rng.random(cover.shape) < 0.05, 255, cover).astype(np.uint8)
        record = {"image": np.clip(image, 0, 60000).astype(np.uint16)[None],
                  "labels": np.unique(blocks).astype(np.int64), "key": f"{seed}-{i}",
                  "bands": BANDS, "sensor": "s2_l1c", "label_set": "dynamic_world_9"}
        if with_cover:
            record["land_cover"] = cover[None]
        records.append(record)
    return records


def _write(folder, split, records):
    from geossl.data import write_shard
    os.makedirs(folder, exist_ok=True)
    write_shard(os.path.join(folder, f"{split}-00000-of-00001.tfrecord"), records)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("segdata"))
    _write(folder, "train", _records(40, 0))
    _write(folder, "heldout", _records(16, 1))
    return folder


def _backbone(tmp_path, arch, **kw):
    from geossl import models
    from geossl.train.checkpoint import save_backbone
    model = models.create(arch, in_chans=4, **kw)
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 4)))
    workdir = str(tmp_path / arch)
    save_backbone(jax.device_get(variables), arch, workdir, in_chans=4, **kw)
    return workdir


def _flags(workdir, data, *extra):
    return ["--workdir", workdir, "--dataset", data, "--norm", "none", "--bands", ",".join(BANDS),
            "--feature_batch", "16", *extra]


# ----- learning -----------------------------------------------------------------------------------
def test_linear_head_on_vit_tokens_learns_a_separable_segmentation(tmp_path, seg_data):
    """Block classes with distinct spectra, blocks = patches: the linear head on a random tiny
    ViT's tokens segments them almost perfectly; the report is written."""
    workdir = _backbone(tmp_path, "vit_tiny_patch16", img_size=SIZE, patch_size=4, depth=1)
    out = tmp_path / "seg.json"
    report = segmentation_cli.main(_flags(workdir, seg_data, "--label_fraction", "1", "--steps",
                                          "150", "--batch_size", "8", "--lr", "3e-3",
                                          "--random_init", "--output", str(out)))
    saved = json.loads(out.read_text())
    assert saved["metrics"]["miou"] == pytest.approx(report["metrics"]["miou"])
    assert (saved["task"], saved["mode"], saved["num_train"], saved["num_test"]) == (
        "segmentation", "frozen", 40, 16)
    # Classes 0-3 occur; the names are Dynamic World's (the records' label set).
    assert set(saved["metrics"]["iou_per_class"]) == {"water", "trees", "grass",
                                                      "flooded_vegetation"}
    assert saved["metrics"]["miou"] > 0.9, saved["metrics"]
    assert saved["metrics"]["pixel_accuracy"] > 0.95


class Pyramid(nn.Module):
    """A stage-map encoder with BatchNorm: block averages at strides 4 and 8."""

    num_features: int = 8

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Conv(8, (1, 1))(x))
        fine = nn.avg_pool(x, (BLOCK, BLOCK), (BLOCK, BLOCK))
        coarse = nn.Conv(8, (1, 1))(nn.avg_pool(fine, (2, 2), (2, 2)))
        return {"embedding": coarse.mean((1, 2)), "features": [fine, coarse]}


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_fpn_head_learns_a_separable_segmentation(mode):
    model = Pyramid()
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 4)))
    train = datasets.RecordSplit(_records(40, 0), "train")
    test = datasets.RecordSplit(_records(16, 1), "test")
    config = segmentation.SegConfig(mode=mode, steps=120, batch_size=8, lr=1e-2, fpn_dim=32)
    result = segmentation.segmentation_probe(
        model, variables, train, np.arange(40), test, np.arange(16),
        datasets.Preprocess(norm="none"), img_size=None, config=config, feature_batch=16)
    assert result["miou"] > 0.9 and result["pixel_accuracy"] > 0.95, result


# ----- label fraction -----------------------------------------------------------------------------
def test_label_fraction_subsets_are_seeded(seg_data):
    sizes = {}
    for fraction in (0.01, 0.1, 0.5, 1.0):
        a = datasets.probe_splits(seg_data, label_fraction=fraction, seed=3).train_indices
        b = datasets.probe_splits(seg_data, label_fraction=fraction, seed=3).train_indices
        np.testing.assert_array_equal(a, b)
        sizes[fraction] = len(a)
        assert set(a) <= set(range(40)) and len(set(a)) == len(a)
    assert sizes == {0.01: 1, 0.1: 4, 0.5: 20, 1.0: 40}  # round(f * 40), at least one
    other = datasets.probe_splits(seg_data, label_fraction=0.5, seed=4).train_indices
    assert not np.array_equal(other, datasets.probe_splits(seg_data, label_fraction=0.5,
                                                           seed=3).train_indices)


def test_cli_reports_the_seeded_training_scenes(tmp_path, seg_data):
    workdir = _backbone(tmp_path, "vit_tiny_patch16", img_size=SIZE, patch_size=4, depth=1)
    runs = [segmentation_cli.main(_flags(workdir, seg_data, "--label_fraction", "0.1",
                                         "--seed", str(seed), "--steps", "2"))
            for seed in (5, 6)]
    want = datasets.probe_splits(seg_data, label_fraction=0.1, seed=5).train_indices
    assert runs[0]["train_indices"] == want.tolist() and runs[0]["num_train"] == 4
    assert runs[1]["train_indices"] != runs[0]["train_indices"]
    saved = json.loads(open(os.path.join(workdir, "segmentation_frozen_0.1.json")).read())
    assert saved["train_indices"] == runs[1]["train_indices"]  # the default report path


def test_resnet_stage_maps_feed_the_fpn_head():
    from geossl import models
    model = models.create("resnet18", in_chans=4)
    x = jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32)  # shapes only: no compute
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    levels = jax.eval_shape(lambda v, x: heads.encoder_levels(model, v, x), variables, x)
    assert [lv.shape for lv in levels] == [(2, 8, 8, 64), (2, 4, 4, 128), (2, 2, 2, 256),
                                           (2, 1, 1, 512)]
    head = heads.make_head(len(levels), 5, fpn_dim=16)
    assert isinstance(head, heads.FPNHead)
    logits = jax.eval_shape(lambda lv: head.apply(head.init(jax.random.key(1), lv), lv), levels)
    assert logits.shape == (2, 8, 8, 5)
    assert jax.eval_shape(lambda z: heads.upsample_logits(z, (32, 32)), logits).shape == (
        2, 32, 32, 5)


# ----- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--label_fraction", "0"], "--label_fraction: expected a fraction in (0, 1], found 0.0"),
    (["--label_fraction", "1.5"], "found 1.5"),
    (["--mode", "linear"], "invalid choice: 'linear'"),
    (["--steps", "0"], "--steps: expected > 0, found 0"),
    (["--head", "linear", "--blocks", "1,2"], "--blocks: the linear head reads one block's tokens, "
                                              "found 2 blocks 1,2"),
])
def test_bad_flags_exit_before_reading(capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        segmentation_cli.main(["--workdir", "/nonexistent", "--dataset", "/nonexistent", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_dataset_without_land_cover_names_the_feature_and_file(tmp_path):
    folder = str(tmp_path / "nocover")
    _write(folder, "heldout", _records(6, 2, with_cover=False))
    with pytest.raises(ValueError, match=r"heldout-00000-of-00001\.tfrecord: no 'land_cover'"):
        segmentation_cli.main(_flags(str(tmp_path / "unused"), folder, "--label_fraction", "1"))


def test_land_cover_checks():
    record = _records(1, 3)[0]
    record["image"] = np.concatenate([record["image"]] * 2)  # T = 2, one map for both
    assert segmentation.land_cover_of(record, 1, 9, "").shape == (SIZE, SIZE)
    record["land_cover"] = record["land_cover"][:, :8]
    with pytest.raises(ValueError, match=r"land_cover \(8, 16\) does not match"):
        segmentation.land_cover_of(record, 0, 9, "r: ")
    record["land_cover"] = np.full((1, SIZE, SIZE), 9, np.uint8)
    with pytest.raises(ValueError, match="value 9 outside the 9 classes"):
        segmentation.land_cover_of(record, 0, 9, "r: ")
