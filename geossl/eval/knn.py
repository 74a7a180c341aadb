"""Weighted k-nearest-neighbour classifier on frozen features (DINO's ``knn_classifier``).

Features are L2-normalised; the k training examples of highest cosine similarity s_j vote with
weight exp(s_j / T) (k = 20, T = 0.07 by default). Class scores are the weighted votes divided by
the summed weights: for single-label data the arg-max is DINO's prediction (top-1 accuracy); for
multi-label data the score of class c is the weighted fraction of neighbours carrying c, ranked
into micro / macro mAP.

Command line::

    python -m geossl.eval.knn --workdir DIR --dataset DIR|synthetic|tfds:NAME [--k 10,20,100 ...]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from geossl.eval import metrics


def l2_normalize(x, eps: float = 1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k",))
def _vote(test, train, train_onehot, temperature, *, k):
    sim = l2_normalize(test) @ l2_normalize(train).T                  # (B, N)
    top_sim, top_idx = jax.lax.top_k(sim, k)                         # (B, k)
    weights = jnp.exp(top_sim / temperature)
    votes = jnp.einsum("bk,bkc->bc", weights, train_onehot[top_idx])
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
                 multilabel: bool, k: int = 20, temperature: float = 0.07) -> dict:
    """Multi-label: map_micro, map_macro, ap_per_class; single-label: top1 (and top5)."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes=num_classes,
                        multilabel=multilabel, k=k, temperature=temperature).astype(np.float64)
    if multilabel:
        return metrics.multilabel_report(test_labels, scores)
    return metrics.multiclass_report(test_labels, scores)


def main(argv=None) -> dict:
    from geossl.eval import cli
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.knn",
                                     description=__doc__.split("\n\n")[0])
    cli.add_common_flags(parser)
    parser.add_argument("--k", default="20",
                        help="neighbour count(s) >= 1, comma-separated, e.g. 10,20,50")
    parser.add_argument("--temperature", type=float, default=0.07,
                        help="softmax temperature > 0 of the cosine-similarity vote weights")
    args = parser.parse_args(argv)
    try:
        ks = [int(v) for v in str(args.k).split(",") if v.strip()]
    except ValueError:
        parser.error(f"--k: expected comma-separated integers >= 1, found {args.k!r}")
    if not ks or min(ks) < 1:
        parser.error(f"--k: expected comma-separated integers >= 1, found {args.k!r}")
    cli.check_ranges(parser, args, positive=("temperature",))
    data = cli.probe_features_from_args(args)
    t0 = time.perf_counter()
    results = {}
    for k in ks:
        result = knn_evaluate(data.train_features, data.train_labels, data.test_features,
                              data.test_labels, num_classes=data.num_classes,
                              multilabel=data.multilabel, k=k, temperature=args.temperature)
        for name, value in result.items():
            results[name if len(ks) == 1 else f"k{k}/{name}"] = value
    report = data.report("knn", results, k=ks, temperature=args.temperature,
                         probe_time_s=time.perf_counter() - t0)
    cli.finish(report, args.output or os.path.join(
        args.workdir, "knn_random_init.json" if args.random_init else "knn.json"))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
