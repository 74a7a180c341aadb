"""Swin Transformer v1: timm parity, both PyTorch layouts, bias-table resampling, mask token, drop path."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import convert, models
from geossl.convert.lib import io
from geossl.convert.lib.adapters import resample_rel_pos_bias_table
from geossl.models.from_config import create_from_config

TINY = "swin_tiny_patch4_window7_224"
SMALL_KW = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4))  # two stages, 56 px: 14 → 7 tokens


def _timm_swin(name, img_size, window_size, in_chans, seed=0, **kw):
    """timm Swin with random weights perturbed so that no norm, bias or bias table is trivial."""
    timm = pytest.importorskip("timm")
    import torch
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False, img_size=img_size, window_size=window_size,
                            in_chans=in_chans, num_classes=0, **kw).eval()
    with torch.no_grad():
        for key, p in net.named_parameters():
            if key.endswith("relative_position_bias_table"):
                p.normal_(0.0, 1.0)
            elif p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return net


def _np_sd(net):
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _images(b, size, c, seed=1):
    return np.random.default_rng(seed).normal(size=(b, size, size, c)).astype(np.float32)


def _timm_embedding(net, x):
    import torch
    with torch.no_grad():
        return net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


# ----- timm parity (the named models, reduced depths) ------------------------------------
@pytest.mark.parametrize("name,img,window,bands,depths", [
    (TINY, 224, 7, 3, (2, 2, 2, 2)),  # last stage 7x7 = window: one window, no shift
    ("swin_base_patch4_window7_224", 192, 6, 13, (1, 1, 2, 1)),
    # BigEarthNet's 120 px: stages 30, 15, 8, 4; windows padded (30 → 35, 15 → 21, 8 → 14, the
    # shifted masks on the padded maps) and an odd size merged (15 → 16 → 8), as timm pads
    (TINY, 120, 7, 13, (2, 2, 2, 2)),
])
def test_matches_timm_both_directions(name, img, window, bands, depths):
    import torch
    net = _timm_swin(name, img, window, bands, depths=depths)
    sd = _np_sd(net)
    x = _images(2, img, bands)
    ref = _timm_embedding(net, x)

    # timm → geossl (model sizes resolved from the checkpoint except the image size)
    variables = convert.from_torch(sd, name, img_size=img, depths=depths)
    model = models.create(name, in_chans=bands, img_size=img, window_size=window, depths=depths)
    out = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert _rel_err(out["embedding"], ref) < 1e-5
    assert out["embedding"].shape == (2, model.num_features)
    sizes = [img // 4]
    for _ in range(3):
        sizes.append((sizes[-1] + 1) // 2)
    assert [f.shape[1:] for f in out["features"]] == [
        (g, g, model.embed_dim << i) for i, g in enumerate(sizes)]
    assert out["feature_map"].shape == (2, sizes[-1], sizes[-1], model.num_features)
    np.testing.assert_allclose(out["feature_map"].mean(axis=(1, 2)), out["embedding"], atol=1e-6)

    # geossl → timm: a fresh timm model loads the export strictly and gives the same embedding
    back = convert.to_torch(variables, name, img_size=img, window_size=window, depths=depths)
    fresh = _timm_swin(name, img, window, bands, seed=1, depths=depths)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    assert _rel_err(_timm_embedding(fresh, x), ref) < 1e-5
    for k in sd:  # round trip bit-exact
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


# ----- the original Microsoft / SimMIM layout ----------------------------------------------------
def _independent_index(w):
    """relative_position_index of the original code, by explicit loops."""
    out = np.zeros((w * w, w * w), np.int64)
    for a in range(w * w):
        for b in range(w * w):
            dy, dx = a // w - b // w, a % w - b % w
            out[a, b] = (dy + w - 1) * (2 * w - 1) + dx + w - 1
    return out


def _independent_attn_mask(size, w):
    """The original code's attn_mask: regions of the image labelled by slices, windows compared."""
    s = w // 2
    label = np.zeros((size, size))
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            label[hs, ws] = cnt
            cnt += 1
    wins = [label[i:i + w, j:j + w].reshape(-1) for i in range(0, size, w) for j in range(0, size, w)]
    return np.stack([np.where(v[:, None] - v[None, :] != 0, -100.0, 0.0) for v in wins]).astype(np.float32)


def _original_layout(sd, depths, size0, w):
    """timm keys → the original code's: downsample moved to the end of the previous stage
    (``reduction`` before ``norm``), buffers added in module order."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            continue
        blk = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.weight", k)
        if blk:
            i, j = int(blk.group(1)), int(blk.group(2))
            size = size0 >> i
            if j % 2 and size > w:
                out[f"layers.{i}.blocks.{j}.attn_mask"] = _independent_attn_mask(size, w)
        out[k] = v
        if k.endswith("relative_position_bias_table"):
            i = int(k.split(".")[1])
            out[k.replace("bias_table", "index")] = _independent_index(min(w, size0 >> i))
        last = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.bias", k)
        if last and int(last.group(2)) == depths[int(last.group(1))] - 1 and int(last.group(1)) + 1 < len(depths):
            nxt = int(last.group(1)) + 1
            for part in ("reduction.weight", "norm.weight", "norm.bias"):
                out[f"layers.{nxt - 1}.downsample.{part}"] = sd[f"layers.{nxt}.downsample.{part}"]
    return out


def test_original_layout_import_export():
    net = _timm_swin(TINY, 56, 7, 3, **SMALL_KW)
    sd = _np_sd(net)
    original = _original_layout(sd, SMALL_KW["depths"], 14, 7)
    assert "layers.0.downsample.reduction.weight" in original and "layers.1.downsample.norm.bias" not in original
    assert "layers.0.blocks.1.attn_mask" in original and "layers.1.blocks.1.attn_mask" not in original  # 7x7: no shift
    x = _images(2, 56, 3)
    variables, report = convert.from_torch(original, TINY, return_report=True)  # sizes from the keys
    assert {k for k in report.dropped} == {k for k in original if k.endswith(("_index", "attn_mask"))}
    model = models.create(TINY, img_size=56, **SMALL_KW)  # window 7, img_size 56 read from the buffers
    assert convert.resolve_model_kwargs(original, TINY)["img_size"] == 56
    got = jax.jit(model.apply)(variables, jnp.asarray(x))
    seen = {}
    hook = net.layers[1].downsample.register_forward_hook(lambda m, i, o: seen.update(merged=o.numpy()))
    try:
        assert _rel_err(got["embedding"], _timm_embedding(net, x)) < 1e-5
    finally:
        hook.remove()
    # "merged": the original code's stage-0 output (after its downsample), what GFM distils for stage 3
    assert len(got["merged"]) == 1 and _rel_err(got["merged"][0], seen["merged"]) < 1e-5

    # export in the original layout: the same keys, in the same order, buffers included
    back = convert.to_torch(variables, TINY, layout="original", img_size=56, **SMALL_KW)
    assert list(back) == list(original)
    for k in original:
        assert back[k].dtype == original[k].dtype and np.array_equal(back[k], original[k]), k
    # simmim: + mask_token (1,1,D), which the timm layout leaves out and reads back when present
    variables["params"]["mask_token"] = jnp.full((1, 1, 16), 0.25)
    simmim = convert.to_torch(variables, TINY, layout="simmim", img_size=56, **SMALL_KW)
    assert set(simmim) - set(back) == {"mask_token"} and "mask_token" not in convert.to_torch(
        variables, TINY, img_size=56, **SMALL_KW)
    again = convert.from_torch(simmim, TINY, **SMALL_KW)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)))

    # at 60 px (15 tokens: windows padded, an odd size merged) the weights import, but the original
    # code pads nothing, so only timm's layout exports
    padded = convert.from_torch(original, TINY, img_size=60, **SMALL_KW)
    with pytest.raises(ValueError, match=r"stage 0's \(15, 15\) tokens are not whole \(7, 7\) windows"
                                         r".*export layout 'timm'"):
        convert.to_torch(padded, TINY, layout="original", img_size=60, **SMALL_KW)
    assert list(convert.to_torch(padded, TINY, img_size=60, **SMALL_KW)) == list(sd)

    # at 28×56 px stage 0 is (7, 14) tokens: timm's windows (7, 7) shifted by (0, 3), where the
    # original code takes one 7×7 window and no shift; the import says so, the export refuses
    wide, report = convert.from_torch(original, TINY, img_size=(28, 56), return_report=True,
                                      **SMALL_KW)                 # stage 1: (4, 7) in one window
    assert sum("window 7 → 4×7" in line for line in report.adapted) == 2, report.adapted
    assert any("stage 0: (7, 14) tokens in timm's (7, 7) windows shifted by (0, 3)" in line
               for line in report.adapted), report.adapted
    with pytest.raises(ValueError, match=r"stage 0's \(7, 14\) tokens are smaller than the window 7"
                                         r" on one axis only: export layout 'timm'"):
        convert.to_torch(wide, TINY, layout="original", img_size=(28, 56), **SMALL_KW)
    assert list(convert.to_torch(wide, TINY, img_size=(28, 56), **SMALL_KW)) == list(sd)


# ----- adapters ---------------------------------------------------------------------------------
def _keys_bicubic_1d(n_in, n_out):
    """(n_out, n_in) weights of PyTorch's bicubic (a = -0.75, half-pixel centres, clamped border)."""
    def k(t):
        t = abs(t)
        return (1.25 * t - 2.25) * t * t + 1 if t <= 1 else ((-0.75 * t + 3.75) * t - 6) * t + 3 if t < 2 else 0.0
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        f = int(np.floor(src))
        for j in range(f - 1, f + 3):
            w[i, min(max(j, 0), n_in - 1)] += k(src - j)
    return w


def test_bias_table_resampling_window7_to_6_matches_torch_bicubic():
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(0).normal(size=(13 * 13, 4)).astype(np.float32)
    ours = resample_rel_pos_bias_table(table, 6)
    assert ours.shape == (121, 4) and ours.dtype == np.float32
    # SimMIM's call; torch computes source coordinates in float32 (a few 1e-6 apart from float64)
    ref = torch.nn.functional.interpolate(torch.from_numpy(table).T.reshape(1, 4, 13, 13), size=(11, 11),
                                          mode="bicubic", align_corners=False)
    np.testing.assert_allclose(ours, ref.reshape(4, 121).T.numpy(), rtol=0, atol=1e-5)
    w = _keys_bicubic_1d(13, 11)
    exact = np.einsum("ih,jw,hwc->ijc", w, w, table.astype(np.float64).reshape(13, 13, 4)).reshape(121, 4)
    np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-6)
    assert resample_rel_pos_bias_table(table, 7) is table
    # a non-square window (a stage of 4 × 7 tokens, window 7): (7, 13) from the (13, 13) table
    wide = resample_rel_pos_bias_table(table, (4, 7))
    ref = torch.nn.functional.interpolate(torch.from_numpy(table).T.reshape(1, 4, 13, 13), size=(7, 13),
                                          mode="bicubic", align_corners=False)
    np.testing.assert_allclose(wide, ref.reshape(4, 91).T.numpy(), rtol=0, atol=1e-5)

    # through from_torch: window-7 checkpoint into a window-6 model (48 px: 12 → 6 tokens)
    sd = _np_sd(_timm_swin(TINY, 56, 7, 3, **SMALL_KW))
    variables, report = convert.from_torch(sd, TINY, img_size=48, window_size=6, in_chans=13,
                                           first_layer="repeat", return_report=True, **SMALL_KW)
    got = variables["params"]["layers_0"]["blocks_1"]["attn"]["relative_position_bias_table"]
    np.testing.assert_array_equal(got, resample_rel_pos_bias_table(
        sd["layers.0.blocks.1.attn.relative_position_bias_table"], 6))
    assert variables["params"]["patch_embed"]["proj"]["kernel"].shape == (4, 4, 13, 16)
    assert sum("window 7 → 6" in a for a in report.adapted) == 4


# ----- model behaviour --------------------------------------------------------------------------
def _jit_embed(model):
    fn = jax.jit(model.apply, static_argnames=("stochastic",))
    return lambda v, x, **kw: fn(v, jnp.asarray(x), **kw)["embedding"]


@pytest.fixture(scope="module")
def small():
    model = models.create(TINY, img_size=56, **SMALL_KW)
    net = _timm_swin(TINY, 56, 7, 3, **SMALL_KW)
    variables = convert.from_torch(_np_sd(net), TINY, img_size=56, **SMALL_KW)
    variables["params"]["mask_token"] = jnp.asarray(np.random.default_rng(3).normal(size=(1, 1, 16)), jnp.float32)
    x = _images(2, 56, 3)
    embed = _jit_embed(model)
    return model, net, variables, x, embed, embed(variables, x)


def test_mask_token_replaces_exactly_the_masked_patch_embeddings(small):
    import torch
    model, net, variables, x, embed, base = small
    mask = np.random.default_rng(4).random((2, 14, 14)) < 0.5
    out = embed(variables, x, mask=jnp.asarray(mask))
    token = torch.tensor(np.asarray(variables["params"]["mask_token"]))[0, 0]
    hook = net.patch_embed.register_forward_hook(  # timm's patch_embed output is (B,h,w,D), normed
        lambda m, i, o: torch.where(torch.from_numpy(mask)[..., None], token, o))
    try:
        ref = _timm_embedding(net, x)
    finally:
        hook.remove()
    assert _rel_err(out, ref) < 1e-5 and _rel_err(base, ref) > 1e-2
    # pixels under masked patches do not matter; an all-False mask changes nothing
    noisy = x + np.repeat(np.repeat(mask, 4, 1), 4, 2)[..., None] * 5.0
    np.testing.assert_array_equal(embed(variables, noisy, mask=jnp.asarray(mask)), out)
    np.testing.assert_allclose(embed(variables, x, mask=jnp.zeros((2, 14, 14), bool)), base, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mask: expected shape"):
        model.apply(variables, jnp.asarray(x), mask=jnp.zeros((2, 196), bool))


def test_drop_path_off_and_on(small):
    model, _, variables, x, embed, base = small
    dropping_model = models.create(TINY, img_size=56, drop_path_rate=0.5, **SMALL_KW)
    jaxpr = [str(jax.make_jaxpr(lambda v, m=m: m.apply(v, jnp.asarray(x)))(variables)) for m in (model, dropping_model)]
    assert jaxpr[0] == jaxpr[1]  # off (the default): the very same computation as without drop path
    dropping = _jit_embed(dropping_model)
    a, b = (dropping(variables, x, stochastic=True, rngs={"dropout": jax.random.key(s)}) for s in (0, 1))
    assert not np.allclose(a, base, atol=1e-3) and not np.allclose(a, b, atol=1e-3)
    again = dropping(variables, x, stochastic=True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(a, again)  # same rng, same paths dropped


def test_remat_bf16_from_config_and_sizes(small):
    model, _, variables, x, embed, base = small
    remat = models.create(TINY, img_size=56, remat=True, **SMALL_KW)
    np.testing.assert_allclose(_jit_embed(remat)(variables, x), base, rtol=0, atol=1e-6)
    grad = jax.eval_shape(jax.grad(lambda v: remat.apply(v, jnp.asarray(x))["embedding"].sum()), variables)
    assert "remat" in str(jax.make_jaxpr(lambda v: remat.apply(v, jnp.asarray(x)))(variables)) and grad
    bf16 = _jit_embed(models.create(TINY, img_size=56, dtype=jnp.bfloat16, **SMALL_KW))(variables, x)
    assert bf16.dtype == jnp.bfloat16 and _rel_err(bf16.astype(jnp.float32), np.asarray(base)) < 0.1
    cfg = create_from_config({"name": TINY, "img_size": 64, "window_size": 4, "in_chans": 2, "depths": [2, 2],
                              "num_heads": [2, 4], "embed_dim": 16, "dtype": "float32", "drop_path_rate": 0.1})
    assert (cfg.window_size, cfg.depths, cfg.num_features, cfg.drop_path_rate) == (4, (2, 2), 32, 0.1)
    # 64 px, window 4: stage sizes 16, 8 → windows 4, 4 with shift 2
    assert [s[1:] for s in cfg.stage_windows()] == [((4, 4), (2, 2)), ((4, 4), (2, 2))]
    assert models.family(TINY).name == "swin" and models.create(
        "swin_base_patch4_window7_224").num_features == 1024
    with pytest.raises(ValueError, match="multiples of patch_size 4, found"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 58, 58, 3)))


def test_cli_import_original_then_export_timm(tmp_path, small):
    """A GFM-style checkpoint (original layout under ``encoder.``) → workdir → timm layout file."""
    from geossl.cli.convert import main
    net = small[1]
    sd = _np_sd(net)
    original = {"encoder." + k: v for k, v in _original_layout(sd, SMALL_KW["depths"], 14, 7).items()}
    io.save_state_dict(original, str(tmp_path / "gfm.safetensors"))
    workdir, out = str(tmp_path / "wd"), str(tmp_path / "out.safetensors")
    assert main(["import", "--arch", TINY, "--input", str(tmp_path / "gfm.safetensors"), "--output", workdir,
                 "--strip_prefixes", "encoder."]) == 0  # sizes, window and 56 px read from the checkpoint
    assert main(["export", "--workdir", workdir, "--output", out]) == 0
    back = io.load_state_dict(out)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    assert main(["export", "--workdir", workdir, "--output", out, "--layout", "original"]) == 0
    again = io.load_state_dict(out)
    assert set(again) == {k[len("encoder."):] for k in original}
