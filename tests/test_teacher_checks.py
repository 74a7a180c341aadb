"""A frozen teacher's checkpoint that cannot be the teacher (missing, truncated, a geossl export of
another architecture, a malformed ``random:`` / ``pretrained:`` source) is refused by
``check_config`` from its header, in one line, before the run creates its workdir."""

import os
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
import pytest

from configs import gfm_swin_b
from geossl import convert
from geossl.convert.lib.io import export_metadata
from geossl.errors import ConfigError
from geossl.models.from_config import architecture_kwargs
from geossl.train import loop, pretrained
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = ml_collections.ConfigDict(dict(data=dict(bands=("R", "G", "B"), norm="meanstd")))


def _export(path: str, arch: str, kwargs: dict) -> str:
    """A safetensors file with the metadata geossl's exports carry (export_backbone's), for
    ``arch``; one small tensor stands for the weights, which the checks never read."""
    convert.save_state_dict({"w": np.arange(6, dtype=np.float32)}, path,
                            export_metadata(arch, kwargs, DATA))
    return path


def _truncated(path: str, keep: float = 0.5) -> str:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])
    return path


def _torch_zip(path: str) -> str:
    """torch.save's container layout: a zip archive holding ARCHIVE/data.pkl and the storages."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/data/0", b"\x00" * 4096)
    return path


def _gfm(source: str):
    config = gfm_swin_b.get_config("demo")
    config.teacher.torch_checkpoint = source
    return config


def _refusal(tmp_path, source: str) -> str:
    """loop.run's ConfigError message for ``source``; the workdir must not exist afterwards."""
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        loop.run(_gfm(source), str(workdir))
    assert not workdir.exists()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_missing_teacher_is_refused_before_the_workdir(tmp_path):
    path = str(tmp_path / "swin.safetensors")
    message = _refusal(tmp_path, path)
    assert message == (f"config.teacher.torch_checkpoint: {path} does not exist; expected a "
                       f".safetensors or .pth/.pt/.bin/.ckpt checkpoint of config.teacher.model "
                       f"('swin_tiny_patch4_window7_224'), 'random:seed=N' or "
                       f"'pretrained:METHOD'")


def test_a_truncated_safetensors_teacher_is_refused(tmp_path):
    config = _gfm("")
    path = _export(str(tmp_path / "teacher.safetensors"), config.teacher.model.name,
                   architecture_kwargs(config.teacher.model))
    pretrained.check_source(path, config.teacher.model)  # whole: accepted
    message = _refusal(tmp_path, _truncated(path))
    assert message.startswith(f"config.teacher.torch_checkpoint: {path}: not a readable "
                              f".safetensors file (truncated, or another format?): ")
    assert "\n" not in message


def test_a_truncated_or_foreign_torch_teacher_is_refused(tmp_path):
    path = _torch_zip(str(tmp_path / "teacher.pth"))
    pretrained.check_source(path, _gfm("").teacher.model)  # whole: accepted
    message = _refusal(tmp_path, _truncated(path, keep=0.9))  # the central directory is cut
    assert message == (f"config.teacher.torch_checkpoint: {path}: unreadable torch checkpoint "
                       f"(BadZipFile: File is not a zip file); a truncated or partial file?")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    assert _refusal(tmp_path, str(text)) == (
        f"config.teacher.torch_checkpoint: {text}: not a torch checkpoint (expected a zip archive "
        f"or a pickle, found the bytes b'not ')")


def test_a_resnet18_export_for_a_swin_teacher_names_both(tmp_path):
    path = _export(str(tmp_path / "resnet18.safetensors"), "resnet18", {"in_chans": 3})
    assert _refusal(tmp_path, path) == (
        f"config.teacher.torch_checkpoint: {path} is a geossl export of 'resnet18' (its metadata "
        f"geossl.arch), a resnet; config.teacher.model.name is 'swin_tiny_patch4_window7_224', "
        f"a swin")


def test_a_swin_export_with_other_layers_names_the_fields(tmp_path):
    """Same family: other widths are refused field by field; another name that builds the same
    layers, another window (its bias tables are resampled) and another img_size are accepted."""
    model = _gfm("").teacher.model
    kwargs = architecture_kwargs(model)
    wide = _export(str(tmp_path / "wide.safetensors"), model.name, dict(kwargs, embed_dim=64))
    assert _refusal(tmp_path, wide) == (
        f"config.teacher.torch_checkpoint: {wide} is a geossl export of "
        f"'swin_tiny_patch4_window7_224' (its metadata geossl.arch) with other layers than "
        f"config.teacher.model ('swin_tiny_patch4_window7_224'): embed_dim=64 "
        f"(config.teacher.model: 32)")
    same = _export(str(tmp_path / "same.safetensors"), "swin_base_patch4_window7_224",
                   dict(kwargs, window_size=7, img_size=224))
    pretrained.check_source(same, model)
    timm_like = str(tmp_path / "timm.safetensors")  # no geossl metadata: checked on conversion
    convert.save_state_dict({"w": np.zeros(3, np.float32)}, timm_like)
    pretrained.check_source(timm_like, model)


def test_fields_that_change_no_parameter_pass_and_the_first_layer_does_not(tmp_path):
    """A ResNet-18 export with another BatchNorm momentum has the teacher's parameters (traced
    abstractly, compared shape by shape): accepted; one with 4 input channels is refused."""
    model = ml_collections.ConfigDict(dict(name="resnet18", in_chans=3, img_size=32,
                                           dtype="float32"))
    momentum = _export(str(tmp_path / "m.safetensors"), "resnet18",
                       {"in_chans": 3, "img_size": 32, "bn_momentum": 0.99})
    pretrained.check_source(momentum, model)
    four = _export(str(tmp_path / "four.safetensors"), "resnet18", {"in_chans": 4})
    with pytest.raises(ConfigError) as e:
        pretrained.check_source(four, model)
    assert str(e.value) == (f"config.teacher.torch_checkpoint: {four} is a geossl export of "
                            f"'resnet18' (its metadata geossl.arch) with other layers than "
                            f"config.teacher.model ('resnet18'): in_chans=4 (config.teacher."
                            f"model: 3)")


def test_generated_teachers_are_checked_by_syntax_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSSL_DEMO_TEACHERS", str(tmp_path / "teachers"))
    config = _gfm("random:seed=3")
    pretrained.check_source("random:seed=3", config.teacher.model)
    pretrained.check_source("pretrained:softcon", config.teacher.model, config.teacher.pretrain)
    assert not (tmp_path / "teachers").exists()  # nothing written by the checks
    assert _refusal(tmp_path, "random:3") == ("config.teacher.torch_checkpoint: expected a path, "
                                              "'random:seed=N' or 'pretrained:METHOD', found "
                                              "'random:3'")


def test_main_py_prints_one_line_and_exits_2(tmp_path):
    path = _export(str(tmp_path / "resnet18.safetensors"), "resnet18", {"in_chans": 3})
    workdir = tmp_path / "w"
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT,
               GEOSSL_DEMO_TEACHERS=str(tmp_path / "teachers"))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                           f"--config={ROOT}/configs/gfm_swin_b.py:demo", f"--workdir={workdir}",
                           f"--config.teacher.torch_checkpoint={path}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"main.py: config.teacher.torch_checkpoint: {path} is a geossl export "
                           f"of 'resnet18'"), last
    assert not workdir.exists() and not (tmp_path / "teachers").exists()


def test_the_students_init_source_is_checked_by_its_header_before_the_workdir(tmp_path):
    """config.init.torch_checkpoint gets the teacher's header checks under its own name (it was a
    36-line unpickling traceback after the workdir was made); a missing init workdir and both
    sources at once are one line too."""
    from configs import softcon_vit_s
    workdir = tmp_path / "run"

    def refusal(**init) -> str:
        config = softcon_vit_s.get_config("demo")
        config.init.update(init)
        with pytest.raises(ConfigError) as info:
            loop.run(config, str(workdir))
        assert not workdir.exists() and "\n" not in str(info.value)
        return str(info.value)

    junk = tmp_path / "dinov2.pth"
    junk.write_bytes(b"\xc1\x97junk")
    assert refusal(torch_checkpoint=str(junk)) == (
        f"config.init.torch_checkpoint: {junk}: not a torch checkpoint (expected a zip archive or "
        f"a pickle, found the bytes b'\\xc1\\x97ju')")
    cut = _truncated(_torch_zip(str(tmp_path / "cut.pth")), keep=0.9)
    assert refusal(torch_checkpoint=cut).endswith("a truncated or partial file?")
    assert refusal(torch_checkpoint=str(tmp_path / "none.pth")) == (
        f"config.init.torch_checkpoint: {tmp_path}/none.pth does not exist; expected a "
        f".safetensors or .pth/.pt/.bin/.ckpt state dict for config.model ('vit_tiny_patch16')")
    assert refusal(workdir=str(tmp_path / "nowhere")) == (
        f"config.init.workdir: {tmp_path}/nowhere is not a folder; expected a geossl workdir "
        f"(training or backbone-only)")
    assert refusal(torch_checkpoint=cut, workdir=str(tmp_path)).startswith(
        "config.init: set torch_checkpoint or workdir, not both (found ")
