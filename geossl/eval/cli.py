"""Command-line pieces shared by ``python -m geossl.eval.linear_probe`` and ``... .knn``.

``add_common_flags`` defines the flags both share (workdir, dataset, splits, label fraction, feature
mode, preprocessing); ``probe_features_from_args`` turns them into frozen features of the probe-train
and probe-test examples (``ProbeFeatures``); ``finish`` prints the report as a table and writes it
as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from geossl.eval import datasets
from geossl.train import checkpoint


def add_common_flags(parser, *, feature_mode: bool = True) -> None:
    """The flags of every probe CLI, added to an ``argparse.ArgumentParser``; ``feature_mode``
    False leaves out ``--mode`` (the segmentation probe has its own)."""
    parser.add_argument("--workdir", required=True,
                        help="training workdir or backbone-only workdir (save_backbone / convert import)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--dataset", required=True,
                        help="folder of geossl shards, 'synthetic' or 'tfds:NAME' (e.g. tfds:eurosat/all)")
    parser.add_argument("--train_split", default="train",
                        help="split the probe trains on (shard prefix or TFDS split)")
    parser.add_argument("--eval_split", default="heldout",
                        help="split the probe is scored on (shard prefix or TFDS split)")
    parser.add_argument("--label_fraction", type=float, default=0.1,
                        help="seeded fraction of the probe-train examples used (lab: 10%%)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label subset and the probe")
    parser.add_argument("--holdout_train_fraction", type=float, default=0.5,
                        help="share of the eval split that trains the probe when the train split "
                             "is missing or unlabelled")
    if feature_mode:
        parser.add_argument("--mode", default="cls",
                            help="features: cls | avgpool | cls+avgpool | dinov2_4layer | "
                                 "dinov2_4layer+avgpool")
    parser.add_argument("--feature_batch", type=int, default=256,
                        help="images per forward pass (split over the devices)")
    parser.add_argument("--bands", default=None,
                        help="comma-separated input bands (default: config.data.bands)")
    parser.add_argument("--norm", default=None, help="band normalisation (default: config.data.norm)")
    parser.add_argument("--acquisition", type=int, default=0, help="which of the T acquisitions")
    parser.add_argument("--img_size", type=int, default=None,
                        help="model input size (default: config.model.img_size)")
    parser.add_argument("--random_init", action="store_true",
                        help="probe a randomly initialised encoder of the same architecture")
    parser.add_argument("--output", default=None, help="JSON report path")


def check_ranges(parser, args, *, positive=(), non_negative=()) -> None:
    """``parser.error`` (exit 2, the flag named) for a flag in ``positive`` that is not > 0 or one
    in ``non_negative`` that is < 0; run before anything is read."""
    for name in positive:
        if not getattr(args, name) > 0:
            parser.error(f"--{name}: expected > 0, found {getattr(args, name)}")
    for name in non_negative:
        if getattr(args, name) < 0:
            parser.error(f"--{name}: expected >= 0, found {getattr(args, name)}")


def load_model(workdir: str, step: int | None = None, *, random_init: bool = False, seed: int = 0,
               img_size: int | None = None, in_chans: int | None = None):
    """``(model, variables, config)`` from a workdir; with ``random_init`` the same architecture
    freshly initialised (seeded), its variable shapes checked against the checkpoint's."""
    model, variables, config = checkpoint.load_encoder(workdir, step)
    if not random_init:
        return model, variables, config
    import jax
    import jax.numpy as jnp
    size = int(img_size or config.model.get("img_size", 224))
    chans = int(in_chans or config.model.get("in_chans", 3))
    fresh = model.init(jax.random.key(seed), jnp.zeros((1, size, size, chans)), train=False)

    def shapes(tree) -> dict[str, tuple]:
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in flat}

    fresh_shapes, saved_shapes = shapes(dict(fresh)), shapes(dict(variables))
    if fresh_shapes != saved_shapes:
        differing = sorted(k for k in fresh_shapes.keys() | saved_shapes.keys()
                           if fresh_shapes.get(k) != saved_shapes.get(k))[:5]
        raise ValueError(
            f"--random_init: a fresh {config.model.name} does not have the variables of the "
            f"checkpoint in {workdir}; expected (checkpoint) vs found (fresh) at "
            + ", ".join(f"{k}: {saved_shapes.get(k)} vs {fresh_shapes.get(k)}" for k in differing))
    return model, jax.device_get(dict(fresh)), config


@dataclasses.dataclass
class ProbeFeatures:
    """Frozen features (N, F) and labels of the probe-train and probe-test examples."""

    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    multilabel: bool
    info: dict

    def report(self, task: str, result: dict, **extra) -> dict:
        return {"task": task, **self.info, "metrics": result, **extra}


def probe_features_from_args(args) -> ProbeFeatures:
    """Loads the encoder and the data named by the common flags and extracts both feature sets."""
    t0 = time.perf_counter()
    data = datasets.probe_splits(args.dataset, args.train_split, args.eval_split,
                                 label_fraction=args.label_fraction, seed=args.seed,
                                 holdout_train_fraction=args.holdout_train_fraction)
    overrides = {"norm": args.norm, "acquisition": args.acquisition}
    if args.bands:
        overrides["bands"] = tuple(b.strip() for b in args.bands.split(",") if b.strip())
    model, variables, config = load_model(
        args.workdir, args.step, random_init=args.random_init, seed=args.seed,
        img_size=args.img_size,
        in_chans=len(overrides["bands"]) if "bands" in overrides else None)
    preprocess = datasets.Preprocess.from_config(config, **overrides)
    img_size = args.img_size or config.model.get("img_size", None)
    kw = dict(mode=args.mode, batch_size=args.feature_batch, img_size=img_size)
    train_x, train_y = datasets.features_and_labels(model, variables, data.train,
                                                    data.train_indices, preprocess, **kw)
    test_x, test_y = datasets.features_and_labels(model, variables, data.test, data.test_indices,
                                                  preprocess, **kw)
    info = {
        "workdir": os.path.abspath(args.workdir), "step": args.step, "arch": config.model.name,
        "random_init": bool(args.random_init), "dataset": args.dataset, "splits": data.note,
        "train_split": data.train.name, "test_split": data.test.name,
        "num_train": int(len(train_x)), "num_test": int(len(test_x)),
        "num_classes": data.test.num_classes, "multilabel": data.test.multilabel,
        "label_fraction": args.label_fraction, "seed": args.seed, "mode": args.mode,
        "feature_dim": int(train_x.shape[1]), "img_size": img_size,
        "bands": list(preprocess.bands) if preprocess.bands else None, "norm": preprocess.norm,
        "feature_time_s": time.perf_counter() - t0,
    }
    return ProbeFeatures(train_x, train_y, test_x, test_y, data.test.num_classes,
                         data.test.multilabel, info)


def format_table(report: dict) -> str:
    """The report as a few human-readable lines: run, splits, sizes, then one metric a line."""
    kind = "random init" if report.get("random_init") else "pretrained"
    if report.get("step") is not None:
        kind += f", step {report['step']}"
    lines = [f"{report['task']}: {report['arch']} ({kind}) on {report['dataset']}",
             f"  {report['splits']}",
             f"  train {report['num_train']}  test {report['num_test']}  classes "
             f"{report['num_classes']} ({'multi-label' if report['multilabel'] else 'single-label'})"
             f"  features {report['feature_dim']} ({report['mode']})"]
    width = max([len(k) for k in report["metrics"]] + [8])
    for name, value in report["metrics"].items():
        if isinstance(value, float):
            lines.append(f"  {name:<{width}}  {value:.4f}")
        elif isinstance(value, dict):
            for sub, v in value.items():
                lines.append(f"  {name + ' ' + str(sub):<{width}}  {v:.4f}")
    return "\n".join(lines)


def finish(report: dict, path: str) -> None:
    """Prints the table and writes the JSON report to ``path``."""
    print(format_table(report))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=float)
    print(f"wrote {path}")
