"""SIGINT / SIGTERM stop main.py at a step boundary with a checkpoint of that step, one line and
exit status 130 / 143; after those and a SIGKILL between checkpoints the reruns resume
bit-exactly. A workdir in use is refused (exit 2)."""

import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from geossl.train import checkpoint as ckpt_lib
from geossl.train import loop, signals
from geossl.train.workdir_lock import WorkdirLock
from test_engine_run import _env, _flags, read_metrics, tiny_config

#: Runs main.py with an evaluator hook that sends this process a signal after a given step (so
#: the signal arrives mid-run at a known step, through the real handlers).
#: argv: STEP SIGNAL WHO main.py FLAGS... (WHO: "process", or "group": its whole process group,
#: grain workers included, as a scheduler's stop does). In a run of several processes the hook
#: then waits 3 s: jax's preemption service needs some RPCs to agree on a stop step, and a tiny
#: run's last steps take less (a signal near the end lets the run finish, exit 0).
SIGNAL_AT_STEP = """
import os, runpy, signal, sys, time
import jax
from geossl.train import loop, signals
at, signum, who = int(sys.argv[1]), getattr(signal, sys.argv[2]), sys.argv[3]

class SignalAt:
    every = 1
    def __call__(self, step, backbone):
        if step == at and who == "group":
            os.killpg(os.getpgid(0), signum)
        elif step == at:
            os.kill(os.getpid(), signum)
        if step == at and jax.process_count() > 1:
            time.sleep(3)
        return {}

run = loop.run
loop.run = lambda config, workdir, hooks=(), **kw: run(config, workdir,
                                                      hooks=[*hooks, SignalAt()], **kw)
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

_ABSL_LINE = re.compile(r"^[IWEF]\d{4} ")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_prep import synthetic
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(out, num_locations=64, heldout=0, size=16, seasons=2, num_shards=2,
                       num_workers=1, verbose=False)
    return os.path.join(out, "train-*.tfrecord")


def _own_lines(stderr: str) -> list[str]:
    """stderr less absl's log lines: what the program itself printed."""
    return [l for l in stderr.splitlines() if l.strip() and not _ABSL_LINE.match(l)]


def _checkpoint_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _main(cmd, **kw):
    return subprocess.run(cmd, env=_env(1), capture_output=True, text=True, timeout=300, **kw)


def _signal_at(step, name, shards, workdir, who="process", **extra):
    """main.py signalled after ``step``; "group": in a session of its own, its whole group."""
    return _main([sys.executable, "-c", SIGNAL_AT_STEP, str(step), name, who]
                 + _flags(shards, workdir, **extra)[1:], start_new_session=who == "group")


def test_sigint_sigkill_sigterm_then_resume_bit_exactly(shards, tmp_path):
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    # 6 steps, checkpoints every 2; its allocator setting changes no bit of the result
    done = _main(_flags(shards, full) + ["--keep_step_memory"])
    assert done.returncode == 0, done.stderr[-3000:]

    done = _signal_at(3, "SIGINT", shards, stopped)
    assert done.returncode == 130, done.stderr[-3000:]
    assert _own_lines(done.stderr) == [
        f"main.py: stopped by SIGINT after step 3: checkpoint {stopped}/checkpoints/3 written; "
        f"the same command resumes from it (exit status 130)"], done.stderr[-3000:]
    assert _checkpoint_steps(stopped) == [2, 3]
    assert [r["step"] for r in read_metrics(stopped)] == [1, 2, 3]
    assert not os.path.exists(os.path.join(stopped, "run.lock"))  # released on the way out

    # SIGKILL after step 4's update, before its checkpoint: nothing of step 4 survives, and the
    # lock of the dead process is taken over by the next run
    done = _signal_at(4, "SIGKILL", shards, stopped)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert _checkpoint_steps(stopped) == [2, 3]

    # SIGTERM to the whole process group, a grain worker included (which builds the same
    # batches): the worker leaves the stop to the trainer and exits cleanly, so the one line is
    # all (its killed blocks made the resource tracker warn of "leaked shared_memory objects")
    done = _signal_at(5, "SIGTERM", shards, stopped, who="group", **{"data.num_workers": 1})
    assert done.returncode == 143, done.stderr[-3000:]
    assert _own_lines(done.stderr) == [
        f"main.py: stopped by SIGTERM after step 5: checkpoint {stopped}/checkpoints/5 written; "
        f"the same command resumes from it (exit status 143)"], done.stderr[-3000:]
    assert 5 in _checkpoint_steps(stopped) and 6 not in _checkpoint_steps(stopped)

    # what a kill during step 4's write would have left: orbax's temporary folder, a partial
    # state; the resume removes it (a probe's reader would not)
    leftover = os.path.join(stopped, "checkpoints", "4.orbax-checkpoint-tmp-1733500000")
    shutil.copytree(os.path.join(stopped, "checkpoints", "3"), leftover)
    done = _main(_flags(shards, stopped))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not os.path.exists(leftover)
    assert "removed 1 unfinished checkpoint write(s)" in done.stderr, done.stderr[-3000:]
    a, b = read_metrics(full), read_metrics(stopped)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ra = ckpt_lib.Checkpointer(full, async_save=False).restore_raw(6)
    rb = ckpt_lib.Checkpointer(stopped, async_save=False).restore_raw(6)
    la, lb = jax.tree_util.tree_leaves(ra), jax.tree_util.tree_leaves(rb)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)

    # a resume refused (another projector) changes nothing: no TensorBoard file, no lock left
    before = _snapshot(stopped)
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="projector"):
        loop.run(tiny_config(shards, **{"objective.proj_dim": 24}), stopped)
    assert _snapshot(stopped) == before


def _snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file under ``folder``."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), folder)] = (stat.st_size,
                                                                       stat.st_mtime_ns)
    return found


def test_workdir_in_use_is_refused_in_one_line_before_it_changes(shards, tmp_path):
    workdir = tmp_path / "busy"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with WorkdirLock(str(workdir)):
        before = _snapshot(workdir)
        done = _main(_flags(shards, str(workdir)))
        after = _snapshot(workdir)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = _own_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"main.py: workdir {workdir} is in use by process {os.getpid()} on host "), lines
    assert "Traceback" not in done.stderr
    assert before == after  # nothing written, not even a TensorBoard file or the config


def test_sigterm_before_the_first_step_boundary_is_one_line(tmp_path):
    """A signal during start-up (here: while the config loads) stops at once, in one line."""
    config = tmp_path / "slow_config.py"
    config.write_text("import os, signal, time\n"
                      "def get_config():\n"
                      "    os.kill(os.getpid(), signal.SIGTERM)\n"
                      "    time.sleep(30)\n")
    done = _main([sys.executable, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "main.py"), f"--config={config}", f"--workdir={tmp_path}/w"])
    assert done.returncode == 128 + signal.SIGTERM
    assert _own_lines(done.stderr) == [
        "main.py: stopped by SIGTERM before a step boundary; nothing new was saved (the same "
        "command resumes from the last checkpoint)"], done.stderr[-3000:]


@pytest.mark.parametrize("signum, group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_data_prep_stops_in_one_line_leaving_the_older_set(tmp_path, signum, group):
    """Ctrl-C (SIGINT to the process group, workers included) or SIGTERM to the CLI while shards
    are written: one line, 130 / 143, no temporaries, and the older set of the folder as it was
    (its files, sizes and times; it still reads as whole)."""
    import glob
    import time
    from geossl.data import manifest
    out = str(tmp_path / "data")
    older = subprocess.run(
        [sys.executable, "-m", "data_prep.synthetic", "--output", out, "--num_locations", "4",
         "--size", "16", "--seasons", "2", "--num_shards", "2", "--num_workers", "1",
         "--heldout", "0"], env=_env(1), capture_output=True, text=True, timeout=300)
    assert older.returncode == 0, older.stderr[-3000:]

    def listing():
        return sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(out))
    before = listing()
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.synthetic", "--output", out, "--num_locations", "3000",
         "--size", "16", "--seasons", "2", "--num_shards", "4", "--num_workers", "2",
         "--heldout", "0"], env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    deadline = time.time() + 120
    while not glob.glob(os.path.join(out, ".train-*.tmp-*")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.02)
    (os.killpg if group else os.kill)(proc.pid, signum)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signum, stderr[-3000:]
    name = signal.Signals(signum).name
    assert re.split(r"[\r\n]+", stderr.strip())[-1] == (
        f"python -m data_prep.synthetic: stopped by {name}; the shards it was writing are removed "
        f"and an older set is kept as it was (stopped while replacing it: PREFIX.incomplete, "
        f"refused until the same command is run again)")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert not os.path.exists(manifest.marker_path(out, "train"))
    assert not glob.glob(os.path.join(out, ".*.tmp-*"))
    assert listing() == before
    manifest.check_shard_set(sorted(glob.glob(os.path.join(out, "train-*.tfrecord"))))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(shards, tmp_path):
    """jax's preemption service: SIGTERM reaches process 1 only; both processes checkpoint the
    sync step together, exit 143, and resume (~1 min on 2 cores: run with -m slow)."""
    import portpicker
    workdir = str(tmp_path / "w")

    def launch(signal_step):
        port = portpicker.pick_unused_port()
        cluster = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
        flags = _flags(shards, workdir)
        cmds = [flags + cluster + ["--process_id=0"],
                ([sys.executable, "-c", SIGNAL_AT_STEP, str(signal_step), "SIGTERM", "process"]
                 if signal_step else [sys.executable]) + flags[1:] + cluster + ["--process_id=1"]]
        procs = [subprocess.Popen(c, env=_env(4), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for c in cmds]
        return [(p.communicate(timeout=600)[1], p.returncode) for p in procs]

    for stderr, code in launch(3):
        assert code == 143, stderr[-3000:]
        assert _own_lines(stderr)[-1] == (
            f"main.py: stopped by SIGTERM after step 3: checkpoint {workdir}/checkpoints/3 "
            f"written; the same command resumes from it (exit status 143)")
    for stderr, code in launch(None):
        assert code == 0, stderr[-3000:]
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, 7))


def test_a_start_up_signal_python_dropped_stops_the_run_at_its_loop(monkeypatch):
    """jax runs a garbage-collector callback at start-up; a SIGTERM handled inside it raises
    ``Interrupted`` there, which Python prints and drops ("Exception ignored in ..."). The run
    then stops where the loop begins (audit: it trained to the end and exited 0)."""
    import gc

    from geossl.train import signals

    class Finaliser:
        def __del__(self):
            signals.raise_interrupted(signal.SIGTERM, None)

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    Finaliser()          # the handler's exception is raised inside __del__ and dropped
    gc.collect()
    assert dropped == [signals.Interrupted]
    with pytest.raises(signals.Interrupted):
        signals.raise_if_interrupted()
    previous = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    try:   # the CLIs' handlers also keep Python's "Exception ignored" lines off stderr
        signals.install_interrupt_handlers()
        Finaliser()
        gc.collect()
        assert dropped == [signals.Interrupted]
        sys.unraisablehook(type("U", (), {"exc_type": ValueError})())
        assert dropped == [signals.Interrupted, ValueError]   # others still reach the hook
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    with pytest.raises(signals.Interrupted) as stop:
        with signals.StopRequest(1):
            pass
    assert stop.value.exit_code == 143
    with signals.StopRequest(1) as request:   # taken once: the next loop runs
        assert not request.due(1)


def test_the_loop_waits_for_each_step_two_steps_later(tmp_path, monkeypatch):
    """With log and checkpoint rows far apart, the host still waits for step k's results when it
    has dispatched step k + STEPS_IN_FLIGHT: a stop request is checkpointed within that many
    steps (audit: a SIGTERM acted on 17 steps, 6 s, later with log_every 1000)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from geossl.parallel import mesh as mesh_lib
    from geossl.train import loop, metrics as metrics_lib

    waited = []
    real = jax.block_until_ready

    def recording(tree):
        if isinstance(tree, dict) and "step" in tree:
            waited.append(int(tree["step"]))
        return real(tree)
    monkeypatch.setattr(loop.jax, "block_until_ready", recording)

    config = ml_collections.ConfigDict(dict(total_steps=7, checkpoint_every=1000, log_every=1000,
                                            global_batch=8))
    step = jax.jit(lambda state, batch: (state + 1, {"step": state + 1,
                                                    "loss": jnp.sum(batch["x"]) * 0.0}))
    data = iter(lambda: {"x": np.ones((8, 2), np.float32)}, None)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1}),
                              jax.devices()[:1])
    saved = []

    class Checkpointer:
        directory = str(tmp_path)

        def wait(self):
            pass

    writer = metrics_lib.MetricsWriter(str(tmp_path), 7)
    loop._loop(config, jnp.zeros((), jnp.int32), 0, step, data, mesh,
               lambda s, _: saved.append(s), Checkpointer(), writer)
    writer.close()
    assert loop.STEPS_IN_FLIGHT == 2
    assert waited == [1, 2, 3, 4, 5]        # after dispatching steps 3..7
    assert saved == [7]


def test_the_stop_line_says_what_a_rerun_does():
    """A fresh run stopped before its first step has no checkpoint to resume from."""
    assert str(signals.Stopped(15, 0, None)) == (
        "stopped by SIGTERM after step 0: nothing was trained; the same command starts the run "
        "(exit status 143)")
    assert str(signals.Stopped(2, 7, None)) == (
        "stopped by SIGINT after step 7: no step ran since the last checkpoint; the same command "
        "resumes from it (exit status 130)")
