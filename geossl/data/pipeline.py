"""The grain input pipeline shared by all objectives.

Global stream: source → shuffle(seed, reshuffled each epoch) → repeat → random_map(view_fn)
(the view's rng depends only on the seed and the global position, not on workers or processes).
Global batch s holds stream rows [s·G, (s+1)·G); process p reads rows [s·G + p·b, s·G + (p+1)·b)
(b = G / process_count), which is where ``jax.make_array_from_process_local_data`` puts them.
"""

from __future__ import annotations

from typing import Callable

import grain
import numpy as np


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


def stack(samples) -> dict:
    """A list of sample dicts → a dict of stacked arrays (B, ...)."""
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def make_dataset(source, view_fn: Callable[[dict, np.random.Generator], dict], *, seed: int,
                 local_batch_size: int, process_index: int = 0, process_count: int = 1,
                 shuffle: bool = True, num_epochs: int | None = None,
                 num_workers: int = 0) -> grain.IterDataset:
    """Batches of ``view_fn`` samples for this process (dicts of (b, ...) numpy arrays)."""
    if len(source) == 0:
        raise ValueError("the data source is empty")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(view_fn, seed=seed)
    ds = _ProcessRows(ds, local_batch_size * process_count, local_batch_size, process_index)
    ds = ds.batch(local_batch_size, drop_remainder=True, batch_fn=stack)
    it = ds.to_iter_dataset()
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it
