"""DINOv2-layout ViT: timm parity, token options, key table and pretrained-weight adapters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from geossl.convert.lib.adapters import adapt_input_channels, drop_keys, resample_pos_embed
from geossl.convert.lib.keymap import TRANSFORMS
from geossl.convert.lib.vit_keys import vit_entries
from geossl.models.vit import VIT_CONFIGS, VisionTransformer, vit

TINY = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2)


def _init(model, seed=0):
    size = model.img_size
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, model.in_chans)))


def _images(b, size, c, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, c)), jnp.float32)


def _perturbed(variables, seed=2):
    """Random values everywhere (zero-initialised tokens and 1e-5 LayerScale would hide bugs)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda v: jnp.asarray(0.3 * rng.normal(size=v.shape) + (v.ndim == 1), jnp.float32),
                        variables)


def _from_timm(net, model):
    """timm state dict → flax variables through the key table (mask_token absent in timm: zeros)."""
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    flat = {}
    for e in vit_entries(model):
        value = sd.pop(e.torch_key, None)
        if value is None and e.torch_key == "mask_token":
            value = np.zeros((1, model.embed_dim), np.float32)
        flat[e.flax_path] = TRANSFORMS[e.transform][0](value)
    assert not sd, f"timm keys without an entry: {sorted(sd)}"
    return traverse_util.unflatten_dict(flat)


def _timm_dinov2(torch, timm, **kw):
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_dinov2", img_size=56, num_classes=0, **kw).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name in ("cls_token", "pos_embed") or name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return net


@pytest.mark.parametrize("in_chans,depth", [(13, 12), (2, 2)])
def test_matches_timm_dinov2(in_chans, depth):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    net = _timm_dinov2(torch, timm, in_chans=in_chans, depth=depth, dynamic_img_size=depth == 2)
    model = vit("vit_small_patch14", img_size=56, in_chans=in_chans, depth=depth)
    variables = _from_timm(net, model)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 56, 56, in_chans))))
    apply = jax.jit(model.apply, static_argnames="return_layers")
    # 56 px = the model's own grid; 84 px and 28 px resample pos_embed at call time (timm dynamic_img_size)
    for size in (56, 84, 28) if depth == 2 else (56,):
        x = np.random.default_rng(size).normal(size=(2, size, size, in_chans)).astype(np.float32)
        with torch.no_grad():
            ref = net.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
            inter = net.forward_intermediates(torch.from_numpy(x).permute(0, 3, 1, 2), indices=[0],
                                              norm=True, return_prefix_tokens=True,
                                              intermediates_only=True, output_fmt="NLC")
        out = apply(variables, jnp.asarray(x), return_layers=(0,))
        np.testing.assert_allclose(out["embedding"], ref[:, 0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(out["patch_tokens"], ref[:, 1:], atol=1e-4, rtol=1e-4)
        patches, prefix = inter[0]
        np.testing.assert_allclose(out["intermediates"][0][:, 0], prefix.numpy()[:, 0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(out["intermediates"][0][:, 1:], patches.numpy(), atol=1e-4, rtol=1e-4)


def test_token_options():
    model = VisionTransformer(**TINY)
    variables = _perturbed(_init(model))
    x, n = _images(2, 16, 3), 16
    full = jax.jit(model.apply)(variables, x)
    assert full["embedding"].shape == (2, 32) and full["patch_tokens"].shape == (2, n, 32)
    np.testing.assert_array_equal(full["cls_token"], full["embedding"])

    @jax.jit
    def sparse(mask, keep_idx):
        return model.apply(variables, x, mask=mask, keep_idx=keep_idx, return_layers=(-1, 0))

    # keep_idx: all positions in order = full forward; a permutation permutes the output
    # (tokens are gathered after pos_embed); the last intermediate is the final output
    no_mask = jnp.zeros((2, n), bool)
    same = sparse(no_mask, jnp.broadcast_to(jnp.arange(n), (2, n)))
    np.testing.assert_allclose(same["patch_tokens"], full["patch_tokens"], atol=2e-5)
    np.testing.assert_allclose(same["intermediates"][0], jnp.concatenate(
        [full["embedding"][:, None], full["patch_tokens"]], axis=1), atol=2e-5)
    assert same["intermediates"][1].shape == (2, 1 + n, 32)
    perm = jnp.asarray(np.stack([np.random.default_rng(s).permutation(n) for s in (0, 1)]), jnp.int32)
    kept = sparse(no_mask, perm)
    np.testing.assert_allclose(kept["embedding"], full["embedding"], atol=2e-5)
    want = jnp.take_along_axis(full["patch_tokens"], perm[..., None], axis=1)
    np.testing.assert_allclose(kept["patch_tokens"], want, atol=2e-5)

    # insert at block 0 == masked forward on [kept, inserted]: both are mask_token + pos_embed
    keep, ins = perm[:, :6], perm[:, 6:]
    inserted = jax.jit(model.apply, static_argnames="insert_at_block")(
        variables, x, keep_idx=keep, insert_idx=ins, insert_at_block=0)
    masked = sparse(no_mask.at[jnp.arange(2)[:, None], ins].set(True), perm)
    np.testing.assert_allclose(inserted["patch_tokens"], masked["patch_tokens"], atol=2e-5)
    np.testing.assert_allclose(inserted["embedding"], masked["embedding"], atol=2e-5)
    assert not np.allclose(masked["embedding"], kept["embedding"], atol=1e-3)
    later = jax.eval_shape(lambda v: model.apply(v, x, keep_idx=keep, insert_idx=ins[:, :3],
                                                 insert_at_block=1, return_layers=(0, 1)), variables)
    assert later["patch_tokens"].shape == (2, 9, 32)
    assert [t.shape for t in later["intermediates"]] == [(2, 7, 32), (2, 10, 32)]

    with pytest.raises(ValueError, match="insert_at_block: expected 0..1, found 2"):
        model.apply(variables, x, insert_idx=ins, insert_at_block=2)
    with pytest.raises(ValueError, match="insert_idx and insert_at_block go together"):
        model.apply(variables, x, insert_idx=ins)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 16\)"):
        model.apply(variables, x, mask=no_mask[:, :4])
    with pytest.raises(ValueError, match=r"return_layers: expected indices in \[-2, 2\), found 2"):
        model.apply(variables, x, return_layers=(2,))
    with pytest.raises(ValueError, match=r"expected \(B,H,W,3\) with H, W multiples of 4, found \(2, 18, 18, 3\)"):
        model.apply(variables, _images(2, 18, 3))


def test_mask_token_and_pos_embed_by_hand():
    """depth 0: patch tokens are LayerNorm(embedding + pos_embed), masked ones LayerNorm(mask_token + pos)."""
    model = VisionTransformer(**{**TINY, "depth": 0, "num_register_tokens": 2})
    v = _perturbed(_init(model))
    p = jax.tree.map(np.asarray, v["params"])
    x = np.asarray(_images(1, 16, 3))
    mask = np.random.default_rng(0).random((1, 16)) < 0.5
    out = model.apply(v, jnp.asarray(x), mask=jnp.asarray(mask))
    patches = x.reshape(1, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 16, 48)
    emb = patches @ p["patch_embed"]["proj"]["kernel"].reshape(48, 32) + p["patch_embed"]["proj"]["bias"]
    emb = np.where(mask[..., None], p["mask_token"][None], emb) + p["pos_embed"][:, 1:]
    mu, var = emb.mean(-1, keepdims=True), emb.var(-1, keepdims=True)
    want = (emb - mu) / np.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
    np.testing.assert_allclose(out["patch_tokens"], want, atol=2e-5)
    assert p["register_tokens"].shape == (1, 2, 32) and out["patch_tokens"].shape == (1, 16, 32)


def test_key_table_covers_the_tree():
    for kw in (dict(num_register_tokens=0), dict(num_register_tokens=4, layerscale_init=None)):
        model = VisionTransformer(**{**TINY, **kw})
        flat = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
        table = vit_entries(model, "original")  # DINOv2's keys
        assert sorted(e.flax_path for e in table) == sorted(flat)
        keys = {e.torch_key: e for e in table}
        assert len(keys) == len(table)
        assert ("register_tokens" in keys) == bool(kw["num_register_tokens"])
        timm = {e.torch_key: e for e in vit_entries(model)}  # timm's: reg_token, no mask_token
        assert sorted(e.flax_path for e in timm.values()) == sorted(flat) and timm["mask_token"].optional
        assert set(timm) - set(keys) == ({"reg_token"} if kw["num_register_tokens"] else set())
        assert ("blocks.1.ls2.gamma" in keys) == (model.layerscale_init is not None)
        assert keys["blocks.0.attn.qkv.weight"].transform == "linear"
        assert keys["patch_embed.proj.weight"].transform == "conv"
        assert flat[("params", "patch_embed", "proj", "kernel")].shape == (4, 4, 3, 32)
        assert flat[("params", "mask_token")].shape == (1, 32)
    assert vit("vit_base_patch14").num_features == 768 and vit("vit_large_patch14").depth == 24
    base16 = vit("vit_base_patch16")  # timm vit_base_patch16_224: no LayerScale, patch 16
    assert (base16.patch_size, base16.embed_dim, base16.depth, base16.num_heads,
            base16.layerscale_init) == (16, 768, 12, 12, None)
    assert vit("vit_tiny_patch16").layerscale_init is None and set(VIT_CONFIGS) >= {"vit_small_patch14"}
    with pytest.raises(ValueError, match="unknown ViT 'vit_huge'"):
        vit("vit_huge")


def test_bf16_remat_and_drop_path():
    model = VisionTransformer(**TINY, dtype=jnp.bfloat16, remat=True, drop_path_rate=0.5)
    variables = _init(model)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    params = _perturbed(variables)["params"]
    x = _images(4, 16, 3)

    @jax.jit
    def run(params, rng):
        ref = VisionTransformer(**TINY).apply({"params": params}, x)["embedding"]
        out = model.apply({"params": params}, x)["embedding"]
        loss = lambda p: jnp.sum(model.apply({"params": p}, x, stochastic=True, rngs={"dropout": rng})[
            "embedding"].astype(jnp.float32) ** 2)
        return ref, out, jax.value_and_grad(loss)(params)

    ref, out, (loss_a, grads) = run(params, jax.random.key(1))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1, rtol=0.05)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    _, _, (loss_b, _) = run(params, jax.random.key(2))
    assert np.isfinite(loss_a) and loss_a != loss_b  # drop path depends on the "dropout" rng


def test_resample_pos_embed_matches_timm():
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed
    pos = np.random.default_rng(0).normal(size=(1, 1 + 37 * 37, 24)).astype(np.float32)
    ours = resample_pos_embed(pos, (16, 16))
    ref = resample_abs_pos_embed(torch.from_numpy(pos), [16, 16], num_prefix_tokens=1).numpy()
    assert ours.shape == (1, 257, 24) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_array_equal(ours[:, 0], pos[:, 0])
    up = resample_pos_embed(pos[:, :17], (6, 6))  # 4x4 → 6x6
    np.testing.assert_allclose(up, resample_abs_pos_embed(torch.from_numpy(pos[:, :17]), [6, 6]).numpy(),
                               atol=1e-5)
    assert resample_pos_embed(pos, (37, 37)) is pos
    with pytest.raises(ValueError, match="square grid"):
        resample_pos_embed(pos[:, :20], (4, 4))
    # without antialiasing: PyTorch's plain bicubic (a=-0.75, clamped border), DINOv2's default
    table = torch.from_numpy(pos[:, 1:].reshape(1, 37, 37, 24)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(table, size=(16, 16), mode="bicubic", antialias=False)
    np.testing.assert_allclose(resample_pos_embed(pos, (16, 16), antialias=False)[0, 1:],
                               ref.permute(0, 2, 3, 1).reshape(256, 24).numpy(), atol=1e-5)


def test_adapt_input_channels_matches_timm():
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.models._manipulate import adapt_input_conv
    w = np.random.default_rng(0).normal(size=(8, 3, 14, 14)).astype(np.float32)
    for c in (13, 2, 1, 3):
        ours = adapt_input_channels(w, c)
        ref = adapt_input_conv(c, torch.from_numpy(w.copy())).numpy()
        assert ours.shape == (8, c, 14, 14)
        np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert adapt_input_channels(w, 13, "reinit") is None
    with pytest.raises(ValueError, match="expected mode in"):
        adapt_input_channels(w, 13, "zeros")
    sd = {"head.weight": 1, "fc.bias": 2, "blocks.0.norm1.weight": 3}
    assert drop_keys(sd, ("head.", "fc.")) == {"blocks.0.norm1.weight": 3}


def test_drop_path_linear_or_uniform():
    """Linear (timm / DINOv2): block 0 never drops; uniform (PerA): every block at the rate."""
    assert np.allclose(VisionTransformer(**TINY, drop_path_rate=0.3).drop_path_rates(), [0.0, 0.3])
    assert np.allclose(VisionTransformer(**TINY, drop_path_rate=0.3, drop_path_uniform=True)
                       .drop_path_rates(), [0.3, 0.3])
    one = {**TINY, "depth": 1, "drop_path_rate": 0.5}
    params = _perturbed(_init(VisionTransformer(**one)))["params"]
    x = _images(8, 16, 3)

    @jax.jit
    def changed_rows(params):  # (B,) per rule: does the stochastic embedding differ?
        rows = []
        for uniform in (False, True):
            model = VisionTransformer(**one, drop_path_uniform=uniform)
            ref = model.apply({"params": params}, x)["embedding"]
            out = model.apply({"params": params}, x, stochastic=True,
                              rngs={"dropout": jax.random.key(3)})["embedding"]
            rows.append(jnp.abs(out - ref).max(axis=1) > 1e-5)
        return rows

    linear, uniform = changed_rows(params)
    assert not np.asarray(linear).any()
    assert np.asarray(uniform).all()  # each branch is dropped or rescaled by 1 / (1 - 0.5)


def _block_branches(params, hidden):
    """The two residual branches of a layers.Block (LayerScale included) as plain functions."""
    from geossl.models.layers import LN_EPS, Attention, Mlp
    from flax import linen as nn

    def attn(z):
        y = nn.LayerNorm(LN_EPS).apply({"params": params["norm1"]}, z)
        return Attention(2, True).apply({"params": params["attn"]}, y) * params["ls1"]["gamma"]

    def mlp(z):
        y = nn.LayerNorm(LN_EPS).apply({"params": params["norm2"]}, z)
        return Mlp(hidden).apply({"params": params["mlp"]}, y) * params["ls2"]["gamma"]
    return jax.jit(attn), jax.jit(mlp)


@pytest.mark.parametrize("batch,rate", [(10, 0.3), (3, 0.5), (2, 0.9)])
def test_subset_drop_path_is_dinov2s_drop_add_residual(batch, rate):
    """drop_path_subset above 0.1 (DINOv2's drop_add_residual_stochastic_depth, PerA's blocks):
    each branch adds its value to exactly max(int(B·(1−r)), 1) samples, scaled by B / that count;
    every output row is one of the four outcomes of its own sample alone."""
    from geossl.models.layers import Block
    rng = np.random.default_rng(batch)
    x = jnp.asarray(rng.normal(size=(batch, 5, 8)), jnp.float32)
    block = Block(num_heads=2, layerscale_init=0.7, drop_path=rate, stochastic=True,
                  drop_path_subset=True)
    params = block.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)["params"]
    attn, mlp = _block_branches(params, 32)
    count = max(int(batch * (1 - rate)), 1)
    scale = batch / count
    apply = jax.jit(lambda seed: block.apply({"params": params}, x,
                                             rngs={"dropout": jax.random.key(seed)}))
    outcomes = []   # (a, m) → every row's value when its attention / MLP branch is added or not
    for a in (0, 1):
        h = x + a * scale * attn(x)
        outcomes += [((a, m), np.asarray(h + m * scale * mlp(h))) for m in (0, 1)]
    chosen = []
    for seed in range(3):
        out = np.asarray(apply(seed))
        picks = []
        for i in range(batch):
            found = [pick for pick, value in outcomes
                     if np.allclose(out[i], value[i], atol=1e-5)]
            assert len(found) == 1, (i, found)
            picks.append(found[0])
        attn_rows, mlp_rows = (sum(p[j] for p in picks) for j in (0, 1))
        assert attn_rows == count and mlp_rows == count, picks
        chosen.append(tuple(picks))
    assert count == batch or len(set(chosen)) > 1   # drawn afresh with each key


def test_subset_drop_path_saves_its_share_of_the_blocks_work():
    """A ViT with drop_path_subset runs each block on 70% of a batch of 20 at rate 0.3 (XLA's
    FLOP count), and at rate 0.1 (DINOv2: per sample there) on all of it."""
    x = _images(20, 16, 3)

    def flops(**kw):
        model = VisionTransformer(**{**TINY, "depth": 1}, drop_path_uniform=True, **kw)
        params = _init(model)["params"]
        f = jax.jit(lambda p: model.apply({"params": p}, x, stochastic=True,
                                          rngs={"dropout": jax.random.key(0)})["embedding"])
        return f.lower(params).compile().cost_analysis()["flops"]

    full = flops(drop_path_rate=0.3)
    subset = flops(drop_path_rate=0.3, drop_path_subset=True)
    assert 0.65 < subset / full < 0.8, (subset, full)
    assert flops(drop_path_rate=0.1, drop_path_subset=True) == pytest.approx(
        flops(drop_path_rate=0.1), rel=1e-3)
