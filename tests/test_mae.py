"""MAE (geossl.objectives.mae): the loss against numpy written from the paper's code semantics,
the decoder's unshuffle and position table, the encoder's blindness to masked pixels, the frozen
position embedding, the config, and an export that loads strictly into timm."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mae_vit_b
from geossl import masking, objectives, patches
from geossl.errors import ConfigError
from geossl.objectives import mae


def _np_patchify_nchw(x_nhwc: np.ndarray, p: int) -> np.ndarray:
    """MAE's patchify on NCHW: reshape (N,C,h,p,w,p), 'nchpwq->nhwpqc', (N, h·w, p·p·C)."""
    x = x_nhwc.transpose(0, 3, 1, 2)
    n, c, hh, ww = x.shape
    h, w = hh // p, ww // p
    x = x.reshape(n, c, h, p, w, p)
    return np.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, p * p * c)


def _np_sincos(dim: int, g: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed: meshgrid(w, h) (xy indexing), halves for grid[0], grid[1]."""
    gw, gh = np.meshgrid(np.arange(g, dtype=np.float64), np.arange(g, dtype=np.float64))

    def one(pos, d):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(gw, dim // 2), one(gh, dim // 2)], axis=1)


def _config(**objective):
    c = mae_vit_b.get_config("demo")
    c.model.update(dict(depth=2, patch_size=8))   # 32 px: a 4×4 grid, 4 patches kept
    c.objective.update(dict(decoder_dim=32, decoder_depth=1, decoder_heads=2, **objective))
    return c


@functools.lru_cache(maxsize=None)
def _setup():
    obj = objectives.create(_config(norm_pix_loss=True))
    x = np.random.default_rng(0).random((3, 32, 32, 13)).astype(np.float32)
    v = jax.jit(obj.init)(jax.random.PRNGKey(0), {"image": x})
    return obj, x, v


def test_loss_matches_numpy():
    """The objective's loss (norm_pix_loss) and the plain per-patch MSE, from the same decoder
    output, against numpy: MAE's NCHW patchify, unbiased per-patch variance, masked mean."""
    obj, x, v = _setup()
    rng = jax.random.PRNGKey(4)
    loss, aux = jax.jit(obj.loss)(v.params, None, v.extra, {"image": jnp.asarray(x)}, rng, 0)

    r_mask, _ = jax.random.split(rng)
    keep, masked_idx = (np.asarray(a) for a in masking.keep_mask_indices(r_mask, 3, 16, 0.75))
    assert keep.shape == (3, 4) and masked_idx.shape == (3, 12)

    @jax.jit
    def predict(params):
        out = obj.backbone.apply({"params": params["backbone"]}, x, keep_idx=keep)
        tokens = jnp.concatenate([out["embedding"][:, None], out["patch_tokens"]], axis=1)
        return obj.decoder.apply({"params": params["decoder"]}, tokens, keep)

    pred = np.asarray(predict(v.params), np.float64)
    mask = np.zeros((3, 16))
    np.put_along_axis(mask, masked_idx, 1.0, axis=1)
    raw = _np_patchify_nchw(x.astype(np.float64), 8)
    for norm_pix in (True, False):
        target = raw
        if norm_pix:
            target = (raw - raw.mean(-1, keepdims=True)) / np.sqrt(
                raw.var(-1, ddof=1, keepdims=True) + 1e-6)
        want = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        got = mae.reconstruction_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(raw, jnp.float32),
                                      jnp.asarray(mask, jnp.float32), norm_pix)
        np.testing.assert_allclose(float(got), want, rtol=2e-5)
        if norm_pix:
            np.testing.assert_allclose(float(loss), want, rtol=2e-5)
            np.testing.assert_allclose(float(aux["metrics"]["loss_mae"]), want, rtol=2e-5)


def test_patchify_and_position_table_follow_mae():
    x = np.random.default_rng(1).random((2, 16, 24, 5)).astype(np.float32)
    p = np.asarray(patches.patchify(jnp.asarray(x), 4))
    np.testing.assert_array_equal(p, _np_patchify_nchw(x, 4))
    np.testing.assert_array_equal(np.asarray(patches.unpatchify(jnp.asarray(p), 4, (4, 6))), x)
    np.testing.assert_allclose(patches.sincos_pos_embed(32, (5, 5)), _np_sincos(32, 5), atol=1e-7)


def test_decoder_puts_tokens_back_at_their_positions():
    rng = np.random.default_rng(2)
    kept = rng.normal(size=(2, 4, 8)).astype(np.float32)
    token = rng.normal(size=(1, 1, 8)).astype(np.float32)
    keep = np.array([[0, 3, 7, 12], [1, 2, 9, 15]])
    got = np.asarray(mae.place_tokens(jnp.asarray(kept), jnp.asarray(token), jnp.asarray(keep), 16))
    want = np.repeat(token, 2, axis=0).repeat(16, axis=1)
    for b in range(2):
        for k, i in enumerate(keep[b]):
            want[b, i] = kept[b, k]
    np.testing.assert_array_equal(got, want)


def test_masked_pixels_never_reach_the_encoder_and_pos_embed_is_frozen():
    obj, x, v = _setup()
    rng = jax.random.PRNGKey(5)
    r_mask, _ = jax.random.split(rng)
    keep, masked_idx = masking.keep_mask_indices(r_mask, 3, 16, 0.75)
    pixel = np.asarray(masking.upsample_mask(
        masking.indices_to_mask(masked_idx, 16).reshape(3, 4, 4), 8))
    noisy = np.where(pixel[..., None], 100.0, x).astype(np.float32)

    @jax.jit
    def encoded(image):
        return obj.backbone.apply({"params": v.params["backbone"]}, image, keep_idx=keep)[
            "patch_tokens"]

    np.testing.assert_array_equal(np.asarray(encoded(x)), np.asarray(encoded(noisy)))
    grads = jax.jit(jax.grad(lambda p: obj.loss(p, None, v.extra, {"image": x}, rng, 0)[0]))(
        v.params)
    assert not np.any(np.asarray(grads["backbone"]["pos_embed"]))
    assert np.any(np.asarray(grads["backbone"]["patch_embed"]["proj"]["kernel"]))
    table = np.asarray(v.params["backbone"]["pos_embed"])[0]
    np.testing.assert_array_equal(table[0], 0.0)
    np.testing.assert_allclose(table[1:], _np_sincos(table.shape[1], 4), atol=1e-6)


def test_config_fields_are_checked_and_views_settable():
    assert mae_vit_b.get_config().objective.mask_ratio == 0.75
    for field, value, message in (("mask_ratio", 1.0, r"mask_ratio: expected a number in \(0, 1\)"),
                                  ("norm_pix_loss", "yes", "norm_pix_loss: expected True or False"),
                                  ("decoder_depth", 0, r"decoder_depth: expected an integer")):
        c = _config()
        c.objective = ml_collections.ConfigDict({**c.objective.to_dict(), field: value})
        with pytest.raises(ConfigError, match=message):
            objectives.create(c)
    c = _config()
    c.model.name = "resnet18"
    with pytest.raises(ConfigError, match="config.model.name: MAE's sparse encoder needs"):
        objectives.create(c)
    c = _config()
    c.data.crop_scale = (0.9, 1.0)
    assert objectives.create(c).view_config.crop_scale == (0.9, 1.0)
    rgb = mae_vit_b.get_config("rgb")
    assert rgb.model.in_chans == 3 and tuple(rgb.data.bands) == ("R", "G", "B")


def test_export_loads_strictly_into_timm(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from geossl import convert
    from geossl.convert.lib import io
    from geossl.models.from_config import architecture_kwargs

    c = mae_vit_b.get_config()
    name, kw = convert.timm_model(c.model.name, **architecture_kwargs(c.model))
    assert (name, kw["img_size"], kw["in_chans"]) == ("vit_base_patch16_224", 224, 13)
    c = _config()
    obj, x, v = _setup()
    path = str(tmp_path / "mae.safetensors")
    exported = obj.backbone_variables(v)
    convert.export_backbone(exported, obj.backbone_name, architecture_kwargs(c.model), path, c)
    meta = convert.read_metadata(path)
    net = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"])).eval()
    net.load_state_dict({k: torch.from_numpy(a) for k, a in io.load_state_dict(path).items()},
                        strict=True)
    ours = np.asarray(jax.jit(obj.backbone.apply)(exported, x)["embedding"])
    with torch.no_grad():
        theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_the_recipes_weight_decay_takes_the_tokens_and_leaves_the_fixed_positions():
    """MAE's AdamW decays every trained parameter of 2+ dimensions (timm's add_weight_decay): the
    class token and the decoder's mask token decay; the sine-cosine table (a parameter held by
    stop_gradient here, fixed in MAE), the encoder's unused mask token and the 1-D biases and
    norms do not. Every 1-D parameter of the model is one the rule names."""
    from geossl.train.optim import decay_mask, make_optimizer, path_str
    _, _, v = _setup()
    c = _config()
    c.optim = mae_vit_b.get_config().optim            # the full recipe's, not the demo's
    c.total_steps, c.lr = 10, ml_collections.ConfigDict(dict(name="constant", base=0.5))
    tx, _ = make_optimizer(c, v.params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, v.params)

    @jax.jit
    def three_steps(params):
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(zeros, state, params)
            params = jax.tree_util.tree_map(jnp.add, params, updates)
        return params

    params = three_steps(v.params)
    shrink = (1 - 0.5 * 0.05) ** 3
    for path in (("backbone", "cls_token"), ("decoder", "mask_token"),
                 ("backbone", "blocks_0", "attn", "qkv", "kernel")):
        before, after = v.params, params
        for key in path:
            before, after = before[key], after[key]
        np.testing.assert_allclose(np.asarray(after), shrink * np.asarray(before), rtol=1e-6)
    for path in (("backbone", "pos_embed"), ("backbone", "mask_token"),
                 ("backbone", "norm", "scale"), ("backbone", "blocks_0", "attn", "qkv", "bias")):
        before, after = v.params, params
        for key in path:
            before, after = before[key], after[key]
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
    mask = decay_mask(v.params, c.optim.decay)
    flat_mask = {path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(v.params)[0]:
        name = path_str(path)
        expected = leaf.ndim > 1 and name not in ("backbone/pos_embed", "backbone/mask_token")
        assert flat_mask[name] is expected, name
