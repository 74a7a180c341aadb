"""The segmentation probe with ``--head upernet``: PANGAEA's defaults under the flags given, the
multi-step schedule, and a fine-tuned run on two ViT blocks (neck ×4, ×1) with layer decay that
learns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.cli import segmentation as segmentation_cli
from geossl.eval import dense_probe

BANDS = ["B2", "B3", "B4", "B8"]
SIZE, CLASSES = 16, 3


def _config(*flags):
    args = segmentation_cli.build_parser().parse_args(["--workdir", "w", "--dataset", "d",
                                                       *flags])
    return segmentation_cli.decoder_config(args)


def test_head_defaults_and_flag_precedence():
    upernet = _config("--head", "upernet", "--lr", "0.01")
    assert (upernet.lr, upernet.weight_decay, upernet.schedule, upernet.warmup_steps,
            upernet.encoder_lr_scale, upernet.channels, upernet.dropout) == (
        0.01, 0.05, "multistep", 0, 1.0, 512, 0.1)
    auto = _config("--finetune", "--blocks", "1,3")
    assert (auto.head, auto.mode, auto.lr, auto.weight_decay, auto.schedule,
            auto.encoder_lr_scale, auto.blocks) == ("auto", "finetune", 1e-3, 1e-4, "cosine",
                                                    0.1, (1, 3))


def test_multistep_schedule_is_pangaea_s():
    """torch MultiStepLR(milestones=[int(0.6 T), int(0.9 T)], gamma=0.1), stepped per step."""
    config = dense_probe.config_for("upernet", steps=10)
    schedule = dense_probe.make_schedule(2.0, config)
    got = [float(schedule(jnp.asarray(s))) for s in range(10)]
    np.testing.assert_allclose(got, [2.0] * 6 + [0.2] * 3 + [0.02], rtol=1e-6)


def _records(n, seed):
    """Scenes of 4×4-pixel blocks of 3 classes with their own spectra."""
    rng = np.random.default_rng(seed)
    spectra = np.random.default_rng(11).uniform(500, 3000, size=(CLASSES, len(BANDS)))
    records = []
    for i in range(n):
        cover = np.kron(rng.integers(0, CLASSES, size=(4, 4)), np.ones((4, 4), np.int64))
        image = spectra[cover] + rng.normal(size=cover.shape + (len(BANDS),)) * 50
        records.append({"image": image.clip(0, 60000).astype(np.uint16)[None],
                        "labels": np.unique(cover), "key": f"{seed}-{i}", "bands": BANDS,
                        "sensor": "s2_l1c", "label_set": "dynamic_world_9",
                        "land_cover": cover.astype(np.uint8)[None]})
    return records


def test_fine_tuned_upernet_on_vit_blocks_with_layer_decay(tmp_path):
    from geossl import models
    from geossl.data import write_shard
    from geossl.train.checkpoint import save_backbone
    data = tmp_path / "data"
    data.mkdir()
    write_shard(str(data / "train-00000-of-00001.tfrecord"), _records(24, 0))
    write_shard(str(data / "heldout-00000-of-00001.tfrecord"), _records(8, 1))
    kw = dict(img_size=SIZE, patch_size=4, depth=2, embed_dim=32, num_heads=2, in_chans=4)
    model = models.create("vit_tiny_patch16", **kw)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 4)))
    workdir = str(tmp_path / "vit")
    save_backbone(jax.device_get(variables), "vit_tiny_patch16", workdir, bands=BANDS, **kw)
    report = segmentation_cli.main([
        "--workdir", workdir, "--dataset", str(data), "--norm", "none", "--label_fraction", "1",
        "--head", "upernet", "--finetune", "--layer_decay", "0.65", "--blocks", "0,1",
        "--channels", "16",
        "--steps", "60", "--batch_size", "8", "--lr", "3e-3", "--feature_batch", "8"])
    saved = json.loads(open(f"{workdir}/segmentation_finetune_1_upernet.json").read())
    assert saved["metrics"]["miou"] == pytest.approx(report["metrics"]["miou"])
    assert (saved["head"], saved["mode"], saved["blocks"]) == ("upernet", "finetune", [0, 1])
    assert (saved["probe"]["layer_decay"], saved["probe"]["weight_decay"],
            saved["probe"]["schedule"]) == (0.65, 0.05, "multistep")
    assert saved["metrics"]["miou"] > 0.8, saved["metrics"]


def test_resnet_stages_feed_upernet_as_they_are():
    from geossl import models
    from geossl.eval import segmentation_heads as heads
    model = models.create("resnet18", in_chans=4)
    config = dense_probe.config_for("upernet", channels=16)
    assert dense_probe.feature_blocks(model, config) == ()  # no blocks: its stage maps
    features = dense_probe.Features(model, None)
    x = jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32)  # shapes only: no compute
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    levels = jax.eval_shape(features, variables, x)
    head = heads.build_head("upernet", [lv.shape for lv in levels], 5, channels=16)
    assert head.rescales is None
    logits = jax.eval_shape(lambda lv: head.apply(head.init(jax.random.key(1), lv), lv), levels)
    assert logits.shape == (2, 8, 8, 5)
