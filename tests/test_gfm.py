"""GFM (geossl.objectives.gfm): the loss terms against numpy, the SimMIM masks, the teacher's
corners-aligned resize, and a frozen teacher imported from a torch-layout checkpoint that two
train steps leave bit-identical and the optimiser never holds."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import gfm_swin_b
from geossl import convert, masking, objectives, patches
from geossl.parallel import mesh as mesh_lib
from geossl.parallel.multihost import global_batch
from geossl.train import teacher as teacher_lib
from geossl.train.loop import build_trainer
from geossl.train.pretrained import write_random_teacher

TINY = dict(name="swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1), num_heads=(2, 2))


def tiny_config(teacher_checkpoint: str = "") -> ml_collections.ConfigDict:
    """The :ms recipe (13-band student, RGB teacher on B4, B3, B2) with 2-stage Swins: student
    16 px (stride 8, 4 mask units of 8 px), teacher 24 px."""
    c = gfm_swin_b.get_config("ms")
    c.model.update(dict(TINY, img_size=16, window_size=4))
    c.objective.mask_unit = 8
    c.teacher.model.update(dict(TINY, img_size=24, window_size=6))
    c.teacher.torch_checkpoint = teacher_checkpoint
    c.global_batch, c.total_steps = 8, 4
    c.lr = ml_collections.ConfigDict(dict(name="constant", base=1e-2))
    return c


# ----- numpy references --------------------------------------------------------------------------
def np_resize_align_corners(x: np.ndarray, size: int) -> np.ndarray:
    """(B,H,W,C) → (B,size,size,C): each output pixel interpolates its 4 neighbours at input
    position (i·(H−1)/(size−1), j·(W−1)/(size−1))."""
    b, h, w, c = x.shape
    out = np.zeros((b, size, size, c), np.float64)
    for i in range(size):
        y = i * (h - 1) / (size - 1)
        y0 = min(int(math.floor(y)), h - 2)
        for j in range(size):
            xx = j * (w - 1) / (size - 1)
            x0 = min(int(math.floor(xx)), w - 2)
            dy, dx = y - y0, xx - x0
            out[:, i, j] = ((1 - dy) * (1 - dx) * x[:, y0, x0] + (1 - dy) * dx * x[:, y0, x0 + 1]
                            + dy * (1 - dx) * x[:, y0 + 1, x0] + dy * dx * x[:, y0 + 1, x0 + 1])
    return out


def np_pixel_shuffle(y: np.ndarray, s: int, c: int) -> np.ndarray:
    """torch PixelShuffle in NHWC: out[h·s+i, w·s+j, k] = in[h, w, k·s² + i·s + j]."""
    b, h, w, _ = y.shape
    out = np.zeros((b, h * s, w * s, c), y.dtype)
    for i in range(s):
        for j in range(s):
            for k in range(c):
                out[:, i::s, j::s, k] = y[:, :, :, k * s * s + i * s + j]
    return out


# ----- pieces ---------------------------------------------------------------------------------------
def test_resize_align_corners_matches_numpy_and_torch():
    x = np.random.default_rng(0).random((2, 5, 7, 3)).astype(np.float32)
    got = np.asarray(patches.resize_align_corners(jnp.asarray(x), 9))
    np.testing.assert_allclose(got, np_resize_align_corners(x, 9), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, 0, 0], x[:, 0, 0])      # corners are the input's
    np.testing.assert_array_equal(got[:, -1, -1], x[:, -1, -1])
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), (9, 9),
                                          mode="bilinear", align_corners=True)
    np.testing.assert_allclose(got, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_masks_are_32px_units_with_ceil_of_60_percent():
    assert masking.ceil_count(0.6, 36) == 22 and masking.ceil_count(0.6, 7) == 5  # ceil, not round (4)
    assert masking.ceil_count(0.6, 10) == 6                                    # 0.6·10 is 6, not 7
    obj = objectives.create(gfm_swin_b.get_config())   # Swin-B at 192 px: 6×6 units of 32 px
    patches, pixels = obj.masks(jax.random.PRNGKey(0), 4)
    patches, pixels = np.asarray(patches), np.asarray(pixels)
    assert patches.shape == (4, 48, 48) and pixels.shape == (4, 192, 192)
    units = pixels[:, ::32, ::32]
    np.testing.assert_array_equal(pixels, units.repeat(32, 1).repeat(32, 2))
    np.testing.assert_array_equal(patches, pixels[:, ::4, ::4])
    assert units.reshape(4, -1).sum(1).tolist() == [22] * 4
    assert len({u.tobytes() for u in units}) == 4    # drawn per sample


def test_loss_terms_match_numpy():
    c = tiny_config()
    obj = objectives.create(c)
    x = np.random.default_rng(1).random((4, 16, 16, 13)).astype(np.float32)
    v = jax.jit(obj.init)(jax.random.PRNGKey(0), {"image": x})
    v = v.replace(teacher=teacher_lib.build_frozen(c, obj, jax.random.PRNGKey(7)))
    rng = jax.random.PRNGKey(3)
    loss, aux = jax.jit(obj.loss)(v.params, v.teacher, v.extra, {"image": jnp.asarray(x)}, rng, 0)

    r_mask, _ = jax.random.split(rng)
    patch_mask, pixel_mask = obj.masks(r_mask, 4)
    m = np.asarray(pixel_mask, np.float64)
    assert m[:, ::8, ::8].sum() == 4 * 3                              # ceil(0.6·4) of 4 units
    rgb = x[..., [3, 2, 1]]                                           # B4, B3, B2
    t_in = (np_resize_align_corners(rgb, 24) - np.array(gfm_swin_b.IMAGENET_MEAN)) / np.array(
        gfm_swin_b.IMAGENET_STD)

    @jax.jit
    def forward(params, teacher, t_in):
        out = obj.backbone.apply({"params": params["backbone"]}, jnp.asarray(x), mask=patch_mask)
        return out, obj.teacher_model.apply(teacher, t_in)

    out, t_out = forward(v.params, v.teacher, jnp.asarray(t_in, jnp.float32))
    fmap = np.asarray(out["feature_map"], np.float64)                 # (4, 2, 2, 32)
    dec = v.params["decoder"]
    pred = np_pixel_shuffle(fmap @ np.asarray(dec["kernel"]) + np.asarray(dec["bias"]), 8, 13)
    l1 = np.abs(pred - x).sum(-1)
    want_mim = (l1 * m).sum() / (m.sum() + 1e-5) / 13
    np.testing.assert_allclose(float(aux["metrics"]["loss_mim"]), want_mim, rtol=1e-5)

    f_s = np.asarray(out["merged"][-1], np.float64).mean((1, 2))
    proj = v.params["projector"]
    z_s = f_s @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
    f_t = np.asarray(t_out["merged"][-1], np.float64).mean((1, 2))
    cos = (z_s * f_t).sum(1) / np.linalg.norm(z_s, axis=1) / np.linalg.norm(f_t, axis=1)
    np.testing.assert_allclose(float(aux["metrics"]["loss_feat"]), -cos.mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss), want_mim - cos.mean(), rtol=1e-4, atol=1e-5)


def test_bfloat16_teacher_is_stored_in_bfloat16():
    c = tiny_config()
    c.teacher.model.dtype = "bfloat16"
    obj = objectives.create(c)
    v = jax.eval_shape(obj.init, jax.random.PRNGKey(0), {"image": np.zeros((1, 16, 16, 13), np.float32)})
    teacher = teacher_lib.frozen_shapes(c, obj)
    assert {x.dtype for x in jax.tree_util.tree_leaves(teacher)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(teacher_lib.build_frozen(
        c, obj, jax.random.PRNGKey(0)))} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(v.params)} == {jnp.dtype(jnp.float32)}


# ----- the frozen teacher in the trainer -------------------------------------------------------------
def test_teacher_imported_from_torch_layout_is_frozen_and_not_in_the_optimiser(tmp_path):
    path = write_random_teacher(tiny_config().teacher.model, str(tmp_path), seed=5)
    assert write_random_teacher(tiny_config().teacher.model, str(tmp_path), seed=5) == path  # once
    sd = convert.load_state_dict(path)
    assert "layers.0.downsample.reduction.weight" in sd            # Microsoft layout, like GFM's
    c = tiny_config(path)
    obj = objectives.create(c)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
    images = np.random.default_rng(0).random((8, 16, 16, 13)).astype(np.float32)
    trainer = build_trainer(c, obj, mesh, {"image": images[:2]})
    state = trainer.init_state()

    expected = convert.from_torch(sd, c.teacher.model.name, img_size=24, window_size=6,
                                  in_chans=3, embed_dim=16, depths=(1, 1), num_heads=(2, 2))
    want = jax.tree_util.tree_leaves(expected["params"])
    got = jax.tree_util.tree_leaves(jax.device_get(state.teacher["params"]))
    assert len(want) == len(got)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))

    teacher0 = jax.device_get(state.teacher)
    params0 = jax.device_get(state.params)
    batch = global_batch({"image": images}, mesh)
    for _ in range(2):
        state, metrics = trainer.train_step(state, batch)
    for a, b in zip(jax.tree_util.tree_leaves(teacher0), jax.tree_util.tree_leaves(state.teacher)):
        np.testing.assert_array_equal(np.asarray(b), a)
    assert not np.allclose(np.asarray(state.params["projector"]["kernel"]),
                           params0["projector"]["kernel"])
    for name in ("loss_mim", "loss_feat", "loss"):
        assert np.isfinite(float(metrics[name]))

    # AdamW holds two moments per student parameter and a step count: nothing of the teacher.
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    n_teacher = sum(x.size for x in jax.tree_util.tree_leaves(state.teacher))
    n_opt = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
    assert 2 * n_params <= n_opt < 2 * n_params + 8 and n_teacher > 8
    student_shapes = sorted(str(x.shape) for x in jax.tree_util.tree_leaves(state.params))
    assert "projector" in state.params and "teacher" not in state.params
    assert sorted(str(x.shape) for x in jax.tree_util.tree_leaves(state.opt_state)
                  if x.ndim) == sorted(student_shapes * 2)


def test_demo_config_writes_nothing_and_a_random_teacher_is_written_once(tmp_path, monkeypatch):
    """``teacher.torch_checkpoint = "random:seed=N"`` is resolved by the trainer: loading the
    config writes no file; the first resolution writes the network once (no partial file left),
    later ones reuse it; a malformed source is one ConfigError (the demo's "pretrained:softcon":
    tests/test_demo_teacher.py)."""
    import os
    from geossl.errors import ConfigError
    from geossl.train import pretrained
    monkeypatch.setenv("GEOSSL_DEMO_TEACHERS", str(tmp_path / "teachers"))
    c = gfm_swin_b.get_config("demo")
    assert c.teacher.torch_checkpoint == "pretrained:softcon"
    assert not (tmp_path / "teachers").exists()
    path = pretrained.resolve_checkpoint("random:seed=1", c.teacher.model)
    assert os.listdir(tmp_path / "teachers") == [os.path.basename(path)]
    stamp = os.stat(path).st_mtime_ns
    assert pretrained.resolve_checkpoint("random:seed=1", c.teacher.model) == path
    assert os.stat(path).st_mtime_ns == stamp
    assert pretrained.resolve_checkpoint("random:seed=2", c.teacher.model) != path
    assert pretrained.resolve_checkpoint("/w/teacher.pth", c.teacher.model) == "/w/teacher.pth"
    with pytest.raises(ConfigError, match=r"torch_checkpoint: expected a path, 'random:seed=N' or"):
        pretrained.resolve_checkpoint("random:7", c.teacher.model)
