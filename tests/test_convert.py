"""PyTorch interchange: torchvision/timm parity, exact round trips, strict errors, adapters, IO, CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import convert, models
from geossl.convert import ConversionError
from geossl.convert.lib import io
from torch_refs import torch_resnet


def _torch_resnet(name: str, in_chans: int, seed: int = 0):
    """torchvision ``name`` with a ``in_chans`` conv1 (fc kept), random BN, in eval mode."""
    return torch_resnet(name, in_chans, seed).eval()


def _torch_forward(net, x):
    import torch
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _np_sd(net) -> dict:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _assert_same_tree(a, b):
    fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


def test_resnet50_13_bands_both_directions():
    torch = pytest.importorskip("torch")
    net = _torch_resnet("resnet50", 13)
    sd = _np_sd(net)  # with fc.weight / fc.bias: dropped by default
    net.fc = torch.nn.Identity()
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 13)).astype(np.float32)
    model = models.create("resnet50", in_chans=13)
    apply = jax.jit(model.apply)

    variables = convert.from_torch(sd, "resnet50")  # in_chans from the checkpoint
    np.testing.assert_allclose(apply(variables, x)["embedding"], _torch_forward(net, x), atol=1e-4, rtol=1e-4)

    # round trips are bit-exact, num_batches_tracked an int64 scalar
    back = convert.to_torch(variables, "resnet50")
    assert set(back) == {k for k in sd if not k.startswith("fc.")}
    for k, v in back.items():
        assert v.dtype == sd[k].dtype and v.shape == sd[k].shape and np.array_equal(v, sd[k]), k
    assert back["layer3.5.bn2.num_batches_tracked"].dtype == np.int64
    assert back["layer3.5.bn2.num_batches_tracked"].shape == ()
    _assert_same_tree(convert.from_torch(back, "resnet50"), variables)

    # geossl -> torch: other weights and statistics, loaded strictly into torchvision
    rng = np.random.default_rng(1)
    changed = jax.tree_util.tree_map(
        lambda a: (a * rng.uniform(0.9, 1.1, a.shape)).astype(a.dtype), variables)
    fresh = _torch_resnet("resnet50", 13, seed=5)
    fresh.fc = torch.nn.Identity()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in convert.to_torch(changed, "resnet50").items()},
                          strict=True)
    np.testing.assert_allclose(apply(changed, x)["embedding"], _torch_forward(fresh, x), atol=1e-4, rtol=1e-4)


def test_timm_resnet18_keys_and_forward():
    timm = pytest.importorskip("timm")
    import torch
    torch.manual_seed(0)
    net = timm.create_model("resnet18", in_chans=4, num_classes=0).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.5, 0.5)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 4)).astype(np.float32)
    variables = convert.from_torch(net.state_dict(), "resnet18")
    out = jax.jit(models.create("resnet18", in_chans=4).apply)(variables, x)
    np.testing.assert_allclose(out["embedding"], _torch_forward(net, x), atol=1e-4, rtol=1e-4)


def test_strict_lists_every_problem_and_non_strict_reports():
    sd = _np_sd(_torch_resnet("resnet18", 3))
    del sd["layer1.0.conv1.weight"], sd["layer4.1.bn2.bias"]
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    sd["bn1.running_mean"] = np.zeros((65,), np.float32)
    with pytest.raises(ConversionError) as info:
        convert.from_torch(sd, "resnet18")
    msg, report = str(info.value), info.value.report
    for needle in ["missing: layer1.0.conv1.weight (expected [64, 64, 3, 3])", "missing: layer4.1.bn2.bias",
                   "unexpected: layer5.0.conv1.weight (found [1, 1, 1, 1])",
                   "wrong shape: bn1.running_mean: expected [64], found [65]", "dropped 2 keys: fc.weight"]:
        assert needle in msg, msg
    assert len(report.missing) == 2 and len(report.unexpected) == 1 and len(report.mismatched) == 1

    variables, report = convert.from_torch(sd, "resnet18", strict=False, return_report=True)
    assert "conv1" not in variables["params"]["layer1_0"] and "mean" not in variables["batch_stats"]["bn1"]
    assert variables["params"]["layer1_0"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
    table = convert.entries(models.create("resnet18"), "resnet18")
    assert not report.ok and len(report.matched) == sum(e.flax_path is not None for e in table) - 3

    with pytest.raises(ConversionError, match=r"missing: params/layer4_1/bn2/bias \(for layer4.1.bn2.bias\)"):
        v = convert.from_torch(_np_sd(_torch_resnet("resnet18", 3)), "resnet18")
        del v["params"]["layer4_1"]["bn2"]["bias"]
        convert.to_torch(v, "resnet18")
    with pytest.raises(ValueError, match="first_layer: expected one of"):
        convert.from_torch(sd, "resnet18", first_layer="zeros")


def test_first_layer_channel_adapters():
    src = _np_sd(_torch_resnet("resnet18", 3))
    with pytest.raises(ConversionError, match=r'(?s)conv1.weight: expected \[64, 6, 7, 7\], found \[64, 3, 7, 7\].*first_layer="reinit"'):
        convert.from_torch(src, "resnet18", in_chans=6)

    v, report = convert.from_torch(src, "resnet18", in_chans=6, first_layer="reinit", rng=7, return_report=True)
    model = models.create("resnet18", in_chans=6)
    fresh = jax.jit(model.init)(jax.random.key(7), jnp.zeros((1, 32, 32, 6)))
    np.testing.assert_array_equal(v["params"]["conv1"]["kernel"], fresh["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(v["params"]["bn1"]["scale"], src["bn1.weight"])
    assert any("freshly initialised" in a for a in report.adapted)
    again = convert.from_torch(src, "resnet18", in_chans=6, first_layer="reinit",
                               rng=np.random.default_rng(0))["params"]["conv1"]["kernel"]
    assert again.shape == (7, 7, 6, 64)

    pytest.importorskip("geossl.convert.lib.adapters")
    v = convert.from_torch(src, "resnet18", in_chans=6, first_layer="repeat")
    w6, w3 = convert.to_torch(v, "resnet18")["conv1.weight"], src["conv1.weight"]
    assert w6.shape == (64, 6, 7, 7)
    np.testing.assert_allclose(w6.sum(1), w3.sum(1), atol=1e-5)  # repeat and scale by 3/C


def test_io_safetensors_and_pth(tmp_path):
    torch = pytest.importorskip("torch")
    net = _torch_resnet("resnet18", 2)
    sd = convert.to_torch(convert.from_torch(_np_sd(net), "resnet18"), "resnet18")
    for name in ["model.safetensors", "model.pth"]:
        path = str(tmp_path / name)
        io.save_state_dict(sd, path)
        loaded = io.load_state_dict(path)
        assert set(loaded) == set(sd)
        for k in sd:
            assert loaded[k].dtype == sd[k].dtype and np.array_equal(loaded[k], sd[k]), (name, k)
    assert sorted(os.listdir(tmp_path)) == ["model.pth", "model.safetensors"]  # no temp files left
    net.fc = torch.nn.Identity()
    net.load_state_dict(torch.load(str(tmp_path / "model.pth"), weights_only=True), strict=True)

    # containers and prefixes
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"state_dict": {"module.a.weight": w}, "epoch": 3}, tmp_path / "ddp.pth")
    assert list(io.load_state_dict(str(tmp_path / "ddp.pth"))) == ["a.weight"]
    torch.save({"teacher": {"backbone.a.weight": w, "head.b": w}, "student": {}}, tmp_path / "dino.pth")
    assert sorted(io.load_state_dict(str(tmp_path / "dino.pth"))) == ["a.weight", "head.b"]
    assert list(io.load_state_dict(str(tmp_path / "ddp.pth"), strip_prefixes=())) == ["module.a.weight"]
    torch.save({"weights": {"a": w}, "epoch": 1}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="no known container"):
        io.load_state_dict(str(tmp_path / "odd.pth"))
    assert list(io.load_state_dict(str(tmp_path / "odd.pth"), key="weights")) == ["a"]
    with pytest.raises(ValueError, match="expected a .safetensors"):
        io.save_state_dict(sd, str(tmp_path / "model.npz"))

    bf = {"x": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)}
    io.save_state_dict(bf, str(tmp_path / "bf.pth"))
    x = io.load_state_dict(str(tmp_path / "bf.pth"))["x"]
    assert x.dtype.name == "bfloat16" and x.astype(np.float32).tolist() == [1.5, -2.25]


def test_cli_import_then_export(tmp_path):
    torch = pytest.importorskip("torch")
    from geossl.cli.convert import build_parser, main

    args = build_parser().parse_args(["import", "--arch", "resnet18", "--input", "a.pth", "--output", "d",
                                      "--in_chans", "13", "--first_layer", "repeat"])
    assert (args.in_chans, args.first_layer, args.img_size, args.drop_prefixes) == (13, "repeat", None,
                                                                                   ["head.", "fc."])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["import", "--arch", "resnet18", "--input", "a.pth", "--output", "d",
                                   "--first_layer", "zeros"])

    net = _torch_resnet("resnet18", 2)
    torch.save({"model": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "in.pth")
    workdir, out = str(tmp_path / "wd"), str(tmp_path / "out.safetensors")
    assert main(["import", "--arch", "resnet18", "--input", str(tmp_path / "in.pth"), "--output", workdir]) == 0
    assert main(["export", "--workdir", workdir, "--output", out]) == 0
    back, sd = io.load_state_dict(out), _np_sd(net)
    assert set(back) == {k for k in sd if not k.startswith("fc.")}
    for k in back:
        assert np.array_equal(back[k], sd[k]), k


# ----- ViT (needs geossl.models.vit and geossl.convert.lib.vit_keys) ---------------------------------
def _timm_dinov2_small(img_size: int):
    timm = pytest.importorskip("timm")
    pytest.importorskip("geossl.models.vit")
    pytest.importorskip("geossl.convert.lib.vit_keys")
    import torch
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_dinov2", img_size=img_size, num_classes=0).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):  # LayerScale starts at 1e-5: make the blocks matter
                p.uniform_(0.5, 1.5)
            elif name in ("cls_token", "pos_embed"):
                p.normal_(0.0, 0.5)
    return net


def test_vit_timm_dinov2_parity_and_round_trip():
    net = _timm_dinov2_small(56)
    sd = _np_sd(net)
    assert "mask_token" not in sd
    variables, report = convert.from_torch(sd, "vit_small_patch14", return_report=True)
    assert any(a.startswith("mask_token") for a in report.adapted)
    assert not np.any(variables["params"]["mask_token"])
    x = np.random.default_rng(3).normal(size=(2, 56, 56, 3)).astype(np.float32)
    out = jax.jit(models.create("vit_small_patch14", img_size=56).apply)(variables, x)
    np.testing.assert_allclose(out["embedding"], _torch_forward(net, x), atol=1e-4, rtol=1e-4)

    back = convert.to_torch(variables, "vit_small_patch14")  # timm's layout: no mask_token
    assert set(back) == set(sd)
    for k in sd:
        assert np.array_equal(back[k], sd[k]), k
    _assert_same_tree(convert.from_torch(back, "vit_small_patch14"), variables)
    original = convert.to_torch(variables, "vit_small_patch14", layout="original")
    assert set(original) == set(sd) | {"mask_token"}
    _assert_same_tree(convert.from_torch(original, "vit_small_patch14"), variables)
    no_cls = {k: v for k, v in sd.items() if k != "cls_token"}
    with pytest.raises(ConversionError, match="missing: cls_token"):
        convert.from_torch(no_cls, "vit_small_patch14")
    assert not convert.from_torch(no_cls, "vit_small_patch14", allow_missing=("cls_token",))[
        "params"]["cls_token"].any()


def test_vit_pos_embed_resampled_and_channels_adapted(tmp_path):
    sd = _np_sd(_timm_dinov2_small(518))
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    v, report = convert.from_torch(sd, "vit_small_patch14", img_size=56, in_chans=13,
                                   first_layer="reinit", rng=0, return_report=True)
    assert v["params"]["pos_embed"].shape == (1, 1 + 4 * 4, 384)
    np.testing.assert_array_equal(v["params"]["pos_embed"][:, 0], sd["pos_embed"][:, 0])  # CLS kept
    assert v["params"]["patch_embed"]["proj"]["kernel"].shape == (14, 14, 13, 384)
    assert any("37x37" in a and "4x4" in a for a in report.adapted)
    assert convert.resolve_model_kwargs(sd, "vit_small_patch14")["img_size"] == 518

    # the same through the command line: a 13-band 56 px backbone workdir, exported again
    from geossl.cli.convert import main
    io.save_state_dict(sd, str(tmp_path / "dinov2.safetensors"))
    workdir, out = str(tmp_path / "wd"), str(tmp_path / "out.safetensors")
    main(["import", "--arch", "vit_small_patch14", "--input", str(tmp_path / "dinov2.safetensors"),
          "--output", workdir, "--img_size", "56", "--in_chans", "13", "--first_layer", "repeat"])
    main(["export", "--workdir", workdir, "--output", out])
    back = io.load_state_dict(out)
    assert back["pos_embed"].shape == (1, 17, 384) and back["patch_embed.proj.weight"].shape == (384, 13, 14, 14)
    assert "mask_token" not in back and np.array_equal(back["blocks.11.ls2.gamma"], sd["blocks.11.ls2.gamma"])


# ----- exports timm loads, geossl exports read back, hints ---------------------------------------
def _random_vit(arch: str, seed: int = 0, **kw):
    """(model, variables): every parameter random (zero tokens and 1e-5 LayerScale hide bugs)."""
    model = models.create(arch, **kw)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, kw["img_size"], kw["img_size"], kw["in_chans"])))
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape) + (len(a.shape) == 1))
                             .astype(np.float32), shapes)
    return model, variables


def _config(bands):
    import ml_collections
    return ml_collections.ConfigDict({"data": {"bands": list(bands), "norm": "softcon"}})


@pytest.mark.parametrize("arch,kw", [
    ("vit_tiny_patch16", dict(img_size=32, in_chans=5, depth=2, embed_dim=32, num_heads=2,
                              patch_size=8)),  # no LayerScale (PerA's vit_base_patch16: test_pera)
    ("vit_small_patch14", dict(img_size=28, in_chans=4, depth=1, embed_dim=48, num_heads=2,
                               num_register_tokens=2)),  # DINOv2: LayerScale, registers
])
def test_export_loads_strictly_into_the_timm_model_its_metadata_names(tmp_path, arch, kw):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    import json
    model, variables = _random_vit(arch, **kw)
    path = str(tmp_path / "model.safetensors")
    written = convert.export_backbone(variables, arch, kw, path, _config(range(kw["in_chans"])))
    assert "mask_token" not in written
    meta = convert.read_metadata(path)
    kwargs = json.loads(meta["timm_kwargs"])
    assert (meta["timm_model"], kwargs["img_size"], kwargs["in_chans"], kwargs["num_classes"]) == (
        {"vit_tiny_patch16": "vit_tiny_patch16_224",
         "vit_small_patch14": "vit_small_patch14_reg4_dinov2"}[arch], kw["img_size"], kw["in_chans"], 0)
    net = timm.create_model(meta["timm_model"], **kwargs).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in io.load_state_dict(path).items()},
                        strict=True)
    x = np.random.default_rng(1).normal(size=(2, kw["img_size"], kw["img_size"], kw["in_chans"]))
    x = x.astype(np.float32)
    ours = np.asarray(jax.jit(model.apply)(variables, x)["embedding"])
    np.testing.assert_allclose(ours, _torch_forward(net, x), rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    # read back: the same model (with registers, the class position comes back inside cls_token)
    back = convert.from_torch(io.load_state_dict(path), arch, **kw)
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(back, x)["embedding"]), ours,
                               rtol=1e-6, atol=1e-6)
    original = convert.to_torch(variables, arch, layout="original", **kw)
    assert "mask_token" in original and convert.timm_model(arch, layout="original", **kw) is None


def test_cli_import_reads_a_geossl_export(tmp_path, capsys):
    """A demo-like export (depth 2, patch 4: not the name's defaults) comes back through the
    command line without --arch, from its metadata; a wrong --arch is refused by name."""
    from geossl.cli.convert import main
    from geossl.train.checkpoint import load_backbone
    kw = dict(img_size=16, in_chans=13, patch_size=4, depth=2, embed_dim=32, num_heads=2)
    _, variables = _random_vit("vit_tiny_patch16", **kw)
    path = str(tmp_path / "demo.safetensors")
    convert.export_backbone(variables, "vit_tiny_patch16", kw, path, _config(range(13)))
    workdir = str(tmp_path / "wd")
    assert main(["import", "--input", path, "--output", workdir]) == 0
    arch, back = load_backbone(workdir)
    assert arch == "vit_tiny_patch16" and not back["params"]["mask_token"].any()
    variables["params"]["mask_token"] = back["params"]["mask_token"]  # left out of the export
    _assert_same_tree(back, variables)
    assert main(["export", "--workdir", workdir, "--output", str(tmp_path / "again.safetensors")]) == 0
    assert convert.read_metadata(str(tmp_path / "again.safetensors"))["timm_kwargs"] == \
        convert.read_metadata(path)["timm_kwargs"]

    assert main(["import", "--arch", "resnet18", "--input", path, "--output", workdir]) == 1
    assert "geossl export of vit_tiny_patch16" in capsys.readouterr().err
    io.save_state_dict(io.load_state_dict(path), str(tmp_path / "plain.safetensors"))  # no metadata
    assert main(["import", "--input", str(tmp_path / "plain.safetensors"), "--output", workdir]) == 1
    assert "--arch is needed" in capsys.readouterr().err


def _hint_lines(sd, arch, **kw) -> list[str]:
    with pytest.raises(ConversionError) as info:
        convert.from_torch(sd, arch, **kw)
    return [line for line in str(info.value).splitlines() if line.startswith("hint:")]


def test_mismatch_hints_name_the_cause():
    small = dict(embed_dim=32, num_heads=2, img_size=16)
    _, v = _random_vit("vit_tiny_patch16", in_chans=3, patch_size=4, depth=2, **small)
    sd = convert.to_torch(v, "vit_tiny_patch16", patch_size=4, depth=2, **small)
    patch = _hint_lines(sd, "vit_tiny_patch16", patch_size=8, depth=2, **small)  # 16 → 4 tokens
    assert len(patch) == 1 and "patch size is 4x4" in patch[0] and "patch_size=4" in patch[0], patch
    channels = _hint_lines(sd, "vit_tiny_patch16", patch_size=4, depth=2, in_chans=13, **small)
    assert len(channels) == 1 and "3 input channels, the model 13" in channels[0], channels
    depth = _hint_lines(sd, "vit_tiny_patch16", patch_size=4, depth=3, **small)
    assert depth == ["hint: the checkpoint has 2 blocks, the model 3: pass depth=2"], depth
    wide = _hint_lines(sd, "vit_tiny_patch16", patch_size=4, depth=2, embed_dim=64, num_heads=2,
                       img_size=16)
    assert any("32 outputs, the model's 64" in h for h in wide) and not any("channels" in h for h in wide)
    # LayerScale both ways: named, not "drop them with drop_prefixes=" (that gives another model)
    scaled = _hint_lines(sd, "vit_tiny_patch16", patch_size=4, depth=2, layerscale_init=1e-5, **small)
    assert scaled == ["hint: the model has LayerScale (ls1, ls2), the checkpoint none: pass "
                      "layerscale_init=None"], scaled
    _, v2 = _random_vit("vit_tiny_patch16", in_chans=3, patch_size=4, depth=2, layerscale_init=0.1,
                        **small)
    sd2 = convert.to_torch(v2, "vit_tiny_patch16", patch_size=4, depth=2, layerscale_init=0.1, **small)
    assert _hint_lines(sd2, "vit_tiny_patch16", patch_size=4, depth=2, **small) == [
        "hint: the checkpoint's blocks have LayerScale (ls1, ls2): pass layerscale_init= (any "
        "value: the weights are read)"]


def test_resnet_mismatch_hints_name_stage_sizes_and_block():
    def sd_of(arch, **kw):
        model = models.create(arch, in_chans=3, **kw)
        abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        return convert.to_torch(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract), arch,
                                **kw)
    deeper = _hint_lines(sd_of("resnet34"), "resnet18")
    assert deeper == ["hint: the checkpoint has [3, 4, 6, 3] blocks per stage, the model "
                      "[2, 2, 2, 2]: pass stage_sizes=(3, 4, 6, 3) (or the ResNet of that depth)"]
    kind = _hint_lines(sd_of("resnet18"), "resnet50")
    assert kind == ["hint: the checkpoint has [2, 2, 2, 2] blocks per stage, the model "
                    "[3, 4, 6, 3]: pass stage_sizes=(2, 2, 2, 2) (or the ResNet of that depth)",
                    "hint: the checkpoint has basic blocks, the model bottleneck: pass "
                    "block='basic' (or a ResNet of that kind: resnet50 / resnet18)"], kind


@pytest.mark.parametrize("arch,kw,timm_name", [
    ("resnet18", dict(in_chans=4), "resnet18"),
    ("resnet18", dict(in_chans=2, stage_sizes=(1, 1, 1, 1)), "resnet18"),
    ("resnet18", dict(in_chans=3, block="bottleneck"), "resnet50"),
    ("resnet50", dict(in_chans=13, stage_sizes=(3, 4, 23, 3)), "resnet50"),
    ("resnet34", dict(in_chans=3, stage_sizes=(1, 2, 1, 1)), "resnet18"),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, in_chans=3, embed_dim=16, depths=(2, 2),
                                          num_heads=(1, 2), window_size=4),
     "swin_tiny_patch4_window7_224"),
])
def test_timm_model_of_swin_and_resnet_exports_loads_strictly(arch, kw, timm_name):
    """Keys and shapes only (a meta-device timm model): every export names a timm model, a ResNet
    of other stage sizes or block the timm ResNet of that block with its ``layers``."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = models.create(arch, **kw)
    size = kw.get("img_size", 32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, kw["in_chans"])))
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    sd = convert.to_torch(variables, arch, **kw)
    name, kwargs = convert.timm_model(arch, **kw)
    assert name == timm_name and kwargs["num_classes"] == 0 and kwargs["in_chans"] == kw["in_chans"]
    with torch.device("meta"):
        net = timm.create_model(name, **kwargs)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True, assign=True)


def test_timm_model_is_none_for_a_resnet_timm_cannot_build():
    """timm's plain stem has 64 channels and its forward runs layer1 to layer4."""
    assert convert.timm_model("resnet18", width=32) is None
    assert convert.timm_model("resnet50", stage_sizes=(3, 4, 6)) is None
