"""Online probe: cheap kNN and linear-probe scores of the backbone during pretraining.

The trainer builds ``OnlineProbe(config, holdout_records)`` once and calls it every
``config.probe.every`` steps with the backbone ``(model, variables)``. The labelled records are
prepared once (``datasets.Preprocess`` from ``config.data``), split in half deterministically
(probe-train / probe-test, ``config.probe.seed``) and kept on the host; each call extracts features,
runs the kNN classifier and a short linear probe, and returns flat metrics::

    {"probe/knn_map_micro", "probe/linear_map_micro", "probe/linear_map_macro", ..., "probe/time_s"}
    (single-label data: "probe/knn_top1", "probe/linear_top1")

``config.probe`` fields (all optional): ``every``, ``data`` (glob of labelled shards; default the
``heldout-*`` shards beside the training shards), ``num_examples`` (256), ``mode`` ("cls"),
``knn_k`` (20), ``knn_temperature`` (0.07), ``linear_epochs`` (30), ``linear_lr`` (0.1),
``batch_size`` (256), ``seed`` (0).
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np

from geossl.eval import datasets, knn, linear_probe


def _probe_cfg(config) -> dict:
    probe = config.get("probe", None) if hasattr(config, "get") else None
    return dict(probe) if probe is not None else {}


def load_holdout_records(config, train_files=None) -> list[dict]:
    """The first ``config.probe.num_examples`` records of ``config.probe.data`` (default: the
    ``heldout-*.tfrecord`` shards in the folder of the first training shard)."""
    from geossl.data import ShardSource
    cfg = _probe_cfg(config)
    pattern = cfg.get("data", "")
    if not pattern:
        if not train_files:
            from geossl.train.loop import resolve_train_files
            train_files = resolve_train_files(config)
        folder = os.path.dirname(os.path.abspath(train_files[0]))
        pattern = os.path.join(folder, "heldout-*.tfrecord")
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise FileNotFoundError(f"online probe: no labelled shards match {pattern!r} "
                                f"(set config.probe.data, or config.probe.every = 0)")
    source = ShardSource(files)
    count = min(len(source), int(cfg.get("num_examples", 256)))
    return [source[i] for i in range(count)]


class OnlineProbe:
    """kNN and linear-probe metrics of a backbone on a fixed small labelled set."""

    def __init__(self, config, holdout_records):
        cfg = _probe_cfg(config)
        self.mode = str(cfg.get("mode", "cls"))
        self.k = int(cfg.get("knn_k", 20))
        self.temperature = float(cfg.get("knn_temperature", 0.07))
        self.batch_size = int(cfg.get("batch_size", 256))
        seed = int(cfg.get("seed", 0))
        self.probe_config = linear_probe.ProbeConfig(
            epochs=int(cfg.get("linear_epochs", 30)), lr=float(cfg.get("linear_lr", 0.1)),
            batch_size=self.batch_size, seed=seed)
        model_cfg = config.get("model", None)
        self.img_size = model_cfg.get("img_size", None) if model_cfg is not None else None
        records = list(holdout_records)
        split = datasets.RecordSplit(records, name="online probe records")
        self.num_classes, self.multilabel = split.num_classes, split.multilabel
        train_idx, test_idx = datasets.split_indices(len(split), 0.5, seed)
        preprocess = datasets.Preprocess.from_config(config)
        self.train_images, self.train_labels = self._read(split, train_idx, preprocess)
        self.test_images, self.test_labels = self._read(split, test_idx, preprocess)

    @staticmethod
    def _read(split, indices, preprocess):
        chunks = list(split.read(indices, preprocess, chunk=len(indices)))
        return chunks[0]

    def __call__(self, model, variables) -> dict[str, float]:
        from geossl.eval.features import extract_features
        t0 = time.perf_counter()
        images = np.concatenate([self.train_images, self.test_images])
        feats = extract_features(model, variables, images, mode=self.mode,
                                 batch_size=self.batch_size, img_size=self.img_size)
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
