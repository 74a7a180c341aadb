"""Worker batches in reused shared-memory blocks (geossl.data.shared_batches): a block is written
again only once the trainer's arrays on it are gone; batches equal those built in process."""

import functools
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from geossl.data import pipeline, shared_batches


def _samples(value, n=3):
    return [{"image": np.full((4, 5, 2), value + i, np.float32), "index": np.int64(value + i)}
            for i in range(n)]


def _write_and_open(value):
    batch = shared_batches.write(_samples(value), pipeline.stack)
    return batch, shared_batches.open_batch(batch)


def test_a_block_is_written_again_only_after_its_arrays_are_gone():
    a_meta, a = _write_and_open(10)
    b_meta, b = _write_and_open(20)
    assert a_meta.block != b_meta.block and a_meta.reused and b_meta.reused
    np.testing.assert_array_equal(a["image"][:, 0, 0, 0], [10, 11, 12])
    assert a["index"].tolist() == [10, 11, 12] and a["image"].dtype == np.float32
    image = a["image"]                      # one array of the batch keeps the block BUSY
    del a
    gc.collect()
    c_meta, c = _write_and_open(30)
    assert c_meta.block not in (a_meta.block, b_meta.block)
    np.testing.assert_array_equal(image[:, 0, 0, 0], [10, 11, 12])
    del image, c
    gc.collect()
    d_meta, d = _write_and_open(40)         # a's block (or c's) again, not b's
    assert d_meta.block in (a_meta.block, c_meta.block)
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], [20, 21, 22])
    np.testing.assert_array_equal(d["image"][:, 0, 0, 0], [40, 41, 42])


def test_all_blocks_busy_gives_a_one_off_block_and_a_failed_batch_frees_its_block():
    held = [_write_and_open(100 * i)[1] for i in range(shared_batches.MAX_BLOCKS + 2)]
    meta, extra = _write_and_open(7)
    assert not meta.reused
    for i, batch in enumerate(held):
        assert batch["index"][0] == 100 * i
    assert extra["index"].tolist() == [7, 8, 9]
    del extra
    gc.collect()
    assert meta.block not in shared_batches._trainer_maps.blocks   # one-off: closed
    del held
    gc.collect()
    with pytest.raises(ValueError, match="different shapes for 'image'"):
        shared_batches.write(_samples(1) + [{"image": np.zeros((1,), np.float32),
                                             "index": np.int64(0)}], pipeline.stack)
    reused = {_write_and_open(v)[0].block for v in range(3)}  # each dropped before the next
    assert len(reused) == 1

    def failing_rows():                     # a view that fails mid-batch, samples made lazily
        yield from _samples(5, n=2)
        raise OSError("record 7: truncated")
    with pytest.raises(OSError, match="record 7"):
        shared_batches.write(failing_rows(), functools.partial(pipeline.stack, size=3))
    assert _write_and_open(9)[0].block in reused               # that block went back FREE


def test_open_batch_passes_a_batch_built_in_process():
    batch = pipeline.stack(_samples(0))
    assert shared_batches.open_batch(batch) is batch


def _view(record, rng):
    return {"image": np.full((16, 16, 4), record, np.float32) + rng.random((16, 16, 4)),
            "record": np.int64(record)}


@pytest.mark.parametrize("read_threads", [1, 2])
def test_worker_batches_held_by_the_trainer_equal_the_in_process_ones(read_threads):
    """More batches held than a worker has blocks: none is overwritten; then, dropped as they
    come, the worker writes into the same few blocks (its read threads take blocks in turn)."""
    n = shared_batches.MAX_BLOCKS * 2 + 1
    earlier = set(shared_batches._trainer_maps.blocks)   # mapped by earlier tests
    reference = iter(pipeline.make_dataset(list(range(50)), _view, seed=1, local_batch_size=4))
    reference = [next(reference) for _ in range(3 * n)]
    it = iter(pipeline.make_dataset(list(range(50)), _view, seed=1, local_batch_size=4,
                                    num_workers=1, read_threads=read_threads))
    try:
        held = [next(it) for _ in range(n)]
        for got, want in zip(held, reference):
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["record"], want["record"])
        del held, got
        gc.collect()
        seen = set()
        for i, want in enumerate(reference[n:]):
            got = next(it)
            np.testing.assert_array_equal(got["image"], want["image"])
            if i >= n:   # after the one-off blocks written while all were held
                seen |= set(shared_batches._trainer_maps.blocks) - earlier
            del got
        assert 0 < len(seen) <= shared_batches.MAX_BLOCKS
    finally:
        it.close()


_STOPPED_MID_STREAM = """
import os
import numpy as np
from geossl.data import pipeline, shared_batches

_take = shared_batches._WorkerBlocks._take

def logged_take(self, size):     # module level: the spawned workers run it too
    block, reused = _take(self, size)
    with open(os.environ["BLOCK_LOG"], "a") as log:
        log.write(block.name + "\\n")
    return block, reused

shared_batches._WorkerBlocks._take = logged_take

def view(record, rng):
    return {"image": np.full((64, 64, 4), record, np.float32)}

def main():
    it = iter(pipeline.make_dataset(list(range(40)), view, seed=0, local_batch_size=4,
                                    num_workers=2))
    assert next(it)["image"].shape == (4, 64, 64, 4)
    it.close()      # batches still in flight in both workers
    print("closed")

if __name__ == "__main__":
    main()
"""


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory under /dev/shm")
def test_workers_stopped_mid_stream_leave_no_blocks_and_no_tracker_warning(tmp_path):
    """Blocks the trainer never mapped are unlinked by their worker as it exits: none of the
    blocks the workers made stays in /dev/shm, and Python's resource tracker has nothing to clean
    up (no "leaked shared_memory objects" warning at the end of every run with workers). The
    script logs its blocks' names: other tests running beside this one make blocks of their own."""
    script, log = tmp_path / "stopped.py", tmp_path / "blocks.txt"
    script.write_text(_STOPPED_MID_STREAM)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=root,
                         env={**os.environ, "PYTHONPATH": root, "BLOCK_LOG": str(log)})
    assert run.returncode == 0 and "closed" in run.stdout, run.stderr[-2000:]
    assert "leaked shared_memory" not in run.stderr, run.stderr[-2000:]
    made = set(log.read_text().split())
    assert len(made) >= 2                       # both workers made blocks
    assert not made & set(os.listdir("/dev/shm"))


_KILLED_MID_STREAM = _STOPPED_MID_STREAM.replace('''    it.close()      # batches still in flight in both workers
    print("closed")''', '''    import multiprocessing, signal
    pids = [p.pid for p in multiprocessing.active_children()]
    print(" ".join(map(str, pids)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # as a preempted host's trainer dies''')


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory under /dev/shm")
def test_workers_of_a_killed_trainer_exit_and_unlink_their_blocks(tmp_path):
    """``kill -9`` of the trainer: its grain workers notice they were re-parented, unlink their
    blocks and exit (audit: they lived on for 20 minutes holding their blocks in /dev/shm)."""
    import time
    script, log = tmp_path / "killed.py", tmp_path / "blocks.txt"
    script.write_text(_KILLED_MID_STREAM)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:   # files: orphans hold no pipe
        run = subprocess.run([sys.executable, str(script)], stdout=stdout, stderr=stderr,
                             timeout=300, cwd=root,
                             env={**os.environ, "PYTHONPATH": root, "BLOCK_LOG": str(log)})
    assert run.returncode == -9, err.read_text()[-2000:]
    pids = [int(p) for p in out.read_text().split()]
    assert pids, out.read_text()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    deadline = time.time() + 30
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), pids
    made = set(log.read_text().split())
    assert len(made) >= 2 and not made & set(os.listdir("/dev/shm"))
