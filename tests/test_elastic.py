"""Elastic resume: a checkpoint written on N devices / processes resumes on M, the input stream
continuing at the same global sample (none repeated, none skipped)."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import common
from geossl.data.pipeline import make_dataset
from geossl.errors import ConfigError
from geossl.parallel import cpu_options
from geossl.train import checkpoint as ckpt_lib
from geossl.train import loop, signals
from test_engine_run import _env, _flags, read_metrics, shards, tiny_config  # noqa: F401
from test_preemption import SIGNAL_AT_STEP


def _rows(batch) -> list[tuple[int, int]]:
    return list(zip(batch["record"].tolist(), batch["draw"].tolist()))


def _view(record, rng):
    """A view that shows which record and which random draw made each row."""
    return {"record": np.int64(record), "draw": rng.integers(1 << 30)}


def _batches(position, process_count, count, global_batch=12):
    """``count`` global batches from ``position``, each the process-local batches in process
    order (what ``jax.make_array_from_process_local_data`` assembles)."""
    iters = [iter(make_dataset(list(range(30)), _view, seed=5, local_batch_size=global_batch
                               // process_count, process_index=p, process_count=process_count,
                               start_position=position, tune_malloc=False))
             for p in range(process_count)]
    return [sum((_rows(next(it)) for it in iters), []) for _ in range(count)]


def test_the_stream_continues_at_its_global_position_on_any_process_count():
    uninterrupted = _batches(0, 1, 6)  # 72 rows: more than two epochs of 30 records
    flat = sum(uninterrupted, [])
    assert len(set(flat)) == len(flat)  # each row its own draw
    for processes in (1, 2, 3, 4):
        assert _batches(0, processes, 2) == uninterrupted[:2]
        # resumed after 2 global batches (24 rows) on another process count
        assert _batches(24, processes, 4) == uninterrupted[2:]
    # a resume at a position that is not a multiple of the new global batch (batch changed)
    assert sum(_batches(24, 2, 4, global_batch=8), []) == flat[24:56]


class _StopAt:
    """An evaluator hook that sends this process SIGTERM after ``step``: the trainer checkpoints
    that step and raises signals.Stopped, as on a preemption notice."""

    every = 1

    def __init__(self, step):
        self.step = step

    def __call__(self, step, backbone):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}


def test_eight_then_four_then_two_devices_log_the_losses_of_one_device(shards, tmp_path,
                                                                       monkeypatch):
    """Steps 1–2 on 8 devices, 3–4 on 4, 5–6 on 2 (data × fsdp 2, so the parameters reshard too),
    each stop a SIGTERM: the losses (float32 rounding: within 1e-5 relative) and weights of an
    uninterrupted one-device run."""
    # SGD: AdamW turns the float-rounding noise of near-zero gradients (reductions in another
    # order on another device count) into ±lr updates, which a few steps later moves the loss by
    # ~1e-3 (measured 4e-3 at step 5 for 1 or 4 devices against 2 or 8, without any resume).
    # XLA's default CPU build: the runs agree to 2e-5 (weights). With the train step's CPU option
    # (parallel/cpu_options.py: XLA's own convolutions, whose rounding follows the per-device
    # batch) six steps grow that to 2e-4, which would hide less of a wrong resume
    monkeypatch.setattr(cpu_options, "step_compiler_options", lambda devices: None)

    def config(**mesh):
        c = tiny_config(shards, **{"lr.base": 0.05}, **mesh)
        c.optim = common.optim("sgd", weight_decay=0.0, momentum=0.9, clip_norm=1.0)
        return c

    one = loop.run(config(**{"mesh.data": 1, "mesh.fsdp": 1}), str(tmp_path / "one"),
                   devices=jax.devices()[:1])
    elastic, sharded = str(tmp_path / "elastic"), config(**{"mesh.data": -1, "mesh.fsdp": 2})
    for devices, stop in ((8, 2), (4, 4)):
        with pytest.raises(signals.Stopped) as stopped:
            loop.run(sharded, elastic, devices=jax.devices()[:devices], hooks=[_StopAt(stop)])
        assert stopped.value.step == stop
    done = loop.run(sharded, elastic, devices=jax.devices()[:2])
    assert done["final_step"] == 6
    before = {name: os.path.getmtime(os.path.join(elastic, name))
              for name in ("config.json", "metrics.jsonl")}
    shorter = config(**{"mesh.data": -1, "mesh.fsdp": 2, "total_steps": 3})
    with pytest.raises(ConfigError, match="checkpoint is at step 6, past 3"):
        loop.run(shorter, elastic, devices=jax.devices()[:2])   # audit: exit 0, "final_step 3"
    assert before == {name: os.path.getmtime(os.path.join(elastic, name)) for name in before}
    a, b = read_metrics(one["workdir"]), read_metrics(elastic)
    assert [r["step"] for r in b] == list(range(1, 7))
    losses = [r["loss"] for r in a]
    assert max(losses) - min(losses) > 0.1  # the weights move: a wrong resume would show
    np.testing.assert_allclose(losses, [r["loss"] for r in b], atol=1e-5, rtol=1e-5)
    ra = ckpt_lib.Checkpointer(one["workdir"], async_save=False).restore_raw(6)
    rb = ckpt_lib.Checkpointer(elastic, async_save=False).restore_raw(6)
    # float32 reductions in another order move a weight by up to ~2e-5 in six steps at the
    # suite's XLA level 0 (tests/xla_env.py); a step redone or skipped moves them by lr·grad
    for x, y in zip(jax.tree_util.tree_leaves(ra), jax.tree_util.tree_leaves(rb)):
        np.testing.assert_allclose(x, y, atol=5e-5, rtol=1e-4)


@pytest.mark.multiprocess
def test_two_processes_then_one_log_the_losses_of_one_process(shards, tmp_path):
    """Steps 1–2 (or 1–3) on two processes of one device each, stopped by SIGTERM, the rest
    resumed on one process of two devices: the losses of an uninterrupted one-process run (two
    devices per run keep the four compilations of this test small; test_eight_then_four_then_two
    covers other device counts)."""
    import portpicker
    port = portpicker.pick_unused_port()
    single, elastic = str(tmp_path / "single"), str(tmp_path / "elastic")
    # the uninterrupted run in this process (main.py's loop.run on two devices; no interpreter
    # to start)
    loop.run(tiny_config(shards, total_steps=4), single, devices=jax.devices()[:2])
    procs = [subprocess.Popen(
        [sys.executable, "-c", SIGNAL_AT_STEP, "2", "SIGTERM", "process"]
        + _flags(shards, elastic, total_steps=4)[1:]
        + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs[0][-3000:] + outs[1][-3000:]
    # the processes agree on the stop at a step boundary: the step asked or the next one
    stopped = read_metrics(elastic)[-1]["step"]
    assert stopped in (2, 3) and [r["step"] for r in read_metrics(elastic)] == [1, 2, 3][:stopped]
    done = subprocess.run(_flags(shards, elastic, total_steps=4), env=_env(2),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {elastic}/checkpoints/{stopped} (global sample {16 * stopped})" in \
        done.stderr, done.stderr[-3000:]
    a = [r["loss"] for r in read_metrics(single)]
    b = [r["loss"] for r in read_metrics(elastic)]
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)   # reduction order
