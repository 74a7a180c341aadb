"""Linear probe on frozen features (REFERENCE §2, the lab's protocol).

A linear layer (weights N(0, 0.01²), zero bias, as in MoCo-v3's linear eval) trained with SGD
(lr 0.1, momentum 0.9, cosine decay to 0 per step, 90 epochs, batch 1024, no weight decay):
- multi-label data: sigmoid binary cross-entropy averaged over classes and examples — the same
  value as torch's ``MultiLabelSoftMarginLoss`` (mean over classes, then over the batch); reported
  as micro and macro mAP (``metrics``);
- single-label data: softmax cross-entropy; reported as top-1 accuracy.
Features are computed once (no train-time augmentation: the lab's RandomResizedCrop(scale 0.8–1) +
flip is left out, which is what makes 90 epochs cheap) and standardised with the probe-train mean
and standard deviation by default (the frozen-BatchNorm-before-the-linear-layer of the lab's code,
not confirmed; ``--no_standardize`` to turn off).

With ``bootstrap`` = B > 0 the report adds ``"ci95"``: bootstrapped 95% percentile intervals of
its figures over B seeded resamples of the test examples (:mod:`geossl.eval.bootstrap`).

Command line: ``python -m geossl.eval.linear_probe`` (:mod:`geossl.cli.linear_probe`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geossl.eval import bootstrap as bootstrap_lib


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    epochs: int = 90
    batch_size: int = 1024
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    standardize: bool = True
    init_std: float = 0.01
    seed: int = 0


@dataclasses.dataclass
class LinearHead:
    """logits = ((x − mean) / std) · kernel + bias."""

    kernel: np.ndarray  # (F, K)
    bias: np.ndarray    # (K,)
    mean: np.ndarray    # (F,)
    std: np.ndarray     # (F,)
    multilabel: bool
    final_loss: float = float("nan")

    def logits(self, features) -> np.ndarray:
        x = (np.asarray(features, np.float32) - self.mean) / self.std
        return x @ self.kernel + self.bias


def probe_loss(logits, labels, weights, multilabel: bool):
    """Weighted mean over examples of the per-example loss; logits (B, K), weights (B,) in {0, 1}.

    Multi-label: mean_k BCE(sigmoid(logit_k), y_k) per example (torch MultiLabelSoftMarginLoss);
    single-label: softmax cross-entropy with integer labels (B,)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        per_example = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@functools.partial(jax.jit, static_argnames=("multilabel", "epochs", "batch", "lr", "momentum",
                                             "weight_decay"))
def _train(params, features, labels, key, *, multilabel, epochs, batch, lr, momentum,
           weight_decay):
    n = features.shape[0]
    steps_per_epoch = -(-n // batch)
    schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
    tx = optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                     optax.sgd(schedule, momentum=momentum or None))
    opt_state = tx.init(params)

    def loss_fn(p, x, y, w):
        return probe_loss(x @ p["kernel"] + p["bias"], y, w, multilabel)

    def step(carry, batch_idx):
        p, s = carry
        index, weight = batch_idx
        loss, grads = jax.value_and_grad(loss_fn)(p, features[index], labels[index], weight)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    def epoch(carry, epoch_key):
        # A fresh shuffle per epoch; the ragged last batch is padded with weight-0 rows.
        perm = jax.random.permutation(epoch_key, n)
        pad = steps_per_epoch * batch - n
        index = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(-1, batch)
        weight = (jnp.arange(steps_per_epoch * batch) < n).astype(jnp.float32).reshape(-1, batch)
        carry, losses = jax.lax.scan(step, carry, (index, weight))
        return carry, losses[-1]

    (params, _), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, epochs))
    return params, losses


def train_linear(features, labels, *, num_classes: int, multilabel: bool,
                 config: ProbeConfig = ProbeConfig()) -> LinearHead:
    """Fits the linear head on features (N, F) and labels ((N, K) multi-hot or (N,) class ids)."""
    features = np.asarray(features, np.float32)
    n, dim = features.shape
    if n == 0:
        raise ValueError("train_linear: no training examples")
    if config.standardize:
        mean = features.mean(axis=0)
        std = np.sqrt(features.var(axis=0) + 1e-5).astype(np.float32)  # BatchNorm's eps
    else:
        mean, std = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    x = (features - mean) / std
    y = np.asarray(labels, np.float32 if multilabel else np.int32)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    params = {"kernel": config.init_std * jax.random.normal(init_key, (dim, num_classes)),
              "bias": jnp.zeros((num_classes,))}
    params, losses = _train(params, jnp.asarray(x), jnp.asarray(y), train_key,
                            multilabel=multilabel, epochs=int(config.epochs),
                            batch=int(min(config.batch_size, n)), lr=float(config.lr),
                            momentum=float(config.momentum),
                            weight_decay=float(config.weight_decay))
    params, losses = jax.device_get((params, losses))
    return LinearHead(np.asarray(params["kernel"]), np.asarray(params["bias"]), mean, std,
                      multilabel, float(losses[-1]) if len(losses) else float("nan"))


def evaluate(head: LinearHead, features, labels, *, bootstrap: int = 0,
             bootstrap_seed: int = 0) -> dict:
    """Multi-label: map_micro, map_macro, ap_per_class; single-label: top1 (and top5); with
    ``bootstrap`` B > 0 also ``ci95`` ({figure: [lo, hi]}, B replicates seeded by
    ``bootstrap_seed``)."""
    logits = head.logits(features).astype(np.float64)
    return bootstrap_lib.classification_report(labels, logits, multilabel=head.multilabel,
                                               replicates=bootstrap, seed=bootstrap_seed)


def linear_probe(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                 multilabel: bool, config: ProbeConfig = ProbeConfig(), bootstrap: int = 0,
                 bootstrap_seed: int = 0) -> dict:
    """Trains on the first pair, evaluates on the second; the metrics (with ``ci95`` when
    ``bootstrap`` > 0) plus ``train_loss``."""
    head = train_linear(train_features, train_labels, num_classes=num_classes,
                        multilabel=multilabel, config=config)
    return {**evaluate(head, test_features, test_labels, bootstrap=bootstrap,
                       bootstrap_seed=bootstrap_seed), "train_loss": head.final_loss}


if __name__ == "__main__":  # the `python -m` entry point of the command line
    from geossl.cli.linear_probe import main
    from geossl.errors import run_command
    run_command(main, "python -m geossl.eval.linear_probe")
