"""Segmentation probe: an encoder from a workdir + a light decoder, scored by mIoU on held-out scenes.

Records carry ``land_cover`` (T, H, W) uint8, a class per pixel aligned with ``image`` (T, H, W, C),
255 = unlabelled (data_prep.synthetic; data_prep.bigearthnet with ``--reference_maps``); a map with
T = 1 serves every acquisition. The probe-train / probe-test scenes are those of the classification
probes (``datasets.probe_splits``): the labelled train split (or a seeded half of the eval split)
trains, the eval split (default ``heldout``) tests, and a seeded ``label_fraction`` of the training
scenes (at least one, ``datasets.subsample``) is used.

Decoder (``segmentation_heads``): a linear classifier per patch token for ViTs, a small FPN over the
stage maps for ResNets / Swins; logits upsampled bilinearly to the label map; encoder features
standardised per channel with statistics of the training scenes (of the initial encoder).
Training: per-pixel softmax cross entropy over the labelled pixels, AdamW with warmup + cosine,
a fixed number of steps whatever the fraction (batches cycle through seeded permutations of the
training scenes), no augmentation. Images are resized (bilinear) to the model's input size, without
cropping.
- ``frozen``: the encoder is fixed (BatchNorm in inference mode); its features of the training
  scenes are computed once and only the decoder trains.
- ``finetune``: encoder and decoder train together, the encoder at ``lr · encoder_lr_scale``;
  BatchNorm uses batch statistics while training (the standardisation statistics are then taken
  from about one epoch of training batches in that mode) and its running averages at evaluation.
The scenes of the training subset are held in host memory (images, maps; frozen: features).
Report: ``<workdir>/segmentation_<mode>_<fraction>[_random_init].json`` unless ``--output``.
Metrics (``segmentation_metrics``): ``miou`` = mean IoU over the classes present in the
evaluation labels or predictions, per-class IoU, pixel accuracy, from one confusion matrix.

Command line::

    python -m geossl.eval.segmentation --workdir DIR --dataset DIR|synthetic --label_fraction 0.1 \
        [--mode frozen|finetune --random_init --steps 500 --batch_size 32 --lr 1e-3 \
         --encoder_lr_scale 0.1 --output seg.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geossl.eval import datasets
from geossl.eval import segmentation_heads as heads
from geossl.eval import segmentation_metrics as seg_metrics

MODES = ("frozen", "finetune")
MIOU_RULE = ("mean IoU over the classes present in the evaluation labels or predictions; "
             "pixels labelled 255 are ignored")


@dataclasses.dataclass(frozen=True)
class SegConfig:
    mode: str = "frozen"
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    fpn_dim: int = 128
    seed: int = 0


# ----- data ---------------------------------------------------------------------------------------
def _first_file(split) -> str:
    paths = getattr(split.records, "paths", None)
    return paths[0] if paths else split.name


def check_land_cover(split) -> None:
    """Raises naming the file when the split's records have no ``land_cover`` map."""
    records = getattr(split, "records", None)
    if records is None:
        raise ValueError(f"{split.name}: the segmentation probe reads per-pixel maps from geossl "
                         f"shards ('land_cover'); this dataset has none")
    if "land_cover" not in records[0]:
        raise ValueError(
            f"{_first_file(split)}: no 'land_cover' feature (a per-pixel class map (T, H, W) uint8) "
            f"in the records of {split.name}; found {sorted(records[0])}. data_prep.synthetic "
            f"writes it; data_prep.bigearthnet with --reference_maps")


def land_cover_of(record, acquisition: int, num_classes: int, where: str) -> np.ndarray:
    """The (H, W) uint8 map of the acquisition read; values in [0, num_classes) or 255."""
    if "land_cover" not in record:
        raise ValueError(f"{where}no 'land_cover' feature")
    cover = np.asarray(record["land_cover"])
    if cover.ndim == 2:
        cover = cover[None]
    image_shape = np.shape(record["image"])
    seasons = image_shape[0] if len(image_shape) == 4 else 1
    if cover.ndim != 3 or cover.shape[0] not in (1, seasons):
        raise ValueError(f"{where}land_cover {cover.shape}: expected (T, H, W) with T = 1 or the "
                         f"image's {seasons} acquisitions")
    cover = cover[acquisition if cover.shape[0] > 1 else 0]
    if cover.shape != tuple(image_shape[-3:-1]):
        raise ValueError(f"{where}land_cover {cover.shape} does not match the image's "
                         f"{tuple(image_shape[-3:-1])} pixels")
    bad = (cover >= num_classes) & (cover != heads.IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{where}land_cover value {int(cover[bad][0])} outside the "
                         f"{num_classes} classes and not 255 (unlabelled)")
    return cover.astype(np.uint8)


def read_scenes(split, indices, preprocess, chunk: int = 64):
    """Yields (images (b, H, W, C) float32, maps (b, H, W) uint8) of ``split[indices]`` in order."""
    images, maps = [], []
    for i in indices:
        record = split.records[int(i)]
        where = f"{split.name} record {int(i)} ({record.get('key', '?')}): "
        images.append(preprocess(record["image"], record["bands"], where=where))
        maps.append(land_cover_of(record, preprocess.acquisition, split.num_classes, where))
        if len(images) == chunk:
            yield np.stack(images), np.stack(maps)
            images, maps = [], []
    if images:
        yield np.stack(images), np.stack(maps)


def load_scenes(split, indices, preprocess) -> tuple[np.ndarray, np.ndarray]:
    parts = list(read_scenes(split, indices, preprocess))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _batches(arrays, batch: int):
    """Fixed-size batches of equally long arrays, the last zero-padded; yields (parts, real)."""
    n = len(arrays[0])
    for start in range(0, n, batch):
        parts = [a[start:start + batch] for a in arrays]
        real = len(parts[0])
        if real < batch:
            parts = [np.concatenate([p, np.zeros((batch - real,) + p.shape[1:], p.dtype)])
                     for p in parts]
        yield parts, real


def resize_input(images, img_size: int | None):
    """(B, H, W, C) → (B, img_size, img_size, C) bilinear (antialiased), no crop."""
    if img_size is None or images.shape[1:3] == (img_size, img_size):
        return images
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, img_size, img_size, c), "bilinear", antialias=True)


# ----- encoder features ---------------------------------------------------------------------------
class Encoder:
    """The encoder's feature levels at a fixed batch size: one compiled forward serves the training
    features, the statistics and the evaluation (frozen BatchNorm: inference mode)."""

    def __init__(self, model, img_size: int | None, batch: int):
        self.model, self.img_size, self.batch = model, img_size, int(batch)
        self._forward = jax.jit(
            lambda v, x: heads.encoder_levels(model, v, resize_input(x, img_size)))

    def levels(self, variables, images) -> list[np.ndarray]:
        """[(N, h, w, c), …] float32 of all ``images`` (N, H, W, C), in padded batches."""
        outputs = None
        for (x,), real in _batches([images], self.batch):
            levels = [np.asarray(lv)[:real] for lv in self._forward(variables, jnp.asarray(x))]
            outputs = [[] for _ in levels] if outputs is None else outputs
            for store, level in zip(outputs, levels):
                store.append(level)
        return [np.concatenate(store) for store in outputs]


def level_stats(levels, eps: float = 1e-5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, std) of each level (N, h, w, c) over examples and locations."""
    return [(lv.mean(axis=(0, 1, 2)).astype(np.float32),
             np.sqrt(lv.var(axis=(0, 1, 2)) + eps).astype(np.float32)) for lv in levels]


# ----- training -----------------------------------------------------------------------------------
def _schedule(lr: float, config: SegConfig):
    warmup = int(min(config.warmup_steps, config.steps // 2))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(config.steps, warmup + 1), 0.0)


def _batch_indices(n: int, config: SegConfig) -> np.ndarray:
    """(steps, batch) scene indices: consecutive seeded permutations of range(n), cut in batches."""
    rng = np.random.default_rng(config.seed)
    need = config.steps * config.batch_size
    stream = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])
    return stream[:need].reshape(config.steps, config.batch_size)


@dataclasses.dataclass
class Segmenter:
    """A trained encoder + decoder: ``predict(images (B, H, W, C), size) → classes (B, H, W)``."""

    encoder: Encoder
    encoder_variables: dict
    head: object
    head_params: dict
    stats: list
    final_loss: float

    def __post_init__(self):
        head, stats = self.head, self.stats

        @functools.partial(jax.jit, static_argnums=2)
        def classify(head_params, levels, size):
            logits = head.apply({"params": head_params}, heads.standardize(levels, stats))
            return jnp.argmax(heads.upsample_logits(logits, size), axis=-1)

        self._classify = classify

    def predict(self, images, size: tuple[int, int]) -> np.ndarray:
        """Classes (N, H, W) int of ``images`` (N, H', W', C), logits resized to ``size``."""
        levels = self.encoder.levels(self.encoder_variables, images)
        return np.concatenate([
            np.asarray(self._classify(self.head_params, [jnp.asarray(p) for p in parts],
                                      tuple(size)))[:real]
            for parts, real in _batches(levels, self.encoder.batch)])


def _init_head(levels, num_classes: int, config: SegConfig):
    head = heads.make_head(len(levels), num_classes, config.fpn_dim)
    sample = [jnp.zeros((1,) + lv.shape[1:], jnp.float32) for lv in levels]
    params = head.init(jax.random.key(config.seed), sample)["params"]
    return head, params


def train_frozen(encoder: Encoder, variables, images, maps, *, num_classes: int,
                 config: SegConfig) -> Segmenter:
    """Decoder on frozen features of the training scenes images (N, H, W, C), maps (N, H, W)."""
    levels = encoder.levels(variables, images)
    stats = level_stats(levels)
    head, params = _init_head(levels, num_classes, config)
    tx = optax.adamw(_schedule(config.lr, config), weight_decay=config.weight_decay)
    size = maps.shape[1:3]

    @jax.jit
    def step(params, opt_state, batch_levels, labels):
        def loss_fn(p):
            logits = head.apply({"params": p}, heads.standardize(batch_levels, stats))
            return heads.pixel_cross_entropy(heads.upsample_logits(logits, size), labels)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    loss = jnp.nan
    for index in _batch_indices(len(maps), config):
        params, opt_state, loss = step(params, opt_state, [lv[index] for lv in levels],
                                       maps[index])
    return Segmenter(encoder, variables, head, params, stats, float(loss))


def train_finetune(encoder: Encoder, variables, images, maps, *, num_classes: int,
                   config: SegConfig) -> Segmenter:
    """Encoder and decoder trained together (encoder lr = lr · encoder_lr_scale); BatchNorm on
    batch statistics while training."""
    model, img_size = encoder.model, encoder.img_size
    others = {k: v for k, v in variables.items() if k != "params"}
    mutable = ["batch_stats"] if "batch_stats" in others else False
    batches = _batch_indices(len(maps), config)
    if mutable:  # features as training sees them: BatchNorm on the statistics of each batch
        forward = jax.jit(lambda v, x: heads.encoder_levels(
            model, v, resize_input(x, img_size), train=True, mutable=mutable)[0])
        first = batches[:max(1, -(-len(maps) // config.batch_size))]  # about one epoch
        parts = [[np.asarray(lv) for lv in forward(variables, jnp.asarray(images[index]))]
                 for index in first]
        levels = [np.concatenate(level) for level in zip(*parts)]
    else:
        levels = encoder.levels(variables, images)
    stats = level_stats(levels)
    head, head_params = _init_head(levels, num_classes, config)
    del levels
    params = {"encoder": variables["params"], "head": head_params}
    tx = optax.multi_transform(
        {"encoder": optax.adamw(_schedule(config.lr * config.encoder_lr_scale, config),
                                weight_decay=config.weight_decay),
         "head": optax.adamw(_schedule(config.lr, config), weight_decay=config.weight_decay)},
        lambda p: {name: jax.tree.map(lambda _, name=name: name, p[name]) for name in p})
    size = maps.shape[1:3]

    @jax.jit
    def step(params, others, opt_state, x, labels):
        def loss_fn(p):
            enc = {**others, "params": p["encoder"]}
            x_in = resize_input(x, img_size)
            if mutable:
                levels, updates = heads.encoder_levels(model, enc, x_in, train=True,
                                                       mutable=mutable)
            else:
                levels, updates = heads.encoder_levels(model, enc, x_in), {}
            logits = head.apply({"params": p["head"]}, heads.standardize(levels, stats))
            return heads.pixel_cross_entropy(heads.upsample_logits(logits, size), labels), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        step_updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, step_updates), {**others, **updates}, opt_state, loss

    opt_state = tx.init(params)
    loss = jnp.nan
    for index in batches:
        params, others, opt_state, loss = step(params, others, opt_state, images[index],
                                               maps[index])
    return Segmenter(encoder, {**others, "params": params["encoder"]}, head, params["head"],
                     stats, float(loss))


def evaluate(segmenter: Segmenter, split, indices, preprocess, num_classes: int, *,
             chunk: int = 256, class_names=None) -> dict:
    """Confusion matrix over ``split[indices]`` → ``segmentation_metrics.segmentation_report``."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for images, maps in read_scenes(split, indices, preprocess, chunk=chunk):
        predictions = segmenter.predict(images, maps.shape[1:3])
        confusion += seg_metrics.confusion_matrix(maps, predictions, num_classes)
    return seg_metrics.segmentation_report(confusion, class_names)


def segmentation_probe(model, variables, train_split, train_indices, test_split, test_indices,
                       preprocess, *, img_size, config: SegConfig = SegConfig(),
                       feature_batch: int = 256, class_names=None) -> dict:
    """Trains on ``train_split[train_indices]``, scores on ``test_split[test_indices]``; the
    metrics plus ``train_loss``."""
    if config.mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, found {config.mode!r}")
    for split in (train_split, test_split):
        check_land_cover(split)
    num_classes = test_split.num_classes
    images, maps = load_scenes(train_split, train_indices, preprocess)
    batch = max(1, min(int(feature_batch), max(len(images), len(test_indices))))
    encoder = Encoder(model, img_size, batch)
    train = train_frozen if config.mode == "frozen" else train_finetune
    segmenter = train(encoder, jax.device_put(dict(variables)), images, maps,
                      num_classes=num_classes, config=config)
    result = evaluate(segmenter, test_split, test_indices, preprocess, num_classes,
                      class_names=class_names)
    return {**result, "train_loss": segmenter.final_loss}


# ----- command line -----------------------------------------------------------------------------
def _class_names(split):
    from geossl.data import synthetic
    if getattr(split, "label_set", "") == synthetic.LABEL_SET:
        return list(synthetic.CLASSES)
    return None


def main(argv=None) -> dict:
    from geossl.eval import cli
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.segmentation",
                                     description=__doc__.split("\n\n")[0])
    cli.add_common_flags(parser, feature_mode=False)
    parser.add_argument("--mode", default=SegConfig.mode, choices=MODES,
                        help="frozen: train the decoder only; finetune: encoder and decoder")
    parser.add_argument("--steps", type=int, default=SegConfig.steps,
                        help="optimisation steps, whatever the label fraction")
    parser.add_argument("--batch_size", type=int, default=SegConfig.batch_size,
                        help="scenes per step (the training scenes cycle)")
    parser.add_argument("--lr", type=float, default=SegConfig.lr,
                        help="AdamW peak learning rate of the decoder (warmup + cosine to 0)")
    parser.add_argument("--encoder_lr_scale", type=float, default=SegConfig.encoder_lr_scale,
                        help="finetune: encoder learning rate = lr x this")
    parser.add_argument("--weight_decay", type=float, default=SegConfig.weight_decay,
                        help="AdamW weight decay")
    parser.add_argument("--warmup_steps", type=int, default=SegConfig.warmup_steps,
                        help="linear warmup steps (at most half the steps)")
    parser.add_argument("--fpn_dim", type=int, default=SegConfig.fpn_dim,
                        help="channels of the FPN decoder (ResNet / Swin encoders)")
    args = parser.parse_args(argv)
    if not 0 < args.label_fraction <= 1:
        parser.error(f"--label_fraction: expected a fraction in (0, 1], found {args.label_fraction}")
    cli.check_ranges(parser, args, positive=("steps", "batch_size", "lr", "encoder_lr_scale",
                                             "fpn_dim", "feature_batch"),
                     non_negative=("weight_decay", "warmup_steps"))
    config = SegConfig(mode=args.mode, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       encoder_lr_scale=args.encoder_lr_scale, weight_decay=args.weight_decay,
                       warmup_steps=args.warmup_steps, fpn_dim=args.fpn_dim, seed=args.seed)
    t0 = time.perf_counter()
    data = datasets.probe_splits(args.dataset, args.train_split, args.eval_split,
                                 label_fraction=args.label_fraction, seed=args.seed,
                                 holdout_train_fraction=args.holdout_train_fraction)
    for split in (data.train, data.test):
        check_land_cover(split)
    overrides = {"norm": args.norm, "acquisition": args.acquisition}
    if args.bands:
        overrides["bands"] = tuple(b.strip() for b in args.bands.split(",") if b.strip())
    model, variables, model_config = cli.load_model(
        args.workdir, args.step, random_init=args.random_init, seed=args.seed,
        img_size=args.img_size,
        in_chans=len(overrides["bands"]) if "bands" in overrides else None)
    preprocess = datasets.Preprocess.from_config(model_config, **overrides)
    img_size = args.img_size or model_config.model.get("img_size", None)
    result = segmentation_probe(model, variables, data.train, data.train_indices, data.test,
                                data.test_indices, preprocess, img_size=img_size, config=config,
                                feature_batch=args.feature_batch,
                                class_names=_class_names(data.test))
    report = {
        "task": "segmentation", "workdir": os.path.abspath(args.workdir), "step": args.step,
        "arch": model_config.model.name, "random_init": bool(args.random_init),
        "dataset": args.dataset, "splits": data.note, "train_split": data.train.name,
        "test_split": data.test.name, "num_train": int(len(data.train_indices)),
        "num_test": int(len(data.test_indices)), "num_classes": data.test.num_classes,
        "multilabel": False, "label_fraction": args.label_fraction, "seed": args.seed,
        "mode": args.mode, "feature_dim": model.num_features, "img_size": img_size,
        "bands": list(preprocess.bands) if preprocess.bands else None, "norm": preprocess.norm,
        "acquisition": args.acquisition, "metrics": result, "miou_rule": MIOU_RULE,
        "probe": dataclasses.asdict(config),
        "train_indices": [int(i) for i in data.train_indices],
        "probe_time_s": time.perf_counter() - t0,
    }
    suffix = f"{args.mode}_{args.label_fraction:g}" + ("_random_init" if args.random_init else "")
    cli.finish(report, args.output or os.path.join(args.workdir, f"segmentation_{suffix}.json"))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
