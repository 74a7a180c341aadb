"""Batches handed from grain worker processes to the trainer's process in reused shared memory.

grain sends a worker's numpy arrays through a new shared-memory block per array, and writing a new
block costs a page fault per 4 KiB page: 2.3 ms for one SoftCon two-view sample (2 × 224² × 13
float32) on a 2-core host, as long as rendering it, so a worker delivered about half of what a
core renders in process (``benchmarks/input_pipeline.py``). Here each worker keeps up to
``MAX_BLOCKS`` blocks and writes every batch into a free one, whose pages are already mapped; the
trainer's process maps each block once and reads the batch in place. The first byte of a block
is its state:

    worker   (:func:`write`): takes a FREE block (or makes one), sets it BUSY, writes the batch
             (each sample as it is made), sends a :class:`SharedBatch` (block name, array
             layout) through grain's queue;
    trainer  (:func:`open_batch`): maps the block (once; the name is then unlinked, the memory
             lives while a process maps it) and returns arrays viewing it; once the last of them is
             garbage collected, the block is FREE again.

With every block BUSY (batches the trainer holds, or ones dropped in flight when grain restarts
its workers) a worker writes the batch into a one-off block, as grain would. A worker unlinks
its blocks as it exits, and exits when its trainer is gone (``kill -9``: re-parented workers
would otherwise live on with their blocks).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import threading
import time
import weakref
from multiprocessing import shared_memory
from multiprocessing import util as mp_util
from typing import Callable, Iterable

import numpy as np

FREE, BUSY = 0, 1
#: Bytes before the first array: the state byte, then alignment.
HEADER = 64
#: Reused blocks per worker: grain's per-worker buffer, its read-ahead and the trainer's device
#: prefetch each hold a batch or two, and each read thread the batch it is filling.
MAX_BLOCKS = 8
#: Seconds between a worker's checks that its trainer process is still there.
PARENT_CHECK_S = 1.0


@dataclasses.dataclass(frozen=True)
class SharedBatch:
    """A batch in a worker's block: layout {key: (start, end byte, shape, dtype str)}; ``reused``:
    the block returns to its worker (else a one-off, closed after this batch); ``pid``: the worker."""

    block: str
    layout: dict
    reused: bool
    pid: int


def _layout(specs: dict) -> tuple[dict, int]:
    """{key: (shape, dtype)} → ({key: (start, end byte, shape, dtype str)}, block bytes), each
    array starting 64-byte aligned."""
    layout, offset = {}, HEADER
    for key, (shape, dtype) in specs.items():
        dtype = np.dtype(dtype)
        end = offset + int(np.prod(shape)) * dtype.itemsize
        layout[key] = (offset, end, tuple(shape), dtype.str)
        offset = -(-end // 64) * 64
    return layout, offset


class _WorkerBlocks:
    """A worker's reusable blocks (its read threads take them under one lock), and its latest
    one-off blocks, whose names it removes when it exits (:meth:`unlink_unmapped`)."""

    def __init__(self):
        self.blocks: list[shared_memory.SharedMemory] = []
        self.one_offs: collections.deque = collections.deque(maxlen=64)
        self.lock = threading.Lock()
        self._at_exit, self.exiting = None, False

    def take(self, size: int) -> tuple[shared_memory.SharedMemory, bool]:
        """A BUSY block of at least ``size`` bytes, and whether it is one of the reused ones."""
        with self.lock:
            return self._take(size)

    def _take(self, size: int) -> tuple[shared_memory.SharedMemory, bool]:
        free = [block for block in self.blocks if block.buf[0] == FREE]
        for block in free:
            if block.size >= size:
                block.buf[0] = BUSY
                return block, True
        if free:                      # too small for this batch: replaced (the trainer unlinked it)
            self.blocks.remove(free[0])
            free[0].close()
        block = shared_memory.SharedMemory(create=True, size=size)
        block.buf[0] = BUSY
        if self.exiting:              # a read thread still at work as the process exits
            block.unlink()
        reused = len(self.blocks) < MAX_BLOCKS
        (self.blocks if reused else self.one_offs).append(block)
        if self._at_exit is None:     # run as the process exits (multiprocessing's exit hook)
            self._at_exit = mp_util.Finalize(None, self.unlink_unmapped, exitpriority=0)
            trainer = multiprocessing.parent_process()   # None in the trainer itself
            if trainer is not None:  # its pid from the spawn: this may run after it died
                threading.Thread(target=_exit_with_parent, args=(trainer.pid, self),
                                 name="geossl-parent-watch", daemon=True).start()
        return block, reused

    def unlink_unmapped(self) -> None:
        """Removes the names of this worker's blocks that the trainer never mapped: batches in
        flight when grain stopped the workers. The trainer unlinks a block when it maps it, so
        the rest are gone already; without this, Python's resource tracker removes them at
        shutdown with a warning about "leaked shared_memory objects"."""
        with self.lock:
            self.exiting = True
            for block in [*self.blocks, *self.one_offs]:
                try:
                    block.unlink()
                except FileNotFoundError:
                    pass


def _exit_with_parent(parent: int, blocks: _WorkerBlocks, every_s: float = PARENT_CHECK_S) -> None:
    """A worker's watch: once its trainer is gone (killed with SIGKILL: the worker is re-parented)
    it unlinks its blocks and exits, instead of living on with its blocks mapped."""
    while os.getppid() == parent:
        time.sleep(every_s)
    blocks.unlink_unmapped()
    os._exit(1)


_worker_blocks = _WorkerBlocks()


def write(samples: Iterable[dict], stack: Callable) -> SharedBatch:
    """Worker side: ``stack(samples, into)`` (pipeline.stack; ``samples`` may be made as they are
    written, and a failing one frees the block) written into a block of this process; the
    :class:`SharedBatch` that names it."""
    taken = {}

    def into(specs: dict) -> dict:
        layout, size = _layout(specs)
        block, reused = _worker_blocks.take(size)
        taken.update(block=block, reused=reused, layout=layout)
        return {k: np.ndarray(shape, dtype, buffer=block.buf, offset=start)
                for k, (start, _, shape, dtype) in layout.items()}

    try:
        stack(samples, into)       # the arrays it returns view the block; dropped here
    except BaseException:          # the block goes back unused (a one-off is unlinked; its
        if taken and taken["reused"]:  # mapping closes with the arrays the traceback still holds)
            taken["block"].buf[0] = FREE
        elif taken:
            taken["block"].unlink()
        raise
    block = taken["block"]
    if not taken["reused"]:
        block.close()              # the trainer's process unlinks it once mapped
    return SharedBatch(block.name, taken["layout"], taken["reused"], os.getpid())


class _TrainerMaps:
    """The trainer process's mappings of worker blocks, by name, with the worker's pid."""

    def __init__(self):
        self.blocks: dict[str, tuple[shared_memory.SharedMemory, int]] = {}

    def get(self, name: str, pid: int) -> shared_memory.SharedMemory:
        entry = self.blocks.get(name)
        if entry is None:
            self._close_free_blocks_of_finished_workers()
            try:
                block = shared_memory.SharedMemory(name=name)
            except FileNotFoundError:
                raise RuntimeError(f"input batch block {name!r} of grain worker {pid} is gone: "
                                   f"the worker exited (its iterator was closed) before the "
                                   f"batch was read") from None
            block.unlink()         # the memory lives while a process maps it
            entry = self.blocks[name] = (block, pid)
        return entry[0]

    def release(self, name: str, reused: bool) -> None:
        """The arrays of a batch in block ``name`` are gone."""
        block, _ = self.blocks[name]
        if reused:
            block.buf[0] = FREE
        else:
            del self.blocks[name]
            block.close()

    def _close_free_blocks_of_finished_workers(self) -> None:
        """A block whose worker has exited and whose arrays are gone is closed (its memory freed)."""
        for name, (block, pid) in list(self.blocks.items()):
            if block.buf[0] == FREE and not _alive(pid):
                del self.blocks[name]
                block.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


_trainer_maps = _TrainerMaps()


def open_batch(batch):
    """Trainer side: a :class:`SharedBatch` → {key: array viewing its block} (the block is freed
    for its worker when they are garbage collected); any other batch is returned as it is."""
    if not isinstance(batch, SharedBatch):
        return batch
    block = _trainer_maps.get(batch.block, batch.pid)
    end = max(end for _, end, _, _ in batch.layout.values())
    base = np.ndarray((end,), np.uint8, buffer=block.buf)
    weakref.finalize(base, _trainer_maps.release, batch.block, batch.reused)
    return {k: base[start:end].view(dtype).reshape(shape)
            for k, (start, end, shape, dtype) in batch.layout.items()}
