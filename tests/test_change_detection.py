"""geossl.eval.change_detection: change-class metrics against numpy / scikit-learn, the weighted
loss against torch, the change rule of seasons and OSCD maps, and the probe on tiny pairs
(command line: UPerNet on a frozen ViT; library: a fine-tuned BatchNorm encoder on OSCD-like
records)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.cli import change_detection as change_cli
from geossl.eval import change_detection, datasets, dense_probe
from geossl.eval import segmentation_heads as heads
from geossl.eval import segmentation_metrics as seg_metrics

BANDS = ["B2", "B3", "B4", "B8"]
SIZE, SEASONS = 16, 4


# ----- metrics and loss ---------------------------------------------------------------------------
def test_change_report_matches_numpy_and_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 255], size=(4, 9, 11), p=[0.8, 0.15, 0.05])
    predictions = np.where(rng.random(labels.shape) < 0.7, labels == 1, rng.random(labels.shape)
                           < 0.2).astype(np.int64)
    report = seg_metrics.change_report(seg_metrics.confusion_matrix(labels, predictions, 2))
    keep = labels != 255
    y, p = labels[keep], predictions[keep]
    tp, fp = np.sum((y == 1) & (p == 1)), np.sum((y == 0) & (p == 1))
    fn = np.sum((y == 1) & (p == 0))
    assert report["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
    assert report["recall"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert report["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    assert report["iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-12)
    assert report["f1"] == pytest.approx(sk.f1_score(y, p), abs=1e-12)
    assert report["iou"] == pytest.approx(sk.jaccard_score(y, p), abs=1e-12)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, p), abs=1e-12)
    assert report["labelled_pixels"] == keep.sum()
    never = seg_metrics.change_report(seg_metrics.confusion_matrix(y, np.zeros_like(y), 2))
    assert (never["precision"], never["recall"], never["f1"], never["iou"]) == (0, 0, 0, 0)


def test_weighted_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 6, 2)).astype(np.float32) * 2
    labels = rng.choice([0, 1, 255], size=(2, 5, 6), p=[0.7, 0.2, 0.1])
    weights = np.array([0.6, 3.5], np.float32)
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits.transpose(0, 3, 1, 2)), torch.from_numpy(labels),
        weight=torch.from_numpy(weights), ignore_index=255)
    got = heads.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                    class_weights=weights)
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_balanced_weights_are_sklearn_s():
    utils = pytest.importorskip("sklearn.utils")
    maps = np.random.default_rng(2).choice([0, 1, 255], size=(3, 8, 8), p=[0.85, 0.1, 0.05])
    y = maps[maps != 255]
    want = utils.compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    np.testing.assert_allclose(change_detection.balanced_weights(maps), want, rtol=1e-6)
    assert change_detection.balanced_weights(np.zeros((2, 2), np.uint8)).tolist() == [0.5, 0.0]


# ----- the change rule ----------------------------------------------------------------------------
def test_change_maps_of_seasons_and_of_oscd_records():
    cover = np.zeros((SEASONS, 2, 3), np.uint8)
    cover[2, 0, 1] = 8           # snow in season 2
    cover[0, 1, 2] = 255         # unlabelled in season 0
    record = {"image": np.zeros((SEASONS, 2, 3, 4)), "land_cover": cover}
    pair = change_detection.pair_dates(record, None)
    assert pair == (0, 2)        # 0 and T // 2
    np.testing.assert_array_equal(change_detection.change_map(record, pair),
                                  [[0, 1, 0], [0, 0, 255]])
    assert not change_detection.change_map(record, (1, 3)).any()  # seasons 1 and 3 agree
    with pytest.raises(ValueError, match="dates 1, 1: expected two distinct"):
        change_detection.pair_dates(record, (1, 1))
    oscd = {"image": np.zeros((2, 2, 3, 13)), "change": np.array([[0, 1, 255], [1, 0, 0]])}
    assert change_detection.pair_dates(oscd, (0, 3)) == (0, 1)
    np.testing.assert_array_equal(change_detection.change_map(oscd, (0, 1)), oscd["change"])
    with pytest.raises(ValueError, match="change value 2: expected 0, 1 or 255"):
        change_detection.change_map({**oscd, "change": np.full((2, 3), 2)}, (0, 1))
    with pytest.raises(ValueError, match="neither a 'change' map"):
        change_detection.change_map({"image": oscd["image"]}, (0, 1))


# ----- the probe ----------------------------------------------------------------------------------
def _seasonal_records(n, seed):
    """T = 4 seasons of 4×4-pixel blocks; in half the locations some blocks turn to class 2
    ('snow', its own spectrum) in season 2 only."""
    rng = np.random.default_rng(seed)
    spectra = np.random.default_rng(5).uniform(500, 3000, size=(3, len(BANDS)))
    records = []
    for i in range(n):
        base = rng.integers(0, 2, size=(SIZE // 4, SIZE // 4))
        covers = np.repeat(base[None], SEASONS, axis=0)
        if i % 2:
            covers[2][rng.random(base.shape) < 0.3] = 2
        covers = np.kron(covers, np.ones((1, 4, 4), np.int64)).astype(np.uint8)
        image = spectra[covers] + rng.normal(size=covers.shape + (len(BANDS),)) * 40
        records.append({"image": image.clip(0, 60000).astype(np.uint16), "labels": np.array([0]),
                        "key": f"{seed}-{i}", "bands": BANDS, "sensor": "s2_l1c",
                        "label_set": "", "land_cover": covers})
    return records


def _write(folder, split, records):
    from geossl.data import write_shard
    folder.mkdir(exist_ok=True)
    write_shard(str(folder / f"{split}-00000-of-00001.tfrecord"), records)


def test_cli_on_season_pairs_with_upernet_on_a_frozen_vit(tmp_path):
    from geossl import models
    from geossl.train.checkpoint import save_backbone
    data = tmp_path / "seasons"
    _write(data, "heldout", _seasonal_records(24, 0))
    kw = dict(img_size=SIZE, patch_size=4, depth=4, embed_dim=32, num_heads=2, in_chans=4)
    model = models.create("vit_tiny_patch16", **kw)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 4)))
    workdir = str(tmp_path / "vit")
    save_backbone(jax.device_get(variables), "vit_tiny_patch16", workdir, bands=BANDS, **kw)
    report = change_cli.main(["--workdir", workdir, "--dataset", str(data), "--norm", "none",
                              "--channels", "16", "--steps", "60", "--batch_size", "6",
                              "--lr", "1e-2", "--feature_batch", "12"])
    saved = json.loads(open(f"{workdir}/change_detection_frozen_1_upernet.json").read())
    assert saved["metrics"]["f1"] == pytest.approx(report["metrics"]["f1"])
    assert (saved["task"], saved["head"], saved["num_train"], saved["num_test"]) == (
        "change_detection", "upernet", 12, 12)
    assert "'heldout' divided by seed 0" in saved["splits"]
    assert saved["blocks"] == [0, 1, 2, 3] and saved["probe"]["schedule"] == "multistep"
    assert set(saved["metrics"]) >= {"f1", "iou", "precision", "recall", "accuracy",
                                     "class_weights", "change_fraction", "train_loss"}
    weights = saved["metrics"]["class_weights"]
    assert weights[1] > 3 * weights[0]  # change is rare: weighted up
    assert saved["metrics"]["f1"] > 0.6, saved["metrics"]


def test_label_fraction_keeps_changed_and_unchanged_pairs(tmp_path):
    data = tmp_path / "seasons"
    _write(data, "heldout", _seasonal_records(24, 3))
    splits = [change_detection.change_splits(str(data), label_fraction=0.2, seed=s)
              for s in (4, 4, 5)]
    np.testing.assert_array_equal(splits[0].train_indices, splits[1].train_indices)
    for split in splits:
        assert not set(split.train_indices) & set(split.test_indices)
        changed = change_detection.has_change(split.train, split.train_indices)
        assert 0 < changed.sum() < len(changed), changed  # both kinds of pair, though 20%


class Pyramid(nn.Module):
    """A stage-map encoder with BatchNorm: block averages at strides 4 and 8."""

    num_features: int = 8

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Conv(8, (1, 1))(x))
        fine = nn.avg_pool(x, (4, 4), (4, 4))
        coarse = nn.Conv(8, (1, 1))(nn.avg_pool(fine, (2, 2), (2, 2)))
        return {"embedding": coarse.mean((1, 2)), "features": [fine, coarse]}


def _oscd_records(n, seed):
    """OSCD's record layout: image (2, H, W, C) and change (H, W) with unknown pixels."""
    records = []
    for record in _seasonal_records(n, seed):
        pair = (0, 2)
        change = (record["land_cover"][0] != record["land_cover"][2]).astype(np.uint8)
        change[0, :2] = 255
        records.append({**{k: v for k, v in record.items() if k != "land_cover"},
                        "image": record["image"][list(pair)], "change": change,
                        "label_set": "oscd_change"})
    return records


def test_fine_tuned_batchnorm_encoder_on_oscd_records(tmp_path):
    data = tmp_path / "oscd"
    _write(data, "train", _oscd_records(16, 1))
    _write(data, "test", _oscd_records(8, 2))
    splits = change_detection.change_splits(str(data))
    assert splits.note == "probe-train = train, probe-test = test"
    model = Pyramid()
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 4)))
    config = dense_probe.config_for("fpn", mode="finetune", steps=80, batch_size=8, lr=1e-2,
                                    fpn_dim=16)
    result = change_detection.change_detection_probe(
        model, variables, splits.train, splits.train_indices, splits.test, splits.test_indices,
        datasets.Preprocess(norm="none"), img_size=None, config=config, feature_batch=8)
    assert result["f1"] > 0.6 and result["iou"] > 0.4, result
    assert 0 < result["change_fraction"] < 0.3
