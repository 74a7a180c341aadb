"""PyTorch interchange, audit fixes: register-token sizes, recorded bands and norm, unreadable
files, no qkv bias, DOFA without cls_token, an import that would overwrite a workdir."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from geossl import convert, models
from geossl.cli.convert import main
from geossl.convert import ConversionError, UnreadableFileError
from geossl.convert.lib import io
from geossl.data.bands import S2_L1C


def _randomize(net, seed: int = 0):
    """Every timm parameter random (zero biases, unit norms and 1e-5 LayerScale hide bugs)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in net.named_parameters():
            scale = 0.3 / (p[0].numel() ** 0.5 if p.ndim > 1 else 1.0)
            p.copy_(scale * torch.randn(p.shape, generator=generator) + (p.ndim == 1))
    return net.eval()


def _np_sd(net) -> dict:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _torch_forward(net, x):
    import torch
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _images(size: int, chans: int, seed: int = 1):
    return np.random.default_rng(seed).normal(size=(2, size, size, chans)).astype(np.float32)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ----- 1. register-token checkpoints in timm's layout: img_size from pos_embed without class row --
def test_resolve_model_kwargs_reads_img_size_of_timm_register_checkpoints():
    hub = {"reg_token": np.zeros((1, 4, 384), np.float32),
           "pos_embed": np.zeros((1, 37 * 37, 384), np.float32),  # timm's reg4 DINOv2: 518 px
           "patch_embed.proj.weight": np.zeros((384, 3, 14, 14), np.float32)}
    kw = convert.resolve_model_kwargs(hub, "vit_small_patch14")
    assert (kw["img_size"], kw["num_register_tokens"], kw["in_chans"]) == (518, 4, 3)
    with_class_row = {**hub, "pos_embed": np.zeros((1, 1 + 37 * 37, 384), np.float32)}
    assert convert.resolve_model_kwargs(with_class_row, "vit_small_patch14")["img_size"] == 518
    no_registers = {k: v for k, v in hub.items() if k != "reg_token"}  # 1369 = 1 + 1368: no grid
    assert "img_size" not in convert.resolve_model_kwargs(no_registers, "vit_small_patch14")


def test_a_non_square_register_export_asks_for_its_img_size():
    """timm's register table of a 2×4 grid has 8 rows, with the class row put back 9 = 3²: the size
    is read from the table as timm wrote it (no square), so the error asks for img_size."""
    kw = dict(img_size=(28, 56), depth=1, embed_dim=32, num_heads=2, num_register_tokens=2)
    model = models.create("vit_small_patch14", **kw)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 56, 3)))
    variables = jax.tree.map(lambda a: np.random.default_rng(a.size).normal(size=a.shape)
                             .astype(a.dtype), shapes)
    sd = convert.to_torch(variables, "vit_small_patch14", **kw)
    assert sd["pos_embed"].shape == (1, 8, 32)
    small = dict(depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(ConversionError, match=r"hint: pos_embed covers 8 patches, not a square "
                                              r"grid: pass the checkpoint's img_size=\(H, W\)"):
        convert.from_torch(sd, "vit_small_patch14", **small)
    back = convert.from_torch(sd, "vit_small_patch14", img_size=(28, 56), **small)
    assert np.array_equal(back["params"]["pos_embed"][:, 1:], variables["params"]["pos_embed"][:, 1:])


def test_cli_import_of_timm_register_checkpoint_exports_what_timm_loads(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    net = _randomize(timm.create_model("vit_small_patch14_reg4_dinov2", img_size=42, num_classes=0))
    assert tuple(net.pos_embed.shape) == (1, 9, 384)
    torch.save(net.state_dict(), tmp_path / "reg4.pth")
    workdir, out = str(tmp_path / "wd"), str(tmp_path / "back.safetensors")
    assert main(["import", "--arch", "vit_small_patch14", "--input", str(tmp_path / "reg4.pth"),
                 "--output", workdir]) == 0
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["model"]["img_size"], config["model"]["num_register_tokens"]) == (42, 4)
    assert main(["export", "--workdir", workdir, "--output", out]) == 0
    meta = convert.read_metadata(out)
    kwargs = json.loads(meta["timm_kwargs"])
    assert (meta["timm_model"], kwargs["img_size"]) == ("vit_small_patch14_reg4_dinov2", 42)
    back = timm.create_model(meta["timm_model"], **kwargs).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in io.load_state_dict(out).items()},
                         strict=True)
    x = _images(42, 3)
    ref = _torch_forward(net, x)
    np.testing.assert_allclose(_torch_forward(back, x), ref, atol=1e-4 * np.abs(ref).max())


# ----- 2. an export's bands and norm survive import → export ----------------------------------
@pytest.mark.parametrize("in_chans,bands", [(2, ["VH", "VV"]), (13, list(reversed(S2_L1C)))])
def test_cli_import_keeps_the_bands_and_norm_an_export_records(tmp_path, in_chans, bands):
    from geossl.train.checkpoint import DEFAULT_BANDS
    assert list(DEFAULT_BANDS[in_chans]) != bands  # not what a plain import would record
    model = models.create("resnet18", in_chans=in_chans)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, in_chans)))
    config = ml_collections.ConfigDict({"data": {"bands": bands, "norm": "meanstd"}})
    src, out = str(tmp_path / "src.safetensors"), str(tmp_path / "again.safetensors")
    convert.export_backbone(variables, "resnet18", {"in_chans": in_chans}, src, config)
    workdir = str(tmp_path / "wd")
    assert main(["import", "--input", src, "--output", workdir]) == 0
    data = json.load(open(os.path.join(workdir, "config.json")))["data"]
    assert data == {"bands": bands, "norm": "meanstd"}
    assert main(["export", "--workdir", workdir, "--output", out]) == 0
    before, after = convert.read_metadata(src), convert.read_metadata(out)
    assert json.loads(after["geossl.bands"]) == bands and after["geossl.norm"] == "meanstd"
    assert before == after

    # another channel count: the recorded bands no longer fit, the defaults of the new count apply
    adapted = str(tmp_path / "adapted")
    assert main(["import", "--input", src, "--output", adapted, "--in_chans", "3",
                 "--first_layer", "repeat"]) == 0
    data = json.load(open(os.path.join(adapted, "config.json")))["data"]
    assert data == {"bands": list(DEFAULT_BANDS[3])}


# ----- 3. DOFA on a checkpoint without cls_token ---------------------------------------------
def test_dofa_from_torch_without_cls_token_is_a_conversion_error():
    torchvision = pytest.importorskip("torchvision")
    resnet = _np_sd(torchvision.models.resnet18(weights=None))
    with pytest.raises(ConversionError) as info:
        convert.from_torch(resnet, "dofa_small_patch16_224")
    message = str(info.value)
    assert "missing: cls_token (expected [1, 1, 384])" in message
    assert "not a DOFA checkpoint" in message and "found conv1.weight" in message

    kw = dict(img_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    model = models.create("dofa_small_patch16_224", **kw)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    sd = convert.to_torch(variables, "dofa_small_patch16_224", **kw)
    no_cls = {k: v for k, v in sd.items() if k not in ("cls_token", "fc_norm.weight", "fc_norm.bias")}
    with pytest.raises(ConversionError, match=r"missing: cls_token \(expected \[1, 1, 32\]\)"):
        convert.from_torch(no_cls, "dofa_small_patch16_224", **kw)


# ----- 4. unreadable inputs and outputs: one line naming the file ------------------------------
def _broken_files(tmp_path) -> dict[str, str]:
    """name → (path, key part of the message) of each kind of unreadable input."""
    torch = pytest.importorskip("torch")
    sd = {"w": torch.arange(4096, dtype=torch.float32)}
    io.save_state_dict(sd, str(tmp_path / "ok.safetensors"))
    torch.save(sd, tmp_path / "ok.pth")
    files = {}
    for name in ("ok.safetensors", "ok.pth"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"trunc_{name}").write_bytes(raw[: len(raw) // 2])
        files[f"trunc_{name}"] = ("not a readable .safetensors file" if name.endswith("safetensors")
                                  else "not a readable PyTorch checkpoint (truncated")
        (tmp_path / f"empty_{name}").write_bytes(b"")
        files[f"empty_{name}"] = "an empty file (0 bytes)"
    (tmp_path / "text.safetensors").write_text("not tensors at all\n")
    files["text.safetensors"] = "not a readable .safetensors file"
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x04garbage" * 10)
    files["garbage.pth"] = "not a readable PyTorch checkpoint"
    os.mkdir(tmp_path / "folder.pth")
    files["folder.pth"] = "a directory, expected a .safetensors or .pth"
    return {str(tmp_path / name): part for name, part in files.items()}


def test_unreadable_files_raise_one_error_naming_the_file(tmp_path):
    for path, part in _broken_files(tmp_path).items():
        with pytest.raises(UnreadableFileError) as info:
            io.load_state_dict(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and part in message and "\n" not in message, message
        if path.endswith(".safetensors"):
            with pytest.raises(UnreadableFileError, match="^" + path):
                convert.read_metadata(path)
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        io.load_state_dict(str(tmp_path / "missing.pth"))
    os.mkdir(tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match="out.safetensors: an existing directory"):
        io.save_state_dict({"w": np.zeros(2, np.float32)}, str(tmp_path / "out.safetensors"))


def test_cli_reports_unreadable_files_in_one_line(tmp_path, capsys):
    broken = _broken_files(tmp_path)
    for path, part in broken.items():
        # without --arch, the header of a .safetensors file is read first
        for arch in [["--arch", "resnet18"]] + ([[]] if path.endswith(".safetensors") else []):
            assert main(["import", *arch, "--input", path, "--output", str(tmp_path / "wd")]) == 1
            lines = _error_lines(capsys)
            assert lines == [lines[-1]] and lines[-1].startswith(f"error: {path}: "), lines
            assert part in lines[-1], lines
    assert main(["import", "--arch", "resnet18", "--input", str(tmp_path), "--output",
                 str(tmp_path / "wd")]) == 1
    assert _error_lines(capsys) == [f"error: {tmp_path}: a directory, expected a .safetensors or "
                                    ".pth/.pt/.bin/.ckpt file"]
    assert not os.path.exists(tmp_path / "wd")

    model = models.create("resnet18", in_chans=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    from geossl.train.checkpoint import save_backbone
    save_backbone(variables, "resnet18", str(tmp_path / "backbone_wd"), in_chans=3)
    os.mkdir(tmp_path / "exported.safetensors")
    capsys.readouterr()
    assert main(["export", "--workdir", str(tmp_path / "backbone_wd"), "--output",
                 str(tmp_path / "exported.safetensors")]) == 1
    lines = _error_lines(capsys)
    assert lines == [f"error: {tmp_path / 'exported.safetensors'}: an existing directory, expected "
                     "the path of a file to write"], lines


# ----- 5. ViT and Swin without qkv bias --------------------------------------------------------
def test_vit_without_qkv_bias_both_directions_match_timm():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    kw = dict(img_size=16, patch_size=8, depth=2, embed_dim=16, num_heads=2)
    net = _randomize(timm.create_model("vit_tiny_patch16_224", num_classes=0, qkv_bias=False, **kw))
    sd = _np_sd(net)
    assert "blocks.0.attn.qkv.bias" not in sd
    variables = convert.from_torch(sd, "vit_tiny_patch16", **kw)  # qkv_bias read from the keys
    assert "bias" not in variables["params"]["blocks_0"]["attn"]["qkv"]
    model = models.create("vit_tiny_patch16", qkv_bias=False, **kw)
    x = _images(16, 3)
    ref = _torch_forward(net, x)
    ours = np.asarray(jax.jit(model.apply)(variables, x)["embedding"])
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())

    back = convert.to_torch(variables, "vit_tiny_patch16", qkv_bias=False, **kw)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    name, kwargs = convert.timm_model("vit_tiny_patch16", qkv_bias=False, **kw)
    assert kwargs["qkv_bias"] is False
    fresh = timm.create_model(name, **kwargs).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    np.testing.assert_allclose(_torch_forward(fresh, x), ref, atol=1e-6 * np.abs(ref).max())


def test_swin_without_qkv_bias_both_directions_match_timm():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    arch = "swin_tiny_patch4_window7_224"
    kw = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4)
    net = _randomize(timm.create_model(arch, num_classes=0, qkv_bias=False, **kw), seed=1)
    sd = _np_sd(net)
    assert not any(k.endswith("qkv.bias") for k in sd)
    variables = convert.from_torch(sd, arch, img_size=32)  # structure and qkv_bias from the keys
    model = models.create(arch, qkv_bias=False, **kw)
    x = _images(32, 3)
    ref = _torch_forward(net, x)
    ours = np.asarray(jax.jit(model.apply)(variables, x)["embedding"])
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())

    back = convert.to_torch(variables, arch, qkv_bias=False, **kw)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    name, kwargs = convert.timm_model(arch, qkv_bias=False, **kw)
    fresh = timm.create_model(name, **kwargs).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    np.testing.assert_allclose(_torch_forward(fresh, x), ref, atol=1e-6 * np.abs(ref).max())


# ----- 6. import never overwrites a workdir -----------------------------------------------------
def test_cli_import_refuses_an_output_that_holds_a_workdir(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    src = str(tmp_path / "rn18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    training = tmp_path / "training"
    os.makedirs(training / "checkpoints" / "100")
    config = json.dumps({"model": {"name": "resnet50"}, "objective": {"name": "dino"}})
    (training / "config.json").write_text(config)
    assert main(["import", "--arch", "resnet18", "--input", src, "--output", str(training)]) == 1
    assert _error_lines(capsys) == [
        f"error: --output {training} already holds a workdir (config.json of a 'dino' run, "
        "checkpoints/): import writes a new backbone-only workdir; pass a new or empty directory"]
    assert (training / "config.json").read_text() == config
    assert sorted(os.listdir(training)) == ["checkpoints", "config.json"]

    empty = tmp_path / "empty"
    os.mkdir(empty)
    assert main(["import", "--arch", "resnet18", "--input", src, "--output", str(empty)]) == 0
    assert main(["import", "--arch", "resnet18", "--input", src, "--output", str(empty)]) == 1
    assert "config.json of a 'backbone' run, backbone/" in _error_lines(capsys)[-1]
    # training there is refused before anything changes (its backbone/ would stay what is read)
    from configs import softcon_vit_s
    from geossl.train import checkpoint, loop
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in empty.rglob("*")}
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=f"{empty}: a backbone-only workdir .* --config.init.workdir={empty}$"):
        loop.run(softcon_vit_s.get_config("demo"), str(empty))
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in empty.rglob("*")} == before
    (tmp_path / "file").write_text("x")
    assert main(["import", "--arch", "resnet18", "--input", src, "--output", str(tmp_path / "file")]) == 1
    assert _error_lines(capsys)[-1] == (f"error: --output {tmp_path / 'file'}: an existing file, "
                                        "expected a directory to write")


# ----- a ViT of another size than its name's, through --model_kwargs ------------------------------
def test_cli_import_takes_other_architecture_arguments_as_json(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    net = _randomize(timm.create_model("vit_tiny_patch16_224", patch_size=8, img_size=32,
                                       depth=3, num_heads=4, num_classes=0))
    torch.save(net.state_dict(), tmp_path / "p8.pth")
    src, workdir = str(tmp_path / "p8.pth"), str(tmp_path / "wd")
    assert main(["import", "--arch", "vit_tiny_patch16", "--input", src, "--output",
                 str(tmp_path / "plain")]) == 1          # patch 16 and 12 blocks: refused
    assert "patch_size" in capsys.readouterr().err
    assert main(["import", "--arch", "vit_tiny_patch16", "--input", src, "--output", workdir,
                 "--model_kwargs", '{"patch_size": 8, "depth": 3, "num_heads": 4}']) == 0
    config = json.load(open(os.path.join(workdir, "config.json")))["model"]
    assert (config["patch_size"], config["depth"], config["num_heads"], config["img_size"]) == (
        8, 3, 4, 32)
    out = str(tmp_path / "back.safetensors")
    assert main(["export", "--workdir", workdir, "--output", out]) == 0
    meta = convert.read_metadata(out)
    back = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"])).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in io.load_state_dict(out).items()},
                         strict=True)
    x = _images(32, 3)
    ref = _torch_forward(net, x)
    np.testing.assert_allclose(_torch_forward(back, x), ref, atol=1e-5 * np.abs(ref).max())
    capsys.readouterr()
    assert main(["import", "--arch", "vit_tiny_patch16", "--input", src, "--output",
                 str(tmp_path / "bad"), "--model_kwargs", '{"heads": 4}']) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --model_kwargs: vit_tiny_patch16 takes no heads; its "
                          "arguments: depth, ") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "bad")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_the_umask_like_any_new_file(tmp_path, umask, mode):
    """An export is written to a temporary file (0600) and renamed: its mode is then what
    ``open`` would have made under the process umask, so others can read a shared export."""
    from geossl.convert.lib import io
    old = os.umask(umask)
    try:
        for name in ("model.safetensors", "model.pth"):
            path = str(tmp_path / f"{umask:o}-{name}")
            io.save_state_dict({"w": np.ones((2, 3), np.float32)}, path)
            assert os.stat(path).st_mode & 0o777 == mode, name
    finally:
        os.umask(old)


def test_a_failed_export_leaves_no_new_folder(tmp_path):
    """The folders an export would have made for its file go again when the write fails."""
    target = tmp_path / "a" / "b" / "model.safetensors"
    with pytest.raises(Exception, match="Unknown dtype"):  # safetensors: Python objects
        io.save_state_dict({"w": np.array([object()], dtype=object)}, str(target))
    assert os.listdir(tmp_path) == []
    io.save_state_dict({"w": np.ones(2, np.float32)}, str(target))
    assert os.listdir(target.parent) == ["model.safetensors"]


def test_cli_import_refuses_sizes_below_one_and_kwargs_of_another_type(tmp_path, capsys):
    """One line each, nothing written: argparse for the sizes, the architecture's own values'
    types for --model_kwargs (a JSON list stands for a tuple)."""
    src = str(tmp_path / "any.safetensors")
    io.save_state_dict({"w": np.ones(2, np.float32)}, src)
    out = tmp_path / "out"
    for flag in (["--in_chans", "-1"], ["--img_size", "0"], ["--window_size", "x"]):
        with pytest.raises(SystemExit):
            main(["import", "--arch", "resnet18", "--input", src, "--output", str(out), *flag])
        found = flag[1] if flag[1].lstrip("-").isdigit() else repr(flag[1])
        assert f"argument {flag[0]}: expected an integer >= 1, found {found}" in (
            capsys.readouterr().err)
    for kwargs, message in [('{"width": "x"}', "width expects a value like 64 (int), found 'x'"),
                            ('{"stage_sizes": 2}', "stage_sizes expects a value like (2, 2, 2, 2) "
                                                   "(tuple), found 2"),
                            ('{"width": true}', "width expects a value like 64 (int), found True")]:
        assert main(["import", "--arch", "resnet18", "--input", src, "--output", str(out),
                     "--model_kwargs", kwargs]) == 1
        assert _error_lines(capsys) == [f"error: --model_kwargs: {message}"]
    assert not out.exists()
