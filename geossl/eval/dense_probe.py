"""Per-pixel probes' engine (segmentation, change detection): an encoder's feature levels, a
decoder trained on them with the encoder frozen or fine-tuned, and its per-pixel predictions.

``Features`` turns inputs into feature levels (finest first): images (B, H, W, C) resized to the
model's input size, or pairs (B, 2, H, W, C) whose levels are |levels(date 2) − levels(date 1)|
(one encoder on both dates). A wavelength-conditioned encoder (DOFA) gets the inputs' band
wavelengths (C,) (``fit(..., wavelengths=)``, held by the ``Encoder``) as an argument of every
jitted forward. ``fit`` trains a decoder (``segmentation_heads.build_head``) on
levels standardised per channel with statistics of the training inputs (of the initial encoder),
by per-pixel softmax cross entropy over the labelled pixels (optionally class-weighted), AdamW,
a fixed number of steps whatever the data size (batches cycle through seeded permutations).
- ``frozen``: the encoder is fixed (BatchNorm in inference mode); its levels of the training
  inputs are computed once and only the decoder trains;
- ``finetune``: encoder and decoder train together, the encoder at lr · ``encoder_lr_scale``
  times a ViT's layer-wise decay (``layer_decay``: decay^(depth + 1 − layer)); encoder BatchNorm
  uses batch statistics while training (the standardisation statistics then come from about one
  epoch of training batches in that mode) and its running averages at evaluation.
Decoder BatchNorm (UPerNet) trains on batch statistics and predicts with its running averages;
its dropout is on while training only. Schedules: ``cosine`` (linear warmup, cosine to 0) or
``multistep`` (PANGAEA: × 0.1 at ⌊0.6·steps⌋ and ⌊0.9·steps⌋, after the optional warmup).
Scoring: ``image_confusions`` gives one confusion matrix per test input (N, K, K); their sum is
the test set's, and ``confusion_ci`` bootstraps the figures by resampling inputs (images or
pairs), not pixels (pixels of one image are not independent draws).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geossl.eval import bootstrap
from geossl.eval import layer_decay as layer_decay_lib
from geossl.eval import upernet
from geossl.eval import segmentation_heads as heads
from geossl.eval import segmentation_metrics as seg_metrics
from geossl.eval.features import wavelength_kwargs
from geossl.parallel import cpu_options

MODES = ("frozen", "finetune")
SCHEDULES = ("cosine", "multistep")
MULTISTEP_MILESTONES = (0.6, 0.9)


@dataclasses.dataclass(frozen=True)
class SegConfig:
    """Decoder and training settings (the heads' defaults: ``config_for``)."""

    mode: str = "frozen"
    head: str = "auto"            # auto (linear for ViT tokens, else fpn) | linear | fpn | upernet
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    layer_decay: float = 1.0
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    fpn_dim: int = 128
    channels: int = 512           # UPerNet
    dropout: float = 0.1          # UPerNet, before its classifier
    blocks: tuple[int, ...] = ()  # ViT blocks as levels; () = one level, or upernet's default
    seed: int = 0


#: PANGAEA's UPerNet protocol (configs/optimizer/adamw.yaml: AdamW lr 1e-4, β (0.9, 0.999),
#: weight decay 0.05; lr_scheduler/multi_step_lr.yaml: × 0.1 at 60% and 90% of the iterations,
#: no warmup; run.py: one optimiser over decoder and, fine-tuned, encoder: the same lr).
UPERNET_RECIPE = {"lr": 1e-4, "weight_decay": 0.05, "warmup_steps": 0, "schedule": "multistep",
                  "encoder_lr_scale": 1.0}


def config_for(head: str = "auto", **overrides) -> SegConfig:
    """``SegConfig`` with ``head``'s defaults (UPerNet: ``UPERNET_RECIPE``), then every override
    that is not None."""
    if head not in heads.HEADS:
        raise ValueError(f"head: expected one of {heads.HEADS}, found {head!r}")
    base = dict(UPERNET_RECIPE) if head == "upernet" else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return SegConfig(head=head, **base)


def check_config(config: SegConfig) -> None:
    """One ValueError naming the field for a mode, head or schedule that does not exist."""
    for field, allowed in (("mode", MODES), ("head", heads.HEADS), ("schedule", SCHEDULES)):
        if getattr(config, field) not in allowed:
            raise ValueError(f"{field}: expected one of {allowed}, found "
                             f"{getattr(config, field)!r}")


def resize_input(images, img_size: int | None):
    """(B, H, W, C) → (B, img_size, img_size, C) bilinear (antialiased), no crop."""
    if img_size is None or images.shape[1:3] == (img_size, img_size):
        return images
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, img_size, img_size, c), "bilinear", antialias=True)


# ----- encoder features ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Features:
    """Feature levels of inputs: images (B, H, W, C), or with ``pair`` (B, 2, H, W, C) → the
    absolute differences of the two dates' levels. ``blocks``: a ViT's blocks as levels."""

    model: Any
    img_size: int | None
    blocks: tuple[int, ...] = ()
    pair: bool = False

    def __call__(self, variables, x, *, train: bool = False, mutable=False, wavelengths=None):
        b = x.shape[0]
        if self.pair:
            if x.ndim != 5 or x.shape[1] != 2:
                raise ValueError(f"pair features: expected inputs (B, 2, H, W, C), found "
                                 f"{tuple(x.shape)}")
            x = jnp.concatenate([x[:, 0], x[:, 1]])  # one forward over both dates
        result = heads.encoder_levels(self.model, variables, resize_input(x, self.img_size),
                                      train=train, mutable=mutable, blocks=self.blocks,
                                      wavelengths=wavelengths)
        levels, updates = result if mutable else (result, None)
        if self.pair:
            levels = [jnp.abs(lv[b:] - lv[:b]) for lv in levels]
        return (levels, updates) if mutable else levels


def feature_blocks(model, config: SegConfig) -> tuple[int, ...]:
    """The ViT blocks whose tokens are the levels: ``config.blocks``, else UPerNet's four
    (``upernet.default_blocks``) for ``head="upernet"``; () for a model without blocks (its stage
    maps are the levels) or a one-level head."""
    depth = getattr(model, "depth", None)
    if not isinstance(depth, int):
        return ()
    blocks = tuple(int(b) for b in config.blocks)
    if not blocks and config.head == "upernet":
        blocks = upernet.default_blocks(depth)
    bad = [b for b in blocks if not -depth <= b < depth]
    if bad:
        raise ValueError(f"blocks {list(blocks)}: block {bad[0]} outside the model's {depth} "
                         f"blocks")
    return blocks


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


class Encoder:
    """``Features`` at a fixed batch size: one compiled forward serves the training levels, the
    statistics and the evaluation (BatchNorm in inference mode). ``wavelengths`` (C,): the
    inputs' band wavelengths for a wavelength-conditioned encoder (DOFA), else None."""

    def __init__(self, features: Features, batch: int, wavelengths=None):
        self.features, self.batch = features, int(batch)
        wavelength_kwargs(features.model, wavelengths)  # fixed-band families refuse them
        self.wavelengths = None if wavelengths is None else jnp.asarray(wavelengths, jnp.float32)
        self._forward = cpu_options.jit_with_step_options(
            lambda v, x, w: features(v, x, wavelengths=w))

    def levels(self, variables, inputs) -> list[np.ndarray]:
        """[(N, h, w, c), …] float32 of all ``inputs`` (N, …), in padded batches."""
        outputs = None
        for (x,), real in _batches([inputs], self.batch):
            levels = [np.asarray(lv)[:real]
                      for lv in self._forward(variables, jnp.asarray(x), self.wavelengths)]
            outputs = [[] for _ in levels] if outputs is None else outputs
            for store, level in zip(outputs, levels):
                store.append(level)
        return [np.concatenate(store) for store in outputs]


def level_stats(levels, eps: float = 1e-5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, std) of each level (N, h, w, c) over examples and locations."""
    return [(lv.mean(axis=(0, 1, 2)).astype(np.float32),
             np.sqrt(lv.var(axis=(0, 1, 2)) + eps).astype(np.float32)) for lv in levels]


# ----- decoder ------------------------------------------------------------------------------------
def head_logits(head, variables, levels, stats, *, train: bool = False, rng=None):
    """(logits (B, h, w, K), updated ``batch_stats``) of standardised ``levels``; training: batch
    statistics and dropout (``rng``)."""
    x = heads.standardize(levels, stats)
    if not train:
        return head.apply(variables, x), {}
    return head.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])


def _init_head(levels, num_classes: int, config: SegConfig):
    """The decoder and its variables ({"params"[, "batch_stats"]}) for levels [(N, h, w, c)]."""
    head = heads.build_head(config.head, [lv.shape for lv in levels], num_classes,
                            fpn_dim=config.fpn_dim, channels=config.channels,
                            dropout=config.dropout)
    sample = [jax.ShapeDtypeStruct((2,) + lv.shape[1:], jnp.float32) for lv in levels]
    variables = jax.jit(lambda key: head.lazy_init(key, sample))(jax.random.key(config.seed))
    return head, dict(variables)


@dataclasses.dataclass
class Segmenter:
    """A trained encoder + decoder: ``predict(inputs (N, …), size) → classes (N, H, W)``."""

    encoder: Encoder
    encoder_variables: dict
    head: object
    head_variables: dict
    stats: list
    final_loss: float

    def __post_init__(self):
        head, stats = self.head, self.stats

        @functools.partial(cpu_options.jit_with_step_options, static_argnums=2)
        def classify(head_variables, levels, size):
            logits, _ = head_logits(head, head_variables, levels, stats)
            return jnp.argmax(heads.upsample_logits(logits, size), axis=-1)

        self._classify = classify

    def predict(self, inputs, size: tuple[int, int]) -> np.ndarray:
        """Classes (N, H, W) int of ``inputs`` (N, …), logits resized to ``size``."""
        levels = self.encoder.levels(self.encoder_variables, inputs)
        return np.concatenate([
            np.asarray(self._classify(self.head_variables, [jnp.asarray(p) for p in parts],
                                      tuple(size)))[:real]
            for parts, real in _batches(levels, self.encoder.batch)])


# ----- training -----------------------------------------------------------------------------------
def make_schedule(lr: float, config: SegConfig):
    """The lr schedule of ``config.schedule`` peaking at ``lr`` (module docstring)."""
    warmup = int(min(config.warmup_steps, config.steps // 2))
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(config.steps, warmup + 1),
                                                  0.0)
    milestones = [int(config.steps * r) for r in MULTISTEP_MILESTONES]

    def multistep(step):
        drops = sum((step >= m).astype(jnp.float32) for m in milestones)
        ramp = jnp.minimum(1.0, step / warmup) if warmup else 1.0
        return lr * ramp * 0.1 ** drops

    return multistep


def batch_indices(n: int, config: SegConfig) -> np.ndarray:
    """(steps, batch) input indices: consecutive seeded permutations of range(n), cut in batches."""
    rng = np.random.default_rng(config.seed)
    need = config.steps * config.batch_size
    stream = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])
    return stream[:need].reshape(config.steps, config.batch_size)


def _loss(logits, labels, class_weights):
    return heads.pixel_cross_entropy(heads.upsample_logits(logits, labels.shape[1:3]), labels,
                                     class_weights=class_weights)


def train_frozen(encoder: Encoder, variables, inputs, maps, *, num_classes: int,
                 config: SegConfig, class_weights=None) -> Segmenter:
    """Decoder on frozen levels of the training inputs (N, …) with maps (N, H, W)."""
    levels = encoder.levels(variables, inputs)
    stats = level_stats(levels)
    head, head_variables = _init_head(levels, num_classes, config)
    params = head_variables.pop("params")
    tx = optax.adamw(make_schedule(config.lr, config), weight_decay=config.weight_decay)

    @cpu_options.jit_with_step_options
    def step(params, state, opt_state, batch_levels, labels, rng):
        def loss_fn(p):
            logits, updates = head_logits(head, {**state, "params": p}, batch_levels, stats,
                                          train=True, rng=rng)
            return _loss(logits, labels, class_weights), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        step_updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, step_updates), {**state, **updates}, opt_state, loss

    opt_state, state, loss = tx.init(params), head_variables, jnp.nan
    key = jax.random.key(config.seed + 1)
    for i, index in enumerate(batch_indices(len(maps), config)):
        params, state, opt_state, loss = step(params, state, opt_state,
                                              [lv[index] for lv in levels], maps[index],
                                              jax.random.fold_in(key, i))
    return Segmenter(encoder, variables, head, {**state, "params": params}, stats, float(loss))


def finetune_multipliers(model, params, config: SegConfig):
    """Per-parameter lr multipliers of {"encoder", "head"}: encoder_lr_scale times a ViT's
    layer-wise decay (``layer_decay``), 1 for the head."""
    depth = layer_decay_lib.model_depth(model, config.layer_decay)
    encoder = layer_decay_lib.lr_multipliers(params["encoder"], depth, config.layer_decay)
    return {"encoder": jax.tree.map(lambda m: m * config.encoder_lr_scale, encoder),
            "head": jax.tree.map(lambda _: 1.0, params["head"])}


def train_finetune(encoder: Encoder, variables, inputs, maps, *, num_classes: int,
                   config: SegConfig, class_weights=None) -> Segmenter:
    """Encoder and decoder trained together (module docstring)."""
    features, wavelengths = encoder.features, encoder.wavelengths
    others = {k: v for k, v in variables.items() if k != "params"}
    mutable = ["batch_stats"] if "batch_stats" in others else False
    batches = batch_indices(len(maps), config)
    if mutable:  # levels as training sees them: BatchNorm on the statistics of each batch
        forward = cpu_options.jit_with_step_options(
            lambda v, x, w: features(v, x, train=True, mutable=mutable, wavelengths=w)[0])
        first = batches[:max(1, -(-len(maps) // config.batch_size))]  # about one epoch
        parts = [[np.asarray(lv) for lv in forward(variables, jnp.asarray(inputs[index]),
                                                   wavelengths)]
                 for index in first]
        levels = [np.concatenate(level) for level in zip(*parts)]
    else:
        levels = encoder.levels(variables, inputs)
    stats = level_stats(levels)
    head, head_state = _init_head(levels, num_classes, config)
    del levels
    params = {"encoder": variables["params"], "head": head_state.pop("params")}
    # one AdamW, each update scaled: the per-group learning rates of torch (decay scaled too)
    tx = optax.chain(
        optax.adamw(make_schedule(config.lr, config), weight_decay=config.weight_decay),
        layer_decay_lib.scale_updates(finetune_multipliers(features.model, params, config)))

    @cpu_options.jit_with_step_options
    def step(params, others, head_state, opt_state, x, labels, rng, wavelengths):
        def loss_fn(p):
            enc = {**others, "params": p["encoder"]}
            if mutable:
                levels, updates = features(enc, x, train=True, mutable=mutable,
                                           wavelengths=wavelengths)
            else:
                levels, updates = features(enc, x, wavelengths=wavelengths), {}
            logits, head_updates = head_logits(head, {**head_state, "params": p["head"]}, levels,
                                               stats, train=True, rng=rng)
            return _loss(logits, labels, class_weights), (updates, head_updates)

        (loss, (updates, head_updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        step_updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, step_updates), {**others, **updates},
                {**head_state, **head_updates}, opt_state, loss)

    opt_state, loss = tx.init(params), jnp.nan
    key = jax.random.key(config.seed + 1)
    for i, index in enumerate(batches):
        params, others, head_state, opt_state, loss = step(
            params, others, head_state, opt_state, inputs[index], maps[index],
            jax.random.fold_in(key, i), wavelengths)
    return Segmenter(encoder, {**others, "params": params["encoder"]}, head,
                     {**head_state, "params": params["head"]}, stats, float(loss))


def fit(features: Features, variables, inputs, maps, *, num_classes: int, config: SegConfig,
        batch: int, class_weights=None, wavelengths=None) -> Segmenter:
    """Trains the decoder (and, fine-tuned, the encoder) on ``inputs`` (N, …) and maps (N, H, W);
    ``batch``: inputs per encoder forward when levels are computed outside training steps;
    ``wavelengths`` (C,): the inputs' band wavelengths for a wavelength-conditioned encoder."""
    check_config(config)
    train = train_frozen if config.mode == "frozen" else train_finetune
    return train(Encoder(features, batch, wavelengths), jax.device_put(dict(variables)), inputs,
                 maps, num_classes=num_classes, config=config, class_weights=class_weights)


def image_confusions(segmenter: Segmenter, batches, num_classes: int) -> np.ndarray:
    """(N, K, K) int64: one confusion matrix per input over ``batches`` of (inputs, maps
    (b, H, W)), in order; their sum is the test set's."""
    out = []
    for inputs, maps in batches:
        predictions = segmenter.predict(inputs, maps.shape[1:3])
        out.extend(seg_metrics.confusion_matrix(m, p, num_classes)
                   for m, p in zip(maps, predictions))
    return np.stack(out) if out else np.zeros((0, num_classes, num_classes), np.int64)


def confusion(segmenter: Segmenter, batches, num_classes: int) -> np.ndarray:
    """(K, K) confusion matrix of the predictions over ``batches`` of (inputs, maps (b, H, W))."""
    return image_confusions(segmenter, batches, num_classes).sum(axis=0)


def confusion_ci(per_image: np.ndarray, figures, *, replicates: int, seed: int = 0) -> dict:
    """Bootstrapped 95% intervals resampling inputs (images or pairs), not pixels: a replicate's
    confusion matrix is ``counts @ per_image`` (counts (b, N) of each input drawn,
    ``bootstrap.replicate_counts``), and ``figures(confusions (b, K, K) float64) → {name: (b,)
    or (b, K)}`` turns them into figures; {name: [lo, hi]} (per-class: a list of [lo, hi] or
    None where no replicate defines it)."""
    per_image = np.asarray(per_image)
    n, k, _ = per_image.shape
    flat = per_image.reshape(n, k * k).astype(np.float64)

    def statistic(counts):
        return figures((counts @ flat).reshape(-1, k, k))

    return bootstrap.bootstrap_ci(statistic, n, replicates=replicates, seed=seed,
                                  row_cost=max(n, k * k))
