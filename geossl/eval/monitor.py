"""Collapse monitor: health figures of the backbone's embeddings of one fixed batch during
pretraining.

The CLI builds the hook ``make_monitor(config)`` and hands it to the trainer's
``run(config, workdir, hooks=[...])`` beside the online probe; every ``every`` steps the hook runs
one jitted forward of the student backbone (``out["embedding"]``, as the probe's "cls" features)
on the same ``num_examples`` images and returns ``geossl.eval.health.collapse_figures`` of them
plus its time, which join that step's row of metrics.jsonl and TensorBoard::

    {"monitor/embedding_std", "monitor/embedding_std_ratio", "monitor/rankme",
     "monitor/mean_cosine", "monitor/time_s"}

When ``embedding_std_ratio`` (std·sqrt(D), about 1 for embeddings spread over the sphere) falls
under ``std_ratio_threshold`` it logs one warning line, again only after it has recovered.

The batch: the first ``num_examples`` records of ``config.monitor.data`` (default: the
held-out shards beside the first training shard, ``geossl.data.files.heldout_pattern``; without
any, ``num_examples`` training records drawn with a fixed seed), prepared as the probes do
(``datasets.Preprocess``: acquisition 0, the config's bands and normalisation, no augmentation;
resized and centre-cropped to the model's size on the device). A wavelength-conditioned backbone
(DOFA) gets the wavelengths of those bands (``config.data.bands``, else the records' own), or the
``wavelengths`` given to ``make_monitor``. ``config.monitor`` fields
(defaults in ``configs/common.py``): ``every`` (-1: every ``log_every`` steps; 0: off), ``data``,
``num_examples``, ``std_ratio_threshold``.
"""

from __future__ import annotations

import glob
import os
import time

import jax
import numpy as np
from absl import logging

from geossl.eval import datasets, health
from geossl.eval.features import extract_features, input_wavelengths, wavelength_kwargs
from geossl.models.from_config import create_from_config
from geossl.objectives.base import Fields

#: Seed of the draw of training records when no held-out shards exist.
TRAIN_DRAW_SEED = 0


def monitor_records(config, train_files=None) -> tuple[list[dict], str]:
    """(records, where they come from) of the monitor's fixed batch (see the module docstring)."""
    from geossl.data import ShardSource
    count = Fields(config.monitor, "config.monitor").integer("num_examples", "[2, inf)")
    pattern = str(config.monitor.get("data", "") or "")
    if pattern:
        files = sorted(glob.glob(os.path.expanduser(pattern)))
        if not files:
            raise FileNotFoundError(f"config.monitor.data: no shards match {pattern!r}")
    else:
        if not train_files:
            from geossl.data import resolve_train_files
            train_files = resolve_train_files(config)
        from geossl.data.files import heldout_pattern  # s1-train-* → s1-heldout-*
        files = sorted(glob.glob(heldout_pattern(train_files[0])))
    if files:
        source = ShardSource(files)
        return [source[i] for i in range(min(count, len(source)))], f"first records of {files[0]}…"
    source = ShardSource(train_files)
    picks = np.random.default_rng(TRAIN_DRAW_SEED).permutation(len(source))[:count]
    return [source[int(i)] for i in np.sort(picks)], f"training records (seed {TRAIN_DRAW_SEED})"


def input_bands(config, records) -> tuple[str, ...]:
    """The bands of the prepared images: ``config.data.bands``, else the first record's."""
    return datasets.Preprocess.from_config(config).bands or tuple(records[0]["bands"])


def prepare_images(config, records) -> np.ndarray:
    """(N, H, W, C) float32 images of ``records`` prepared as the probes do."""
    preprocess = datasets.Preprocess.from_config(config)
    images = [preprocess(r["image"], list(r["bands"]), where=f"monitor record {r.get('key', i)}: ")
              for i, r in enumerate(records)]
    shapes = sorted({x.shape for x in images})
    if len(shapes) > 1:
        raise ValueError(f"monitor: expected records of one image size, found {shapes}")
    return np.stack(images)


class CollapseMonitor:
    """An evaluator hook of the trainer's ``run``: ``hook(step, backbone)`` → ``monitor/...``
    figures of ``model`` with ``backbone`` ({"params", ["batch_stats"]}) on ``images``
    (N, H, W, C), every ``every`` steps; warns once per fall under ``std_ratio_threshold``.
    ``wavelengths`` (C,): the images' band wavelengths for a wavelength-conditioned model (DOFA),
    else None (fixed-band families refuse them: ValueError)."""

    def __init__(self, model, images: np.ndarray, every: int, std_ratio_threshold: float,
                 img_size: int | None = None, wavelengths=None):
        if int(every) <= 0:
            raise ValueError(f"collapse monitor: expected every > 0 steps, found {every}")
        wavelength_kwargs(model, wavelengths)
        self.wavelengths = None if wavelengths is None else np.asarray(wavelengths, np.float32)
        self.model, self.images, self.every = model, np.asarray(images, np.float32), int(every)
        self.threshold, self.img_size = float(std_ratio_threshold), img_size
        self.below = False  # whether the last figure was under the threshold

    def __call__(self, step: int, backbone: dict) -> dict[str, float]:
        jax.block_until_ready(backbone)  # the queued train steps are not the monitor's time
        t0 = time.perf_counter()
        embeddings = extract_features(self.model, backbone, self.images, mode="cls",
                                      batch_size=len(self.images), img_size=self.img_size,
                                      wavelengths=self.wavelengths)
        figures = health.collapse_figures(embeddings)
        figures["monitor/time_s"] = time.perf_counter() - t0
        ratio = figures["monitor/embedding_std_ratio"]
        if ratio < self.threshold and not self.below:
            logging.warning(
                "step %d: embeddings collapsing: monitor/embedding_std_ratio %.4g < "
                "config.monitor.std_ratio_threshold %.4g (embedding_std %.4g at D=%d, rankme %.3g, "
                "mean cosine %.3f)", step, ratio, self.threshold, figures["monitor/embedding_std"],
                embeddings.shape[1], figures["monitor/rankme"], figures["monitor/mean_cosine"])
        self.below = ratio < self.threshold
        return figures


def make_monitor(config, train_files=None, *, wavelengths=None) -> CollapseMonitor | None:
    """The collapse-monitor hook of ``config`` (its ``config.model`` backbone, the batch read
    once), or None when ``config.monitor.every`` is 0 or the section is missing. A
    wavelength-conditioned backbone (DOFA) is given ``wavelengths`` (C,), default those of the
    batch's bands (:func:`input_bands`)."""
    if "monitor" not in config:
        return None
    fields = Fields(config.monitor, "config.monitor")
    every = fields.integer("every", "[-1, inf)")
    if every == -1:
        every = int(config.log_every)
    if every == 0:
        return None
    threshold = fields.number("std_ratio_threshold", "[0, inf)")
    records, where = monitor_records(config, train_files)
    images = prepare_images(config, records)
    logging.info("collapse monitor: %d images (%s) every %d steps", len(images), where, every)
    model = create_from_config(config.model)
    if wavelengths is None:
        wavelengths = input_wavelengths(model, input_bands(config, records),
                                        config.get("data", {}).get("wavelengths", None))
    return CollapseMonitor(model, images, every, threshold, config.model.get("img_size", None),
                           wavelengths=wavelengths)
