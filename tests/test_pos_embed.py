"""ViT position-table resizing (``pos_embed_resize``): DINOv2's rule against torch's
``F.interpolate`` called as DINOv2 calls it, timm's against timm; the model applies the rule from
its stored table at call time; PerA's config picks DINOv2's; exports record the rule; continual
init (``convert.from_torch``) resamples with timm's."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from configs import pera_vit_b
from geossl import convert, models
from geossl.convert.lib.io import geossl_model
from geossl.models.layers import resize_pos_table
from geossl.models.vit import VisionTransformer

# (stored grid, target grid): PerA's 448 → 96 px (28 → 6), 16 → 4, DINOv2's 37 → 16 and 37 → 32,
# an upsampling 4 → 6 and a non-square target
PAIRS = [((28, 28), (6, 6)), ((16, 16), (4, 4)), ((37, 37), (16, 16)), ((37, 37), (32, 32)),
         ((4, 4), (6, 6)), ((28, 28), (6, 10))]
D = 5


def _smooth_table(g0, d=D, seed=0):
    """(g0h, g0w, d) float32: random low frequencies (a learnt table is smooth; on white noise the
    two rules differ far more)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, g0[0]), np.linspace(0, 1, g0[1]), indexing="ij")
    freq, phase = rng.uniform(0.5, 4.0, (2, d)), rng.uniform(0, 2 * np.pi, d)
    return np.sin(np.pi * (freq[0] * y[..., None] + freq[1] * x[..., None]) + phase).astype(np.float32)


def _dinov2_interpolate(torch, pos_embed, h, w, p):
    """DINOv2's ``interpolate_pos_encoding`` (the copy PerA calls for every crop) on a torch
    (1, 1+M², D) table for an h × w input: untouched for the model's own square grid, else the
    M × M patch table through ``F.interpolate(scale_factor=(rows + 0.1) / M, (cols + 0.1) / M,
    mode="bicubic")`` (antialias left at its default, off)."""
    n = pos_embed.shape[1] - 1
    if (h // p) * (w // p) == n and h == w:
        return pos_embed
    m = math.sqrt(n)
    table = pos_embed[:, 1:].reshape(1, int(m), int(m), -1).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(
        table, scale_factor=((h // p + 0.1) / m, (w // p + 0.1) / m), mode="bicubic")
    return torch.cat([pos_embed[:, :1], out.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], 1)


@pytest.mark.parametrize("g0,grid", PAIRS)
def test_dinov2_rule_matches_torch_interpolate_with_scale_factor(g0, grid):
    torch = pytest.importorskip("torch")
    table = _smooth_table(g0)
    pos = torch.from_numpy(np.concatenate([np.zeros((1, D), np.float32), table.reshape(-1, D)])[None])
    p = 2  # any patch size: the input is grid · p pixels
    ref = _dinov2_interpolate(torch, pos, grid[0] * p, grid[1] * p, p)[0, 1:].numpy().reshape(*grid, D)
    ours = resize_pos_table(table, grid, "dinov2")                      # numpy, float64
    on_device = np.asarray(jax.jit(lambda t: resize_pos_table(t, grid, "dinov2"))(table))
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    np.testing.assert_allclose(on_device, ref, atol=2e-6)
    timm_rule = resize_pos_table(table, grid, "timm")
    assert np.abs(timm_rule - ref).max() > 1e-2  # the two rules differ at every pair


def test_dinov2_rule_on_a_non_square_table_scales_each_axis():
    """A non-square stored grid (img_size (h, w)), which DINOv2 itself does not have: each axis by
    F.interpolate's scale factor (g + 0.1) / g0 of that axis."""
    torch = pytest.importorskip("torch")
    table = _smooth_table((8, 12))
    ref = torch.nn.functional.interpolate(torch.from_numpy(table).permute(2, 0, 1)[None],
                                          scale_factor=(5.1 / 8, 3.1 / 12), mode="bicubic")
    np.testing.assert_allclose(resize_pos_table(table, (5, 3), "dinov2"),
                               ref[0].permute(1, 2, 0).numpy(), atol=2e-6)


@pytest.mark.parametrize("g0,grid", PAIRS + [((8, 12), (5, 3))])
def test_timm_rule_matches_timm_resample_abs_pos_embed(g0, grid):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed
    table = _smooth_table(g0)
    ref = resample_abs_pos_embed(torch.from_numpy(table.reshape(1, -1, D)), list(grid), list(g0),
                                 num_prefix_tokens=0).numpy().reshape(*grid, D)
    np.testing.assert_allclose(resize_pos_table(table, grid, "timm"), ref, atol=2e-6)
    on_device = np.asarray(jax.jit(lambda t: resize_pos_table(t, grid, "timm"))(table))
    np.testing.assert_allclose(on_device, ref, atol=2e-6)


def test_same_grid_is_untouched_and_unknown_rule_refused():
    table = _smooth_table((6, 6))
    assert resize_pos_table(table, (6, 6), "dinov2") is table  # DINOv2 too: no 6.1 / 6 rescale
    with pytest.raises(ValueError, match=r"pos_embed_resize: expected one of \('timm', 'dinov2'\), "
                                         r"found 'bilinear'"):
        resize_pos_table(table, (4, 4), "bilinear")
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, embed_dim=8, depth=0,
                              num_heads=1, pos_embed_resize="bilinear")
    with pytest.raises(ValueError, match="found 'bilinear'"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    assert VisionTransformer().pos_embed_resize == "timm"  # every config without the field


def _depth0(rule):
    """A depth-0 ViT on a 28×28 grid whose patch embedding is zero: its patch tokens are
    LayerNorm(position rows), so they show which table the model added."""
    model = VisionTransformer(img_size=112, patch_size=4, in_chans=1, embed_dim=D, depth=0,
                              num_heads=1, layerscale_init=None, pos_embed_resize=rule)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 112, 112, 1)))["params"]
    params = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), shapes)
    params["norm"]["scale"] = np.ones(D, np.float32)
    params["pos_embed"] = np.concatenate([np.zeros((1, D), np.float32),
                                          _smooth_table((28, 28)).reshape(-1, D)])[None]
    return model, {"params": params}


def _layer_norm(x):
    x = x.astype(np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)


@pytest.mark.parametrize("size", [(24, 24), (24, 40), (112, 112)])
def test_vit_resizes_its_stored_table_at_call_time_as_dinov2(size):
    """28 × 28 table; 24 px = PerA's 96 px local crop at patch 16 (a 6 × 6 grid), 24 × 40 a
    non-square input, 112 px the model's own grid (no resize under either rule)."""
    torch = pytest.importorskip("torch")
    x = jnp.zeros((1, *size, 1))
    model, variables = _depth0("dinov2")
    tokens = np.asarray(jax.jit(model.apply)(variables, x)["patch_tokens"][0])
    ref = _dinov2_interpolate(torch, torch.from_numpy(variables["params"]["pos_embed"]), *size, 4)
    # flax LayerNorm: var = E[x²] − E[x]² in float32, ~1e-4 off on rows of small variance
    np.testing.assert_allclose(tokens, _layer_norm(ref[0, 1:].numpy()), atol=3e-4)
    timm_model, _ = _depth0("timm")
    timm_tokens = np.asarray(jax.jit(timm_model.apply)(variables, x)["patch_tokens"][0])
    if size == (112, 112):
        np.testing.assert_array_equal(tokens, timm_tokens)
    else:
        assert np.abs(tokens - timm_tokens).max() > 1e-2


def test_pera_config_resizes_as_dinov2_and_the_export_records_it(tmp_path):
    """PerA's config (and its demo) builds its ViT with DINOv2's rule; an export of it records the
    rule in ``geossl.pos_embed_resize`` and in the model arguments (read back: the same rule);
    a ViT without the field records timm's."""
    from geossl.models.from_config import architecture_kwargs, create_from_config
    assert pera_vit_b.get_config().model.pos_embed_resize == "dinov2"
    demo = pera_vit_b.get_config("demo")
    assert create_from_config(demo.model).pos_embed_resize == "dinov2"
    config = ml_collections.ConfigDict({"data": {"bands": ["B2", "B3"], "norm": "softcon"}})
    demo.model.update(dict(depth=1, embed_dim=8, num_heads=1, in_chans=2, img_size=8))
    for rule in ("dinov2", "timm"):
        arch, arch_kw = demo.model.name, architecture_kwargs(demo.model)
        if rule == "timm":  # a config without the field
            del arch_kw["pos_embed_resize"]
        model = models.create(arch, **arch_kw)
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))
        path = str(tmp_path / f"{rule}.safetensors")
        convert.export_backbone(variables, arch, arch_kw, path, config)
        meta = convert.read_metadata(path)
        assert meta["geossl.pos_embed_resize"] == rule
        assert json.loads(meta["geossl.model_kwargs"]).get("pos_embed_resize", "timm") == rule
        recorded_arch, recorded_kw = geossl_model(meta, path)
        assert models.create(recorded_arch, **recorded_kw).pos_embed_resize == rule


@pytest.mark.parametrize("rule", ["timm", "dinov2"])
def test_continual_init_resamples_dinov2_table_with_timms_rule(rule):
    """``convert.from_torch`` (``config.init.torch_checkpoint``) resamples a DINOv2 37 × 37 table
    once, at import, to the configured grid with timm's ``resample_abs_pos_embed`` (antialiased,
    as timm loads DINOv2 weights) whatever the model's ``pos_embed_resize``: the model's rule
    applies only at call time, to inputs of another size."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed
    kw = dict(embed_dim=16, depth=1, num_heads=2)
    source = models.create("vit_small_patch14", img_size=518, in_chans=3, **kw)
    shapes = jax.eval_shape(source.init, jax.random.key(0), jnp.zeros((1, 518, 518, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), shapes)
    pos = np.concatenate([rng.normal(size=(1, 16)).astype(np.float32),
                          _smooth_table((37, 37), 16).reshape(-1, 16)])[None]
    variables["params"]["pos_embed"] = pos
    state_dict = convert.to_torch(variables, "vit_small_patch14", **kw)
    loaded = convert.from_torch(state_dict, "vit_small_patch14", img_size=56,  # 4 × 4 patches
                                pos_embed_resize=rule, **kw)
    got = np.asarray(loaded["params"]["pos_embed"])
    ref = resample_abs_pos_embed(torch.from_numpy(pos), [4, 4], num_prefix_tokens=1).numpy()
    assert got.shape == (1, 17, 16)
    np.testing.assert_array_equal(got[:, 0], pos[:, 0])
    np.testing.assert_allclose(got, ref, atol=2e-6)
