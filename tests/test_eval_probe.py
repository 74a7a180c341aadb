"""geossl.eval: feature extraction, linear probe, kNN, datasets, online probe; their CLIs
(geossl.cli)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from geossl.cli import knn as knn_cli
from geossl.cli import linear_probe as linear_probe_cli
from geossl.eval import datasets, features, knn, linear_probe, online


class TinyViT(nn.Module):
    """The eval interface of geossl's ViT (embedding, patch_tokens, final-normed intermediates)."""

    depth: int = 5
    num_features: int = 8
    patch_size: int = 4

    @nn.compact
    def __call__(self, x, *, train=False, return_layers=()):
        b, d = x.shape[0], self.num_features
        tokens = nn.Conv(d, (self.patch_size,) * 2, strides=self.patch_size)(x).reshape(b, -1, d)
        cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, d))
        t = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), tokens], axis=1)
        norm = nn.LayerNorm(name="norm")
        intermediates = []
        for i in range(self.depth):
            t = t + nn.Dense(d)(jnp.tanh(t)) + t.mean(axis=1, keepdims=True)
            if i in return_layers:
                intermediates.append(norm(t))
        t = norm(t)
        out = {"embedding": t[:, 0], "patch_tokens": t[:, 1:]}
        if return_layers:
            out["intermediates"] = intermediates
        return out


@pytest.fixture(scope="module")
def tiny_vit():
    model = TinyViT()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return model, variables


# ----- features ---------------------------------------------------------------------------------
def test_extract_features_sharded_equals_unsharded_with_ragged_batch(tiny_vit):
    model, variables = tiny_vit
    assert jax.device_count() == 8
    images = np.random.default_rng(0).normal(size=(13, 8, 8, 3)).astype(np.float32)
    chunks = [images[:5], images[5:6], images[6:]]  # uneven chunks; 13 = 8 + 5 (ragged, padded)
    for mode in ("cls", "dinov2_4layer+avgpool"):
        sharded = features.extract_features(model, variables, iter(chunks), mode=mode, batch_size=8)
        single = features.extract_features(model, variables, images, mode=mode, batch_size=4,
                                           devices=jax.devices()[:1])
        direct = np.asarray(features.apply_features(model, variables, jnp.asarray(images), mode))
        assert sharded.shape == (13, features.feature_dim(model, mode))
        np.testing.assert_allclose(sharded, single, atol=1e-5)
        np.testing.assert_allclose(sharded, direct, atol=1e-5)


def test_dinov2_4layer_is_cls_of_last_four_blocks_plus_mean_patch(tiny_vit):
    model, variables = tiny_vit
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)
    out = model.apply(variables, x, return_layers=(1, 2, 3, 4))
    want = jnp.concatenate([t[:, 0] for t in out["intermediates"]]
                           + [out["patch_tokens"].mean(1)], axis=-1)
    got = features.apply_features(model, variables, x, "dinov2_4layer+avgpool")
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The last intermediate is the final-normed last block: its CLS is the embedding.
    np.testing.assert_allclose(out["intermediates"][-1][:, 0], out["embedding"], atol=1e-6)


def test_resize_center_crop():
    x = jnp.arange(2 * 20 * 20 * 1, dtype=jnp.float32).reshape(2, 20, 20, 1)
    assert features.resize_center_crop(x, 20) is x
    y = features.resize_center_crop(x, 8, crop_ratio=0.5)  # resize to 16, keep the central 8
    assert y.shape == (2, 8, 8, 1)
    full = jax.image.resize(x, (2, 16, 16, 1), "bilinear", antialias=True)
    np.testing.assert_allclose(y, full[:, 4:12, 4:12], atol=1e-5)


def test_resnet_style_backbone_only_supports_cls():
    class Pool(nn.Module):
        num_features: int = 4
        stage_sizes: list | None = None  # a list field: the module is not hashable

        @nn.compact
        def __call__(self, x, *, train=False):
            return {"embedding": nn.Dense(self.num_features)(x.mean(axis=(1, 2)))}

    model = Pool(stage_sizes=[2, 2])
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    out = features.extract_features(model, variables, np.ones((3, 8, 8, 3), np.float32), batch_size=8)
    assert out.shape == (3, 4)
    with pytest.raises(ValueError, match="ViT"):
        features.extract_features(model, variables, np.ones((3, 8, 8, 3), np.float32),
                                  mode="cls+avgpool", batch_size=8)


# ----- linear probe -----------------------------------------------------------------------------
def _separable(n, d, k, seed, multilabel):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, k))
    logits = x @ w
    if multilabel:
        return x, (logits > 0).astype(np.float32)
    return x, np.argmax(logits, axis=1).astype(np.int32)


def test_probe_loss_is_torch_multilabel_soft_margin_loss():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    labels = (rng.random((6, 5)) < 0.4).astype(np.float32)
    want = torch.nn.MultiLabelSoftMarginLoss()(torch.tensor(logits), torch.tensor(labels)).item()
    got = linear_probe.probe_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(6), True)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # Weight-0 (padding) rows do not count.
    padded = linear_probe.probe_loss(jnp.asarray(np.concatenate([logits, logits[:2] * 50])),
                                     jnp.asarray(np.concatenate([labels, 1 - labels[:2]])),
                                     jnp.asarray([1.0] * 6 + [0.0] * 2), True)
    assert float(padded) == pytest.approx(want, rel=1e-5)


def test_linear_probe_separable_multilabel_is_near_perfect():
    x, y = _separable(600, 12, 5, seed=0, multilabel=True)
    cfg = linear_probe.ProbeConfig(epochs=60, batch_size=128)
    result = linear_probe.linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=5,
                                       multilabel=True, config=cfg)
    assert result["map_micro"] > 0.97 and result["map_macro"] > 0.97, result


def test_linear_probe_separable_multiclass():
    x, y = _separable(600, 12, 4, seed=1, multilabel=False)
    cfg = linear_probe.ProbeConfig(epochs=60, batch_size=128)
    result = linear_probe.linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4,
                                       multilabel=False, config=cfg)
    assert result["top1"] > 0.93, result


def test_linear_probe_random_labels_is_chance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 12)).astype(np.float32)
    y = (rng.random((1000, 6)) < 0.3).astype(np.float32)
    cfg = linear_probe.ProbeConfig(epochs=30, batch_size=256)
    result = linear_probe.linear_probe(x[:500], y[:500], x[500:], y[500:], num_classes=6,
                                       multilabel=True, config=cfg)
    prevalence = y[500:].mean()
    assert abs(result["map_micro"] - prevalence) < 0.06, (result["map_micro"], prevalence)


# ----- kNN ----------------------------------------------------------------------------------------
def test_knn_matches_dino_weighted_vote():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(30, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    test = rng.normal(size=(5, 6)).astype(np.float32)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    for temperature in (0.1, 0.005):   # 1/T = 200: exp(s/T) alone overflows float32
        got = knn.knn_scores(train, labels, test, num_classes=3, multilabel=False, k=7,
                             temperature=temperature, chunk=4)
        assert np.isfinite(got).all()
        for i, q in enumerate(qn):
            sim = (tn @ q).astype(np.float64)
            top = np.argsort(-sim)[:7]
            votes = np.zeros(3)
            np.add.at(votes, labels[top], np.exp(sim[top] / temperature))
            np.testing.assert_allclose(got[i], votes / np.exp(sim[top] / temperature).sum(),
                                       rtol=1e-4, atol=1e-6)


def test_knn_similarities_are_full_float32_products():
    """DINO's similarity matmul is float32; jax's default precision lets a GPU take TF32, which
    moves the 20 nearest neighbours of ~1% of queries."""
    lowered = knn._vote.lower(jnp.ones((2, 4)), jnp.ones((5, 4)), jnp.ones((5, 3)), 0.07, k=2)
    dots = [line for line in lowered.as_text().splitlines() if "dot_general" in line]
    assert dots and all("HIGHEST" in line for line in dots), dots


def test_knn_on_clustered_features():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(4, 16)) * 3
    cluster = rng.integers(0, 4, 400)
    x = (centres[cluster] + rng.normal(size=(400, 16)) * 0.5).astype(np.float32)
    top1 = knn.knn_evaluate(x[:300], cluster[:300], x[300:], cluster[300:], num_classes=4,
                            multilabel=False)["top1"]
    assert top1 == 1.0
    label_sets = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 1, 0]],
                          np.float32)
    y = label_sets[cluster]
    result = knn.knn_evaluate(x[:300], y[:300], x[300:], y[300:], num_classes=5, multilabel=True)
    assert result["map_micro"] > 0.99 and result["map_macro"] > 0.99
    random = knn.knn_evaluate(x[:300], y[:300], x[300:], rng.permutation(y[300:]),
                              num_classes=5, multilabel=True)
    assert random["map_micro"] < 0.7


# ----- datasets -----------------------------------------------------------------------------------
def test_band_selection_by_name():
    image = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    out = datasets.select_bands(image, ["B02", "B8A", "B11"], ["B11", "B10", "B2"])
    np.testing.assert_array_equal(out[..., 0], image[..., 2])
    np.testing.assert_array_equal(out[..., 1], 0)       # L2A has no B10: zero band
    np.testing.assert_array_equal(out[..., 2], image[..., 0])
    with pytest.raises(ValueError, match="B12"):
        datasets.select_bands(image, ["B2", "B3", "B4"], ["B12"])



def test_absent_bands_are_zero_after_normalisation():
    """So2Sat's 10 S2 bands into a 13-band encoder (``--absent_bands B1,B9,B10``, the suite's
    so2sat row): B1, B9 and B10 are 0 after the normalisation (SSL4EO-S12's So2Sat loader), every
    other band as without the option; a band present in the data stays itself, and without the
    option the missing B1 is an error naming it."""
    from geossl.data import bands as bands_lib
    so2sat = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    image = np.random.default_rng(0).uniform(0, 4000, (3, 5, 10)).astype(np.float32)
    pre = datasets.Preprocess(bands=bands_lib.S2_L1C, norm="softcon",
                              absent_bands=("B1", "B9", "B10"))
    out = pre(image, so2sat)
    assert out.shape == (3, 5, 13)
    gone = [bands_lib.S2_L1C.index(b) for b in ("B1", "B9", "B10")]
    np.testing.assert_array_equal(out[..., gone], 0.0)
    kept = datasets.Preprocess(bands=so2sat, norm="softcon")(image, so2sat)
    np.testing.assert_array_equal(out[..., [bands_lib.S2_L1C.index(b) for b in so2sat]], kept)
    full = np.random.default_rng(1).uniform(0, 4000, (3, 5, 13)).astype(np.float32)
    np.testing.assert_array_equal(pre(full, bands_lib.S2_L1C),
                                  datasets.Preprocess(bands=bands_lib.S2_L1C)(full, bands_lib.S2_L1C))
    with pytest.raises(ValueError, match="band 'B1' requested"):
        datasets.Preprocess(bands=bands_lib.S2_L1C)(image, so2sat)

def test_split_and_subsample_are_deterministic_and_disjoint():
    a, b = datasets.split_indices(21, 0.5, seed=0)
    a2, b2 = datasets.split_indices(21, 0.5, seed=0)
    np.testing.assert_array_equal(a, a2)
    assert not set(a) & set(b) and len(a) + len(b) == 21
    s = datasets.subsample(np.arange(100), 0.1, seed=5)
    assert len(s) == 10 and np.array_equal(s, datasets.subsample(np.arange(100), 0.1, seed=5))


BANDS = ["B2", "B3", "B4", "B8"]


def _records(n, seed, size=8):
    """Multi-label records whose image is the sum of one fixed pattern per present class."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).normal(size=(9, size, size, 4)) * 300
    records = []
    for i in range(n):
        labels = np.flatnonzero(rng.random(9) < 0.3)
        image = 1000 + patterns[labels].sum(0) + rng.normal(size=(size, size, 4)) * 30
        records.append({"image": np.clip(image, 0, 60000).astype(np.uint16)[None],
                        "labels": labels.astype(np.int64), "key": f"{seed}-{i}",
                        "bands": BANDS, "sensor": "s2_l1c", "label_set": "dynamic_world_9"})
    return records


def _write_split(folder, split, records):
    from geossl.data import write_shard
    write_shard(os.path.join(folder, f"{split}-00000-of-00001.tfrecord"), records)


def test_probe_splits_divide_the_heldout_split_when_no_train_split(tmp_path):
    pytest.importorskip("geossl.data")
    _write_split(str(tmp_path), "heldout", _records(20, 0))
    data = datasets.probe_splits(str(tmp_path), "train", "heldout", label_fraction=1.0)
    assert data.train is data.test and "does not exist" in data.note
    assert len(data.train_indices) == 10 and not set(data.train_indices) & set(data.test_indices)
    pre = datasets.Preprocess(bands=("B4", "B3", "B2"), norm="none")
    chunks = list(data.train.read(data.train_indices[:3], pre, chunk=2))
    images, labels = np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
    assert images.shape == (3, 8, 8, 3) and labels.shape == (3, 9)
    first = data.train.records[int(data.train_indices[0])]
    np.testing.assert_array_equal(images[0, ..., 0], first["image"][0, ..., 2])
    np.testing.assert_array_equal(np.flatnonzero(labels[0]), first["labels"])
    # With a labelled train split, it is used as it is.
    _write_split(str(tmp_path), "train", _records(30, 1))
    data = datasets.probe_splits(str(tmp_path), "train", "heldout", label_fraction=0.5, seed=3)
    assert data.train is not data.test and len(data.train_indices) == 15
    assert len(data.test_indices) == 20


def test_tfds_dataset_needs_tensorflow_datasets(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)   # import now fails
    with pytest.raises(ImportError, match="tensorflow_datasets"):
        datasets.open_split("tfds:eurosat/all", "train")


def test_tfds_builders_are_read_in_order_with_bands_by_name(tmp_path, tf_python):
    """TfdsSplit on two prepared TFDS datasets laid out like eurosat/all (B8A last) and
    bigearthnet/all (bands at 10/20/60 m), in an interpreter with tensorflow-datasets."""
    import subprocess
    probe = subprocess.run([tf_python, "-c", "import tensorflow_datasets"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"{tf_python} has no tensorflow_datasets")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfds_job.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", TFDS_DATA_DIR="")
    done = subprocess.run([tf_python, script, str(tmp_path / "tfds")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # the job asserts the values itself; its summary shows it read both datasets to the end
    assert sorted(summary["eurosat_order"]) == sorted(summary["bigearthnet_order"]) == list(range(6))


# ----- online probe ----------------------------------------------------------------------------
def test_online_probe_gives_metrics(tiny_vit):
    config = ml_collections.ConfigDict({
        "model": {"name": "tiny", "img_size": 8},
        "data": {"bands": ("B2", "B3", "B4"), "norm": "none"},
        "probe": dict(common.base().probe, every=10, linear_epochs=10, knn_k=5)})
    probe = online.OnlineProbe(config, _records(24, 2))
    model, variables = tiny_vit
    metrics_a = probe(model, variables)
    metrics_b = probe(model, variables)
    for name in ("probe/knn_map_micro", "probe/knn_map_macro", "probe/linear_map_micro",
                 "probe/linear_map_macro"):
        assert 0.0 <= metrics_a[name] <= 1.0
        assert metrics_a[name] == pytest.approx(metrics_b[name], abs=1e-6)  # deterministic
    assert metrics_b["probe/time_s"] < 10


def test_make_online_probe_is_a_loop_hook(tmp_path):
    """config.probe.every → an evaluator hook (every, hook(step, backbone)) on its own backbone."""
    models = pytest.importorskip("geossl.models")
    model_cfg = {"name": "vit_tiny_patch16", "img_size": 8, "patch_size": 4, "depth": 1,
                 "in_chans": 3}
    config = ml_collections.ConfigDict({
        "model": model_cfg, "data": {"bands": ("B2", "B3", "B4"), "norm": "none"},
        "probe": dict(common.base().probe, every=0, data=str(tmp_path / "heldout-*.tfrecord"),
                      num_examples=24, linear_epochs=5, knn_k=5)})
    assert online.make_online_probe(config) is None
    assert online.make_online_probe(ml_collections.ConfigDict({"model": model_cfg})) is None
    config.probe.every = -1
    with pytest.raises(ValueError, match="found -1"):
        online.make_online_probe(config)
    config.probe.every = 7
    with pytest.raises(FileNotFoundError, match="heldout"):
        online.make_online_probe(config)

    records = _records(30, 2)
    _write_split(str(tmp_path), "heldout", records)
    hook = online.make_online_probe(config)
    assert hook.every == 7
    model = models.create("vit_tiny_patch16", img_size=8, patch_size=4, depth=1, in_chans=3)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    backbone = {"params": jax.device_put(variables["params"])}
    metrics = hook(14, backbone)
    direct = online.OnlineProbe(config, records[:24])(model, backbone)
    assert set(metrics) == set(direct) and "probe/linear_map_micro" in metrics
    for name, value in metrics.items():
        if name != "probe/time_s":
            assert value == pytest.approx(direct[name], abs=1e-6), name


# ----- command line ----------------------------------------------------------------------------
def _run_clis(tmp_path, workdir, data, mode, feature_dim, full=True):
    common = ["--workdir", workdir, "--dataset", data, "--label_fraction", "1.0", "--norm", "none",
              "--bands", ",".join(BANDS)]
    report = linear_probe_cli.main(common + ["--epochs", "20", "--mode", mode,
                                             "--output", str(tmp_path / "probe.json")])
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["metrics"]["map_micro"] == pytest.approx(report["metrics"]["map_micro"])
    assert saved["num_train"] == 20 and saved["num_test"] == 20
    assert saved["feature_dim"] == feature_dim and saved["multilabel"] and saved["num_classes"] == 9
    assert 0 < saved["metrics"]["map_micro"] <= 1 and "divided by seed 0" in saved["splits"]
    if not full:
        return report, None
    rand = linear_probe_cli.main(common + ["--epochs", "5", "--random_init"])
    assert rand["random_init"]
    assert os.path.exists(os.path.join(workdir, "linear_probe_random_init.json"))
    knn_report = knn_cli.main(common + ["--k", "3,5"])
    assert set(knn_report["metrics"]) >= {"k3/map_micro", "k5/map_micro"}
    return report, rand


def test_cli_end_to_end_with_a_stub_encoder(tmp_path, monkeypatch):
    """The CLI plumbing (data, preprocessing, features, probe, report) on TinyViT."""
    from geossl.train import checkpoint
    model = TinyViT()
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4))))
    config = ml_collections.ConfigDict({"model": {"name": "tiny", "img_size": 8, "in_chans": 4}})
    monkeypatch.setattr(checkpoint, "load_encoder", lambda workdir, step=None: (model, variables, config))
    workdir, data = str(tmp_path / "work"), str(tmp_path / "data")
    os.makedirs(workdir)
    _write_split(data, "heldout", _records(40, 3))
    report, rand = _run_clis(tmp_path, workdir, data, "dinov2_4layer+avgpool", 5 * 8)
    # Same split, different weights.
    assert report["num_train"] == rand["num_train"]
    assert report["metrics"]["map_micro"] != rand["metrics"]["map_micro"]


@pytest.mark.parametrize("arch,kw,mode", [
    ("resnet18", dict(in_chans=4), "cls"),
    ("vit_tiny_patch16", dict(img_size=8, in_chans=4, patch_size=4, depth=4), "dinov2_4layer"),
])
def test_cli_end_to_end_on_a_saved_backbone(tmp_path, arch, kw, mode):
    """save_backbone → load_encoder → CLI, with geossl's own models."""
    models = pytest.importorskip("geossl.models")
    from geossl.train.checkpoint import save_backbone
    try:
        model = models.create(arch, **kw)
    except (ImportError, AttributeError) as e:
        pytest.skip(f"geossl.models not complete yet: {e}")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
    workdir = str(tmp_path / "backbone")
    save_backbone(jax.device_get(variables), arch, workdir, **kw)
    data = str(tmp_path / "data")
    _write_split(data, "heldout", _records(40, 3))
    width = model.num_features * (4 if mode == "dinov2_4layer" else 1)
    _run_clis(tmp_path, workdir, data, mode, width, full=False)



def test_labels_follow_the_acquisition_read():
    record = _records(1, 5)[0]
    record["image"] = np.concatenate([record["image"], record["image"] + 1])   # T = 2
    acq = np.zeros((2, 9), np.int64)
    acq[0, [1, 4]] = 1
    acq[1, [4, 8]] = 1
    record.update(acq_labels=acq.reshape(-1), labels=np.array([1, 4, 8]))
    split = datasets.RecordSplit([record])
    for t, want in ((0, [1, 4]), (1, [4, 8])):
        pre = datasets.Preprocess(norm="none", acquisition=t)
        images, labels = next(split.read([0], pre))
        assert np.flatnonzero(labels[0]).tolist() == want
        np.testing.assert_array_equal(images[0], record["image"][t].astype(np.float32))
    for t in (2, -3):   # out of range: named, not an IndexError
        with pytest.raises(ValueError, match=f"acquisition {t} of an image with 2 acquisitions"):
            next(split.read([0], datasets.Preprocess(norm="none", acquisition=t)))


@pytest.mark.parametrize("cli, flags, message", [
    (knn_cli, ["--k", "0"], "--k: expected comma-separated integers >= 1, found '0'"),
    (knn_cli, ["--k", "5,x"], "--k: expected comma-separated integers >= 1"),
    (knn_cli, ["--temperature", "0"], "--temperature: expected > 0, found 0.0"),
    (linear_probe_cli, ["--epochs", "0"], "--epochs: expected > 0, found 0"),
    (linear_probe_cli, ["--weight_decay", "-1"], "--weight_decay: expected >= 0, found -1.0"),
    (linear_probe_cli, ["--feature_batch", "0"], "--feature_batch: expected >= 1, found 0"),
    (knn_cli, ["--img_size", "-8"], "--img_size: expected >= 1, found -8"),
])
def test_probe_cli_refuses_bad_settings_before_reading_anything(capsys, cli, flags, message):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--workdir", "/nonexistent", "--dataset", "/nonexistent", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_folder_with_one_shard_set_is_probed_without_naming_its_split(tmp_path):
    """data_prep.bigearthnet --output D writes bigearthnet-*: `knn --dataset D` uses it."""
    _write_split(str(tmp_path), "bigearthnet", _records(20, 0))
    data = datasets.probe_splits(str(tmp_path))
    assert data.test.name.endswith("/bigearthnet") and len(data.train_indices) + len(data.test_indices) == 20
    assert "'bigearthnet' divided" in data.note
    _write_split(str(tmp_path), "other", _records(4, 1))
    with pytest.raises(FileNotFoundError, match=r"no labelled split 'heldout' .*shard sets there: \['bigearthnet', 'other'\]; pass --eval_split"):
        datasets.probe_splits(str(tmp_path))


def test_probe_preprocessing_reads_the_runs_no_data_setting():
    """A run with config.data.nodata normalises no-data pixels to 0 (or the band's valid mean);
    its probes, online probe and monitor read the same pixels the same way."""
    from geossl.data import bands as bands_lib
    rng = np.random.default_rng(0)
    image = rng.uniform(1, 3000, (6, 6, 13)).astype(np.float32)
    image[:2, :3] = 0.0                                   # no-data rows
    for fill in ("zero", "mean"):
        config = ml_collections.ConfigDict({"data": {"bands": bands_lib.S2_L1C, "norm": "softcon",
                                                     "nodata": 0.0, "nodata_fill": fill}})
        pre = datasets.Preprocess.from_config(config)
        got = pre(image, bands_lib.S2_L1C)
        want = bands_lib.normalize(image, bands_lib.S2_L1C, "softcon", nodata=0.0, fill=fill)
        np.testing.assert_array_equal(got, want)
        if fill == "zero":
            assert not got[:2, :3].any()   # without the setting B1's zeros were 0.0 → ~0.4 there
        np.testing.assert_array_equal(got[2:], bands_lib.normalize(image[2:], bands_lib.S2_L1C))
