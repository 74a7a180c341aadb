"""``python -m geossl.eval.segmentation``: the segmentation probe of a workdir's encoder, scored by
mIoU on held-out scenes.

    python -m geossl.eval.segmentation --workdir DIR --dataset DIR|synthetic --label_fraction 0.1
        [--head auto|linear|fpn|upernet --mode frozen|finetune (or --finetune) --blocks 3,5,7,11
         --random_init --steps 500 --batch_size 32 --lr 1e-3 --encoder_lr_scale 0.1
         --layer_decay 1 --bootstrap 1000 --output seg.json]

Flags left unset take the head's defaults: ``--head upernet`` PANGAEA's recipe (AdamW lr 1e-4,
weight decay 0.05, lr x 0.1 at 60% and 90% of the steps, no warmup, 512 channels, dropout 0.1, the
encoder fine-tuned at the same lr), the other heads lr 1e-3, weight decay 1e-4, 50 warmup steps +
cosine, encoder at lr x 0.1. Every figure (mIoU, pixel accuracy, per-class IoU) comes with its
bootstrapped 95% interval over ``--bootstrap`` resamples of the test images (``metrics.ci95``).
The probe (:mod:`geossl.eval.segmentation`) is the library; this is its command line. The report
goes to ``--output`` or
``<workdir>/segmentation_<mode>_<fraction>[_<head>][_random_init].json`` (no head part for auto).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from geossl.cli import probe_flags
from geossl.eval import dense_probe, segmentation
from geossl.eval.segmentation import MODES, SegConfig
from geossl.eval.segmentation_heads import HEADS

_UPERNET = dense_probe.UPERNET_RECIPE


def _default(name: str) -> str:
    """'default V (upernet: U)' for a flag whose default depends on the head."""
    base = getattr(SegConfig, name)
    return (f"default {base:g} (upernet: {_UPERNET[name]:g})" if name in _UPERNET
            else f"default {base}")


def parse_blocks(text: str | None) -> tuple[int, ...] | None:
    """"3,5,7,11" → (3, 5, 7, 11); None or "" → None."""
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, found "
                                         f"{text!r}") from None


def add_decoder_flags(parser, *, default_head: str = "auto") -> None:
    """The decoder and training flags of the per-pixel probes (segmentation, change detection);
    numbers left unset take the head's defaults (``dense_probe.config_for``)."""
    parser.add_argument("--head", default=default_head, choices=HEADS,
                        help="decoder: auto (linear on ViT tokens, FPN on stage maps), linear, "
                             "fpn, or upernet (PPM + FPN, Xiao et al. 2018; a ViT's four blocks "
                             "through a x4/x2/x1/x0.5 neck, ResNet/Swin stages as they are) with "
                             "PANGAEA's recipe as its defaults")
    parser.add_argument("--mode", default=SegConfig.mode, choices=MODES,
                        help="frozen: train the decoder only; finetune: encoder and decoder")
    parser.add_argument("--finetune", action="store_true",
                        help="the same as --mode finetune")
    parser.add_argument("--blocks", type=parse_blocks, default=None,
                        help="ViT blocks (comma-separated) whose tokens are the feature levels; "
                             "default: the last block's tokens, or for upernet mmseg's / "
                             "PANGAEA's four, d-1-q*(4,3,2,0) with q = depth//6: 3,5,7,11 of 12 "
                             "blocks, 7,11,15,23 of 24")
    parser.add_argument("--steps", type=int, default=SegConfig.steps,
                        help="optimisation steps, whatever the label fraction")
    parser.add_argument("--batch_size", type=int, default=SegConfig.batch_size,
                        help="scenes per step (the training scenes cycle)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"AdamW peak learning rate of the decoder; {_default('lr')}")
    parser.add_argument("--schedule", default=None, choices=dense_probe.SCHEDULES,
                        help="cosine: linear warmup then cosine to 0; multistep: x 0.1 at 60%% "
                             "and 90%% of the steps (PANGAEA); default cosine (upernet: "
                             "multistep)")
    parser.add_argument("--encoder_lr_scale", type=float, default=None,
                        help=f"finetune: encoder lr = lr x this; {_default('encoder_lr_scale')}")
    parser.add_argument("--layer_decay", type=float, default=None,
                        help="finetune, ViTs: block i trains at lr x decay^(depth - i) (BEiT / "
                             "MAE layer-wise decay, embedding at decay^(depth+1)); default 1 "
                             "(PANGAEA: none; MAE's UPerNet fine-tuning: 0.65)")
    parser.add_argument("--weight_decay", type=float, default=None,
                        help=f"AdamW weight decay; {_default('weight_decay')}")
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help=f"linear warmup steps (at most half the steps); "
                             f"{_default('warmup_steps')}")
    parser.add_argument("--fpn_dim", type=int, default=SegConfig.fpn_dim,
                        help="channels of the FPN decoder")
    parser.add_argument("--channels", type=int, default=SegConfig.channels,
                        help="channels of the UPerNet decoder (PANGAEA: 512)")
    parser.add_argument("--dropout", type=float, default=SegConfig.dropout,
                        help="UPerNet: channel dropout before the classifier (mmseg / PANGAEA: "
                             "0.1)")


def check_decoder_flags(parser, args) -> None:
    """``parser.error`` (exit 2) for out-of-range decoder flags; run before anything is read."""
    def given(*names):
        return tuple(n for n in names if getattr(args, n) is not None)

    probe_flags.check_ranges(
        parser, args, non_negative=given("weight_decay", "warmup_steps"),
        positive=given("steps", "batch_size", "lr", "encoder_lr_scale", "fpn_dim", "channels",
                       "feature_batch"))
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        parser.error(f"--layer_decay: expected a value in (0, 1], found {args.layer_decay}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout: expected a value in [0, 1), found {args.dropout}")
    if args.head == "linear" and args.blocks and len(args.blocks) > 1:
        parser.error(f"--blocks: the linear head reads one block's tokens, found "
                     f"{len(args.blocks)} blocks {','.join(map(str, args.blocks))} (several "
                     f"levels: --head fpn or upernet)")


def decoder_config(args) -> SegConfig:
    """The ``SegConfig`` of the decoder flags: the head's defaults under every flag given."""
    return dense_probe.config_for(
        args.head, mode="finetune" if args.finetune else args.mode, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        encoder_lr_scale=args.encoder_lr_scale, layer_decay=args.layer_decay,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, fpn_dim=args.fpn_dim,
        channels=args.channels, dropout=args.dropout, blocks=args.blocks, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geossl.eval.segmentation",
                                     description=segmentation.__doc__.split("\n\n")[0])
    probe_flags.add_common_flags(parser, feature_mode=False)
    probe_flags.add_bootstrap_flag(parser)
    add_decoder_flags(parser)
    return parser


def class_names(split) -> list[str] | None:
    """The class names of a split's label set, where geossl knows them (the synthetic data's)."""
    from geossl.data import synthetic
    if getattr(split, "label_set", "") == synthetic.LABEL_SET:
        return list(synthetic.CLASSES)
    return None


def bootstrap_info(args, unit: str) -> dict:
    """The report's ``bootstrap`` entry of a per-pixel probe: whole test ``unit`` (images,
    pairs) are resampled, each with its confusion matrix, not pixels."""
    return {**probe_flags.bootstrap_info(args),
            "resampled": f"test {unit} (their per-{unit[:-1]} confusion matrices summed), "
                         f"with replacement; not pixels"}


def main(argv: list[str] | None = None) -> dict:
    """Runs the probe the flags name (``argv``; default ``sys.argv[1:]``); returns the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.label_fraction <= 1:
        parser.error(f"--label_fraction: expected a fraction in (0, 1], found {args.label_fraction}")
    check_decoder_flags(parser, args)
    probe_flags.check_ranges(parser, args, non_negative=("bootstrap",))
    config = decoder_config(args)
    t0 = time.perf_counter()
    data = probe_flags.splits_from_args(args)
    for split in (data.train, data.test):
        segmentation.check_land_cover(split)
    model, variables, model_config, preprocess, img_size, wavelengths = \
        probe_flags.encoder_from_args(args, data)
    result = segmentation.segmentation_probe(
        model, variables, data.train, data.train_indices, data.test, data.test_indices,
        preprocess, img_size=img_size, config=config, feature_batch=args.feature_batch,
        class_names=class_names(data.test), bootstrap=args.bootstrap, bootstrap_seed=args.seed,
        wavelengths=wavelengths)
    report = probe_flags.trained_probe_report(
        "segmentation", args, data, model_config, preprocess, img_size, multilabel=False,
        mode=config.mode, feature_dim=model.num_features, wavelengths=wavelengths)
    report.update(head=config.head, blocks=list(dense_probe.feature_blocks(model, config)),
                  metrics=result, miou_rule=segmentation.MIOU_RULE,
                  probe=dataclasses.asdict(config), bootstrap=bootstrap_info(args, "images"),
                  probe_time_s=time.perf_counter() - t0)
    suffix = (f"{config.mode}_{args.label_fraction:g}"
              + (f"_{config.head}" if config.head != "auto" else "")
              + ("_random_init" if args.random_init else ""))
    probe_flags.finish(report, args.output
                       or os.path.join(args.workdir, f"segmentation_{suffix}.json"))
    return report
