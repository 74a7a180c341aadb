"""``python -m geossl.eval.finetune``: fine-tuning a workdir's encoder for classification.

    python -m geossl.eval.finetune --workdir DIR --dataset DIR|synthetic|tfds:NAME
        [--label_fraction 0.1 --epochs 100 --batch_size 256 --blr 5e-4 --layer_decay 0.65
         --weight_decay 0.05 --warmup_epochs 5 --min_lr 1e-6 --drop_path 0.1
         --label_smoothing 0.1 --crop_scale 0.8,1 --no_flip --random_init --output ft.json]

Defaults: MAE's ViT-B fine-tuning recipe with SSL4EO-S12's augmentation and batch (the library's
docstring, :mod:`geossl.eval.finetune`, says which figure comes from where). The report goes to
``--output`` or ``<workdir>/finetune_<fraction>[_random_init].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from geossl.cli import probe_flags
from geossl.eval import finetune
from geossl.eval.finetune import FinetuneConfig


def _scale(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.8,1), found {text!r}") \
            from None
    if not 0 < low <= high <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH <= 1, found {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    c = FinetuneConfig
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.finetune",
                                     description=finetune.__doc__.split("\n\n")[0])
    probe_flags.add_common_flags(parser, feature_mode=False)
    probe_flags.add_bootstrap_flag(parser)
    parser.add_argument("--epochs", type=int, default=c.epochs,
                        help="passes over the training examples (MAE ViT-B, SSL4EO-S12: 100)")
    parser.add_argument("--batch_size", type=int, default=c.batch_size,
                        help="examples per step (SSL4EO-S12: 64 per GPU x 4 = 256; at most the "
                             "example count)")
    parser.add_argument("--blr", type=float, default=c.blr,
                        help="base lr: AdamW peak lr = blr x batch_size / 256 (MAE ViT-B: 5e-4)")
    parser.add_argument("--layer_decay", type=float, default=c.layer_decay,
                        help="ViTs: lr x decay^(depth+1-layer), embedding layer 0, block i layer "
                             "i+1, final norm and head layer depth+1 (BEiT; MAE ViT-B: 0.65); "
                             "ResNet / Swin: one lr")
    parser.add_argument("--weight_decay", type=float, default=c.weight_decay,
                        help="AdamW weight decay on matrices, not on biases, norms or token / "
                             "position tables (MAE: 0.05)")
    parser.add_argument("--warmup_epochs", type=float, default=c.warmup_epochs,
                        help="linear warmup from 0, per step (MAE: 5)")
    parser.add_argument("--min_lr", type=float, default=c.min_lr,
                        help="end of the cosine decay (MAE: 1e-6)")
    parser.add_argument("--drop_path", type=float, default=c.drop_path,
                        help="ViT stochastic depth while training (MAE ViT-B: 0.1)")
    parser.add_argument("--label_smoothing", type=float, default=c.label_smoothing,
                        help="single-label data: targets (1-e) one-hot + e/K (MAE: 0.1)")
    parser.add_argument("--crop_scale", type=_scale, default=c.crop_scale,
                        help="RandomResizedCrop area range LOW,HIGH (SSL4EO-S12: 0.8,1)")
    parser.add_argument("--no_flip", action="store_true",
                        help="no random horizontal flip (default: flip with p 0.5)")
    parser.add_argument("--head_init_std", type=float, default=c.head_init_std,
                        help="std of the linear head's initial weights (MAE: 2e-5)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Runs the fine-tuning the flags name (``argv``; default ``sys.argv[1:]``); returns the
    report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.label_fraction <= 1:
        parser.error(f"--label_fraction: expected a fraction in (0, 1], found "
                     f"{args.label_fraction}")
    probe_flags.check_ranges(parser, args, positive=("epochs", "batch_size", "blr",
                                                     "feature_batch"),
                             non_negative=("weight_decay", "warmup_epochs", "min_lr",
                                           "head_init_std"))
    for name in ("layer_decay",):
        if not 0 < getattr(args, name) <= 1:
            parser.error(f"--{name}: expected a value in (0, 1], found {getattr(args, name)}")
    for name in ("drop_path", "label_smoothing"):
        if not 0 <= getattr(args, name) < 1:
            parser.error(f"--{name}: expected a value in [0, 1), found {getattr(args, name)}")
    config = FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, blr=args.blr,
        layer_decay=args.layer_decay, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, drop_path=args.drop_path,
        label_smoothing=args.label_smoothing, crop_scale=tuple(args.crop_scale),
        flip=not args.no_flip, head_init_std=args.head_init_std, seed=args.seed)
    t0 = time.perf_counter()
    data = probe_flags.splits_from_args(args)
    model, variables, model_config, preprocess, img_size, wavelengths = \
        probe_flags.encoder_from_args(args, data)
    result = finetune.finetune_probe(model, variables, data.train, data.train_indices, data.test,
                                     data.test_indices, preprocess, img_size=img_size,
                                     config=config, bootstrap=args.bootstrap,
                                     bootstrap_seed=args.seed, wavelengths=wavelengths)
    report = probe_flags.trained_probe_report(
        "finetune", args, data, model_config, preprocess, img_size,
        multilabel=data.test.multilabel, mode="finetune", feature_dim=model.num_features,
        wavelengths=wavelengths)
    report.update(metrics=result, probe={**dataclasses.asdict(config), "lr": config.lr},
                  bootstrap=probe_flags.bootstrap_info(args),
                  probe_time_s=time.perf_counter() - t0)
    name = f"finetune_{args.label_fraction:g}" + ("_random_init" if args.random_init else "")
    probe_flags.finish(report, args.output or os.path.join(args.workdir, f"{name}.json"))
    return report
