"""``python -m geossl.eval.linear_probe``: a linear probe on the frozen features of a
workdir's encoder.

    python -m geossl.eval.linear_probe --workdir DIR --dataset DIR|synthetic|tfds:NAME
        [--train_split train --eval_split heldout --label_fraction 0.1 --mode cls --epochs 90
         --layers -1|all|2,3 [--layers_concat] --bootstrap 1000 --output probe.json --random_init]

The probe itself (:mod:`geossl.eval.linear_probe`) is the library; this is its command line. Every
figure comes with its bootstrapped 95% interval (``metrics.ci95``); ``--layers`` probes
intermediate blocks / stages (:mod:`geossl.cli.probe_flags`). The report goes to ``--output`` or
``<workdir>/linear_probe[_random_init].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from geossl.cli import probe_flags
from geossl.eval import linear_probe
from geossl.eval.linear_probe import ProbeConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.linear_probe",
                                     description=linear_probe.__doc__.split("\n\n")[0])
    probe_flags.add_common_flags(parser)
    probe_flags.add_bootstrap_flag(parser)
    parser.add_argument("--epochs", type=int, default=ProbeConfig.epochs,
                        help="passes over the probe-train features")
    parser.add_argument("--batch_size", type=int, default=ProbeConfig.batch_size,
                        help="features per SGD step of the linear head")
    parser.add_argument("--lr", type=float, default=ProbeConfig.lr,
                        help="SGD learning rate of the linear head (cosine to 0)")
    parser.add_argument("--momentum", type=float, default=ProbeConfig.momentum,
                        help="SGD momentum")
    parser.add_argument("--weight_decay", type=float, default=ProbeConfig.weight_decay,
                        help="L2 weight decay of the head's weights")
    parser.add_argument("--no_standardize", action="store_true",
                        help="train on raw features (default: standardised with train statistics)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the probe the flags name (``argv``; default ``sys.argv[1:]``); returns the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    probe_flags.check_ranges(parser, args, positive=("epochs", "batch_size", "lr"),
                             non_negative=("momentum", "weight_decay", "bootstrap"))
    probe_flags.check_layers(parser, args)
    data = probe_flags.probe_features_from_args(args)
    config = ProbeConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         momentum=args.momentum, weight_decay=args.weight_decay,
                         standardize=not args.no_standardize, seed=args.seed)
    t0 = time.perf_counter()

    def probe(train_features, test_features):
        return linear_probe.linear_probe(train_features, data.train_labels, test_features,
                                         data.test_labels, num_classes=data.num_classes,
                                         multilabel=data.multilabel, config=config,
                                         bootstrap=args.bootstrap, bootstrap_seed=args.seed)

    result, layers = probe_flags.probe_each_layer(data, probe)
    report = data.report("linear_probe", result, **layers, probe=dataclasses.asdict(config),
                         bootstrap=probe_flags.bootstrap_info(args),
                         probe_time_s=time.perf_counter() - t0)
    probe_flags.finish(report, args.output or os.path.join(
        args.workdir, "linear_probe_random_init.json" if args.random_init else "linear_probe.json"))
    return report
