"""SoftCon objective: loss against a numpy formula, label routing, masking, continual init."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import softcon_rn50, softcon_vit_s
from geossl import objectives
from geossl.patches import fill_masked_patches
from geossl.train import teacher as teacher_lib
from geossl.parallel import mesh as mesh_lib
from geossl.train import pretrained
from geossl.train.loop import build_trainer
from geossl.parallel.multihost import global_batch
from xla_env import xla_flags

K = 9


def record(bands, size=20, seasons=3, seed=0):
    rng = np.random.default_rng(seed)
    acq = (rng.random((seasons, K)) < 0.4).astype(np.int64)
    return {"image": rng.integers(500, 4000, (seasons, size, size, len(bands)), dtype=np.uint16),
            "labels": np.flatnonzero(acq.any(0)).astype(np.int64), "bands": list(bands),
            "sensor": "s2_l1c", "key": f"loc{seed}", "label_set": "dynamic_world_9",
            "acq_labels": acq.reshape(-1), "num_classes": np.array([K], np.int64)}


def tiny_vit_config(**objective):
    c = softcon_vit_s.get_config("demo")
    c.model.update(dict(depth=1, img_size=16, patch_size=8))
    c.objective.update(dict(proj_hidden=32, proj_dim=16, pred_hidden=32, **objective))
    c.global_batch = 8
    return c


def batch_of(obj, n=8, seed=0):
    samples = [obj.make_views(record(obj.config.data.bands, seed=seed + i), np.random.default_rng(i))
               for i in range(n)]
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _numpy_soft_contrastive(q, k, yq, yk, tau, lam):
    """REFERENCE §1, "ce" soft term, written independently in float64 numpy."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q @ k.T / tau
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    instance = -np.mean(np.diag(logp))
    nq, nk = np.linalg.norm(yq, axis=1), np.linalg.norm(yk, axis=1)
    s = np.zeros((len(q), len(k)))
    for i in range(len(q)):
        for j in range(len(k)):
            if nq[i] > 0 and nk[j] > 0:
                s[i, j] = yq[i] @ yk[j] / (nq[i] * nk[j])
    rows = [i for i in range(len(q)) if s[i].sum() > 0]
    soft = np.mean([-(s[i] / s[i].sum() * logp[i]).sum() for i in rows]) if rows else 0.0
    return instance + lam * soft


def test_loss_equals_symmetrised_numpy_formula_without_masking():
    config = tiny_vit_config(mask_ratio=0.0, soft_weight=0.7, temperature=0.3)
    obj = objectives.create(config)
    batch = batch_of(obj)
    v = obj.init(jax.random.PRNGKey(0), batch)
    teacher = {"params": jax.tree_util.tree_map(lambda x: x * 1.01, obj.teacher_source(v.params)),
               "batch_stats": obj.teacher_spec.select(v.extra["batch_stats"])}
    loss, aux = obj.loss(v.params, teacher, v.extra, batch, jax.random.PRNGKey(1), 0)

    def student(x, stats):
        out, new = obj.net.apply({"params": v.params, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
        return np.asarray(out, np.float64), new["batch_stats"]

    def teach(x, stats):
        out, new = obj.net.apply({"params": teacher["params"], "batch_stats": stats}, x, train=True,
                                 predict=False, mutable=["batch_stats"])
        return np.asarray(out, np.float64), new["batch_stats"]

    q1, s = student(batch["view1"], v.extra["batch_stats"])
    q2, s = student(batch["view2"], s)
    k1, t = teach(batch["view1"], teacher["batch_stats"])
    k2, t = teach(batch["view2"], t)
    y1, y2 = batch["labels1"].astype(np.float64), batch["labels2"].astype(np.float64)
    expected = 0.5 * (_numpy_soft_contrastive(q1, k2, y1, y2, 0.3, 0.7)
                      + _numpy_soft_contrastive(q2, k1, y2, y1, 0.3, 0.7))
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    instance = 0.5 * (_numpy_soft_contrastive(q1, k2, y1, y2, 0.3, 0.0)
                      + _numpy_soft_contrastive(q2, k1, y2, y1, 0.3, 0.0))
    np.testing.assert_allclose(float(aux["metrics"]["loss_instance"]), instance, rtol=2e-5)
    # the student's BatchNorm statistics moved; the teacher's are kept apart
    moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(jnp.abs(a - b).max()), aux["extra"]["batch_stats"], v.extra["batch_stats"]))
    assert max(moved) > 0


def test_labels_are_routed_to_their_own_view():
    obj = objectives.create(tiny_vit_config(mask_ratio=0.0))
    batch = batch_of(obj)
    v = obj.init(jax.random.PRNGKey(0), batch)
    t = teacher_lib.initial(obj, v)
    swapped = dict(batch, labels1=batch["labels2"], labels2=batch["labels1"])
    l1 = obj.loss(v.params, t, v.extra, batch, jax.random.PRNGKey(1), 0)[0]
    l2 = obj.loss(v.params, t, v.extra, swapped, jax.random.PRNGKey(1), 0)[0]
    assert abs(float(l1) - float(l2)) > 1e-4
    obj0 = objectives.create(tiny_vit_config(mask_ratio=0.0, soft_weight=0.0))
    l3 = obj0.loss(v.params, t, v.extra, batch, jax.random.PRNGKey(1), 0)[0]
    l4 = obj0.loss(v.params, t, v.extra, swapped, jax.random.PRNGKey(1), 0)[0]
    assert float(l3) == pytest.approx(float(l4), abs=1e-6)


def test_masking_changes_only_the_student_and_depends_on_the_key():
    obj = objectives.create(tiny_vit_config(mask_ratio=0.5))
    batch = batch_of(obj)
    v = obj.init(jax.random.PRNGKey(0), batch)
    t = teacher_lib.initial(obj, v)
    a = obj.loss(v.params, t, v.extra, batch, jax.random.PRNGKey(1), 0)[0]
    b = obj.loss(v.params, t, v.extra, batch, jax.random.PRNGKey(1), 0)[0]
    c = obj.loss(v.params, t, v.extra, batch, jax.random.PRNGKey(2), 0)[0]
    assert float(a) == float(b) and float(a) != float(c)
    # the ViT student runs on the kept half of the 2x2 patch grid
    q, _ = obj._student(v.params, v.extra["batch_stats"], jnp.asarray(batch["view1"]),
                        jax.random.PRNGKey(3))
    assert q.shape == (8, 16)


@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_fill_masked_patches_matches_numpy(fill):
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    mask = np.array([[[True, False], [False, True]], [[False, False], [True, False]]])
    out = np.asarray(fill_masked_patches(jnp.asarray(x), jnp.asarray(mask), fill))
    expected = x.copy()
    for b in range(2):
        for i in range(2):
            for j in range(2):
                if mask[b, i, j]:
                    expected[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = fill
    np.testing.assert_array_equal(out, expected)


def test_vit_with_drop_path_trains_and_its_teacher_is_deterministic():
    """drop_path_rate 0.1: the student drops paths (its output depends on the rng), the EMA
    teacher never does (equal to the same network without drop path), and the step runs."""
    c = tiny_vit_config(mask_ratio=0.0)
    c.model.update(dict(depth=3, drop_path_rate=0.1))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    obj = objectives.create(c)
    batch = batch_of(obj)
    v = obj.init(jax.random.PRNGKey(0), batch)
    x = jnp.asarray(batch["view1"])
    bs = v.extra["batch_stats"]
    s1, _ = obj._student(v.params, bs, x, jax.random.PRNGKey(1))
    s2, _ = obj._student(v.params, bs, x, jax.random.PRNGKey(2))
    assert not np.allclose(np.asarray(s1), np.asarray(s2))  # drop path is on in the student
    teacher = {"params": obj.teacher_source(v.params),
               "batch_stats": obj.teacher_spec.select(bs)}
    t1, _ = obj._teacher(teacher, x)
    c0 = tiny_vit_config(mask_ratio=0.0)
    c0.model.update(dict(depth=3, drop_path_rate=0.0))
    t0, _ = objectives.create(c0)._teacher(teacher, x)
    np.testing.assert_array_equal(np.asarray(t1), np.asarray(t0))

    mesh = mesh_lib.make_mesh(c.mesh)
    trainer = build_trainer(c, obj, mesh, {k: val[:2] for k, val in batch.items()})
    state = trainer.init_state()
    for _ in range(2):
        state, metrics = trainer.train_step(state, global_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 2


def _resnet_demo(variant):
    c = softcon_rn50.get_config(variant)
    c.model.img_size = 16
    c.objective.update(dict(proj_hidden=32, proj_dim=16, pred_hidden=32, mask_patch_size=4))
    c.global_batch = 8
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    return c


def test_resnet_softcon_step_runs_for_ms_and_sar():
    """The 13-band demo's views; the 2-band S1 demo's step (one compile: the suite's time)."""
    ms = objectives.create(_resnet_demo("demo"))
    assert batch_of(ms)["view1"].shape == (8, 16, 16, 13) and ms.backbone_name == "resnet18"
    c = _resnet_demo("demo,sar")
    obj = objectives.create(c)
    assert obj.backbone_name == "resnet18"
    batch = batch_of(obj)
    assert batch["view1"].shape == (8, 16, 16, 2)
    mesh = mesh_lib.make_mesh(c.mesh)
    trainer = build_trainer(c, obj, mesh, {k: v[:2] for k, v in batch.items()})
    state = trainer.init_state()
    # teacher starts equal to the student (backbone + projector)
    for a, b in zip(jax.tree_util.tree_leaves(obj.teacher_source(state.params)),
                    jax.tree_util.tree_leaves(state.teacher["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state, metrics = trainer.train_step(state, global_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
    exported = obj.backbone_variables(objectives.Variables(state.params, state.teacher, state.extra))
    assert "batch_stats" in exported and "conv1" in exported["params"]


def test_student_from_3band_dinov2_checkpoint_equals_it_but_first_layer(tmp_path):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    from geossl.convert.lib.adapters import resample_pos_embed
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, depth=2,
                            num_classes=0)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    sd = {k: v.detach().clone().contiguous() for k, v in src.state_dict().items()}
    path = str(tmp_path / "dinov2_vits14_3band.safetensors")
    save_file(sd, path)

    c = softcon_vit_s.get_config()
    c.model.update(dict(depth=2, img_size=224, in_chans=13))
    c.objective.update(dict(proj_hidden=32, proj_dim=16, pred_hidden=32))
    c.init.torch_checkpoint = path
    obj = objectives.create(c)
    batch = {"view1": np.zeros((2, 224, 224, 13), np.float32)}
    fresh = jax.device_get(jax.jit(obj.init)(jax.random.PRNGKey(0), batch))
    backbone = pretrained.load_student_backbone(c, obj.backbone_variables(fresh))
    loaded = obj.with_backbone(fresh, backbone).params["backbone"]
    np.testing.assert_array_equal(loaded["patch_embed"]["proj"]["kernel"],
                                  fresh.params["backbone"]["patch_embed"]["proj"]["kernel"])
    assert loaded["patch_embed"]["proj"]["kernel"].shape == (14, 14, 13, 384)
    np.testing.assert_array_equal(loaded["cls_token"], sd["cls_token"].numpy())
    pos = resample_pos_embed(sd["pos_embed"].numpy(), (16, 16), num_prefix_tokens=1)
    np.testing.assert_allclose(loaded["pos_embed"], pos, atol=1e-6)
    from timm.layers import resample_abs_pos_embed
    ref = resample_abs_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=1).numpy()
    np.testing.assert_allclose(loaded["pos_embed"], ref, atol=1e-5)
    for i in range(2):
        blk = loaded[f"blocks_{i}"]
        np.testing.assert_array_equal(blk["attn"]["qkv"]["kernel"], sd[f"blocks.{i}.attn.qkv.weight"].numpy().T)
        np.testing.assert_array_equal(blk["attn"]["qkv"]["bias"], sd[f"blocks.{i}.attn.qkv.bias"].numpy())
        np.testing.assert_array_equal(blk["mlp"]["fc2"]["kernel"], sd[f"blocks.{i}.mlp.fc2.weight"].numpy().T)
        np.testing.assert_array_equal(blk["ls1"]["gamma"], sd[f"blocks.{i}.ls1.gamma"].numpy())
        np.testing.assert_array_equal(blk["norm2"]["scale"], sd[f"blocks.{i}.norm2.weight"].numpy())
    np.testing.assert_array_equal(loaded["norm"]["bias"], sd["norm.bias"].numpy())


@pytest.mark.slow
def test_real_vit_b14_at_224_runs_two_steps(tmp_path):
    """main.py --config=configs/softcon_vit_b.py --config.total_steps=2, batch 4, demo data."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=root)
    cmd = [sys.executable, os.path.join(root, "main.py"),
           f"--config={root}/configs/softcon_vit_b.py", f"--workdir={tmp_path}/vitb",
           "--config.total_steps=2", "--config.global_batch=4", "--config.log_every=1",
           "--config.checkpoint_every=2", "--config.data.crop_scale=(0.9,1.0)"]
    subprocess.run(cmd, env=env, check=True)
    import json
    rows = [json.loads(l) for l in open(f"{tmp_path}/vitb/metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
