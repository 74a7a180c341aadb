"""Shards written by parallel processes: ``write_shards`` splits work items into ``num_shards``
contiguous runs, one process writes each shard atomically (ShardWriter) and a tqdm bar counts
records; the run summary is saved beside the shards.

Shards are written under hidden staged names and replace an older set of the same prefix only
once every shard is written (geossl.data.manifest.replace_set): a run that fails or is stopped
while writing leaves the folder as it was (a folder it created is removed again).
``committed_together`` extends that to several sets (the splits of one run).

A caller names a picklable ``make_record(item) -> record dict``, which raises ``BadInputError``
(naming the file) for an input it cannot use: the run stops on it, or with ``skip_bad`` counts it
as skipped and goes on.
"""

from __future__ import annotations

import contextlib
import glob
import json
import multiprocessing
import os
import queue as queue_lib
import signal
import time
import uuid
from collections.abc import Callable, Sequence

from geossl.data import manifest
from geossl.data.writer import ShardWriter, shard_name

MAX_LISTED_BAD = 100


class BadInputError(ValueError):
    """An input item that cannot be converted; the message names the file and the problem."""


_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    if progress_queue is not None:  # a pool worker: Ctrl-C is the parent's to handle (it ends
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool), not a traceback per worker


def _write_one_shard(task) -> dict:
    path, items, make_record, skip_bad = task
    stats = {"path": path, "records": 0, "skipped": 0, "bad": []}
    with ShardWriter(path, compression="") as writer:
        for item in items:
            try:
                record = make_record(item)
            except BadInputError as e:
                if not skip_bad:
                    raise
                stats["skipped"] += 1
                if len(stats["bad"]) < MAX_LISTED_BAD:
                    stats["bad"].append({"item": str(item), "error": str(e)})
                record = None
            if record is not None:
                writer.write(record)
                stats["records"] += 1
            if _progress_queue is not None:
                _progress_queue.put(1)
    return stats


def split_evenly(items: Sequence, num_parts: int) -> list[list]:
    """Contiguous runs whose lengths differ by at most one."""
    n = len(items)
    return [list(items[k * n // num_parts:(k + 1) * n // num_parts]) for k in range(num_parts)]


def _missing_folders(folder: str) -> list[str]:
    """The folders ``os.makedirs(folder)`` would create, outermost first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.exists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


class _StagedSet:
    """One set's shards written under staged names, waiting to replace the set on disk."""

    def __init__(self, output_dir: str, prefix: str, paths: list[str]):
        self.output_dir, self.prefix, self.paths = output_dir, prefix, paths
        self.created = _missing_folders(output_dir)
        self.found = os.path.dirname(self.created[0]) if self.created else output_dir
        found = os.stat(self.found)
        self.found_times = (found.st_atime_ns, found.st_mtime_ns)
        os.makedirs(output_dir, exist_ok=True)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staged = [os.path.join(output_dir, f".{os.path.basename(p)}.tmp-staged-{token}")
                       for p in paths]
        self.records, self.summary = None, None

    def commit(self) -> None:
        manifest.replace_set(self.output_dir, self.prefix, self.staged, self.paths, self.records)
        tmp = os.path.join(self.output_dir, f".{self.prefix}.summary.json.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(self.summary, f, indent=1)
        os.replace(tmp, os.path.join(self.output_dir, f"{self.prefix}.summary.json"))

    def discard(self) -> None:
        """Removes this run's staged shards, indexes and temporaries and the folders it created;
        the folder found keeps its times (a listing of it is as before the run)."""
        for path in self.staged:
            folder, name = os.path.split(path)
            for leftover in [path, path + ".index", *glob.glob(
                    os.path.join(glob.escape(folder), f".{glob.escape(name)}*.tmp-*"))]:
                with contextlib.suppress(OSError):
                    os.remove(leftover)
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty: nothing of anyone else's is removed
        with contextlib.suppress(OSError):
            os.utime(self.found, ns=self.found_times)


_pending: list[_StagedSet] | None = None


@contextlib.contextmanager
def committed_together():
    """Sets written by ``write_shards`` inside replace their older sets only when the block ends
    without an error; an error (or a stop) in any of them leaves every older set as it was."""
    global _pending
    if _pending is not None:  # nested: the outer block commits
        yield
        return
    _pending = []
    try:
        yield
        for staged in _pending:
            staged.commit()
    except BaseException:
        for staged in reversed(_pending):
            staged.discard()
        raise
    finally:
        _pending = None


def write_shards(items: Sequence, make_record: Callable, output_dir: str, prefix: str, *,
                 num_shards: int, num_workers: int | None = None, skip_bad: bool = False,
                 desc: str | None = None, extra_summary: dict | None = None,
                 verbose: bool = True) -> dict:
    """Writes ``prefix-0000k-of-0000K.tfrecord`` shards; returns (and saves) a summary dict.

    ``num_workers``: processes (spawned, so safe after JAX is imported); <= 1 runs in-process.
    The summary (records, skipped, bytes, seconds, shards, bad items) is written to
    ``output_dir/prefix.summary.json``; the set is whole only once ``prefix.manifest.json`` is
    written (geossl.data.manifest), which also removes an older set of the same prefix. Shards
    are staged until every one is written: on an error or a stop (BadInputError, Ctrl-C) the
    folder stays as it was. Inside ``committed_together`` the set replaces the older one when
    the block ends. Fewer items than shards: one shard per item (no empty shards).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, found {num_shards}")
    if 0 < len(items) < num_shards:
        if verbose:
            print(f"{prefix}: {len(items)} items for {num_shards} shards: writing {len(items)} "
                  f"shards instead (no empty shards)")
        num_shards = len(items)
    paths = [os.path.join(output_dir, shard_name(prefix, k, num_shards)) for k in range(num_shards)]
    staged = _StagedSet(output_dir, prefix, paths)
    try:
        results, seconds = _write_staged(items, make_record, staged, skip_bad=skip_bad,
                                         num_workers=num_workers, desc=desc, verbose=verbose)
        summary = {
            "prefix": prefix,
            "output_dir": os.path.abspath(output_dir),
            "shards": [os.path.basename(p) for p in paths],
            "records": sum(r["records"] for r in results),
            "skipped": sum(r["skipped"] for r in results),
            "bytes": sum(os.path.getsize(p) for p in staged.staged),
            "seconds": seconds,
            "bad": [b for r in results for b in r["bad"]][:MAX_LISTED_BAD],
        }
        summary.update(extra_summary or {})
        staged.records, staged.summary = [r["records"] for r in results], summary
        if _pending is None:
            staged.commit()
        else:
            _pending.append(staged)
    except BaseException:
        staged.discard()
        raise
    if verbose:
        print_summary(summary)
    return summary


def _write_staged(items, make_record, staged: _StagedSet, *, skip_bad, num_workers, desc,
                  verbose) -> tuple[list[dict], float]:
    num_shards = len(staged.staged)
    tasks = [(p, chunk, make_record, skip_bad)
             for p, chunk in zip(staged.staged, split_evenly(items, num_shards))]
    if num_workers is None:
        num_workers = min(num_shards, os.cpu_count() or 1)
    num_workers = max(1, min(num_workers, num_shards))
    start = time.time()

    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc or staged.prefix, unit="rec", disable=not verbose)
    try:
        if num_workers == 1:
            results = []
            _init_worker(None)
            for task in tasks:
                results.append(_write_one_shard(task))
                bar.update(len(task[1]))
        else:
            results = _run_pool(tasks, num_workers, bar)
    finally:
        bar.close()
    return results, round(time.time() - start, 3)


def _spawn_pool(ctx, num_workers: int, progress):
    """``ctx.Pool`` whose workers ignore Ctrl-C from birth: SIGINT is ignored in this process
    while they are spawned (an ignored signal stays ignored across exec, and Python then installs
    no KeyboardInterrupt handler), so a Ctrl-C to the process group while a worker still imports
    is not a traceback from it. A Ctrl-C to this process in that window (well under a second) is
    lost."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return ctx.Pool(num_workers, initializer=_init_worker, initargs=(progress,))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return ctx.Pool(num_workers, initializer=_init_worker, initargs=(progress,))
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_pool(tasks, num_workers: int, bar) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    with _spawn_pool(ctx, num_workers, progress) as pool:
        pending = [pool.apply_async(_write_one_shard, (task,)) for task in tasks]
        while True:
            try:
                bar.update(progress.get(timeout=0.1))
            except queue_lib.Empty:
                pass
            for result in pending:
                if result.ready() and not result.successful():
                    result.get()  # re-raises the worker's error (e.g. BadInputError)
            if all(r.ready() for r in pending):
                break
        while True:
            try:
                bar.update(progress.get_nowait())
            except queue_lib.Empty:
                break
        return [r.get() for r in pending]


def print_summary(summary: dict) -> None:
    mb = summary["bytes"] / 2**20
    print(f"{summary['prefix']}: {summary['records']} records in {len(summary['shards'])} shards, "
          f"{summary['skipped']} skipped, {mb:.1f} MiB, {summary['seconds']:.1f} s -> "
          f"{summary['output_dir']}")
    for bad in summary["bad"][:10]:
        print(f"  skipped {bad['item']}: {bad['error']}")
    if summary["skipped"] > 10:
        print(f"  ... ({summary['skipped'] - 10} more in {summary['prefix']}.summary.json)")
