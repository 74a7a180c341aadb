"""Fine-tuning for classification: a workdir's encoder + a linear head on its embedding (a ViT's
final-normed CLS token, as SoftCon's probes; MAE pools the patch tokens), trained end to end,
scored on held-out examples (mAP for multi-label data, top-1 for single-label).

Recipe (``FinetuneConfig`` defaults): MAE's ViT-B fine-tuning (He et al. 2022; facebookresearch/
mae FINETUNE.md): AdamW β (0.9, 0.999), lr = blr · batch / 256 with blr 5e-4, layer-wise lr decay
0.65 for ViTs (BEiT style, ``layer_decay``: patch embedding / position / class tokens at layer 0,
block i at layer i + 1, the final norm and the head at depth + 1, lr · decay^(depth + 1 − layer)),
weight decay 0.05 on matrices only (not biases, norms, token / position tables), 5 warmup epochs
(linear from 0) then cosine to 1e-6 per step, 100 epochs, drop path 0.1, label smoothing 0.1
(single-label), head weights N(0, 2e-5²) and zero bias. Augmentation: SSL4EO-S12's transfer
transform (RandomResizedCrop to the input size, scale 0.8–1, ratio 3/4–4/3, + horizontal flip);
MAE's mixup 0.8 / cutmix 1.0, RandAugment and random erasing are left out. Batch 256 (SSL4EO-S12's
fine-tuning scripts: 64 per GPU on 4 GPUs). Multi-label data: sigmoid binary cross entropy, mean
over classes (torch ``MultiLabelSoftMarginLoss``). Evaluation: resize + centre crop as the linear
probe (``features.resize_center_crop``), BatchNorm on running averages, no drop path.
Batches are consecutive seeded permutations of the training examples cut into full batches of
``batch_size`` (at most the example count); steps = epochs · ⌊N / batch⌋ (MAE's loader drops
the last partial batch). The training examples are held in host memory. A wavelength-conditioned
encoder (DOFA) gets the images' band wavelengths (C,) (``wavelengths=``) as an argument of every
jitted step and forward.

Command line: ``python -m geossl.eval.finetune`` (:mod:`geossl.cli.finetune`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geossl.data import augment
from geossl.eval import bootstrap as bootstrap_lib
from geossl.eval import layer_decay
from geossl.eval.features import CROP_RATIO, resize_center_crop, wavelength_kwargs
from geossl.parallel import cpu_options
from geossl.train.optim import decay_mask


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 100
    batch_size: int = 256
    blr: float = 5e-4                        # lr = blr · batch_size / 256
    layer_decay: float = 0.65                # ViTs; other encoders: 1
    weight_decay: float = 0.05
    warmup_epochs: float = 5
    min_lr: float = 1e-6
    drop_path: float = 0.1
    label_smoothing: float = 0.1             # single-label data
    crop_scale: tuple[float, float] = (0.8, 1.0)
    flip: bool = True
    head_init_std: float = 2e-5
    seed: int = 0

    @property
    def lr(self) -> float:
        return self.blr * self.batch_size / 256


def steps_of(config: FinetuneConfig, n: int) -> tuple[int, int]:
    """(total steps, warmup steps) for ``n`` training examples: ⌊n / batch⌋ steps an epoch, as
    MAE's training loader, which drops the last partial batch (``drop_last=True``)."""
    per_epoch = n // min(config.batch_size, n)
    return config.epochs * per_epoch, int(round(config.warmup_epochs * per_epoch))


def lr_schedule(config: FinetuneConfig, n: int):
    """Linear warmup from 0 to ``config.lr``, then cosine to ``min_lr`` (per step)."""
    total, warmup = steps_of(config, n)
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, max(total, warmup + 1),
                                              config.min_lr)


def lr_multipliers(model, params, config: FinetuneConfig):
    """{"encoder": layer-wise decay multipliers, "head": 1}: the head is the last layer; an
    encoder without numbered blocks (ResNet, Swin) trains at one lr."""
    depth = getattr(model, "depth", None)
    depth, decay = (depth, config.layer_decay) if isinstance(depth, int) else (0, 1.0)
    return {"encoder": layer_decay.lr_multipliers(params["encoder"], depth, decay),
            "head": jax.tree.map(lambda _: 1.0, params["head"])}


def make_optimizer(model, params, config: FinetuneConfig, n: int) -> optax.GradientTransformation:
    """AdamW (decay on matrices) at the schedule, each parameter's update times its multiplier."""
    return optax.chain(
        optax.adamw(lr_schedule(config, n), b1=0.9, b2=0.999, weight_decay=config.weight_decay,
                    mask=decay_mask(params, "matrices")),
        layer_decay.scale_updates(lr_multipliers(model, params, config)))


def classification_loss(logits, labels, *, multilabel: bool, label_smoothing: float = 0.0):
    """Mean over examples: multi-label mean_k BCE(σ(logit_k), y_k) (labels (B, K) {0, 1});
    single-label softmax cross entropy against (1 − ε)·one-hot + ε/K (labels (B,) int)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def augment_batch(images: np.ndarray, rng: np.random.Generator, out_size,
                  config: FinetuneConfig) -> np.ndarray:
    """(B, H, W, C) → (B, S, S, C): a random resized crop of each image and a coin-flip mirror."""
    b, h, w, _ = images.shape
    size = (out_size, out_size) if out_size else (h, w)
    out = []
    for image in images:
        top, left, ch, cw = augment.random_resized_crop_box(rng, h, w, config.crop_scale)
        flip = bool(config.flip and rng.random() < 0.5)
        crop = np.ascontiguousarray(image[top:top + ch, left:left + cw], np.float32)
        out.append(augment.resize_bilinear(crop, *size, hflip=flip))
    return np.stack(out)


def _with_drop_path(model, rate: float):
    """``model`` with drop path ``rate`` and whether to call it stochastic (ViTs only)."""
    if rate and "drop_path_rate" in {f.name for f in dataclasses.fields(model)}:
        return model.clone(drop_path_rate=float(rate)), True
    return model, False


@dataclasses.dataclass
class Classifier:
    """An encoder + linear head: ``logits(images (N, H, W, C)) → (N, K)`` in evaluation mode;
    ``wavelengths`` (C,): the images' band wavelengths for a wavelength-conditioned encoder."""

    model: object
    variables: dict          # the encoder's ({"params"[, "batch_stats"]})
    head: dict               # {"kernel" (D, K), "bias" (K,)}
    img_size: int | None
    batch: int = 64
    wavelengths: object = None

    def __post_init__(self):
        model, img_size = self.model, self.img_size
        wavelength_kwargs(model, self.wavelengths)  # fixed-band families refuse them

        @cpu_options.jit_with_step_options
        def forward(variables, head, x, wavelengths):
            x = resize_center_crop(x, img_size, CROP_RATIO)
            embedding = model.apply(variables, x, train=False,
                                    **wavelength_kwargs(model, wavelengths))["embedding"]
            return embedding.astype(jnp.float32) @ head["kernel"] + head["bias"]

        self._forward = forward

    def logits(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(self._forward(self.variables, self.head, chunk,
                                                self.wavelengths))[:self.batch - pad])
        return np.concatenate(out).astype(np.float64)


def init_head(model, num_classes: int, config: FinetuneConfig) -> dict:
    key = jax.random.key(config.seed)
    kernel = config.head_init_std * jax.random.normal(key, (int(model.num_features), num_classes))
    return {"kernel": kernel, "bias": jnp.zeros((num_classes,))}


def train_classifier(model, variables, images, labels, *, num_classes: int, multilabel: bool,
                     img_size: int | None, config: FinetuneConfig = FinetuneConfig(),
                     wavelengths=None) -> tuple[Classifier, list[float]]:
    """Fine-tunes on images (N, H, W, C) and labels ((N, K) multi-hot or (N,) class ids); returns
    the classifier and the per-step training losses. ``wavelengths`` (C,): the images' band
    wavelengths for a wavelength-conditioned encoder (DOFA), else None."""
    wavelength_kwargs(model, wavelengths)  # fixed-band families refuse them before compiling
    if wavelengths is not None:
        wavelengths = jnp.asarray(wavelengths, jnp.float32)
    images = np.asarray(images, np.float32)
    n = len(images)
    if n == 0:
        raise ValueError("finetune: no training examples")
    labels = np.asarray(labels, np.float32 if multilabel else np.int32)
    batch = min(config.batch_size, n)
    total, _ = steps_of(config, n)
    train_model, stochastic = _with_drop_path(model, config.drop_path)
    others = {k: v for k, v in variables.items() if k != "params"}
    mutable = ["batch_stats"] if "batch_stats" in others else False
    params = {"encoder": variables["params"], "head": init_head(model, num_classes, config)}
    tx = make_optimizer(model, params, config, n)
    smoothing = 0.0 if multilabel else config.label_smoothing

    @cpu_options.jit_with_step_options
    def step(params, others, opt_state, x, y, rng, wavelengths):
        def loss_fn(p):
            kw = {"rngs": {"dropout": rng}, "stochastic": True} if stochastic else {}
            kw.update(wavelength_kwargs(train_model, wavelengths))
            result = train_model.apply({**others, "params": p["encoder"]}, x, train=True,
                                       mutable=mutable, **kw)
            out, updates = result if mutable else (result, {})
            logits = out["embedding"].astype(jnp.float32) @ p["head"]["kernel"] + p["head"]["bias"]
            return classification_loss(logits, y, multilabel=multilabel,
                                       label_smoothing=smoothing), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        step_updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, step_updates), {**others, **updates}, opt_state, loss

    rng = np.random.default_rng(config.seed)
    stream = np.concatenate([rng.permutation(n) for _ in range(-(-total * batch // n))])
    order = stream[:total * batch].reshape(total, batch)
    params, others = jax.device_put((params, others))
    opt_state, losses, key = tx.init(params), [], jax.random.key(config.seed + 1)
    for i, index in enumerate(order):
        x = augment_batch(images[index], rng, img_size, config)
        params, others, opt_state, loss = step(params, others, opt_state, x, labels[index],
                                               jax.random.fold_in(key, i), wavelengths)
        losses.append(loss)
    classifier = Classifier(model, {**others, "params": params["encoder"]}, params["head"],
                            img_size, wavelengths=wavelengths)
    return classifier, [float(v) for v in jax.device_get(losses)]


def load_examples(split, indices, preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, C) float32, labels) of ``split[indices]`` in order."""
    parts = list(split.read(indices, preprocess))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def evaluate(classifier: Classifier, split, indices, preprocess, *, multilabel: bool,
             bootstrap: int = 0, bootstrap_seed: int = 0) -> dict:
    """Multi-label: map_micro, map_macro, ap_per_class; single-label: top1 (and top5); with
    ``bootstrap`` B > 0 also ``ci95``: 95% intervals over B resamples of the test examples."""
    logits, labels = [], []
    for images, chunk_labels in split.read(indices, preprocess, chunk=256):
        logits.append(classifier.logits(images))
        labels.append(chunk_labels)
    return bootstrap_lib.classification_report(
        np.concatenate(labels), np.concatenate(logits).astype(np.float64), multilabel=multilabel,
        replicates=bootstrap, seed=bootstrap_seed)


def finetune_probe(model, variables, train_split, train_indices, test_split, test_indices,
                   preprocess, *, img_size, config: FinetuneConfig = FinetuneConfig(),
                   bootstrap: int = 0, bootstrap_seed: int = 0, wavelengths=None) -> dict:
    """Fine-tunes on ``train_split[train_indices]``, scores on ``test_split[test_indices]``; the
    metrics (with ``ci95`` when ``bootstrap`` > 0) plus ``train_loss`` (the last step's) and
    ``steps``. ``wavelengths`` (C,): those of ``preprocess``'s bands for a
    wavelength-conditioned encoder (DOFA), else None."""
    images, labels = load_examples(train_split, train_indices, preprocess)
    classifier, losses = train_classifier(
        model, jax.device_get(dict(variables)), images, labels,
        num_classes=test_split.num_classes, multilabel=test_split.multilabel, img_size=img_size,
        config=config, wavelengths=wavelengths)
    result = evaluate(classifier, test_split, test_indices, preprocess,
                      multilabel=test_split.multilabel, bootstrap=bootstrap,
                      bootstrap_seed=bootstrap_seed)
    return {**result, "train_loss": losses[-1], "steps": len(losses)}


if __name__ == "__main__":  # the `python -m` entry point of the command line
    from geossl.cli.finetune import main
    from geossl.errors import run_command
    run_command(main, "python -m geossl.eval.finetune")
