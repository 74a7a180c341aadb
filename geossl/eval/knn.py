"""Weighted k-nearest-neighbour classifier on frozen features (DINO's ``knn_classifier``).

Features are L2-normalised; the k training examples of highest cosine similarity s_j vote with
weight exp(s_j / T) (k = 20, T = 0.07 by default). Class scores are the weighted votes divided by
the summed weights: for single-label data the arg-max is DINO's prediction (top-1 accuracy); for
multi-label data the score of class c is the weighted fraction of neighbours carrying c, ranked
into micro / macro mAP. With ``bootstrap`` = B > 0 the report adds ``"ci95"`` (bootstrapped 95%
intervals over B seeded resamples of the test examples, :mod:`geossl.eval.bootstrap`).

Command line: ``python -m geossl.eval.knn`` (:mod:`geossl.cli.knn`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geossl.eval import bootstrap as bootstrap_lib


def l2_normalize(x, eps: float = 1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k",))
def _vote(test, train, train_onehot, temperature, *, k):
    # full float32 products, as DINO's torch matmul (a GPU's default TF32 moves neighbours)
    sim = jnp.matmul(l2_normalize(test), l2_normalize(train).T,
                     precision=jax.lax.Precision.HIGHEST)              # (B, N)
    top_sim, top_idx = jax.lax.top_k(sim, k)                         # (B, k), decreasing
    # exp(s/T) relative to the row's largest (the ratio below is unchanged): finite for any T,
    # where exp(s/T) itself overflows float32 from T < 1/88.7
    weights = jnp.exp((top_sim - top_sim[:, :1]) / temperature)
    votes = jnp.einsum("bk,bkc->bc", weights, train_onehot[top_idx],
                       precision=jax.lax.Precision.HIGHEST)
    return votes / jnp.sum(weights, axis=-1, keepdims=True)


def knn_scores(train_features, train_labels, test_features, *, num_classes: int,
               multilabel: bool, k: int = 20, temperature: float = 0.07,
               chunk: int = 1024) -> np.ndarray:
    """Class scores (N_test, K): weighted neighbour votes. Labels (N, K) multi-hot or (N,) ids."""
    train_labels = np.asarray(train_labels)
    onehot = (train_labels.astype(np.float32) if multilabel
              else np.eye(num_classes, dtype=np.float32)[train_labels.astype(np.int64)])
    train = jnp.asarray(train_features, jnp.float32)
    onehot = jnp.asarray(onehot)
    k = int(min(k, train.shape[0]))
    test = np.asarray(test_features, np.float32)
    chunk = int(min(chunk, max(1, len(test))))
    out = []
    for start in range(0, len(test), chunk):
        part = test[start:start + chunk]
        real = len(part)
        if real < chunk:  # one program for every chunk
            part = np.concatenate([part, np.zeros((chunk - real, part.shape[1]), part.dtype)])
        out.append(np.asarray(_vote(jnp.asarray(part), train, onehot,
                                    jnp.float32(temperature), k=k))[:real])
    return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def knn_evaluate(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                 multilabel: bool, k: int = 20, temperature: float = 0.07, bootstrap: int = 0,
                 bootstrap_seed: int = 0) -> dict:
    """Multi-label: map_micro, map_macro, ap_per_class; single-label: top1 (and top5); with
    ``bootstrap`` B > 0 also ``ci95`` ({figure: [lo, hi]})."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes=num_classes,
                        multilabel=multilabel, k=k, temperature=temperature).astype(np.float64)
    return bootstrap_lib.classification_report(test_labels, scores, multilabel=multilabel,
                                               replicates=bootstrap, seed=bootstrap_seed)


if __name__ == "__main__":  # the `python -m` entry point of the command line
    from geossl.cli.knn import main
    from geossl.errors import run_command
    run_command(main, "python -m geossl.eval.knn")
