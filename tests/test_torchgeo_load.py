"""geossl exports in torchgeo 0.8.1's model builders (in this venv: the test extra pins torchgeo):
examples/load_in_torchgeo.py, the README's "Load in torchgeo" command, picks the builder and loads
each export with ``strict=True``; the torchgeo model's embedding equals geossl's within 1e-5."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import geossl_exports  # noqa: E402

from geossl.data import bands  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("torchgeo")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import load_in_torchgeo  # noqa: E402

#: (geossl architecture, keywords, bands, the torchgeo builder expected): tiny where the builder
#: takes structure keywords (torchgeo's DOFA builders fix DOFA-S's 12 × 384; another DOFA
#: structure, as the any-sensor demo's patch 8, loads into the class ``DOFA``).
CASES = [
    ("resnet50", dict(in_chans=13, stage_sizes=(1, 2, 1, 1)), bands.S2_L1C, "resnet50"),
    ("resnet18", dict(in_chans=2, stage_sizes=(1, 1, 2, 1)), bands.S1, "resnet18"),
    ("vit_small_patch14", dict(in_chans=13, img_size=28, depth=2, embed_dim=48, num_heads=2),
     bands.S2_L1C, "vit_small_patch14_dinov2"),
    ("vit_small_patch14", dict(in_chans=3, img_size=28, depth=1, embed_dim=32, num_heads=2,
                               num_register_tokens=2), bands.RGB, "vit_small_patch14_dinov2"),
    ("vit_tiny_patch16", dict(in_chans=13, img_size=32, depth=2, patch_size=8, embed_dim=32,
                              num_heads=2), bands.S2_L1C, "vit_small_patch16_224"),  # the demo's
    ("dofa_small_patch16_224", dict(img_size=32), bands.S2_L1C, "dofa_small_patch16_224"),
    ("dofa_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
     bands.S2_L1C, "DOFA"),
]


@pytest.mark.parametrize("arch,kw,band_names,expected", CASES,
                         ids=[f"{c[0]}-{c[3]}-{len(c[2])}b" for c in CASES])
def test_export_loads_strictly_into_the_torchgeo_builder_with_geossl_embedding(
        tmp_path, arch, kw, band_names, expected):
    path = str(tmp_path / "model.safetensors")
    model, variables = geossl_exports.export(arch, kw, path, band_names)
    net, name, _, meta = load_in_torchgeo.load(path)  # load_state_dict(strict=True) inside
    assert name == expected
    size = kw.get("img_size", 32)
    images = np.random.default_rng(1).normal(size=(2, size, size, len(band_names))).astype(np.float32)
    call = {"wavelengths": bands.wavelengths(band_names)} if arch.startswith("dofa") else {}
    ours = geossl_exports.features(model, variables, images, **call)["embedding"][0]
    with torch.no_grad():
        theirs = load_in_torchgeo.embed(net, torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                        load_in_torchgeo.dofa_wavelengths(meta) if call else None)
    diff, scale = geossl_exports.max_difference(ours, theirs.numpy())
    assert diff <= 1e-5 * max(1.0, scale), (name, diff, scale)
    print(f"{arch} -> torchgeo.models.{name}: max |diff| {diff:.1e}, max |embedding| {scale:.2f}")


def test_swin_exports_are_refused_with_the_builders_that_read_them(tmp_path):
    path = str(tmp_path / "swin.safetensors")
    geossl_exports.export("swin_tiny_patch4_window7_224",
                          dict(in_chans=3, img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                               window_size=4), path, bands.RGB)
    with pytest.raises(ValueError, match="torchvision's .*timm.create_model\\('swin_tiny_patch4_window7_224'"):
        load_in_torchgeo.load(path)


def test_command_prints_the_builder_and_the_embedding(tmp_path, capsys):
    path = str(tmp_path / "model.safetensors")
    geossl_exports.export("resnet18", dict(in_chans=2, stage_sizes=(1, 1, 1, 1)), path, bands.S1)
    assert load_in_torchgeo.main(["--export", path]) == 0  # the README's command, in this process
    out = capsys.readouterr().out
    assert 'torchgeo.models.resnet18(**{"weights": null, ' in out and '"layers": [1, 1, 1, 1]' in out
    assert "tensors loaded strictly" in out and "embedding of a random batch: (2, 512)" in out, out


def test_dofa_exports_load_into_the_builder_of_their_structure_else_the_class():
    """A header naming DOFA-S with DOFA-B's recorded sizes gets DOFA-B's builder; a structure no
    builder fixes (patch 8, width 192, depth 4: the any-sensor demo's) the class, with all of it."""
    def meta(arch, **kw):
        return {"geossl.arch": arch, "geossl.model_kwargs": json.dumps(dict(in_chans=13, **kw))}

    base = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    small_named_base_sized = meta("dofa_small_patch16_224", img_size=[64, 64], **base)
    assert load_in_torchgeo.builder(small_named_base_sized, {}) == \
        ("dofa_base_patch16_224", dict(num_classes=0, img_size=64))
    assert load_in_torchgeo.builder(meta("dofa_base_patch16_224", mlp_ratio=2.0), {})[0] == "DOFA"
    demo = dict(img_size=32, patch_size=8, embed_dim=192, depth=4, num_heads=3)
    assert load_in_torchgeo.builder(meta("dofa_small_patch16_224", dtype="bfloat16", **demo), {}) \
        == ("DOFA", dict(num_classes=0, **demo))


def test_command_loads_a_dofa_of_another_structure(tmp_path, capsys):
    path = str(tmp_path / "dofa.safetensors")
    geossl_exports.export("dofa_small_patch16_224", dict(img_size=16, patch_size=8, embed_dim=32,
                                                          depth=1, num_heads=2), path, bands.S1)
    assert load_in_torchgeo.main(["--export", path]) == 0
    out = capsys.readouterr().out
    assert 'models.DOFA(**{"num_classes": 0, "patch_size": 8, "embed_dim": 32, "depth": 1' in out
    assert "tensors loaded strictly" in out and "embedding of a random batch: (2, 32)" in out, out
