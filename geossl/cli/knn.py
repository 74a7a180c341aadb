"""``python -m geossl.eval.knn``: the weighted k-NN classifier on the frozen features of a workdir's
encoder.

    python -m geossl.eval.knn --workdir DIR --dataset DIR|synthetic|tfds:NAME [--k 10,20,100
        --layers -1|all|2,3 --bootstrap 1000 ...]

The classifier (:mod:`geossl.eval.knn`) is the library; this is its command line. Several ``--k``
give one metric set each (``k<k>/<metric>``), every figure with its bootstrapped 95% interval
(``metrics.ci95``, the same resamples for every k and layer); ``--layers`` as the linear probe's
(:mod:`geossl.cli.probe_flags`; the best layer by the first k's figure). The report goes to
``--output`` or ``<workdir>/knn[_random_init].json``.
"""

from __future__ import annotations

import argparse
import os
import time

from geossl.cli import probe_flags
from geossl.eval import knn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.knn",
                                     description=knn.__doc__.split("\n\n")[0])
    probe_flags.add_common_flags(parser)
    probe_flags.add_bootstrap_flag(parser)
    parser.add_argument("--k", default="20",
                        help="neighbour count(s) >= 1, comma-separated, e.g. 10,20,50")
    parser.add_argument("--temperature", type=float, default=0.07,
                        help="softmax temperature > 0 of the cosine-similarity vote weights")
    return parser


def neighbour_counts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``--k`` "10,20" → [10, 20]; anything else is ``parser.error`` (exit 2)."""
    try:
        ks = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        parser.error(f"--k: expected comma-separated integers >= 1, found {text!r}")
    if not ks or min(ks) < 1:
        parser.error(f"--k: expected comma-separated integers >= 1, found {text!r}")
    return ks


def main(argv: list[str] | None = None) -> dict:
    """Runs the classifier the flags name (``argv``; default ``sys.argv[1:]``); returns the
    report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    ks = neighbour_counts(parser, args.k)
    probe_flags.check_ranges(parser, args, positive=("temperature",),
                             non_negative=("bootstrap",))
    probe_flags.check_layers(parser, args)
    data = probe_flags.probe_features_from_args(args)
    t0 = time.perf_counter()

    def probe(train_features, test_features):
        results, intervals = {}, {}
        for k in ks:
            result = knn.knn_evaluate(train_features, data.train_labels, test_features,
                                      data.test_labels, num_classes=data.num_classes,
                                      multilabel=data.multilabel, k=k,
                                      temperature=args.temperature, bootstrap=args.bootstrap,
                                      bootstrap_seed=args.seed)
            for name, value in result.pop("ci95", {}).items():
                intervals[name if len(ks) == 1 else f"k{k}/{name}"] = value
            for name, value in result.items():
                results[name if len(ks) == 1 else f"k{k}/{name}"] = value
        return {**results, "ci95": intervals} if intervals else results

    results, layers = probe_flags.probe_each_layer(data, probe)
    report = data.report("knn", results, **layers, k=ks, temperature=args.temperature,
                         bootstrap=probe_flags.bootstrap_info(args),
                         probe_time_s=time.perf_counter() - t0)
    probe_flags.finish(report, args.output or os.path.join(
        args.workdir, "knn_random_init.json" if args.random_init else "knn.json"))
    return report
