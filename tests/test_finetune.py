"""geossl.eval.finetune: layer-wise lr multipliers of a tiny ViT, one AdamW step against numpy,
the loss falling over a few steps, and the command line's report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import models
from geossl.cli import finetune as finetune_cli
from geossl.eval import datasets, finetune
from geossl.parallel.sharding import path_str

BANDS = ["B2", "B3", "B4", "B8"]
SIZE, CLASSES, DEPTH = 16, 4, 3
VIT = dict(img_size=SIZE, patch_size=4, depth=DEPTH, embed_dim=32, num_heads=2, in_chans=4)


@pytest.fixture(scope="module")
def vit():
    model = models.create("vit_tiny_patch16", **VIT)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 4)))
    return model, jax.device_get(variables)


def _params(model, variables):
    return {"encoder": variables["params"], "head": finetune.init_head(model, CLASSES,
                                                                       finetune.FinetuneConfig())}


def _beit_scale(path: str, decay: float) -> float:
    """BEiT's rule written out: num_layers = depth + 1; embedding → layer 0, blocks.i → i + 1,
    the rest → num_layers; scale decay ** (num_layers - layer)."""
    num_layers = DEPTH + 1
    name = path.split("/")
    if name[0] == "head":
        layer = num_layers
    elif name[1] in ("patch_embed", "pos_embed", "cls_token", "mask_token"):
        layer = 0
    elif name[1].startswith("blocks_"):
        layer = int(name[1][len("blocks_"):]) + 1
    else:
        layer = num_layers
    return decay ** (num_layers - layer)


def _flat(tree) -> dict:
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_layer_decay_multipliers_of_a_tiny_vit(vit):
    model, variables = vit
    params = _params(model, variables)
    config = finetune.FinetuneConfig(layer_decay=0.5)
    got = _flat(finetune.lr_multipliers(model, params, config))
    assert got.keys() == _flat(params).keys()
    for path, value in got.items():
        assert value == pytest.approx(_beit_scale(path, 0.5)), path
    # the table for depth 3, decay 0.5
    assert got["encoder/patch_embed/proj/kernel"] == got["encoder/pos_embed"] == 0.5 ** 4
    assert got["encoder/blocks_0/attn/qkv/kernel"] == 0.5 ** 3
    assert got["encoder/blocks_2/mlp/fc2/bias"] == 0.5
    assert got["encoder/norm/scale"] == got["head/kernel"] == 1.0


def test_one_adamw_step_scales_each_update_by_lr_and_multiplier(vit):
    """Adam's first step is g / (|g| + ε); AdamW adds wd · p on matrices; the group lr is
    lr · decay^(depth + 1 − layer) and scales both (torch's per-group lr)."""
    model, variables = vit
    params = _params(model, variables)
    config = finetune.FinetuneConfig(layer_decay=0.7, weight_decay=0.05, warmup_epochs=0,
                                     batch_size=64, blr=4e-3)
    tx = finetune.make_optimizer(model, params, config, n=640)
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: rng.normal(size=np.shape(p)).astype(np.float32), params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    lr = 4e-3 * 64 / 256
    for path, update in _flat(updates).items():
        g, p = _flat(grads)[path], _flat(params)[path]
        decayed = p.ndim >= 2 and path.split("/")[-1] not in ("pos_embed", "cls_token",
                                                            "mask_token")
        want = -lr * _beit_scale(path, 0.7) * (g / (np.abs(g) + 1e-8)
                                               + (0.05 * p if decayed else 0.0))
        np.testing.assert_allclose(update, want, rtol=2e-5, atol=1e-9, err_msg=path)


def _scenes(n, seed):
    """Single-label 16 px scenes: one class spectrum per image plus pixel noise."""
    rng = np.random.default_rng(seed)
    spectra = np.random.default_rng(7).normal(size=(CLASSES, 4)) * 1.5
    labels = rng.integers(0, CLASSES, n)
    images = spectra[labels][:, None, None, :] + rng.normal(size=(n, SIZE, SIZE, 4))
    return images.astype(np.float32), labels


def _cross_entropy(logits, labels):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def test_an_epoch_is_the_full_batches_as_maes_loader_drops_the_last():
    config = finetune.FinetuneConfig(epochs=10, batch_size=256, warmup_epochs=5)
    assert finetune.steps_of(config, 2700) == (10 * 10, 5 * 10)   # 2700 // 256, not 11
    assert finetune.steps_of(config, 100) == (10, 5)              # batch cut to the example count


def test_a_few_steps_reduce_the_loss(vit):
    model, variables = vit
    images, labels = _scenes(24, 0)
    config = finetune.FinetuneConfig(epochs=4, batch_size=8, blr=0.32, warmup_epochs=0.5,
                                     drop_path=0.1, label_smoothing=0.1)
    classifier, losses = finetune.train_classifier(
        model, variables, images, labels, num_classes=CLASSES, multilabel=False,
        img_size=SIZE, config=config)
    assert len(losses) == 12  # 4 epochs of 24 // 8 steps
    before = finetune.Classifier(model, variables, finetune.init_head(model, CLASSES, config),
                                 SIZE)
    start = _cross_entropy(before.logits(images), labels)
    end = _cross_entropy(classifier.logits(images), labels)
    assert start == pytest.approx(np.log(CLASSES), abs=1e-3)  # a 2e-5 head: uniform outputs
    assert end < 0.5 * start, (start, end, losses)


def _records(n, seed):
    images, labels = _scenes(n, seed)
    return [{"image": (1000 + 200 * image).clip(0, 60000).astype(np.uint16)[None],
             "labels": np.array([label]), "key": f"{seed}-{i}", "bands": BANDS,
             "sensor": "s2_l1c", "label_set": "", "num_classes": np.array([CLASSES])}
            for i, (image, label) in enumerate(zip(images, labels))]


def test_cli_writes_the_report(tmp_path, vit):
    from geossl.data import write_shard
    from geossl.train.checkpoint import save_backbone
    model, variables = vit
    data = tmp_path / "data"
    data.mkdir()
    write_shard(str(data / "train-00000-of-00001.tfrecord"), _records(16, 1))
    write_shard(str(data / "heldout-00000-of-00001.tfrecord"), _records(8, 2))
    workdir = str(tmp_path / "vit")
    save_backbone(variables, "vit_tiny_patch16", workdir, bands=BANDS, **VIT)
    out = tmp_path / "ft.json"
    report = finetune_cli.main(["--workdir", workdir, "--dataset", str(data), "--norm", "none",
                                "--label_fraction", "1", "--epochs", "1", "--batch_size", "8",
                                "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["metrics"]["top1"] == pytest.approx(report["metrics"]["top1"])
    assert (saved["task"], saved["num_train"], saved["num_test"], saved["metrics"]["steps"]) == (
        "finetune", 16, 8, 2)
    assert saved["probe"]["lr"] == pytest.approx(5e-4 * 8 / 256)
    assert saved["probe"]["layer_decay"] == 0.65 and saved["probe"]["crop_scale"] == [0.8, 1.0]
    low, high = saved["metrics"]["ci95"]["top1"]  # 1000 resamples of the 8 test examples
    assert 0 <= low <= saved["metrics"]["top1"] <= high <= 1 and saved["bootstrap"]["replicates"] \
        == 1000
    split = datasets.RecordSplit(_records(8, 2))
    assert not split.multilabel and split.num_classes == CLASSES


@pytest.mark.parametrize("flags,message", [
    (["--layer_decay", "0"], "--layer_decay: expected a value in (0, 1], found 0.0"),
    (["--crop_scale", "0.9,0.5"], "expected 0 < LOW <= HIGH <= 1"),
    (["--epochs", "0"], "--epochs: expected > 0, found 0"),
])
def test_bad_flags_exit_before_reading(capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        finetune_cli.main(["--workdir", "/nonexistent", "--dataset", "/nonexistent", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_schedule_warms_up_then_decays_to_min_lr():
    config = finetune.FinetuneConfig(epochs=10, batch_size=4, blr=256 * 1e-3 / 4,
                                     warmup_epochs=2, min_lr=1e-5)
    schedule = finetune.lr_schedule(config, n=8)  # 2 steps an epoch: 20 steps, 4 warmup
    assert config.lr == pytest.approx(1e-3)
    values = np.array([float(schedule(s)) for s in range(21)])
    np.testing.assert_allclose(values[:5], [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    cosine = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * (np.arange(4, 21) - 4) / 16))
    np.testing.assert_allclose(values[4:], cosine, rtol=1e-5)
