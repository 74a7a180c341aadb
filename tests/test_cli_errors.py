"""main.py refuses a bad flag or config value in one line (exit 2), before writing anything."""

import os
import subprocess
import sys

import pytest

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("config, override, message", [
    ("softcon_vit_s.py:demo", "--config.total_stepz=5",
     "--config.total_stepz=5: config has no field 'total_stepz' (did you mean 'total_steps'? its "
     "fields: async_checkpoints, checkpoint_every, data,"),
    ("softcon_vit_s.py:demo", "--config.optim.lr=0.1",
     "--config.optim.lr=0.1: config.optim has no field 'lr' (its fields: b1, b2, clip_norm, decay, "
     "eps, name, weight_decay)"),
    ("softcon_vit_s.py:demo", "--config.total_steps=abc",
     "flag --config.total_steps=abc: invalid literal for int()"),
    ("softcon_vit_s.py:demo", "--config.lr.base=-0.001",
     "config.lr.base: expected >= 0.0, found -0.001"),
    ("softcon_vit_s.py:demo", "--config.objective.mask_ratio=1.5",
     "config.objective.mask_ratio: expected a number in [0, 1), found 1.5"),
    ("pera_vit_b.py:demo", "--config.objective.insert_at_block=4",
     "config.objective.insert_at_block: expected an integer in [1, 3], found 4"),
    ("gfm_swin_b.py:demo", "--config.objective.mask_ratio=1.2",
     "config.objective.mask_ratio: expected a number in (0, 1), found 1.2"),
    ("softcon_vit_s.py:demo", "--config.data.num_workers=-2",
     "config.data.num_workers: expected >= 0, found -2"),
    ("nope.py", "--config.seed=1", "--config: "),
    ("softcon_vit_s.py:nope", "--config.seed=1",
     "softcon_vit_s.py:nope: ValueError: unknown config variant(s) ['nope']; known: ['demo', 'sar']"),
    ("../README.md", "--config.seed=1", "--config: SyntaxError: "),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, config, override, message):
    workdir = tmp_path / "w"
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT,
               GEOSSL_DEMO_TEACHERS=str(tmp_path / "teachers"))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                           f"--config={ROOT}/configs/{config}", f"--workdir={workdir}",
                           override], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("main.py: ") and message in lines[-1], lines[-5:]
    assert "Traceback" not in done.stderr
    assert not workdir.exists() and not (tmp_path / "teachers").exists()


def test_missing_config_field_names_the_override_in_process(monkeypatch):
    """The first override whose path the config lacks is named, valid ones before it pass; a path
    through a value says so; a config file that does not load leaves the message to absl."""
    monkeypatch.syspath_prepend(ROOT)
    import main
    config = f"--config={ROOT}/configs/softcon_vit_s.py:demo"
    assert main.missing_config_field(["main.py", config, "--config.seed=3",
                                      "--config.total_steps.x=1", "--config.nope=2"]) == (
        "--config.total_steps.x=1: config.total_steps is a value (600), not a section with field 'x'")
    assert main.missing_config_field(["main.py", config, "--config.lr.base=0.1"]) is None
    assert main.missing_config_field(["main.py", "--config=/nonexistent.py", "--config.a=1"]) is None


def test_data_that_does_not_fit_the_config_is_one_line(tmp_path):
    """9-class records under ``data.num_classes=4``: refused naming the record and the field,
    before the workdir exists."""
    from data_prep import synthetic
    data = str(tmp_path / "data")
    synthetic.generate(data, num_locations=8, heldout=0, num_shards=1, size=16, seasons=2,
                       num_workers=1, verbose=False)
    workdir = tmp_path / "w"
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT,
               GEOSSL_DATA=data)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"),
                           f"--config={ROOT}/configs/softcon_vit_s.py:demo", f"--workdir={workdir}",
                           "--config.data.num_classes=4", "--config.probe.every=0"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("main.py: the first training record does not fit the config: record "
                           "synthetic-train-000000: acq_labels has 9 classes, config.data.num_classes "
                           "is 4"), last
    assert "Traceback" not in done.stderr and not workdir.exists()


def _main(tmp_path, *args, **env_extra):
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
    env.pop("GEOSSL_TRACEBACK", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_any_other_bad_value_is_one_line_unless_a_traceback_is_asked_for(tmp_path):
    """A ValueError outside the config checks (here the compute dtype, checked as the model is
    built): one line, exit 1, no workdir; ``GEOSSL_TRACEBACK=1`` shows the traceback instead."""
    workdir = tmp_path / "w"
    args = (f"--config={ROOT}/configs/softcon_vit_s.py:demo", f"--workdir={workdir}",
            "--config.model.dtype=float8")
    done = _main(tmp_path, *args)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("main.py: ") and "config.model.dtype" in lines[-1], lines[-5:]
    assert "float8" in lines[-1] and "Traceback" not in done.stderr
    assert not workdir.exists()
    traced = _main(tmp_path, *args, GEOSSL_TRACEBACK="1")
    assert traced.returncode == 1 and "Traceback (most recent call last)" in traced.stderr


def test_a_corrupt_record_mid_run_is_one_line(tmp_path):
    """A record whose bytes were damaged after the shard was written (size unchanged, so the
    start-up checks pass) stops training with the reader's message, file and record named."""
    from data_prep import synthetic
    data = tmp_path / "data"
    synthetic.generate(str(data), num_locations=8, heldout=0, num_shards=1, size=16, seasons=2,
                       num_workers=1, verbose=False)
    shard = next(data.glob("train-*.tfrecord"))
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(blob))
    done = _main(tmp_path, f"--config={ROOT}/configs/softcon_vit_s.py:demo",
                 f"--workdir={tmp_path / 'w'}", f"--config.data.train={data}/train-*",
                 "--config.probe.every=0", "--config.monitor.every=0", "--config.total_steps=2",
                 "--config.global_batch=8")
    assert done.returncode == 1, done.stderr[-3000:]
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"main.py: {shard}: record ") and "CRC" in last, last
    assert "Traceback" not in done.stderr
