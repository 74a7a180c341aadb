"""Online probe: cheap kNN and linear-probe scores of the backbone during pretraining.

The CLI builds the hook ``make_online_probe(config)`` and hands it to the trainer's
``run(config, workdir, hooks=[hook])``, which calls ``hook(step, backbone)`` after the train
step of every step divisible by ``hook.every`` (``config.probe.every``), with
``backbone = {"params": ..., ["batch_stats": ...]}`` the student backbone on the device. The
labelled records are prepared once (``datasets.Preprocess`` from ``config.data``), split in half
deterministically (probe-train / probe-test, ``config.probe.seed``) and kept on the host; each call
extracts features, runs the kNN classifier and a short linear probe, and returns flat metrics::

    {"probe/knn_map_micro", "probe/linear_map_micro", "probe/linear_map_macro", ..., "probe/time_s"}
    (single-label data: "probe/knn_top1", "probe/linear_top1")

A wavelength-conditioned backbone (DOFA) gets the wavelengths of the records' prepared bands
(``config.data.bands``, else the first record's), or the ``wavelengths`` given to
``make_online_probe`` / ``OnlineProbe``.

``config.probe`` fields (defaults and meanings in ``configs/common.py``): ``every`` (0 or missing:
no probe), ``data``, ``num_examples``, ``mode``, ``knn_k``, ``knn_temperature``, ``linear_epochs``,
``linear_lr``, ``batch_size``, ``seed``.
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np

from geossl.eval import datasets, features, knn, linear_probe


def _probe_cfg(config) -> dict:
    probe = config.get("probe", None) if hasattr(config, "get") else None
    return dict(probe) if probe is not None else {}


def load_holdout_records(config, train_files=None) -> list[dict]:
    """The first ``config.probe.num_examples`` records of ``config.probe.data`` (default: the
    held-out shards beside the first training shard, ``geossl.data.files.heldout_pattern``)."""
    from geossl.data import ShardSource
    cfg = _probe_cfg(config)
    pattern = cfg["data"]
    if not pattern:
        if not train_files:
            from geossl.data import resolve_train_files
            train_files = resolve_train_files(config)
        from geossl.data.files import heldout_pattern
        pattern = heldout_pattern(train_files[0])  # s1-train-* → s1-heldout-*
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise FileNotFoundError(f"online probe: no labelled shards match {pattern!r} "
                                f"(set config.probe.data, or config.probe.every = 0)")
    source = ShardSource(files)
    count = min(len(source), int(cfg["num_examples"]))
    return [source[i] for i in range(count)]


class OnlineProbe:
    """kNN and linear-probe metrics of a backbone on a fixed small labelled set; ``wavelengths``
    (C,) for a wavelength-conditioned backbone (default: those of the prepared bands)."""

    def __init__(self, config, holdout_records, wavelengths=None):
        cfg = _probe_cfg(config)
        self.mode = str(cfg["mode"])
        self.k = int(cfg["knn_k"])
        self.temperature = float(cfg["knn_temperature"])
        self.batch_size = int(cfg["batch_size"])
        seed = int(cfg["seed"])
        self.probe_config = linear_probe.ProbeConfig(
            epochs=int(cfg["linear_epochs"]), lr=float(cfg["linear_lr"]),
            batch_size=self.batch_size, seed=seed)
        model_cfg = config.get("model", None)
        self.img_size = model_cfg.get("img_size", None) if model_cfg is not None else None
        records = list(holdout_records)
        split = datasets.RecordSplit(records, name="online probe records")
        self.num_classes, self.multilabel = split.num_classes, split.multilabel
        train_idx, test_idx = datasets.split_indices(len(split), 0.5, seed)
        preprocess = datasets.Preprocess.from_config(config)
        self.bands = preprocess.bands or split.band_names()
        self.wavelength_table = config.get("data", {}).get("wavelengths", None)
        self.wavelengths = wavelengths
        self.train_images, self.train_labels = self._read(split, train_idx, preprocess)
        self.test_images, self.test_labels = self._read(split, test_idx, preprocess)

    @staticmethod
    def _read(split, indices, preprocess):
        chunks = list(split.read(indices, preprocess, chunk=len(indices)))
        return chunks[0]

    def wavelengths_for(self, model):
        """The wavelengths ``model`` is given: the explicit ones, else those of the prepared
        bands for a wavelength-conditioned model, else None."""
        if self.wavelengths is not None:
            return self.wavelengths
        return features.input_wavelengths(model, self.bands, self.wavelength_table)

    def __call__(self, model, variables) -> dict[str, float]:
        t0 = time.perf_counter()
        images = np.concatenate([self.train_images, self.test_images])
        feats = features.extract_features(model, variables, images, mode=self.mode,
                                          batch_size=self.batch_size, img_size=self.img_size,
                                          wavelengths=self.wavelengths_for(model))
        n = len(self.train_images)
        train_x, test_x = feats[:n], feats[n:]
        kw = dict(num_classes=self.num_classes, multilabel=self.multilabel)
        out = {}
        knn_result = knn.knn_evaluate(train_x, self.train_labels, test_x, self.test_labels,
                                      k=self.k, temperature=self.temperature, **kw)
        lin_result = linear_probe.linear_probe(train_x, self.train_labels, test_x,
                                               self.test_labels, config=self.probe_config, **kw)
        for prefix, result in (("knn", knn_result), ("linear", lin_result)):
            for name, value in result.items():
                if isinstance(value, float) and name != "train_loss":
                    out[f"probe/{prefix}_{name}"] = value
        out["probe/time_s"] = time.perf_counter() - t0
        return out


class OnlineProbeHook:
    """An evaluator hook of the trainer's ``run``: ``hook(step, backbone)`` → ``probe/...``
    metrics of ``backbone`` ({"params", ["batch_stats"]}) every ``every`` steps."""

    def __init__(self, probe: OnlineProbe, model, every: int):
        if int(every) <= 0:
            raise ValueError(f"online probe: expected every > 0 steps, found {every}")
        self.probe = probe
        self.model = model
        self.every = int(every)

    def __call__(self, step: int, backbone: dict) -> dict[str, float]:
        del step  # the loop records the step with the metrics
        return self.probe(self.model, backbone)


def make_online_probe(config, train_files=None, *, wavelengths=None) -> OnlineProbeHook | None:
    """The online-probe hook of ``config`` (its own ``config.model`` backbone, held-out records
    read once), or None when ``config.probe.every`` is 0 or missing; ``wavelengths`` (C,) for a
    wavelength-conditioned backbone (default: those of the prepared bands)."""
    every = int(_probe_cfg(config).get("every", 0) or 0)
    if every == 0:
        return None
    if every < 0:
        raise ValueError(f"config.probe.every: expected a step count >= 0, found {every}")
    from geossl.models.from_config import create_from_config
    probe = OnlineProbe(config, load_holdout_records(config, train_files), wavelengths)
    model = create_from_config(config.model)
    features.wavelength_kwargs(model, probe.wavelengths_for(model))  # fixed bands refuse them
    return OnlineProbeHook(probe, model, every)
