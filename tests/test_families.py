"""Model families: each ``FAMILY`` declaration checked against what its models really do.

Shapes come from ``jax.eval_shape`` (nothing compiled); values only where a capability's meaning
needs them (a mask token replaces every masked patch embedding).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import convert, models
from geossl.convert.lib.families import ADAPTERS, first_layer_key
from geossl.models.from_config import create_from_config
from geossl.train.pretrained import _take_first_layer

#: family → (model name, tiny structure, two input sizes (H, W)); 5 bands everywhere.
TINY = {
    "vit": ("vit_tiny_patch16", dict(patch_size=4, embed_dim=16, depth=2, num_heads=2, img_size=16),
            [(16, 16), (16, 32)]),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(patch_size=2, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=2,
                  img_size=16),
             [(16, 16), (16, 32)]),
    "resnet": ("resnet18", dict(stage_sizes=(1, 1, 1, 1), width=8), [(32, 32), (64, 96)]),
    "dofa": ("dofa_base_patch16_224", dict(patch_size=4, embed_dim=16, depth=2, num_heads=2, img_size=16),
             [(16, 16), (16, 32)]),
}
BANDS = 5
#: central wavelengths (µm) of the BANDS bands, for the families that take them
WAVELENGTHS = np.linspace(0.45, 2.2, BANDS).astype(np.float32)
FAMILIES = [f.name for f in models.families()]


def _tiny(family_name: str, **extra):
    name, kw, sizes = TINY[family_name]
    model = models.create(name, in_chans=BANDS, **kw, **extra)
    h, w = sizes[0]
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, h, w, BANDS)))
    return model, variables, sizes


def _bands_kw(model) -> dict:
    """``wavelengths=`` for a family that takes them (DOFA), nothing for the others."""
    fam = next(f for f in models.families() if isinstance(model, type(f.create(f.names[0]))))
    return fam.wavelength_kwargs(fam.names[0], WAVELENGTHS if fam.wavelengths else None)


def _out(model, variables, size, **call_kw):
    """Output shapes of ``model`` on a (2, H, W, BANDS) batch, or the TypeError's message."""
    call_kw.update(_bands_kw(model))
    x = jax.ShapeDtypeStruct((2, *size, BANDS), jnp.float32)
    try:
        return jax.eval_shape(functools.partial(model.apply, **call_kw), variables, x)
    except TypeError as e:
        return str(e)


def test_registry_names_and_unknown_name():
    assert sorted(FAMILIES) == ["dofa", "resnet", "swin", "vit"]
    assert models.names() == [n for f in models.families() for n in f.names]
    for f in models.families():
        assert all(models.family(n) is f for n in f.names)
        assert isinstance(models.create(f.names[0]), type(_tiny(f.name)[0]))
    with pytest.raises(ValueError, match=r"unknown model 'vit_huge'.*vit_tiny_patch16.*resnet18.*swin"):
        models.family("vit_huge")


@pytest.mark.parametrize("family_name", FAMILIES)
def test_stride_is_input_size_over_final_map_size(family_name):
    fam = models.family(TINY[family_name][0])
    model, variables, sizes = _tiny(family_name)
    expected = {"vit": 4, "swin": 2 * 2, "resnet": 32, "dofa": 4}[family_name]
    assert model.stride == expected
    for h, w in sizes:
        out = _out(model, variables, (h, w))
        if fam.feature_maps:
            assert out["features"][-1].shape[1:3] == (h // model.stride, w // model.stride)
        if fam.patch_tokens:
            assert out["patch_tokens"].shape[1] == (h // model.stride) * (w // model.stride)
        assert out["embedding"].shape == (2, model.num_features)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_first_layer_path_and_its_torch_key(family_name):
    name = TINY[family_name][0]
    fam = models.family(name)
    model, variables, _ = _tiny(family_name)
    layer = variables["params"]
    for key in fam.first_layer:
        layer = layer[key]
    kernel = layer["kernel"]
    if fam.wavelengths:  # DOFA: the layer generating the patch kernel, p·p·D per band
        assert kernel.ndim == 2 and kernel.shape[1] == model.patch_size ** 2 * model.embed_dim
    else:
        assert kernel.ndim == 4 and kernel.shape[2] == BANDS  # (kh, kw, C, D): reads the image
    if "patch_size" in fam.kwargs and not fam.wavelengths:  # one PatchEmbed: a p×p conv (+ Swin's norm)
        assert kernel.shape[:2] == (model.patch_size, model.patch_size)
        assert set(variables["params"]["patch_embed"]) == ({"proj", "norm"} if fam.merging else {"proj"})
    table = convert.entries(model, name)
    at = [e.torch_key for e in table if e.flax_path == ("params", *fam.first_layer, "kernel")]
    assert at == [first_layer_key(name)]


@pytest.mark.parametrize("family_name", FAMILIES)
def test_token_capabilities_match_the_call(family_name):
    fam = models.family(TINY[family_name][0])
    model, variables, sizes = _tiny(family_name)
    size = sizes[1]
    n = (size[0] // model.stride) * (size[1] // model.stride)
    keep = jnp.zeros((2, 3), jnp.int32)
    out = _out(model, variables, size, keep_idx=keep, return_layers=(-1,))
    if fam.keep_tokens:
        assert out["patch_tokens"].shape[1] == 3
        assert out["intermediates"][0].shape[1] == model.num_prefix_tokens + 3
    else:
        assert "keep_idx" in out
    out = _out(model, variables, size, keep_idx=keep, insert_idx=jnp.zeros((2, 4), jnp.int32),
               insert_at_block=1)
    if fam.insert_tokens:
        assert out["patch_tokens"].shape[1] == 3 + 4
    else:
        assert "keep_idx" in out or "insert_idx" in out
    full = _out(model, variables, size)
    assert ("patch_tokens" in full) == fam.patch_tokens
    assert ("features" in full) == fam.feature_maps
    assert ("merged" in full) == fam.merging
    if fam.merging:
        assert len(full["merged"]) == len(model.depths) - 1
        assert full["merged"][-1].shape == full["features"][-1].shape
    if fam.patch_tokens:
        assert full["patch_tokens"].shape[1] == n


@pytest.mark.parametrize("family_name", FAMILIES)
def test_register_tokens_capability(family_name):
    fam = models.family(TINY[family_name][0])
    assert ("num_register_tokens" in fam.kwargs) == fam.register_tokens
    if not fam.register_tokens:
        with pytest.raises(TypeError, match="num_register_tokens"):
            _tiny(family_name, num_register_tokens=2)
        return
    model, variables, sizes = _tiny(family_name, num_register_tokens=2)
    assert variables["params"]["register_tokens"].shape == (1, 2, model.embed_dim)
    out = _out(model, variables, sizes[0], return_layers=(0,))
    n = out["patch_tokens"].shape[1]
    assert model.num_prefix_tokens == 3 and out["intermediates"][0].shape[1] == 3 + n


@pytest.mark.parametrize("family_name", FAMILIES)
def test_mask_token_replaces_every_masked_patch_embedding(family_name):
    """Fully masked, two different images give the same output; unmasked, they do not."""
    fam = models.family(TINY[family_name][0])
    model, shapes, sizes = _tiny(family_name)
    h, w = sizes[0]
    grid = (2, h // model.patch_size, w // model.patch_size) if "patch_size" in fam.kwargs else (2, 1, 1)
    mask_shape = (2, grid[1] * grid[2]) if fam.patch_tokens else grid  # ViT (B,N), Swin (B,h,w)
    if not fam.mask_token:
        assert "mask" in _out(model, shapes, (h, w), mask=jnp.ones(mask_shape, bool))
        return
    variables = model.init(jax.random.key(0), jnp.zeros((2, h, w, BANDS)))
    x = np.random.default_rng(0).normal(size=(2, h, w, BANDS)).astype(np.float32)
    x[1] = -x[0]
    kw = _bands_kw(model)
    all_masked = model.apply(variables, x, mask=jnp.ones(mask_shape, bool), **kw)["embedding"]
    none_masked = model.apply(variables, x, mask=jnp.zeros(mask_shape, bool), **kw)["embedding"]
    np.testing.assert_allclose(all_masked[0], all_masked[1], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(none_masked, model.apply(variables, x, **kw)["embedding"])
    assert np.abs(np.asarray(none_masked[0] - none_masked[1])).max() > 1e-3


@pytest.mark.parametrize("family_name", FAMILIES)
def test_kwargs_are_what_create_accepts(family_name):
    name = TINY[family_name][0]
    fam = models.family(name)
    model = models.create(name)
    fields = {f for f in type(model).__dataclass_fields__ if f not in ("parent", "name")}
    assert fields <= fam.kwargs and fam.kwargs - fields <= {"img_size"}
    with pytest.raises(TypeError, match="unknown keyword.*widthh"):
        models.create(name, widthh=3)
    assert family_name in ADAPTERS and convert.layouts(name)[0] in ("timm", "torchvision", "torchgeo")


def test_create_from_config_drops_exactly_the_fields_a_family_ignores():
    vit_fields = dict(img_size=224, patch_size=16, depth=12, num_heads=6, embed_dim=384,
                      drop_path_rate=0.1, drop_path_uniform=True, layerscale_init=None,
                      num_register_tokens=4, mlp_ratio=4.0, qkv_bias=True)
    # today's behaviour: a ResNet reads a ViT's config.model, its structure fields dropped
    assert models.family("resnet50").ignores >= set(vit_fields)
    resnet = create_from_config(dict(name="resnet50", in_chans=13, dtype="bfloat16", **vit_fields))
    assert (resnet.in_chans, resnet.dtype, resnet.num_features) == (13, jnp.bfloat16, 2048)
    assert not models.family("vit_small_patch14").ignores
    assert not models.family("swin_tiny_patch4_window7_224").ignores
    with pytest.raises(TypeError, match="drop_path_uniform"):  # a Swin takes every field it is given
        create_from_config(dict(name="swin_tiny_patch4_window7_224", drop_path_uniform=True))
    with pytest.raises(TypeError, match="width"):
        create_from_config(dict(name="vit_small_patch14", width=64))
    # the same fields leave the architecture of conversions and exports: a ViT config switched to
    # a ResNet (--config.model.name=resnet18) exports after training, not a TypeError
    from geossl import convert
    from geossl.models.from_config import architecture_kwargs
    cfg = dict(name="resnet18", in_chans=5, dtype="bfloat16", **vit_fields)
    assert architecture_kwargs(cfg) == {"in_chans": 5}
    net = create_from_config(cfg)
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 5)))
    state = convert.to_torch(dict(variables), "resnet18", **architecture_kwargs(cfg))
    assert state["conv1.weight"].shape == (64, 5, 7, 7)
    assert architecture_kwargs(dict(name="vit_small_patch14", patch_size=8, dtype="float32")) == {
        "patch_size": 8}


def test_take_first_layer_replaces_exactly_the_first_layer():
    """``config.init.first_layer="reinit"``: the family's first layer comes from the fresh params,
    everything else (the Swin patch-embed norm, a ResNet's bn1) from the checkpoint."""
    for family_name in ("swin", "resnet"):
        name = TINY[family_name][0]
        fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), _tiny(family_name)[1])
        loaded = jax.tree_util.tree_map(lambda a: a + 1, fresh)
        out = _take_first_layer(loaded, fresh["params"], models.family(name).first_layer)
        flat = {jax.tree_util.keystr(p): float(np.max(v))
                for p, v in jax.tree_util.tree_leaves_with_path(out["params"])}
        first = "".join(f"['{k}']" for k in models.family(name).first_layer)
        assert {k for k, v in flat.items() if v == 0} == {k for k in flat if k.startswith(first)}
        assert any(k.startswith(first) for k in flat)
