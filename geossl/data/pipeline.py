"""The grain input pipeline shared by all methods.

Global stream (identical on every process):
    source → shuffle(seed; a new permutation each epoch) → repeat(num_epochs)
           → random_map(view_fn, seed)   # rng of row i depends only on (seed, i)
Global batch layout: batch s holds stream rows [P + s·G, P + (s+1)·G), G = local_batch_size·
process_count, P the start position (rows an earlier run consumed; 0 for a fresh run).
Process p reads rows [s·G + p·b, s·G + (p+1)·b) (b = local_batch_size) — the rows that
``jax.make_array_from_process_local_data`` assigns to it — so the process-local batches concatenated
in process order are exactly the single-process global batch of the same seed.

Each process-local batch (or ``worker_batch_size`` slice of it) is one element of a ``MapDataset``;
the ``IterDataset`` on top reads elements with ``read_threads`` threads and, with ``num_workers > 0``,
in worker processes (``mp_prefetch``, which keeps the element order), so neither changes the content
or order of batches. Where the stream resumes depends on P alone — not on the process count, the
devices, the workers or the batch split — so a run checkpoints its global position (rows consumed)
and resumes on any number of processes with none repeated or skipped (elastic resume).
"""

from __future__ import annotations

import functools
import glob
from typing import Callable, Iterable, Sequence

import grain
import numpy as np

from geossl.data import batch_rows, malloc, manifest, shared_batches


class _ProcessRows(grain.MapDataset):
    """Element j of process p = stream element (j // b)·G + p·b + j % b."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int, process: int):
        super().__init__(parent)
        self._g, self._b, self._p = global_batch, local_batch, process

    def __len__(self) -> int:
        return len(self._parent) // self._g * self._b

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, row = divmod(index, self._b)
        return self._parent[step * self._g + self._p * self._b + row]

    def __str__(self) -> str:
        return f"_ProcessRows(global_batch={self._g}, local_batch={self._b}, process={self._p})"


def stack(samples: Iterable[dict], into: Callable[[dict], dict] | None = None,
          size: int | None = None) -> dict:
    """Sample dicts → one dict of stacked arrays (B, ...). ``into``: given the batch's
    {key: (shape, dtype)}, the {key: array} to write it into (default: new arrays). ``size``: B
    where ``samples`` is an iterator (default ``len(samples)``); each sample is written into the
    batch as it comes and dropped before the next is made, so the next reuses its (cached) memory,
    and while sample i ≥ 1 is made its rows are offered to be rendered in place
    (``batch_rows``: an entry returned as its offered row is not copied)."""
    if size is None:
        samples = list(samples)
        size = len(samples)
    if size <= 0:
        raise ValueError("stack: a batch needs at least one sample")
    out, keys, offered, it = None, None, None, iter(samples)
    for i in range(size):
        with batch_rows.offering(offered):
            sample = next(it, _END)
        if sample is _END:
            raise ValueError(f"stack: {i} samples for a batch of {size}")
        if out is None:
            keys = sample.keys()
            specs = {k: ((size,) + np.shape(v), np.asarray(v).dtype) for k, v in sample.items()}
            out = into(specs) if into else {k: np.empty(*spec) for k, spec in specs.items()}
        elif sample.keys() != keys:
            raise ValueError(f"samples of one batch have different keys: {sorted(keys)} vs "
                             f"{sorted(sample.keys())}")
        _write_row(out, sample, i, offered or {})
        del sample                    # freed before the iterator makes the next one
        offered = {k: arr[i + 1] for k, arr in out.items()} if i + 1 < size else None
    if next(it, _END) is not _END:
        raise ValueError(f"stack: more than the {size} samples of the batch")
    return out


_END = object()


def _write_row(out: dict, sample: dict, i: int, offered: dict) -> None:
    """Row ``i`` of the batch ``out`` ← ``sample`` (its keys are out's), shapes checked; an entry
    that is its ``offered`` row (rendered in place) is there already."""
    for k, arr in out.items():
        if k in offered and sample[k] is offered[k]:
            continue
        value = np.asarray(sample[k])
        if value.shape != arr.shape[1:]:
            raise ValueError(f"samples of one batch have different shapes for {k!r}: "
                             f"{arr.shape[1:]} vs {value.shape} (sample {i}); records of "
                             f"different sizes need a fixed crop, or data.raw_size")
        arr[i] = value


class _Stack:
    """:func:`stack` as the batch function of :class:`_Batches`; ``shared`` (where grain worker
    processes build the batches): each batch is written into a reused shared-memory block of the
    worker and travels as a :class:`shared_batches.SharedBatch` (opened by
    :func:`shared_batches.open_batch`)."""

    def __init__(self, shared: bool):
        self.shared = shared

    def __call__(self, samples: Iterable[dict], size: int):
        if self.shared:
            return shared_batches.write(samples, functools.partial(stack, size=size))
        return stack(samples, size=size)


class _Batches(grain.MapDataset):
    """Element j = parent rows [j·size, (j+1)·size), as ``MapDataset.batch`` (indices past the
    end start the next pass), made one by one inside ``batch_fn(rows, count)``: grain's batch holds
    every rendered sample before stacking (~80 MB for 16 SoftCon samples), here each is written
    and freed before the next is rendered into the same, still cached, memory."""

    def __init__(self, parent: grain.MapDataset, size: int, drop_remainder: bool, batch_fn):
        super().__init__(parent)
        self._size, self._batch_fn = size, batch_fn
        n = len(parent)
        self._length = n // size if drop_remainder else -(-n // size)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(index, self._length)
        n = len(self._parent)
        start, stop = j * self._size, min(n, (j + 1) * self._size)
        rows = (self._parent[epoch * n + i] for i in range(start, stop))
        return self._batch_fn(rows, stop - start)

    def __str__(self) -> str:
        return f"_Batches(size={self._size})"


def concat(batches: Sequence[dict]) -> dict:
    """A list of batch dicts → one dict concatenated along the batch axis."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


class _TunedViews:
    """``view_fn`` that first applies ``malloc.reuse_freed_memory`` in the process it runs in
    (the main process or a grain worker; picklable)."""

    def __init__(self, view_fn):
        self.view_fn = view_fn

    def __call__(self, record, rng):
        malloc.reuse_freed_memory()
        return self.view_fn(record, rng)


def make_dataset(source, view_fn: Callable[[dict, np.random.Generator], dict], *, seed: int,
                 local_batch_size: int, process_index: int = 0, process_count: int = 1,
                 shuffle: bool = True, num_epochs: int | None = None, drop_remainder: bool = True,
                 num_workers: int = 0, worker_batch_size: int | None = None,
                 read_threads: int = 1, prefetch_batches: int = 2,
                 tune_malloc: bool = True, start_position: int = 0) -> grain.IterDataset:
    """Process-local batches of ``view_fn(record, rng)`` samples: dicts of (b, ...) arrays.

    source: a random-access sequence of records (``ShardSource``, a list, ...).
    num_epochs: None repeats forever. ``drop_remainder=False`` keeps a final partial batch (one
    process only: equal process-local shapes need whole global batches).
    worker_batch_size: a divisor of local_batch_size; workers build batches of this size, which
    the main process concatenates (bounds the memory and latency of a worker). Default: whole.
    read_threads / prefetch_batches: threads and buffer (in worker batches) of each reader.
    tune_malloc: apply ``malloc.reuse_freed_memory`` where views are built (see there).
    start_position: global stream rows already consumed (by every process together): the first
    batch starts there.
    """
    stream = view_stream(source, view_fn, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                         tune_malloc=tune_malloc)
    return batch_stream(stream, local_batch_size=local_batch_size, process_index=process_index,
                        process_count=process_count, drop_remainder=drop_remainder,
                        num_workers=num_workers, worker_batch_size=worker_batch_size,
                        read_threads=read_threads, prefetch_batches=prefetch_batches,
                        start_position=start_position)


def view_stream(source, view_fn: Callable[[dict, np.random.Generator], dict], *, seed: int,
                shuffle: bool = True, num_epochs: int | None = None,
                tune_malloc: bool = True) -> grain.MapDataset:
    """The global stream of samples: source → shuffle(seed) → repeat(num_epochs) →
    ``view_fn(record, rng)``, the rng of row i a function of (seed, i) alone."""
    if len(source) == 0:
        raise ValueError("make_dataset: the data source is empty")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    return ds.random_map(_TunedViews(view_fn) if tune_malloc else view_fn, seed=seed)


def batch_stream(stream: grain.MapDataset, *, local_batch_size: int, process_index: int = 0,
                 process_count: int = 1, drop_remainder: bool = True, num_workers: int = 0,
                 worker_batch_size: int | None = None, read_threads: int = 1,
                 prefetch_batches: int = 2, start_position: int = 0) -> grain.IterDataset:
    """This process's batches of a global sample stream (arguments as :func:`make_dataset`)."""
    if local_batch_size <= 0:
        raise ValueError(f"make_dataset: local_batch_size must be positive, found {local_batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"make_dataset: process_index {process_index} outside "
                         f"[0, process_count={process_count})")
    unit = worker_batch_size or local_batch_size
    if unit <= 0 or local_batch_size % unit:
        raise ValueError(f"make_dataset: worker_batch_size {worker_batch_size} must divide "
                         f"local_batch_size {local_batch_size}")
    if start_position < 0:
        raise ValueError(f"make_dataset: start_position must be >= 0, found {start_position}")
    if not drop_remainder and process_count > 1:
        raise ValueError("make_dataset: drop_remainder=False needs process_count == 1 (a partial "
                         f"global batch cannot be split over {process_count} processes)")
    ds = stream
    if start_position:  # the rng of a row depends on its stream index, so slicing keeps the rows
        ds = ds[start_position:]
    if process_count > 1:
        ds = _ProcessRows(ds, local_batch_size * process_count, local_batch_size, process_index)
    ds = _Batches(ds, unit, drop_remainder, _Stack(shared=num_workers > 0))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=prefetch_batches))
    if num_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():   # grain reads its absl flags; outside absl.app nobody
            flags.FLAGS.mark_as_parsed()  # parsed them, so take their defaults
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                            worker_init_fn=_worker_leaves_stop_signals_to_the_trainer)
        it = it.map(shared_batches.open_batch)
    if unit != local_batch_size:
        it = it.batch(local_batch_size // unit, drop_remainder=drop_remainder, batch_fn=concat)
    return it


def _worker_leaves_stop_signals_to_the_trainer(worker_index: int, worker_count: int) -> None:
    """grain worker processes ignore SIGINT and SIGTERM, which reach the whole process group
    (Ctrl-C; SLURM's and many schedulers' stop): the trainer checkpoints and then ends them
    through grain, and each exits cleanly, unlinking its blocks. Before, Ctrl-C gave a
    KeyboardInterrupt traceback from each worker, and a SIGTERM killed them before their exit
    hook, so Python's resource tracker warned of "leaked shared_memory objects". A worker whose
    trainer is gone still exits (``shared_batches``' watch)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_files(pattern: str | Sequence[str]) -> list[str]:
    """Sorted shard paths of a glob (or a list of globs); error if none match, or if one of
    several matches nothing (a typo would otherwise drop a set silently)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    found = {p: [f for f in glob.glob(p) if not f.endswith(".index")] for p in patterns}
    files = sorted({f for matched in found.values() for f in matched})
    if not files:
        raise FileNotFoundError(f"no training shards match {patterns}")
    empty = [p for p, matched in found.items() if not matched]
    if empty:
        raise FileNotFoundError(f"no training shards match {empty[0]!r} (of the patterns "
                                f"{patterns}; the others match {len(files)} files)")
    manifest.check_shard_set(files)
    return files


def make_train_iterator(config, view_fn, *, source=None, process_index: int | None = None,
                        process_count: int | None = None, start_position: int = 0,
                        stream: grain.MapDataset | None = None):
    """``iter(make_dataset(...))`` from a config: ``config.data.train`` (glob, unless ``source`` is
    given), ``config.seed``, ``config.global_batch`` split over processes, and the
    ``config.data`` fields num_workers, worker_batch_size (0 = the local batch), read_threads,
    prefetch_batches, tune_malloc (defaults in configs/common.py); ``start_position``: global
    stream rows a resumed run has already consumed. ``stream``: a global sample stream built
    elsewhere (``band_sets.mixed_stream``) instead of ``source`` and ``view_fn``."""
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    if config.global_batch % process_count:
        raise ValueError(f"global_batch {config.global_batch} is not divisible by "
                         f"{process_count} processes")
    data = config.data
    if stream is None:
        if source is None:
            from geossl.data.reader import ShardSource
            source = ShardSource(train_files(config.data.train))
        stream = view_stream(source, view_fn, seed=int(config.seed), shuffle=True,
                             tune_malloc=bool(data.tune_malloc))
    ds = batch_stream(stream, local_batch_size=config.global_batch // process_count,
                      process_index=process_index, process_count=process_count,
                      num_workers=int(data.num_workers),
                      worker_batch_size=int(data.worker_batch_size) or None,
                      read_threads=int(data.read_threads),
                      prefetch_batches=int(data.prefetch_batches),
                      start_position=int(start_position))
    return iter(ds)
