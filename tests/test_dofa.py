"""DOFA: torchgeo parity both ways, the wavelength-conditioned embedding, sparse forward, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import convert, models
from geossl.convert import ConversionError
from geossl.data import bands

#: A tiny DOFA (the hypernetwork keeps torchgeo's fixed 128-wide sizes).
TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
ARCH = "dofa_base_patch16_224"
ARCH_KW = {k: v for k, v in TINY.items() if k != "img_size"}
BAND_SETS = {"s2": bands.S2_L1C, "s1": bands.S1, "rgb": bands.RGB}


def _randomize(net, seed: int = 0):
    """Every tensor of ``net`` random (torchgeo starts cls_token and pos_embed at zero), matrices
    scaled by 1/√fan_in so that the generated patch kernel dominates the tokens."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in net.state_dict().items():
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("norm.weight"):
                value.copy_(1.0 + 0.1 * noise)
            elif value.ndim == 2 and not key.endswith(("weight_tokens", "bias_token")):
                value.copy_(noise / value.shape[1] ** 0.5)
            else:
                value.copy_(0.1 * noise)
    return net


@pytest.fixture(scope="module")
def torch_dofa():
    """(torchgeo DOFA with random weights, its state dict as numpy)."""
    dofa = pytest.importorskip("torchgeo.models.dofa")
    net = _randomize(dofa.DOFA(num_classes=0, **TINY)).eval()
    return net, {k: v.numpy().copy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def model():
    return models.create(ARCH, **TINY)


@pytest.fixture(scope="module")
def apply(model):
    return jax.jit(model.apply, static_argnames=("return_layers",))


def _images(c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, 32, 32, c)).astype(np.float32)


def _torch_outputs(net, x, wavelengths, keep=None, mask=None, mask_token=None):
    """torchgeo's modules run by hand (its forward_features, with the ViT's keep / mask options):
    (embedding, patch tokens, class token), each through ``fc_norm``."""
    import torch
    with torch.no_grad():
        nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tokens, _ = net.patch_embed(nchw, torch.tensor(np.asarray(wavelengths)))
        if mask is not None:
            tokens = torch.where(torch.from_numpy(mask)[..., None], torch.from_numpy(mask_token), tokens)
        tokens = tokens + net.pos_embed[:, 1:]
        if keep is not None:
            index = torch.from_numpy(keep).long()[..., None].expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        cls = (net.cls_token + net.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        y = torch.cat([cls, tokens], dim=1)
        for block in net.blocks:
            y = block(y)
        return tuple(t.numpy() for t in (net.fc_norm(y[:, 1:].mean(1)), net.fc_norm(y[:, 1:]),
                                          net.fc_norm(y[:, 0])))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("band_set", list(BAND_SETS))
def test_from_torch_matches_torchgeo_forward_features(torch_dofa, apply, band_set):
    import torch
    net, sd = torch_dofa
    variables = convert.from_torch(sd, ARCH, **ARCH_KW)
    names = BAND_SETS[band_set]
    w = bands.wavelengths(names)
    x = _images(len(names))
    out = apply(variables, x, wavelengths=w)
    with torch.no_grad():
        ref = net.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), w.tolist()).numpy()
    assert _rel(out["embedding"], ref) < 1e-5
    embedding, patches, cls = _torch_outputs(net, x, w)
    assert _rel(out["patch_tokens"], patches) < 1e-5 and _rel(out["cls_token"], cls) < 1e-5
    # the wavelengths matter: the same images under wavelengths 0.1 µm longer embed otherwise
    other = apply(variables, x, wavelengths=w + np.float32(0.1))["embedding"]
    assert _rel(other, ref) > 1e-2


def test_to_torch_loads_strictly_into_torchgeo(torch_dofa, model, apply):
    dofa = pytest.importorskip("torchgeo.models.dofa")
    import torch
    net, sd = torch_dofa
    # geossl weights of its own (torchgeo's, each moved by noise; mask_token included), written in
    # torchgeo's keys
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map(
        lambda a: a + np.float32(0.05) * rng.normal(size=a.shape).astype(np.float32),
        convert.from_torch(sd, ARCH, **ARCH_KW))
    back = convert.to_torch(variables, ARCH, **ARCH_KW)
    assert set(back) == set(sd)  # no mask_token: torchgeo has none
    fresh = dofa.DOFA(num_classes=0, **TINY).eval()
    fresh.load_state_dict({k: torch.tensor(v) for k, v in back.items()}, strict=True)
    w = bands.wavelengths(bands.S2_L1C)
    x = _images(len(w), seed=1)
    with torch.no_grad():
        ref = fresh.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), w.tolist())
    assert _rel(apply(variables, x, wavelengths=w)["embedding"], ref.numpy()) < 1e-5
    # and torchgeo's own weights come back bit-exactly
    again = convert.to_torch(convert.from_torch(sd, ARCH, **ARCH_KW), ARCH, **ARCH_KW)
    assert set(again) == set(sd) and all(np.array_equal(again[k], sd[k]) for k in sd)


def test_keep_idx_and_mask_as_the_vit(torch_dofa, apply):
    net, sd = torch_dofa
    variables = convert.from_torch(sd, ARCH, **ARCH_KW)
    token = np.random.default_rng(2).normal(size=(1, 32)).astype(np.float32)
    variables["params"]["mask_token"] = jnp.asarray(token)
    w = bands.wavelengths(bands.S2_L1C)
    x = _images(13, seed=2)
    dense = apply(variables, x, wavelengths=w)
    n = 16
    every = np.tile(np.arange(n, dtype=np.int32), (2, 1))
    same = apply(variables, x, wavelengths=w, keep_idx=every)
    np.testing.assert_allclose(same["patch_tokens"], dense["patch_tokens"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(same["embedding"], dense["embedding"], rtol=0, atol=1e-5)

    keep = np.stack([np.array([3, 0, 9, 15, 6]), np.array([1, 2, 14, 7, 11])]).astype(np.int32)
    mask = np.zeros((2, n), bool)
    mask[0, [0, 5, 9]] = mask[1, [2, 3, 4, 12]] = True
    out = apply(variables, x, wavelengths=w, keep_idx=keep)
    embedding, patches, _ = _torch_outputs(net, x, w, keep=keep)
    assert out["patch_tokens"].shape == patches.shape == (2, 5, 32)
    assert _rel(out["patch_tokens"], patches) < 1e-5 and _rel(out["embedding"], embedding) < 1e-5
    # masked before pos_embed, then a subset kept (MAE / SoftCon masking)
    out = apply(variables, x, wavelengths=w, keep_idx=keep, mask=mask, return_layers=(-1, 0))
    embedding, patches, _ = _torch_outputs(net, x, w, keep=keep, mask=mask, mask_token=token)
    assert _rel(out["patch_tokens"], patches) < 1e-5 and _rel(out["embedding"], embedding) < 1e-5
    assert _rel(out["patch_tokens"], apply(variables, x, wavelengths=w, keep_idx=keep)["patch_tokens"]) > 1e-2
    assert [t.shape for t in out["intermediates"]] == [(2, 1 + 5, 32)] * 2
    np.testing.assert_allclose(out["intermediates"][0][:, 1:], out["patch_tokens"], atol=1e-6)


def test_any_band_subset_in_any_order(torch_dofa, apply):
    """One set of parameters: permuting the bands with their wavelengths changes nothing."""
    variables = convert.from_torch(torch_dofa[1], ARCH, **ARCH_KW)
    w = bands.wavelengths(bands.S2_L1C)
    x = _images(13, seed=3)
    order = np.random.default_rng(3).permutation(13)
    a = apply(variables, x, wavelengths=w)["embedding"]
    b = apply(variables, x[..., order], wavelengths=w[order])["embedding"]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))


def test_checkpoint_without_fc_norm_and_strict_errors(torch_dofa, apply):
    net, sd = torch_dofa
    # the released MAE weights carry no fc_norm: torchgeo leaves it at (ones, zeros), so does geossl
    bare = {k: v for k, v in sd.items() if not k.startswith("fc_norm.")}
    variables = convert.from_torch(bare, ARCH, **ARCH_KW)
    np.testing.assert_array_equal(variables["params"]["fc_norm"]["scale"], np.ones(32, np.float32))
    np.testing.assert_array_equal(variables["params"]["fc_norm"]["bias"], np.zeros(32, np.float32))
    # strict: every missing and unexpected key listed, with a depth hint
    broken = {k: v for k, v in sd.items() if k != "patch_embed.fclayer.w2.bias"}
    broken["patch_embed.extra"] = np.zeros(3, np.float32)
    broken["blocks.2.norm1.weight"] = np.ones(32, np.float32)
    with pytest.raises(ConversionError) as err:
        convert.from_torch(broken, ARCH, **ARCH_KW)
    message = str(err.value)
    for key in ("patch_embed.fclayer.w2.bias", "patch_embed.extra", "blocks.2.norm1.weight", "depth=3"):
        assert key in message
    with pytest.raises(ConversionError, match="another patch size or width"):
        convert.from_torch(sd, ARCH, **{**ARCH_KW, "patch_size": 4})


def test_builders_match_torchgeo_and_key_table_covers_real_sizes():
    """Each builder's structure is torchgeo's; the key table's keys and shapes are those of the
    full-size torchgeo model (built on the meta device, abstract init here: no memory)."""
    dofa = pytest.importorskip("torchgeo.models.dofa")
    import torch
    for name in ("dofa_small_patch16_224", "dofa_huge_patch14_224"):
        with torch.device("meta"):
            net = getattr(dofa, name)(num_classes=0)
        model = models.create(name)
        assert (model.patch_size, model.embed_dim, model.depth, model.num_heads) == (
            net.patch_size, net.embed_dim, len(net.blocks), net.num_heads)
        assert (model.num_features, model.stride) == (net.embed_dim, net.patch_size)
        assert model.grid_size[0] * model.grid_size[1] == net.num_patches
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        table = convert.entries(model, name)
        assert {e.torch_key for e in table} == set(expected) | {"mask_token"}
        for e in table:
            if e.torch_key in expected:
                spec = shapes
                for part in e.flax_path:
                    spec = spec[part]
                assert spec.shape == (expected[e.torch_key][::-1] if e.transform == "linear"
                                      else expected[e.torch_key]), e.torch_key


def test_call_errors_and_the_family_capability(model, apply):
    def shapes(c):
        return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, c)))

    variables = shapes(5)
    x = _images(4)
    with pytest.raises(ValueError, match=r"wavelengths= expected \(4,\).*found none"):
        jax.eval_shape(model.apply, variables, x)
    with pytest.raises(ValueError, match=r"expected shape \(4,\), one per band of x, found \(3,\)"):
        jax.eval_shape(functools.partial(model.apply, wavelengths=np.ones(3, np.float32)), variables, x)
    with pytest.raises(ValueError, match="multiples of patch_size=8"):
        jax.eval_shape(functools.partial(model.apply, wavelengths=np.ones(4, np.float32)), variables,
                       x[:, :30])
    assert shapes(5) == shapes(2)  # no parameter depends on the band count
    fam = models.family(ARCH)
    assert fam.wavelengths and fam.keep_tokens and fam.mask_token and fam.patch_tokens
    assert fam.insert_tokens and not fam.register_tokens  # insert_idx: PerA
    w = bands.wavelengths(bands.S1)
    assert fam.wavelength_kwargs(ARCH, w)["wavelengths"] is w and fam.wavelength_kwargs(ARCH) == {}
    for other in ("vit_small_patch14", "swin_tiny_patch4_window7_224", "resnet50"):
        other_family = models.family(other)
        assert not other_family.wavelengths and other_family.wavelength_kwargs(other) == {}
        with pytest.raises(ValueError, match=f"{other}: the {other_family.name} family takes no wavelengths"):
            other_family.wavelength_kwargs(other, w)
    assert convert.timm_model(ARCH, **ARCH_KW) is None and convert.layouts(ARCH) == ("torchgeo",)


def test_band_wavelength_table():
    w = bands.wavelengths(["B04", "b8a", "VV", "VH", "L8_B5", "L9_B7", "R", "G", "B"])
    assert w.dtype == np.float32 and w.shape == (9,)
    np.testing.assert_array_equal(w, np.float32([0.6646, 0.8647, 3.75, 3.75, 0.865, 2.2, 0.665,
                                                 0.56, 0.49]))
    assert np.all(np.diff(bands.wavelengths(["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9",
                                             "B10", "B11", "B12"])) > 0)
    with pytest.raises(ValueError, match=r"no central wavelength for bands \['B13', 'HH'\]"):
        bands.wavelengths(["B2", "B13", "HH"])
    with pytest.raises(ValueError, match="sequence of band names"):
        bands.wavelengths("B2")


def test_continual_pretraining_starts_from_torchgeo_weights(torch_dofa, model, apply, tmp_path):
    """configs/anysensor_vit_b.py with ``init.torch_checkpoint`` = a torchgeo DOFA state dict:
    the student backbone starts as that network (the hypernetwork included: DOFA has no channel
    axis to re-initialise under the default ``first_layer="reinit"``), embedding S1 input as
    torchgeo does."""
    import torch
    from safetensors.torch import save_file
    from configs import anysensor_vit_b
    from geossl.train import pretrained
    net, sd = torch_dofa
    path = str(tmp_path / "dofa_tiny.safetensors")
    save_file({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    c = anysensor_vit_b.get_config("demo")
    c.model.update(dict(TINY, name=ARCH))
    c.init.torch_checkpoint = path
    assert c.init.first_layer == "reinit"
    x = _images(2, seed=3)
    w = bands.wavelengths(bands.S1, dict(c.data.wavelengths))
    fresh = jax.device_get(model.init(jax.random.PRNGKey(0), x))
    loaded = pretrained.load_student_backbone(c, fresh)
    want, _, _ = _torch_outputs(net, x, w)
    assert _rel(apply({"params": loaded["params"]}, x, wavelengths=w)["embedding"], want) < 1e-5
    assert _rel(apply(fresh, x, wavelengths=w)["embedding"], want) > 0.1  # the random start
