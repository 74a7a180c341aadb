"""The papers' evaluation in one command: every task of a suite whose data is found, one table.

    python -m geossl.eval.suite --workdir W --suite softcon|gfm|pera|dense|all --data_root D
        [--budget paper|quick|smoke --baseline --tasks NAME,... --bootstrap 1000 --seed 0]

The tasks (:mod:`geossl.eval.suite_tasks`, which also fixes the layout of ``D``) run one after
the other through the probes' own command lines (linear probe, kNN, fine-tuning, segmentation,
change detection), each report written to ``W/eval_suite/<task>.json`` and the probe's printout to
``<task>.log``. Progress is one line per task with the time taken, the elapsed time and an ETA
(the time per unit of ``suite_tasks.COST`` of the tasks done, times the cost left). The table
(task, dataset, protocol, metric, ours with its 95% interval, the random-init baseline with
``--baseline``, the paper's figure where the setting matches, status) is printed and written to
``W/eval_suite.md``, the same rows with every detail to ``W/eval_suite.json``, after each task.
A task whose data is absent is skipped with one line; a task that fails is a row whose status
holds the first line of its error, and the suite goes on.

Budgets: ``paper`` runs every probe with the papers' settings (its defaults plus the task's
flags); ``quick`` (the default on the synthetic data) shortens the costly probes (the task's
``quick`` flags: fewer fine-tuning epochs, fewer decoder steps, a narrower UPerNet), so no paper
figure is put beside its rows; ``smoke`` shortens further, to check that every task runs.

Command line: :mod:`geossl.cli.suite`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable

import numpy as np

from geossl.eval import datasets
from geossl.eval import suite_tasks
from geossl.eval.suite_tasks import PaperFigure, Task

SYNTHETIC = "synthetic"
SINGLE_LABEL_SET = "dynamic_world_9_dominant"
OUTPUT_DIR = "eval_suite"
NO_CHANGE = "no budget change"
#: What makes a model another size than its name's: compared with ``models.create(name)``.
SIZE_FIELDS = ("num_features", "depth", "patch_size")


# ----- the encoder --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EncoderInfo:
    """What of a workdir's encoder a paper figure must match: the model name, the size fields
    in which it differs from that name's standard model (``changed``: of num_features, depth,
    patch_size), the input bands and their kind (``band_family``: ms, sar, rgb or other)."""

    arch: str
    changed: tuple[str, ...]
    bands: tuple[str, ...] | None
    band_family: str

    @property
    def canonical(self) -> bool:
        return not self.changed

    def describe(self) -> str:
        size = f" (its {', '.join(self.changed)} changed)" if self.changed else ""
        bands = f"{len(self.bands)} bands, {self.band_family}" if self.bands else "bands as stored"
        return f"{self.arch}{size}, {bands}"


def band_family(bands) -> str:
    """"sar" (S1 VV / VH only), "rgb" (three visible bands), "ms" (12 or 13 S2 bands) or
    "other"."""
    names = set(bands or ())
    if names and names <= {"VV", "VH"}:
        return "sar"
    if names in ({"B2", "B3", "B4"}, {"R", "G", "B"}):
        return "rgb"
    if len(names) >= 12 and all(b.startswith("B") for b in names):
        return "ms"
    return "other"


def describe_encoder(model, config) -> EncoderInfo:
    """The ``EncoderInfo`` of a loaded encoder and its workdir's config."""
    from geossl import models
    arch = str(config.model.name)
    data = config.get("data", None)
    bands = tuple(data.get("bands")) if data is not None and data.get("bands", None) else None
    try:
        reference = models.create(arch)
        changed = tuple(field for field in SIZE_FIELDS
                        if getattr(reference, field, None) != getattr(model, field, None))
    except ValueError:  # not one of geossl's names
        changed = ("architecture",)
    return EncoderInfo(arch, changed, bands, band_family(bands))


# ----- paper figures ------------------------------------------------------------------------------
def match_figure(task: Task, figure: PaperFigure, encoder: EncoderInfo, *, synthetic: bool,
                 budget: str, label_set: str | None = None) -> tuple[bool, str]:
    """(whether ``figure`` is the paper's figure for this run of ``task``, the first reason it
    is not): the same model name and size, band kind, real data with the paper's label set, the
    papers' budget, and the settings the figure requires."""
    settings = dict(task.settings)
    if synthetic:
        return False, "synthetic data"
    if budget != "paper":
        return False, f"{budget} budget"
    if encoder.arch != figure.arch:
        return False, f"model {encoder.arch}, paper {figure.arch}"
    if not encoder.canonical:
        return False, f"{encoder.arch} with its {', '.join(encoder.changed)} changed"
    if encoder.band_family != figure.bands:
        return False, f"bands {encoder.band_family}, paper {figure.bands}"
    if task.label_set and label_set != task.label_set:
        return False, f"labels {label_set}, paper {task.label_set}"
    for key, value in figure.requires:
        if settings.get(key) != value:
            return False, f"paper: {key} {value}"
    return True, "matches"


# ----- data ---------------------------------------------------------------------------------------
def synthetic_single_label_set(folder: str) -> str:
    """``folder`` holding the embedded data's heldout locations as single-label records: image =
    the first acquisition (1, H, W, C), label = its most frequent ``land_cover`` class (labelled
    pixels; ties: the lower class). Written once, reused while the synthetic data's parameters
    are the same; the probes divide it (a seeded half trains)."""
    from geossl.data import manifest
    from geossl.data.parallel_writer import write_shards
    source = datasets.resolve_dataset(SYNTHETIC)
    with open(os.path.join(source, "synthetic.json")) as f:
        stamp = {"source": source, "params": json.load(f)["params"]}
    stamp_path = os.path.join(folder, "source.json")
    if os.path.isfile(manifest.manifest_path(folder, "heldout")) and os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return folder
    split = datasets.open_split(SYNTHETIC, "heldout")

    def record(index: int) -> dict:
        r = split.records[index]
        cover = np.asarray(r["land_cover"])[0]
        labelled = cover[cover != 255].astype(np.int64)
        if not labelled.size:
            raise ValueError(f"{split.name} record {index}: no labelled pixel in acquisition 0")
        dominant = int(np.argmax(np.bincount(labelled, minlength=split.num_classes)))
        return {"image": np.asarray(r["image"])[:1], "bands": list(r["bands"]),
                "sensor": r["sensor"], "key": r["key"], "labels": np.array([dominant]),
                "label_set": SINGLE_LABEL_SET, "num_classes": split.num_classes}

    os.makedirs(folder, exist_ok=True)
    write_shards(list(range(len(split))), record, folder, "heldout", num_shards=1, num_workers=1,
                 verbose=False)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return folder


def _split_label_set(folder: str, split: str | None) -> str | None:
    prefixes = datasets.shard_prefixes(folder)
    name = split if split in prefixes else (prefixes[0] if len(prefixes) == 1 else None)
    opened = datasets.open_split(folder, name) if name else None
    return getattr(opened, "label_set", None)


def locate(task: Task, data_root: str, cache: str) -> tuple[str | None, str, str | None]:
    """(the probe's ``--dataset``, or None when the data is absent; why; the eval split's
    label set). Real tasks need ``D/<task.data>`` with the eval split's shards, or one shard set
    (the probes divide it)."""
    if data_root == SYNTHETIC:
        if task.data == "single_label":
            return synthetic_single_label_set(os.path.join(cache, "synthetic_single_label")), \
                "", SINGLE_LABEL_SET
        return SYNTHETIC, "", None
    folder = os.path.join(data_root, task.data)
    if not os.path.isdir(folder):
        return None, f"no folder {folder}", None
    prefixes = datasets.shard_prefixes(folder)
    eval_split = task.splits[1]
    if eval_split not in prefixes and len(prefixes) != 1:
        found = ", ".join(prefixes) or "none"
        return None, f"no {eval_split}-*.tfrecord shards in {folder} (shard sets: {found})", None
    return folder, "", _split_label_set(folder, eval_split)


# ----- planning -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Planned:
    """A task to run: its ``--dataset``, flags (settings, then the budget's ``overrides``) and
    the paper figure put beside it (None where no figure matches; ``figures``: each with why);
    ``error``: why its data could not be read (a failed row, not run)."""

    task: Task
    dataset: str
    flags: dict
    overrides: dict
    paper: PaperFigure | None
    figures: list
    error: str | None = None


def plan(tasks, data_root: str, encoder: EncoderInfo, *, budget: str, cache: str
         ) -> tuple[list[Planned], list[tuple[Task, str]]]:
    """(the tasks to run, the (task, reason) pairs skipped for absent data); data that is there
    but unreadable (an interrupted or damaged shard set) makes a failed row."""
    synthetic = data_root == SYNTHETIC
    runs, skipped = [], []
    for task in tasks:
        try:
            dataset, reason, label_set = locate(task, data_root, cache)
        except Exception as e:  # noqa: BLE001 (one failed row; the suite goes on)
            runs.append(Planned(task, os.path.join(data_root, task.data), {}, {}, None, [],
                                error=f"failed: {_first_line(e)}"))
            continue
        if dataset is None:
            skipped.append((task, reason))
            continue
        overrides = suite_tasks.budget_flags(task, budget)
        figures, paper = [], None
        for figure in task.paper:
            matched, why = match_figure(task, figure, encoder, synthetic=synthetic,
                                        budget=budget, label_set=label_set)
            figures.append({**dataclasses.asdict(figure), "matched": matched, "why": why})
            paper = paper or (figure if matched else None)
        runs.append(Planned(task, dataset, {**dict(task.settings), **overrides}, overrides,
                            paper, figures))
    return runs, skipped


def probe_argv(run: Planned, workdir: str, output: str, *, step=None, seed: int = 0,
               bootstrap: int | None = None, random_init: bool = False,
               feature_batch: int | None = None) -> list[str]:
    """The probe command line of ``run`` (``bootstrap`` None: a probe without intervals)."""
    task = run.task
    argv = ["--workdir", workdir, "--dataset", run.dataset, "--seed", str(seed),
            "--label_fraction", f"{task.label_fraction:g}", "--output", output]
    for flag, split in zip(("--train_split", "--eval_split"), task.splits):
        if split is not None:
            argv += [flag, split]
    if step is not None:
        argv += ["--step", str(step)]
    if bootstrap is not None:
        argv += ["--bootstrap", str(bootstrap)]
    if feature_batch is not None:
        argv += ["--feature_batch", str(feature_batch)]
    for flag, value in run.flags.items():
        argv.append(f"--{flag}={value}")
    if random_init:
        argv.append("--random_init")
    return argv


# ----- running ------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One line per task: its result and time, the elapsed time and an ETA from the cost
    (``suite_tasks.COST``) of the tasks done and left."""

    def __init__(self, costs, emit: Callable[[str], None] = print):
        self.costs, self.emit = list(costs), emit
        self.done_cost, self.done = 0.0, 0
        self.start = time.perf_counter()

    def eta(self) -> float | None:
        left = sum(self.costs[self.done:])
        if not self.done_cost:
            return None
        return (time.perf_counter() - self.start) / self.done_cost * left

    def finished(self, name: str, summary: str, seconds: float) -> None:
        self.done_cost += self.costs[self.done]
        self.done += 1
        eta = self.eta()
        width = len(str(len(self.costs)))
        self.emit(f"[{self.done:>{width}}/{len(self.costs)}] {name}: {summary} ({seconds:.1f} s)"
                  f" | elapsed {_clock(time.perf_counter() - self.start)}, ETA "
                  f"{_clock(eta) if eta is not None else '?'}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _last_line(path: str) -> str:
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def run_probe(runner, probe: str, argv: list[str], log_path: str) -> tuple[dict | None, str]:
    """(report, "ok") of ``runner(probe, argv)`` with its printout in ``log_path``, or (None,
    "failed: <the error's first line>")."""
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            return runner(probe, argv), "ok"
        except SystemExit as e:  # a probe's argparse error: its message is the log's last line
            code = e.code
            error = None
        except Exception as e:  # noqa: BLE001 (a failing task is a row; the suite goes on)
            error = e
    if error is not None:
        return None, f"failed: {_first_line(error)}"
    return None, f"failed: exit {code}: {_last_line(log_path)}"


def figure_of(report: dict | None, metric: str) -> tuple[float | None, list | None]:
    """(the task's figure, its [lo, hi] or None) from a probe report, in percent."""
    if report is None:
        return None, None
    metrics = report.get("metrics", {})
    value = metrics.get(metric)
    if not isinstance(value, (int, float)):
        return None, None
    interval = metrics.get("ci95", {}).get(metric)
    return 100 * float(value), ([100 * float(v) for v in interval] if interval else None)


def _cell(value, interval) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" + (f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")


def run_suite(runs: list[Planned], runner, workdir: str, *, header: dict, skipped=(),
              baseline: bool = False, step=None, seed: int = 0, bootstrap: int = 1000,
              feature_batch: int | None = None, bootstrap_probes=(),
              emit: Callable[[str], None] = print) -> dict:
    """Runs each planned task (and, with ``baseline``, its random-init twin) through
    ``runner(probe, argv) → report``; writes the table and JSON after each; returns the JSON
    document. ``bootstrap_probes``: the probes that take ``--bootstrap``."""
    out_dir = os.path.join(workdir, OUTPUT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    factor = 2 if baseline else 1
    progress = Progress([suite_tasks.COST[r.task.probe] * factor for r in runs], emit)
    doc = {**header, "baseline": bool(baseline), "rows": [],
           "skipped": [{"task": t.name, "reason": why} for t, why in skipped]}
    t_start = time.perf_counter()
    for run in runs:
        task = run.task
        t0 = time.perf_counter()
        kw = dict(step=step, seed=seed, feature_batch=feature_batch,
                  bootstrap=bootstrap if task.probe in bootstrap_probes else None)
        row = {"task": task.name, "dataset": task.dataset, "protocol": task.protocol,
               "probe": task.probe, "metric": task.metric, "metric_name": task.metric_name,
               "label_fraction": task.label_fraction, "data": run.dataset,
               "suites": list(suite_tasks.suites_of(task)), "stands_for": list(task.stands_for),
               "flags": run.flags, "budget_overrides": run.overrides,
               "paper": dataclasses.asdict(run.paper) if run.paper else None,
               "paper_figures": run.figures}
        for variant, random_init in (("ours", False), ("random_init", True))[:factor]:
            name = task.name + ("_random_init" if random_init else "")
            report_path = os.path.join(out_dir, f"{name}.json")
            argv = probe_argv(run, workdir, report_path, random_init=random_init, **kw)
            report, status = (None, run.error) if run.error else run_probe(
                runner, task.probe, argv, os.path.join(out_dir, f"{name}.log"))
            value, interval = figure_of(report, task.metric)
            if report is not None and value is None:
                status = f"failed: no {task.metric} in the report"
            row[variant] = {"value": value, "ci95": interval, "status": status,
                            "report": report_path if report is not None else None,
                            "argv": argv}
        row["status"] = row["ours"]["status"]
        row["seconds"] = time.perf_counter() - t0
        doc["rows"].append(row)
        doc["wall_s"] = time.perf_counter() - t_start
        write_outputs(doc, workdir)
        ours = row["ours"]
        summary = (f"{task.metric_name} {_cell(ours['value'], ours['ci95'])}"
                   if ours["status"] == "ok" else ours["status"])
        if baseline:
            base = row["random_init"]
            summary += ("; random init " + _cell(base["value"], base["ci95"])
                        if base["status"] == "ok" else f"; random init {base['status']}")
        progress.finished(task.name, summary, row["seconds"])
    doc["wall_s"] = time.perf_counter() - t_start
    write_outputs(doc, workdir)
    return doc


# ----- the table ----------------------------------------------------------------------------------
def _paper_cell(paper: dict | None) -> str:
    if not paper:
        return ""
    return f"{paper['value']:g} ({paper['source'].split(' (')[0]})"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict) -> str:
    """The suite's table in markdown, with a header of the run's settings and notes."""
    baseline = doc.get("baseline")
    lines = [f"# geossl evaluation suite: {doc['suite']}", "",
             f"- encoder: {doc['encoder']} from `{doc['workdir']}`"
             + (f" (step {doc['step']})" if doc.get("step") is not None else ""),
             f"- data: {doc['data']}",
             f"- budget: {doc['budget']}" + (" (the papers' settings)" if doc['budget'] == "paper"
                                            else " (settings that differ from the papers' are "
                                                 "listed below; no paper figure applies)"),
             f"- figures in percent; ours with its bootstrapped 95% interval ({doc['bootstrap']} "
             f"resamples of the test examples, images or pairs, seed {doc['seed']}; a figure "
             f"without one: its probe gives none)",
             "- paper: the figure the paper reports, only where the model (name, size, bands), "
             "the data and the budget match the paper's", ""]
    columns = ["task", "dataset", "protocol", "metric", "ours (95% CI)"]
    columns += ["random init"] if baseline else []
    columns += ["paper", "status"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in doc["rows"]:
        cells = [row["task"], row["dataset"], row["protocol"], row["metric_name"],
                 _cell(row["ours"]["value"], row["ours"]["ci95"])]
        if baseline:
            base = row.get("random_init", {})
            cells.append(_cell(base.get("value"), base.get("ci95")) if base.get("status") == "ok"
                         else base.get("status", ""))
        cells += [_paper_cell(row["paper"]), row["status"]]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    notes = []
    for row in doc["rows"]:
        defaults = doc.get("defaults", {}).get(row["probe"], {})
        changed = ", ".join(f"{k} {v}" + (f" (default {defaults[k]})"
                                          if defaults.get(k) is not None else "")
                            for k, v in row["budget_overrides"].items())
        stands = f" (for {', '.join(row['stands_for'])})" if row["stands_for"] else ""
        if changed or stands:
            notes.append(f"- {row['task']}{stands}: {changed or NO_CHANGE}")
    if notes:
        lines += ["", "Notes (a synthetic task stands for the real ones named; the budget's "
                      "changes, each probe's default in parentheses):"] + notes
    if doc["skipped"]:
        lines += ["", "Skipped (no data):"]
        lines += [f"- {s['task']}: {s['reason']}" for s in doc["skipped"]]
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict, workdir: str) -> tuple[str, str]:
    """Writes ``W/eval_suite.md`` and ``W/eval_suite.json`` (atomically); returns their paths."""
    paths = (os.path.join(workdir, "eval_suite.md"), os.path.join(workdir, "eval_suite.json"))
    for path, text in zip(paths, (markdown(doc), json.dumps(doc, indent=2, default=float))):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return paths


if __name__ == "__main__":  # the `python -m` entry point of the command line
    from geossl.cli.suite import main
    from geossl.errors import run_command
    run_command(main, "python -m geossl.eval.suite")
