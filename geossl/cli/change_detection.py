"""``python -m geossl.eval.change_detection``: the change-detection probe of a workdir's encoder,
scored by F1 / IoU / precision / recall of the change class on held-out pairs.

    python -m geossl.eval.change_detection --workdir DIR --dataset DIR|synthetic
        [--train_split train --eval_split test --dates 0,2 --label_fraction 1
         --head upernet|fpn|linear|auto --mode frozen|finetune (or --finetune) --blocks 3,5,7,11
         --steps 500 --batch_size 32 --lr 1e-4 --no_class_weights --bootstrap 1000
         --output cd.json]

OSCD shards (data_prep.oscd): ``--dataset DIR`` (train and test splits found by name);
``--dataset synthetic``: pairs of two seasons of the embedded data's heldout locations, change =
land cover differs (the library's docstring, :mod:`geossl.eval.change_detection`, states the
rule). Decoder flags as the segmentation probe's, UPerNet with PANGAEA's recipe by default (flags
left unset take the head's defaults). Every figure comes with its bootstrapped 95% interval over
``--bootstrap`` resamples of the test pairs (``metrics.ci95``). The report goes to ``--output`` or
``<workdir>/change_detection_<mode>_<fraction>_<head>[_random_init].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from geossl.cli import probe_flags
from geossl.cli import segmentation as segmentation_cli
from geossl.eval import change_detection, dense_probe


def _dates(text: str) -> tuple[int, int]:
    try:
        first, second = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two acquisition indices A,B (e.g. 0,2), "
                                         f"found {text!r}") from None
    return first, second


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.change_detection",
                                     description=change_detection.__doc__.split("\n\n")[0])
    probe_flags.add_common_flags(parser, feature_mode=False)
    probe_flags.add_bootstrap_flag(parser)
    segmentation_cli.add_decoder_flags(parser, default_head="upernet")
    parser.add_argument("--dates", type=_dates, default=None,
                        help="multi-season records: the two acquisitions of a pair (default 0 "
                             "and T//2); OSCD pairs are their two dates")
    parser.add_argument("--no_class_weights", action="store_true",
                        help="plain cross entropy (default: weights N / (2 N_c) over the "
                             "training pixels, the change class being rare)")
    parser.set_defaults(train_split=None, eval_split=None, label_fraction=1.0)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the probe the flags name (``argv``; default ``sys.argv[1:]``); returns the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.label_fraction <= 1:
        parser.error(f"--label_fraction: expected a fraction in (0, 1], found "
                     f"{args.label_fraction}")
    segmentation_cli.check_decoder_flags(parser, args)
    probe_flags.check_ranges(parser, args, non_negative=("bootstrap",))
    config = segmentation_cli.decoder_config(args)
    t0 = time.perf_counter()
    data = change_detection.change_splits(
        args.dataset, args.train_split, args.eval_split, label_fraction=args.label_fraction,
        seed=args.seed, holdout_train_fraction=args.holdout_train_fraction, dates=args.dates)
    model, variables, model_config, preprocess, img_size, wavelengths = \
        probe_flags.encoder_from_args(args, data)
    result = change_detection.change_detection_probe(
        model, variables, data.train, data.train_indices, data.test, data.test_indices,
        preprocess, img_size=img_size, config=config, dates=args.dates,
        class_weighting=not args.no_class_weights, feature_batch=args.feature_batch,
        bootstrap=args.bootstrap, bootstrap_seed=args.seed, wavelengths=wavelengths)
    report = {
        "task": "change_detection", "workdir": os.path.abspath(args.workdir),
        "step": args.step, "arch": model_config.model.name,
        "random_init": bool(args.random_init), "dataset": args.dataset, "splits": data.note,
        "train_split": data.train.name, "test_split": data.test.name,
        "num_train": int(len(data.train_indices)), "num_test": int(len(data.test_indices)),
        "num_classes": len(change_detection.CLASSES), "multilabel": False,
        "label_fraction": args.label_fraction, "seed": args.seed, "mode": config.mode,
        "head": config.head, "blocks": list(dense_probe.feature_blocks(model, config)),
        "dates": list(args.dates) if args.dates else None,
        "feature_dim": int(model.num_features), "img_size": img_size,
        "bands": list(preprocess.bands) if preprocess.bands else None, "norm": preprocess.norm,
        "wavelengths": probe_flags.wavelength_list(wavelengths), "metrics": result,
        "probe": dataclasses.asdict(config),
        "bootstrap": segmentation_cli.bootstrap_info(args, "pairs"),
        "train_indices": [int(i) for i in data.train_indices],
        "probe_time_s": time.perf_counter() - t0,
    }
    name = (f"change_detection_{config.mode}_{args.label_fraction:g}_{config.head}"
            + ("_random_init" if args.random_init else ""))
    probe_flags.finish(report, args.output or os.path.join(args.workdir, f"{name}.json"))
    return report
