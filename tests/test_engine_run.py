"""End-to-end trainer runs on a tiny SoftCon ViT: outputs, checkpoint mismatch, non-finite loss
(SIGKILL / SIGINT / SIGTERM + resume: tests/test_preemption.py; 1 vs 8 devices and 2 processes
vs 1: tests/test_elastic.py)."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import softcon_vit_s
from geossl.train import checkpoint as ckpt_lib
from geossl.train import loop
from geossl.train import metrics as metrics_lib
from geossl.train.metrics import NonFiniteLossError
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: --config.* overrides that shrink the demo config to a few-second run (also used by subprocesses).
TINY = {
    "model.depth": 1, "model.img_size": 16, "model.patch_size": 8,
    "objective.proj_hidden": 32, "objective.proj_dim": 16, "objective.pred_hidden": 32,
    "global_batch": 16, "total_steps": 6, "checkpoint_every": 2, "log_every": 1,
    "lr.warmup_steps": 2, "lr.base": 1e-4, "probe.every": 0, "monitor.every": 0,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_prep import synthetic
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(out, num_locations=64, heldout=16, size=16, seasons=2, num_shards=2)
    return os.path.join(out, "train-*.tfrecord")


def tiny_config(shards, **overrides):
    c = softcon_vit_s.get_config("demo")
    values = dict(TINY, **{"data.train": shards}, **overrides)
    for key, value in values.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _flags(shards, workdir, **extra):
    values = dict(TINY, **{"data.train": shards}, **extra)
    return [sys.executable, os.path.join(ROOT, "main.py"), "--config",
            os.path.join(ROOT, "configs/softcon_vit_s.py") + ":demo", "--workdir", workdir,
            "--auto_distributed=false"] + [f"--config.{k}={v}" for k, v in values.items()]


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT
    return env


def _run(cmd, env):
    """Runs main.py to completion; a failure shows the end of its stderr."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.splitlines()
        first = next((i for i, l in enumerate(lines) if "Error" in l or "Check fail" in l), 0)
        cause = "\n".join(lines[max(first - 5, 0):first + 15])
        raise AssertionError(f"rc {proc.returncode}; first error:\n{cause}\n...\n"
                             + "\n".join(lines[-15:]))


def test_run_writes_metrics_checkpoints_and_export(shards, tmp_path, caplog):
    caplog.set_level("INFO")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)  # an earlier attempt killed before its first checkpoint left two rows
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": -1.0}\n{"step": 2, "loss": -1.0}\n')
    summary = loop.run(tiny_config(shards), workdir)
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[0]["loss"] != -1.0
    # compilation is timed apart; rates are wall-clock over each logging window
    compiled = [r.getMessage() for r in caplog.records if "compiled the train step in" in r.getMessage()]
    assert len(compiled) == 1, [r.getMessage() for r in caplog.records][:20]
    assert rows[0]["compile_s"] > 0 and not any("compile_s" in r for r in rows[1:])
    total_s = sum(r["step_time_s"] for r in rows)
    assert all(r["images_per_s"] == pytest.approx(16 / r["step_time_s"]) for r in rows)
    assert 0 < total_s < 60
    for key in ("loss", "loss_instance", "loss_soft", "lr", "momentum", "grad_norm",
                "step_time_s", "data_wait_s", "images_per_s"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                  if d.isdigit()) == [2, 4, 6]
    from safetensors.numpy import load_file
    from geossl import convert
    exported = load_file(summary["export"])
    arch, variables = ckpt_lib.load_backbone(workdir)
    expected = convert.to_torch(variables, arch, img_size=16, in_chans=13, patch_size=8, depth=1)
    assert sorted(exported) == sorted(expected)
    for k in expected:
        np.testing.assert_array_equal(exported[k], expected[k])
    meta = convert.read_metadata(summary["export"])   # enough to rebuild the model elsewhere
    assert meta["geossl.arch"] == arch == "vit_tiny_patch16" and meta["geossl.norm"] == "softcon"
    kwargs = json.loads(meta["geossl.model_kwargs"])
    assert {k: kwargs[k] for k in ("img_size", "in_chans", "patch_size", "depth")} == dict(
        img_size=16, in_chans=13, patch_size=8, depth=1)
    assert len(json.loads(meta["geossl.bands"])) == 13
    rebuilt = convert.from_torch(exported, meta["geossl.arch"], **kwargs)
    np.testing.assert_array_equal(rebuilt["params"]["norm"]["scale"],
                                  variables["params"]["norm"]["scale"])
    # The exported backbone is the student's, as trained.
    np.testing.assert_array_equal(
        variables["params"]["norm"]["scale"],
        np.asarray(summary["state"].params["backbone"]["norm"]["scale"]))


def test_views_rendered_in_the_step_log_the_losses_of_host_views(shards, tmp_path):
    """data.views="device": the sharded step renders the views from raw acquisitions."""
    runs = {mode: loop.run(tiny_config(shards, total_steps=3, **{"data.views": mode,
                                                                 "mesh.fsdp": 2}),
                           str(tmp_path / mode)) for mode in ("host", "device")}
    a, b = ([r["loss"] for r in read_metrics(runs[m]["workdir"])] for m in ("host", "device"))
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def two_steps(shards, tmp_path_factory):
    """A finished 2-step run of ``tiny_config``, shared: tests work on copies (:func:`_copy`)."""
    workdir = str(tmp_path_factory.mktemp("two_steps") / "w")
    loop.run(tiny_config(shards, total_steps=2), workdir)
    return workdir


def _copy(workdir, tmp_path) -> str:
    return shutil.copytree(workdir, str(tmp_path / "w"))


def test_checkpoint_of_another_model_is_refused(shards, two_steps, tmp_path):
    workdir = _copy(two_steps, tmp_path)
    config_json = open(os.path.join(workdir, "config.json")).read()
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="projector.*16.*24|24.*16"):
        loop.run(tiny_config(shards, total_steps=4, **{"objective.proj_dim": 24}), workdir)
    # the refused run changed nothing: the workdir still describes (and exports) its checkpoints
    assert open(os.path.join(workdir, "config.json")).read() == config_json
    arch, variables = ckpt_lib.load_backbone(workdir)
    assert arch == "vit_tiny_patch16" and "blocks_0" in variables["params"]
    # the same shapes reading other inputs: bands in another order, another normalisation
    bands = tuple(reversed(tiny_config(shards).data.bands))
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"config.data.bands: checkpoint has \['B1', .*, config asks \['B12', "
                             r".*; config.data.norm: checkpoint has 'softcon', config asks 'none'"):
        loop.run(tiny_config(shards, total_steps=4, **{"data.bands": bands, "data.norm": "none"}),
                 workdir)
    assert open(os.path.join(workdir, "config.json")).read() == config_json


def test_unreadable_newest_checkpoint_falls_back_and_none_readable_is_one_error(shards, tmp_path,
                                                                                caplog, capfd):
    workdir = str(tmp_path / "w")
    loop.run(tiny_config(shards, total_steps=4), workdir)
    rows4 = read_metrics(workdir)
    ckpts = os.path.join(workdir, "checkpoints")

    def break_step(step):
        state_dir = os.path.join(ckpts, str(step), "state")
        for root, _, files in os.walk(state_dir):
            for name in files:
                if name != "_METADATA":
                    os.remove(os.path.join(root, name))

    break_step(4)
    caplog.set_level("WARNING")
    capfd.readouterr()
    summary = loop.run(tiny_config(shards, total_steps=4), workdir)
    warnings = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(warnings) == 1 and f"{ckpts}/4 is unreadable" in warnings[0], warnings
    assert "TensorStore details" not in warnings[0]  # the root cause, not orbax's wrapper
    err = capfd.readouterr().err  # no leftovers of the failed asynchronous reads
    assert "Event loop is closed" not in err and "Exception ignored" not in err, err[-2000:]
    assert "was never retrieved" not in err + " ".join(r.getMessage() for r in caplog.records)
    assert os.path.isdir(os.path.join(ckpts, "4.unreadable"))  # moved aside, never deleted
    assert summary["final_step"] == 4 and os.path.isdir(os.path.join(ckpts, "4"))
    rows = read_metrics(workdir)  # steps 3, 4 redone from step 2: the same losses
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for a, b in zip(rows, rows4):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for step in (2, 4):
        break_step(step)
    with pytest.raises(ckpt_lib.NoReadableCheckpointError,
                       match=r"no readable checkpoint in .*: step 4: .*; step 2: ") as e:
        loop.run(tiny_config(shards, total_steps=6), workdir)
    assert "\n" not in str(e.value)    # a command line reports it in one line


def test_a_longer_run_resumed_says_its_schedules_stretch(shards, two_steps, tmp_path, caplog):
    """Resuming a finished 2-step run with total_steps 3 trains step 3 on schedules over 3 steps:
    said once, with the steps that followed the old ones."""
    workdir = _copy(two_steps, tmp_path)
    caplog.set_level("WARNING")
    loop.run(tiny_config(shards, total_steps=3), workdir)
    said = [r.getMessage() for r in caplog.records if "config.total_steps 3" in r.getMessage()]
    assert said == ["config.total_steps 3, the run's was 2: the schedules over the run (lr, weight "
                    "decay, EMA momentum, teacher temperature) follow 3 steps from step 3 on; "
                    "steps 1..2 followed 2"], said
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3]


def test_checkpoint_of_another_optimiser_is_refused(shards, two_steps, tmp_path):
    workdir = _copy(two_steps, tmp_path)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="optimiser state") as e:
        loop.run(tiny_config(shards, total_steps=4, **{"optim.clip_norm": 0.0}), workdir)
    assert "\n" not in str(e.value) and re.search(r"; and \d+ more$", str(e.value)), str(e.value)


def test_an_error_right_after_a_checkpoint_lets_its_write_finish(shards, tmp_path, monkeypatch):
    """A run that ends on an error (here a non-finite loss reported at step 3) while step 2's
    background write is in flight finishes that write: the checkpoint is there to resume from."""
    real = metrics_lib.check_finite

    def nan_at_3(step, row):
        real(step, dict(row, loss=float("nan")) if step == 3 else row)

    monkeypatch.setattr(metrics_lib, "check_finite", nan_at_3)
    workdir = str(tmp_path / "w")
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        loop.run(tiny_config(shards, total_steps=8, async_checkpoints=True), workdir)
    assert ckpt_lib.Checkpointer(workdir, async_save=False).latest_step() == 2
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(shards, two_steps, tmp_path):
    workdir = _copy(two_steps, tmp_path)
    before = ckpt_lib.Checkpointer(workdir, async_save=False).restore_raw(2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite \w+=(nan|inf|-inf) at step [3-6]"):
        loop.run(tiny_config(shards, **{"lr.base": 1e30, "lr.warmup_steps": 0}), workdir)
    checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
    assert checkpointer.latest_step() == 2
    after = checkpointer.restore_raw(2)
    for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(x, y)
