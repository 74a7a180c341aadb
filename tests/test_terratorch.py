"""geossl exports in TerraTorch, in its own interpreter ($GEOSSL_TERRATORCH_PYTHON: terratorch
1.2.11 and torchgeo 0.8.1; ``make test`` points it at .venv-tt, built by ``make tt-env``).

Each backbone family, built through TerraTorch's backbone registry as examples/terratorch_finetune.py
builds it (the SoftCon entry ``terratorch_ssl4eos12_resnet50_sentinel2_all_softcon`` and
``terratorch_dofa_small_patch16_224`` with ``ckpt_data``; a DOFA of patch 8, which no TerraTorch
entry builds, as the example's ``terratorch_geossl_dofa``; ``timm_vit_small_patch14_dinov2`` and
``timm_swin_tiny_patch4_window7_224`` with timm's file overlay), gives geossl's features of the same
random network within 1e-5: TerraTorch loads ``ckpt_data`` with ``strict=False`` and fills input
channels it cannot match by band name at random, so only the outputs prove that every tensor
arrived. The backbones are the encoders of TerraTorch UPerNet segmentation tasks (its factory
builds them from the registry), each of which then trains one step; and the README's "Fine-tune in
TerraTorch" command runs."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import geossl_exports  # noqa: E402

from geossl.data import bands  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
#: name → (geossl architecture, its keywords, image size): tiny where the builders take structure
#: keywords (TerraTorch's DOFA entries fix DOFA-S's 12 × 384; "dofa_p8" has a structure of its own,
#: as the any-sensor demo's).
CASES = {
    "resnet": ("resnet50", dict(in_chans=13, stage_sizes=(1, 1, 1, 1)), 32),
    "vit": ("vit_small_patch14", dict(in_chans=13, img_size=28, depth=2, embed_dim=48,
                                      num_heads=2), 28),
    "swin": ("swin_tiny_patch4_window7_224", dict(in_chans=13, img_size=32, embed_dim=16,
                                                  depths=(2, 2), num_heads=(1, 2), window_size=4), 32),
    "dofa": ("dofa_small_patch16_224", dict(img_size=32), 32),
    "dofa_p8": ("dofa_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2,
                                               num_heads=2), 32),
}
#: What TerraTorch names each case's backbone (the example's choice, checked here).
BACKBONES = {"resnet": "terratorch_ssl4eos12_resnet50_sentinel2_all_softcon",
             "vit": "timm_vit_small_patch14_dinov2", "swin": "timm_swin_tiny_patch4_window7_224",
             "dofa": "terratorch_dofa_small_patch16_224", "dofa_p8": "terratorch_geossl_dofa"}


@pytest.fixture(scope="module")
def terratorch_python():
    python = os.environ.get("GEOSSL_TERRATORCH_PYTHON")
    if not python:
        pytest.skip("TerraTorch: set GEOSSL_TERRATORCH_PYTHON to a python with terratorch and "
                    "torchgeo 0.8.1 (make tt-env builds .venv-tt)")
    assert os.path.isfile(python), f"GEOSSL_TERRATORCH_PYTHON={python}: no such interpreter"
    return python


def _env() -> dict:
    """No weights from a hub: TerraTorch and timm read the export files only."""
    return dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")


def _geossl_levels(name: str, model, variables, images) -> list[np.ndarray]:
    """geossl's features in the layout TerraTorch returns for that family: ResNet stages NCHW,
    Swin stages NHWC, ViT blocks as (B,D,h,w) maps of the patch tokens, DOFA blocks as tokens."""
    call = {"wavelengths": bands.wavelengths(bands.S2_L1C)} if name.startswith("dofa") else {}
    feats = geossl_exports.features(model, variables, images, **call)
    if name == "resnet":
        return [f.transpose(0, 3, 1, 2) for f in feats["stages"]]
    if name == "swin":
        return feats["stages"]
    if name == "vit":
        grid = images.shape[1] // model.patch_size
        return [b[:, 1:].transpose(0, 2, 1).reshape(b.shape[0], -1, grid, grid)
                for b in feats["blocks"]]
    return feats["blocks"]


@pytest.fixture(scope="module")
def terratorch_run(tmp_path_factory, terratorch_python):
    """Writes the exports and inputs and runs tests/terratorch_job.py once, computing
    geossl's features meanwhile; returns (output folder, {name: (images NHWC, geossl's levels)})."""
    root = tmp_path_factory.mktemp("terratorch")
    models, cases = {}, []
    for seed, (name, (arch, kw, size)) in enumerate(CASES.items()):
        path = str(root / f"{name}.safetensors")
        model, variables = geossl_exports.export(arch, kw, path, bands.S2_L1C, seed=seed)
        images = np.random.default_rng(seed).normal(size=(2, size, size, 13)).astype(np.float32)
        np.save(root / f"{name}_x.npy", images.transpose(0, 3, 1, 2))
        models[name] = (model, variables, images)
        cases.append({"name": name, "export": path, "input": str(root / f"{name}_x.npy"),
                      "wavelengths": bands.wavelengths(bands.S2_L1C).tolist()})
    (root / "job.json").write_text(json.dumps({"cases": cases}))
    out = root / "out"
    out.mkdir()
    with open(root / "job.log", "w") as log:
        job = subprocess.Popen([terratorch_python, os.path.join(ROOT, "tests", "terratorch_job.py"),
                                str(root / "job.json"), str(out)], env=_env(), stdout=log,
                               stderr=subprocess.STDOUT)
        try:
            refs = {name: (images, _geossl_levels(name, model, variables, images))
                    for name, (model, variables, images) in models.items()}
            job.wait(timeout=600)
        finally:
            job.kill()
    assert job.returncode == 0, (root / "job.log").read_text()[-4000:]
    return out, refs


def test_terratorch_backbones_and_segmentation_tasks_carry_geossl_weights(terratorch_run):
    out, refs = terratorch_run
    report = []
    for name, (images, expected) in refs.items():
        got = np.load(out / f"{name}.npz")
        info = json.loads((out / f"{name}.json").read_text())
        assert info["backbone"] == BACKBONES[name]
        assert info["matmul_precision"] == "highest", name   # TerraTorch's import sets "medium"
        if name.startswith("dofa"):  # TerraTorch's own table: S2 rounded (B1 0.44, geossl 0.4427)
            np.testing.assert_allclose(info["terratorch_wavelengths"],
                                       bands.wavelengths(bands.S2_L1C), atol=5e-3)
        assert len([k for k in got.files if k.startswith("level_")]) == len(expected), name
        worst = 0.0
        for i, ours in enumerate(expected):
            diff, scale = geossl_exports.max_difference(ours, got[f"level_{i}"])
            assert diff <= TOLERANCE * max(1.0, scale), (name, i, diff, scale)
            worst = max(worst, diff / max(1.0, scale))
        step = info["step"]
        assert got["logits"].shape == (images.shape[0], 3) + images.shape[1:3], name
        assert step["finite"] and np.isfinite(got["logits"]).all(), name
        for part in ("first_layer_grad", "encoder_grad", "decoder_grad", "head_grad"):
            assert step[part] > 0, (name, part, step)  # every part trains, the backbone included
        # a small step against the gradient lowers the loss as the gradient predicts (±20%)
        decrease = step["loss"] - step["loss_after_step"]
        assert 0.8 < decrease / step["predicted_decrease"] < 1.2, (name, step)
        report.append(f"{BACKBONES[name]}: {len(expected)} levels, max |diff| / max(1, |ref|) "
                      f"{worst:.1e}; loss {step['loss']:.6f} -> {step['loss_after_step']:.6f} "
                      f"(predicted -{step['predicted_decrease']:.2e})")
    print("\n".join(report))


def _readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block under README.md's ``heading``."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in re.sub(r"\\\n\s*", " ", block).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_fine_tune_in_terratorch_command_runs(tmp_path, terratorch_python):
    """The README's block: ``make tt-env`` is the Makefile's target (``make test`` builds it);
    the command, with its interpreter and export placeholder replaced, runs on a geossl ViT export
    and prints the task's model_args and a finite loss per step."""
    arch, kw, _ = CASES["vit"]
    export = str(tmp_path / "model.safetensors")
    geossl_exports.export(arch, kw, export, bands.S2_L1C)
    install, *commands = _readme_block("### Fine-tune in TerraTorch")
    with open(os.path.join(ROOT, "Makefile")) as f:
        assert install.split("#")[0].strip() == "make tt-env" and re.search(r"^tt-env:", f.read(), re.M)
    assert commands and all(c.startswith(".venv-tt/bin/python examples/") for c in commands), commands
    for command in commands:
        words = [export if w == "model.safetensors" else w for w in shlex.split(command.split(" #")[0])]
        done = subprocess.run([terratorch_python] + words[1:], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-4000:]}"
        assert '"backbone": "timm_vit_small_patch14_dinov2"' in done.stdout, done.stdout[-2000:]
        losses = [float(v) for v in re.findall(r"^step \d+: loss (\S+)$", done.stdout, re.M)]
        assert len(losses) == 2 and np.isfinite(losses).all(), done.stdout[-2000:]


def test_upernet_reads_four_distinct_blocks_spread_over_the_depth():
    """PANGAEA's 3, 5, 7, 11 of 12 (and 7, 11, 15, 23 of 24); a shallow export (the any-sensor
    demo's depth 4) gets four different blocks, not block 3 four times. Needs no TerraTorch."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import terratorch_finetune as example
    assert example.upernet_blocks(12) == [3, 5, 7, 11]
    assert example.upernet_blocks(24) == [7, 11, 15, 23]
    for depth in (4, 5, 6, 8, 16):
        blocks = example.upernet_blocks(depth)
        assert blocks == sorted(set(blocks)) and blocks[-1] == depth - 1 and blocks[0] >= 0, depth
