"""Command-line pieces shared by the probes (``geossl.cli.linear_probe``, ``knn``,
``segmentation``).

``add_common_flags`` defines the flags they share (workdir, dataset, splits, label fraction, feature
mode and layers, preprocessing), ``add_bootstrap_flag`` the confidence intervals';
``check_ranges`` and ``check_layers`` refuse an out-of-range number or a bad ``--layers`` (exit 2);
``load_model`` reads the encoder (or a fresh one of its architecture, ``--random_init``);
``splits_from_args`` and ``encoder_from_args`` read the data and the encoder (with its
preprocessing and, for a wavelength-conditioned encoder, the wavelengths of its input bands) the
flags name; ``probe_features_from_args`` turns them into frozen features of the
probe-train and probe-test examples (``ProbeFeatures``, one set per layer with ``--layers``);
``probe_each_layer`` runs a probe on each set and picks the best layer; ``finish`` prints the
report as a table (each figure with its 95% interval) and writes it as JSON.

``--layers`` (DINOv2's and torchgeo-bench's intermediate-layer probing): ``-1`` (default) probes
``--mode``'s features as before; ``all``, ``2,3`` or ``-4,-1`` probe the features of those blocks
(ViT: each block's final-normed CLS / mean patch token by ``--mode`` cls | avgpool | cls+avgpool)
or stages (ResNet / Swin: each stage map average-pooled; the last is the model's embedding), all
from one forward pass, each layer on its own: one row per layer, and the report's ``metrics`` are
those of the best layer by its main figure (micro mAP or top-1) on the test split, as DINOv2
reports its best linear head; ``--layers_concat`` probes the layers' features concatenated
instead (``--mode cls --layers=-4,-3,-2,-1 --layers_concat`` is ``dinov2_4layer``).

Input bands: a fixed-band encoder (ViT, Swin, ResNet) reads ``--bands`` or its workdir's
``config.data.bands``, picked from the dataset by name. A wavelength-conditioned encoder (DOFA)
is not tied to its training bands: it reads ``--bands`` or every band of the dataset (its first
record's), with their wavelengths, so the sensor is the ``--dataset`` flag (``synthetic`` for S2,
``synthetic:s1`` for S1, whatever bands the encoder was trained on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import numpy as np

from geossl.eval import bootstrap, datasets, features
from geossl.train import checkpoint

DEFAULT_LAYERS = "-1"


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
                        help="seeded fraction of the probe-train examples used (lab: 10%%), drawn "
                             "stratified: per class (at least one each) for single-label data, "
                             "iteratively by label for multi-label data; a smaller fraction's "
                             "examples are among a larger one's")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the label subset, the probe and the bootstrap resamples")
    parser.add_argument("--holdout_train_fraction", type=float, default=0.5,
                        help="share of the eval split that trains the probe when the train split "
                             "is missing or unlabelled")
    if feature_mode:
        parser.add_argument("--mode", default="cls",
                            help="features: cls | avgpool | cls+avgpool | dinov2_4layer | "
                                 "dinov2_4layer+avgpool")
        parser.add_argument("--layers", default=DEFAULT_LAYERS,
                            help="blocks (ViT) or stages (ResNet, Swin) to probe: -1 (the last, "
                                 "--mode's features), 'all', or indices such as 2,3 or -4,-1; "
                                 "each probed on its own (a row each, the best named) from one "
                                 "forward pass; ViT blocks: final-normed tokens pooled by --mode "
                                 "(cls | avgpool | cls+avgpool), stages: average-pooled maps")
        parser.add_argument("--layers_concat", action="store_true",
                            help="probe the --layers' features concatenated (one row) instead of "
                                 "each on its own; --mode cls --layers=-4,-3,-2,-1 "
                                 "--layers_concat is dinov2_4layer")
    parser.add_argument("--feature_batch", type=int, default=256,
                        help="images per forward pass (split over the devices)")
    parser.add_argument("--bands", default=None,
                        help="comma-separated input bands (default: config.data.bands)")
    parser.add_argument("--norm", default=None, help="band normalisation (default: config.data.norm)")
    parser.add_argument("--absent_bands", default=None,
                        help="comma-separated input bands the dataset may lack, fed as 0 after "
                             "normalisation (So2Sat's S2 for a 13-band encoder: B1,B9,B10, as "
                             "SSL4EO-S12's evaluation does)")
    parser.add_argument("--acquisition", type=int, default=0, help="which of the T acquisitions")
    parser.add_argument("--img_size", type=int, default=None,
                        help="model input size (default: config.model.img_size)")
    parser.add_argument("--random_init", action="store_true",
                        help="probe a randomly initialised encoder of the same architecture")
    parser.add_argument("--output", default=None, help="JSON report path")


def add_bootstrap_flag(parser) -> None:
    """``--bootstrap B``: 95% intervals of every figure over B resamples of the test examples."""
    parser.add_argument("--bootstrap", type=int, default=bootstrap.DEFAULT_REPLICATES,
                        help="bootstrap replicates of the test examples (resampled with "
                             "replacement, seeded by --seed) for the 95%% percentile interval "
                             "[2.5, 97.5] of every figure; 0: none")


def check_layers(parser, args) -> None:
    """``parser.error`` (exit 2) for ``--layers`` that is neither 'all' nor integers, or
    intermediate layers with a multi-block ``--mode``; sets ``args.layer_spec`` ("all", a tuple
    of ints, or None for the default: ``--mode``'s features)."""
    text = str(args.layers).strip()
    if text == "all":
        spec = "all"
    else:
        try:
            spec = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            spec = ()
        if not spec or len(set(spec)) != len(spec):
            parser.error(f"--layers: expected 'all' or distinct comma-separated integers, found "
                         f"{args.layers!r}")
    if spec == (-1,) and not args.layers_concat:
        spec = None
    if spec is not None and args.mode not in features.LAYER_MODES:
        parser.error(f"--layers: expected --mode in {', '.join(features.LAYER_MODES)}, found "
                     f"{args.mode!r} (dinov2_4layer is --mode cls --layers=-4,-3,-2,-1 "
                     f"--layers_concat)")
    args.layer_spec = spec


def check_ranges(parser, args, *, positive=(), non_negative=()) -> None:
    """``parser.error`` (exit 2, the flag named) for a flag in ``positive`` that is not > 0 or one
    in ``non_negative`` that is < 0, and for the common ``--feature_batch`` and ``--img_size``
    (when given) below 1; run before anything is read."""
    for name in ("feature_batch", "img_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name}: expected >= 1, found {value}")
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
    """Frozen features (N, F) and labels of the probe-train and probe-test examples; with
    ``--layers`` probed one by one, ``per_layer`` {layer: (train (N, F_l), test (M, F_l))}
    instead of ``train_features`` / ``test_features`` (None)."""

    train_features: np.ndarray | None
    train_labels: np.ndarray
    test_features: np.ndarray | None
    test_labels: np.ndarray
    num_classes: int
    multilabel: bool
    info: dict
    per_layer: dict = dataclasses.field(default_factory=dict)

    def report(self, task: str, result: dict, **extra) -> dict:
        return {"task": task, **self.info, "metrics": result, **extra}


def main_figure(metrics: dict, multilabel: bool) -> str:
    """The first figure of ``metrics`` named (after any ``k20/`` prefix) map_micro (multi-label)
    or top1 (single-label)."""
    want = "map_micro" if multilabel else "top1"
    for name in metrics:
        if name.rsplit("/", 1)[-1] == want:
            return name
    raise ValueError(f"no {want} among the figures {sorted(metrics)}")


def probe_each_layer(data: ProbeFeatures, probe: Callable[[np.ndarray, np.ndarray], dict]
                     ) -> tuple[dict, dict]:
    """``(metrics, extra report fields)``: ``probe(train_features, test_features)`` of the one
    feature set, or of each layer's with the best layer's metrics and ``per_layer`` (every
    layer's), ``best_layer`` (the first of the highest :func:`main_figure`) and ``best_by``."""
    if not data.per_layer:
        return probe(data.train_features, data.test_features), {}
    rows = {layer: probe(train, test) for layer, (train, test) in data.per_layer.items()}
    figure = main_figure(next(iter(rows.values())), data.multilabel)
    best = max(rows, key=lambda layer: rows[layer][figure])
    return rows[best], {"per_layer": {str(layer): m for layer, m in rows.items()},
                        "best_layer": best, "best_by": figure}


def bootstrap_info(args) -> dict:
    """The report's ``bootstrap`` entry: replicates, seed and interval."""
    return {"replicates": int(args.bootstrap), "seed": int(args.seed),
            "interval": "percentile [2.5, 97.5]", "resampled": "test examples, with replacement"}


def dataset_from_args(args) -> str:
    """``--dataset``, with plain ``synthetic`` read as the rendering of the workdir's bands
    (``synthetic:s1`` for an S1 encoder, e.g. ``configs/softcon_vit_b.py:sar,demo``); a rendering
    named (``synthetic:s1``) is kept, which a wavelength-conditioned encoder reads whatever its
    training bands (:func:`encoder_from_args`)."""
    if args.dataset != "synthetic":
        return args.dataset
    from geossl.data.files import demo_modality
    bands = args.bands.split(",") if args.bands else None
    if bands is None and os.path.isfile(os.path.join(args.workdir, "config.json")):
        bands = checkpoint.load_config(args.workdir).data.get("bands", None)
    return f"synthetic:{demo_modality(bands)}"


def wavelength_list(wavelengths) -> list[float] | None:
    """The report's ``wavelengths`` entry: the input bands' µm (rounded as float32 prints), or
    None for a fixed-band encoder."""
    if wavelengths is None:
        return None
    return [float(f"{w:.6g}") for w in np.asarray(wavelengths, np.float32)]


def trained_probe_report(task: str, args, data, model_config, preprocess, img_size, *,
                         multilabel: bool, mode: str, feature_dim: int,
                         wavelengths=None) -> dict:
    """The head of the JSON report of a probe that trains on images (fine-tuning, segmentation):
    run, splits, sizes, input; the caller adds its metrics and settings."""
    return {
        "task": task, "workdir": os.path.abspath(args.workdir), "step": args.step,
        "arch": model_config.model.name, "random_init": bool(args.random_init),
        "dataset": args.dataset, "splits": data.note, "train_split": data.train.name,
        "test_split": data.test.name, "num_train": int(len(data.train_indices)),
        "num_test": int(len(data.test_indices)), "num_classes": data.test.num_classes,
        "multilabel": multilabel, "label_fraction": args.label_fraction, "seed": args.seed,
        "mode": mode, "feature_dim": int(feature_dim), "img_size": img_size,
        "bands": list(preprocess.bands) if preprocess.bands else None, "norm": preprocess.norm,
        "absent_bands": list(preprocess.absent_bands),
        "wavelengths": wavelength_list(wavelengths), "acquisition": args.acquisition,
        "train_indices": [int(i) for i in data.train_indices]}


def splits_from_args(args) -> datasets.ProbeData:
    """The probe-train / probe-test splits the common flags name (``datasets.probe_splits``)."""
    return datasets.probe_splits(dataset_from_args(args), args.train_split, args.eval_split,
                                 label_fraction=args.label_fraction, seed=args.seed,
                                 holdout_train_fraction=args.holdout_train_fraction,
                                 acquisition=args.acquisition)


def encoder_from_args(args, data: datasets.ProbeData):
    """``(model, variables, config, preprocess, img_size, wavelengths)``: the encoder the common
    flags name (``load_model``), the preprocessing of its input (``--bands``, ``--norm``,
    ``--acquisition`` over the workdir's config; ``--img_size`` over ``config.model.img_size``)
    and the wavelengths (C,) of the input bands for a wavelength-conditioned encoder (DOFA),
    None for the others. DOFA without ``--bands`` reads the bands of ``data`` (its train split's
    first record), not its training bands (module docstring)."""
    overrides = {"norm": args.norm, "acquisition": args.acquisition}
    if args.bands:
        overrides["bands"] = tuple(b.strip() for b in args.bands.split(",") if b.strip())
    if args.absent_bands:
        overrides["absent_bands"] = tuple(b.strip() for b in args.absent_bands.split(",")
                                          if b.strip())
    model, variables, config = load_model(
        args.workdir, args.step, random_init=args.random_init, seed=args.seed,
        img_size=args.img_size,
        in_chans=len(overrides["bands"]) if "bands" in overrides else None)
    family = features.model_family(model)
    if family is not None and family.wavelengths and "bands" not in overrides:
        overrides["bands"] = data.train.band_names()
    preprocess = datasets.Preprocess.from_config(config, **overrides)
    wavelengths = features.input_wavelengths(model, preprocess.bands,
                                             config.get("data", {}).get("wavelengths", None))
    img_size = args.img_size or config.model.get("img_size", None)
    return model, variables, config, preprocess, img_size, wavelengths


def probe_features_from_args(args) -> ProbeFeatures:
    """Loads the encoder and the data named by the common flags and extracts both feature sets
    (one per layer with ``args.layer_spec`` from :func:`check_layers`)."""
    t0 = time.perf_counter()
    data = splits_from_args(args)
    model, variables, config, preprocess, img_size, wavelengths = encoder_from_args(args, data)
    kw = dict(mode=args.mode, batch_size=args.feature_batch, img_size=img_size,
              wavelengths=wavelengths)
    spec = getattr(args, "layer_spec", None)
    layers = None
    if spec is not None:
        from geossl import models
        family = models.family(config.model.name)
        layers = features.resolve_layers(
            spec, features.layer_count(model, family, variables, img_size))
        kw.update(layers=layers, family=family)
    train_x, train_y = datasets.features_and_labels(model, variables, data.train,
                                                    data.train_indices, preprocess, **kw)
    test_x, test_y = datasets.features_and_labels(model, variables, data.test, data.test_indices,
                                                  preprocess, **kw)
    per_layer = {}
    if layers is not None and args.layers_concat:
        train_x, test_x = np.concatenate(train_x, axis=1), np.concatenate(test_x, axis=1)
    elif layers is not None:
        per_layer = {layer: pair for layer, pair in zip(layers, zip(train_x, test_x))}
        train_x = test_x = None
    dims = ([int(train.shape[1]) for train, _ in per_layer.values()] if per_layer
            else int(train_x.shape[1]))
    info = {
        "workdir": os.path.abspath(args.workdir), "step": args.step, "arch": config.model.name,
        "random_init": bool(args.random_init), "dataset": args.dataset, "splits": data.note,
        "train_split": data.train.name, "test_split": data.test.name,
        "num_train": int(len(train_y)), "num_test": int(len(test_y)),
        "num_classes": data.test.num_classes, "multilabel": data.test.multilabel,
        "label_fraction": args.label_fraction, "seed": args.seed, "mode": args.mode,
        "layers": list(layers) if layers is not None else None,
        "layers_concat": bool(layers is not None and args.layers_concat),
        "feature_dim": dims, "img_size": img_size,
        "bands": list(preprocess.bands) if preprocess.bands else None, "norm": preprocess.norm,
        "absent_bands": list(preprocess.absent_bands),
        "wavelengths": wavelength_list(wavelengths),
        "feature_time_s": time.perf_counter() - t0,
    }
    return ProbeFeatures(train_x, train_y, test_x, test_y, data.test.num_classes,
                         data.test.multilabel, info, per_layer)


def _figure(value: float, interval) -> str:
    text = f"{value:.4f}"
    return text + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def format_table(report: dict) -> str:
    """The report as a few human-readable lines: run, splits, sizes, one row per layer when
    several were probed, then one figure a line with its 95% interval."""
    kind = "random init" if report.get("random_init") else "pretrained"
    if report.get("step") is not None:
        kind += f", step {report['step']}"
    layers = report.get("layers")
    probed = str(report["mode"])
    if layers:
        how = "concatenated" if report.get("layers_concat") else "one by one"
        probed += f", layers {','.join(map(str, layers))} {how}"
    lines = [f"{report['task']}: {report['arch']} ({kind}) on {report['dataset']}",
             f"  {report['splits']}",
             f"  train {report['num_train']}  test {report['num_test']}  classes "
             f"{report['num_classes']} ({'multi-label' if report['multilabel'] else 'single-label'})"
             f"  features {report['feature_dim']} ({probed})"]
    if report.get("per_layer"):
        rows = report["per_layer"]
        names = [n for n, v in next(iter(rows.values())).items() if isinstance(v, float)]
        cells = {layer: [_figure(m[n], m.get("ci95", {}).get(n)) for n in names]
                 for layer, m in rows.items()}
        widths = [max(len(n), *(len(c[i]) for c in cells.values())) for i, n in enumerate(names)]
        lines.append("  layer  " + "  ".join(n.ljust(w) for n, w in zip(names, widths)))
        for layer, row in cells.items():
            mark = "  <- best" if int(layer) == report["best_layer"] else ""
            lines.append(f"  {layer:<5}  " + "  ".join(c.ljust(w) for c, w in zip(row, widths))
                         + mark)
        lines.append(f"  best layer {report['best_layer']} by {report['best_by']} "
                     f"(on the test split); its figures:")
    metrics = report["metrics"]
    intervals = metrics.get("ci95", {})
    width = max([len(k) for k in metrics] + [8])
    for name, value in metrics.items():
        if isinstance(value, float):
            lines.append(f"  {name:<{width}}  {_figure(value, intervals.get(name))}")
        elif isinstance(value, dict) and name != "ci95":
            sub_intervals = intervals.get(name)
            sub_intervals = sub_intervals if isinstance(sub_intervals, dict) else {}
            for sub, v in value.items():
                lines.append(f"  {name + ' ' + str(sub):<{width}}  "
                             f"{_figure(v, sub_intervals.get(sub))}")
    if intervals and "bootstrap" in report:
        lines.append(f"  [lo, hi]: 95% percentile intervals over "
                     f"{report['bootstrap']['replicates']} bootstrap resamples of the "
                     f"{report['num_test']} test examples (seed {report['bootstrap']['seed']})")
    return "\n".join(lines)


def finish(report: dict, path: str) -> None:
    """Prints the table and writes the JSON report to ``path``."""
    print(format_table(report))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=float)
    print(f"wrote {path}")
