"""``python -m geossl.eval.suite``: the papers' evaluation of a workdir's encoder in one command.

    python -m geossl.eval.suite --workdir W --suite softcon|gfm|pera|dense|all --data_root D
        [--budget paper|quick|smoke --baseline --tasks NAME,... --bootstrap 1000 --seed 0]

``--data_root synthetic`` runs the embedded data's stand-ins (classification, multi-label,
segmentation, change detection); a folder runs every task of the suite whose shards it holds, in
the layout of :mod:`geossl.eval.suite_tasks`. The library (:mod:`geossl.eval.suite`) plans, runs
and tabulates; this module holds the flags and hands each task to its probe's command line
(``geossl.cli.linear_probe``, ``knn``, ``finetune``, ``segmentation``, ``change_detection``).
Bad flags are one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from geossl.cli import change_detection, finetune, knn, linear_probe, probe_flags, segmentation
from geossl.eval import suite, suite_tasks

PROBE_CLIS = {"linear": linear_probe, "knn": knn, "finetune": finetune,
              "segmentation": segmentation, "change_detection": change_detection}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m geossl.eval.suite",
                           description=suite.__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True,
                        help="training or backbone-only workdir; the table, the JSON and each "
                             "task's report and log are written into it")
    parser.add_argument("--suite", default="all", choices=("all",) + suite_tasks.SUITES,
                        help="whose tasks: a method's papers' evaluations, or all")
    parser.add_argument("--data_root", required=True,
                        help="folder of the downstream sets (D/bigearthnet, D/eurosat, D/so2sat, "
                             "D/oscd, D/dfc2020, ...: see geossl/eval/suite_tasks.py) or "
                             "'synthetic' (the embedded data)")
    parser.add_argument("--budget", default=None, choices=suite_tasks.BUDGETS,
                        help="paper: the papers' settings; quick: fewer fine-tuning epochs and "
                             "decoder steps, a narrower UPerNet; smoke: a few steps each; "
                             "default quick on synthetic, else paper")
    parser.add_argument("--baseline", action="store_true",
                        help="also run each task on a randomly initialised encoder of the same "
                             "architecture (what pretraining bought)")
    parser.add_argument("--tasks", default=None,
                        help="only these tasks of the suite (comma-separated names)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the label subsets, the probes and the bootstrap")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the test set for the 95%% intervals; 0: none")
    parser.add_argument("--feature_batch", type=int, default=None,
                        help="images per forward pass (default: each probe's)")
    return parser


def _runner(probe: str, argv: list[str]) -> dict:
    return PROBE_CLIS[probe].main(argv)


def probe_defaults() -> dict:
    """{probe: {flag: default}} of the flags the budgets change (the tables' notes)."""
    out = {}
    for probe, module in PROBE_CLIS.items():
        parser = module.build_parser()
        flags = {k for t in suite_tasks.TASKS + suite_tasks.SYNTHETIC_TASKS if t.probe == probe
                 for k, _ in t.quick + suite_tasks.SMOKE[probe]}
        out[probe] = {k: parser.get_default(k) for k in sorted(flags)}
    return out


def _check(parser, args) -> list[suite_tasks.Task]:
    """The selected tasks; ``parser.error`` (one line, exit 2) for a bad flag."""
    if not os.path.isfile(os.path.join(args.workdir, "config.json")):
        parser.error(f"--workdir: expected a geossl workdir (with config.json), found "
                     f"{args.workdir!r}")
    if args.data_root != suite.SYNTHETIC and not os.path.isdir(args.data_root):
        parser.error(f"--data_root: expected a folder of downstream sets or 'synthetic', found "
                     f"{args.data_root!r}")
    for name in ("bootstrap",):
        if getattr(args, name) < 0:
            parser.error(f"--{name}: expected >= 0, found {getattr(args, name)}")
    if args.feature_batch is not None and args.feature_batch < 1:
        parser.error(f"--feature_batch: expected >= 1, found {args.feature_batch}")
    tasks = suite_tasks.select(args.suite, args.data_root == suite.SYNTHETIC)
    if args.tasks:
        wanted = [n.strip() for n in args.tasks.split(",") if n.strip()]
        known = {t.name for t in tasks}
        unknown = [n for n in wanted if n not in known]
        if unknown or not wanted:
            parser.error(f"--tasks: expected names of suite {args.suite}'s tasks "
                         f"({', '.join(sorted(known))}), found {args.tasks!r}")
        tasks = [t for t in tasks if t.name in wanted]
    return tasks


def main(argv: list[str] | None = None) -> dict:
    """Runs the suite the flags name (``argv``; default ``sys.argv[1:]``); returns the JSON
    document of the table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tasks = _check(parser, args)
    synthetic = args.data_root == suite.SYNTHETIC
    budget = args.budget or ("quick" if synthetic else "paper")
    try:
        model, _, config = probe_flags.load_model(args.workdir, args.step)
    except Exception as e:  # noqa: BLE001 (an unreadable workdir is one line)
        print(f"python -m geossl.eval.suite: error: --workdir {args.workdir}: "
              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
              file=sys.stderr)
        sys.exit(2)
    encoder = suite.describe_encoder(model, config)
    cache = os.path.join(args.workdir, suite.OUTPUT_DIR, "data")
    runs, skipped = suite.plan(tasks, args.data_root, encoder, budget=budget, cache=cache)
    data = ("synthetic (the embedded demo data)" if synthetic
            else os.path.abspath(args.data_root))
    print(f"eval suite {args.suite}: {len(runs)} of {len(tasks)} tasks on {data}, budget "
          f"{budget}, encoder {encoder.describe()}" + (", with random-init baseline"
                                                       if args.baseline else ""))
    for task, reason in skipped:
        print(f"skipped {task.name}: {reason}")
    header = {"suite": args.suite, "workdir": os.path.abspath(args.workdir), "step": args.step,
              "encoder": encoder.describe(), "encoder_info": vars(encoder) | {
                  "bands": list(encoder.bands) if encoder.bands else None},
              "data_root": args.data_root, "data": data, "budget": budget, "seed": args.seed,
              "bootstrap": args.bootstrap, "defaults": probe_defaults()}
    bootstrap_probes = {p for p, m in PROBE_CLIS.items()
                        if m.build_parser().get_default("bootstrap") is not None}
    doc = suite.run_suite(runs, _runner, args.workdir, header=header, skipped=skipped,
                          baseline=args.baseline, step=args.step, seed=args.seed,
                          bootstrap=args.bootstrap, feature_batch=args.feature_batch,
                          bootstrap_probes=bootstrap_probes)
    md, js = suite.write_outputs(doc, args.workdir)
    print()
    print(suite.markdown(doc), end="")
    print(f"\nwrote {md} and {js} ({doc.get('wall_s', 0.0):.0f} s)")
    return doc
