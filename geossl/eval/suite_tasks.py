"""The evaluation suite's tasks, written once: what each method's papers evaluate, on which data,
with which probe and settings, and the figures the papers report.

Layout of ``--data_root D`` (one folder per dataset, each holding the shard sets that the
``data_prep`` reader writes, found by name: ``<split>-*.tfrecord`` with its manifest):

==================  =========================================================================
D/bigearthnet       S2 ``train`` / ``test`` sets (``python -m data_prep.bigearthnet --names
                    <official split>.csv --prefix train|test``, 19 labels), or one set, divided
D/bigearthnet_s1    the same for the S1 patches (``--modality s1``)
D/eurosat           ``train`` / ``val`` / ``test`` (``python -m data_prep.eurosat --splits DIR``),
                    or one set (``all``), divided
D/so2sat            ``train`` / ``val`` / ``test`` of the S2 files (``python -m data_prep.so2sat
                    --sensor s2``)
D/oscd              ``train`` / ``test`` pairs (``python -m data_prep.oscd --split all``)
D/dfc2020           ``train`` / ``test`` (``python -m data_prep.segmentation_folders --prefix
                    train|test`` over DFC2020's validation / test folders)
D/vaihingen         ``train`` / ``test`` (``data_prep.segmentation_folders --palette isprs``)
==================  =========================================================================

A set is "divided" as the probes divide it (``datasets.probe_splits``: a seeded half trains).
``--data_root synthetic`` runs ``SYNTHETIC_TASKS`` instead: the embedded demo data standing in
for each kind of task (multi-label: the 9 Dynamic World labels; single-label: the dominant
land-cover class of a location's first acquisition; segmentation: the ``land_cover`` maps;
change detection: two seasons of a location, change = the land cover differs).

Paper figures are copied from the project's method reference (REFERENCE.md: SoftCon §1, GFM §4)
and from nowhere else; a task without a figure there has none (PerA's and Embedding Earth's
evaluations are not in it). A figure is put beside ours only where the setting matches
(:func:`geossl.eval.suite.match_figure`): the same model (name and size), the same input bands,
the dataset the paper used (real data, its label set), the paper's budget, and any protocol
detail the figure ``requires``.
"""

from __future__ import annotations

import dataclasses

SUITES = ("softcon", "gfm", "pera", "dense")
PROBES = ("linear", "knn", "finetune", "segmentation", "change_detection")
#: Relative run time of a probe at the quick budget (the ETA's weights).
COST = {"linear": 1.0, "knn": 0.5, "finetune": 5.0, "segmentation": 10.0,
        "change_detection": 10.0}
#: report metric → table name (figures are shown in percent, as the papers print them).
METRIC_NAMES = {"map_micro": "micro mAP", "map_macro": "macro mAP", "top1": "top-1",
                "miou": "mIoU", "f1": "change F1", "iou": "change IoU"}


@dataclasses.dataclass(frozen=True)
class PaperFigure:
    """A figure a paper reports (percent), for one model and input."""

    source: str          # the paper, e.g. "SoftCon (Wang et al. 2024)"
    value: float
    arch: str            # geossl model name of the paper's model
    bands: str           # "ms" (12-13 band S2), "sar" (S1 VV VH) or "rgb"
    requires: tuple = ()  # (setting, value) pairs the task must have, e.g. (("layers", ...),)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Task:
    """One evaluation: a probe on a dataset at a label fraction, scored by ``metric``.

    ``settings``: the probe's command-line flags of the papers' protocol (on top of its
    defaults, which are the papers' recipes: see each probe's ``--help``); ``quick``: the flags
    the quick budget changes. ``data``: a folder under ``--data_root`` (real tasks) or a
    synthetic source (``SYNTHETIC_SOURCES``). ``stands_for``: the real tasks a synthetic one
    replaces (its suites are theirs)."""

    name: str
    probe: str
    data: str
    dataset: str                       # shown in the table
    protocol: str                      # shown in the table
    metric: str
    label_fraction: float = 1.0
    splits: tuple[str | None, str | None] = ("train", "test")
    settings: tuple = ()
    quick: tuple = ()
    suites: tuple[str, ...] = ()
    label_set: str | None = None       # what the paper's data is labelled with
    paper: tuple[PaperFigure, ...] = ()
    stands_for: tuple[str, ...] = ()

    @property
    def metric_name(self) -> str:
        return METRIC_NAMES.get(self.metric, self.metric)


# ----- budgets ------------------------------------------------------------------------------------
_FINETUNE_QUICK = (("epochs", 30), ("batch_size", 64), ("warmup_epochs", 1))
_UPERNET_QUICK = (("steps", 100), ("channels", 64))
_UPERNET_FINETUNE_QUICK = (("steps", 50), ("batch_size", 16), ("channels", 64))
#: The smoke budget (a check that every task runs, in seconds): per probe, on top of ``quick``.
SMOKE = {
    "linear": (("epochs", 2),),
    "knn": (),
    "finetune": (("epochs", 1), ("batch_size", 16), ("warmup_epochs", 0)),
    "segmentation": (("steps", 2), ("batch_size", 4), ("channels", 16)),
    "change_detection": (("steps", 2), ("batch_size", 4), ("channels", 16)),
}
BUDGETS = ("paper", "quick", "smoke")

_UPERNET = (("head", "upernet"),)
_DINOV2_4LAYER = (("layers", "-4,-3,-2,-1 concatenated"),)


def _softcon(value: float, arch: str, bands: str = "ms", **kw) -> PaperFigure:
    return PaperFigure("SoftCon (Wang et al. 2024)", value, arch, bands, **kw)


def _softcon_figures(rn50: float, vit_s: float, vit_b: float, bands: str = "ms"):
    """SoftCon's three backbones; its ViT-B/14 figures used the DINOv2 4-layer head."""
    return (_softcon(rn50, "resnet50", bands), _softcon(vit_s, "vit_small_patch14", bands),
            _softcon(vit_b, "vit_base_patch14", bands, requires=_DINOV2_4LAYER,
                     note="DINOv2 4-layer head (CLS of the last 4 blocks)"))


def _gfm(value: float) -> PaperFigure:
    return PaperFigure("GFM (Mendieta et al. 2023, Table 9)", value,
                       "swin_base_patch4_window7_224", "rgb", note="GFM's own fine-tuning recipe")


TASKS: tuple[Task, ...] = (
    Task("bigearthnet_10pct_linear", "linear", "bigearthnet", "BigEarthNet-19 S2",
         "linear probe, frozen, 10% labels", "map_micro", 0.1, suites=("softcon",),
         label_set="bigearthnet_19", paper=_softcon_figures(84.8, 85.0, 86.8)),
    Task("bigearthnet_10pct_knn", "knn", "bigearthnet", "BigEarthNet-19 S2",
         "kNN (k 20), frozen, 10% labels", "map_micro", 0.1, suites=("softcon",),
         label_set="bigearthnet_19"),
    Task("bigearthnet_100pct_linear", "linear", "bigearthnet", "BigEarthNet-19 S2",
         "linear probe, frozen, 100% labels", "map_micro", 1.0, suites=("softcon",),
         label_set="bigearthnet_19"),
    Task("bigearthnet_s1_10pct_linear", "linear", "bigearthnet_s1", "BigEarthNet-19 S1",
         "linear probe, frozen, 10% labels", "map_micro", 0.1, suites=("softcon",),
         label_set="bigearthnet_19", paper=_softcon_figures(78.9, 80.3, 82.5, bands="sar")),
    Task("bigearthnet_10pct_finetune", "finetune", "bigearthnet", "BigEarthNet-19 S2",
         "fine-tuned, 10% labels", "map_micro", 0.1, quick=_FINETUNE_QUICK,
         suites=("softcon", "gfm"), label_set="bigearthnet_19", paper=(_gfm(86.3),)),
    Task("bigearthnet_1pct_finetune", "finetune", "bigearthnet", "BigEarthNet-19 S2",
         "fine-tuned, 1% labels", "map_micro", 0.01, quick=_FINETUNE_QUICK, suites=("gfm",),
         label_set="bigearthnet_19", paper=(_gfm(80.7),)),
    Task("eurosat_linear", "linear", "eurosat", "EuroSAT-MS", "linear probe, frozen",
         "top1", suites=("softcon", "pera"), label_set="eurosat_10",
         paper=_softcon_figures(98.6, 97.1, 98.0)),
    Task("eurosat_finetune", "finetune", "eurosat", "EuroSAT-MS", "fine-tuned", "top1",
         quick=_FINETUNE_QUICK, suites=("softcon",), label_set="eurosat_10"),
    Task("so2sat_linear", "linear", "so2sat", "So2Sat LCZ42 S2", "linear probe, frozen",
         "top1", suites=("softcon",), label_set="so2sat_lcz42_17",
         settings=(("absent_bands", "B1,B9,B10"),)),  # 10 S2 bands: SSL4EO-S12's zeros
    Task("dfc2020_upernet", "segmentation", "dfc2020", "DFC2020", "UPerNet, frozen encoder",
         "miou", settings=_UPERNET, quick=_UPERNET_QUICK, suites=("pera",)),
    Task("dfc2020_upernet_finetune_1pct", "segmentation", "dfc2020", "DFC2020",
         "UPerNet, fine-tuned, 1% labels", "miou", 0.01,
         settings=_UPERNET + (("mode", "finetune"),), quick=_UPERNET_FINETUNE_QUICK,
         suites=("dense",)),
    Task("dfc2020_upernet_finetune_10pct", "segmentation", "dfc2020", "DFC2020",
         "UPerNet, fine-tuned, 10% labels", "miou", 0.1,
         settings=_UPERNET + (("mode", "finetune"),), quick=_UPERNET_FINETUNE_QUICK,
         suites=("dense",)),
    Task("vaihingen_upernet_finetune", "segmentation", "vaihingen", "ISPRS Vaihingen",
         "UPerNet, fine-tuned", "miou", settings=_UPERNET + (("mode", "finetune"),),
         quick=_UPERNET_FINETUNE_QUICK, suites=("gfm",), paper=(_gfm(75.3),)),
    Task("oscd_change", "change_detection", "oscd", "OSCD", "UPerNet on |f(t2) - f(t1)|, frozen",
         "f1", quick=_UPERNET_QUICK, suites=("gfm", "pera"), paper=(_gfm(59.82),)),
)

SYNTHETIC_SOURCES = {
    "multilabel": "synthetic, 9 labels",
    "single_label": "synthetic, dominant class",
    "segmentation": "synthetic, land cover maps",
    "change": "synthetic, seasons 0 / 2",
}

_SYNTHETIC_SPLITS = ("train", "heldout")

SYNTHETIC_TASKS: tuple[Task, ...] = (
    Task("synthetic_multilabel_linear_10pct", "linear", "multilabel", SYNTHETIC_SOURCES[
        "multilabel"], "linear probe, frozen, 10% labels", "map_micro", 0.1,
        splits=_SYNTHETIC_SPLITS, stands_for=("bigearthnet_10pct_linear",)),
    Task("synthetic_multilabel_knn_10pct", "knn", "multilabel", SYNTHETIC_SOURCES["multilabel"],
         "kNN (k 20), frozen, 10% labels", "map_micro", 0.1, splits=_SYNTHETIC_SPLITS,
         stands_for=("bigearthnet_10pct_knn",)),
    Task("synthetic_multilabel_linear_100pct", "linear", "multilabel",
         SYNTHETIC_SOURCES["multilabel"], "linear probe, frozen, 100% labels", "map_micro", 1.0,
         splits=_SYNTHETIC_SPLITS, stands_for=("bigearthnet_100pct_linear",)),
    Task("synthetic_multilabel_finetune_10pct", "finetune", "multilabel",
         SYNTHETIC_SOURCES["multilabel"], "fine-tuned, 10% labels", "map_micro", 0.1,
         splits=_SYNTHETIC_SPLITS, quick=_FINETUNE_QUICK,
         stands_for=("bigearthnet_10pct_finetune",)),
    Task("synthetic_multilabel_finetune_1pct", "finetune", "multilabel",
         SYNTHETIC_SOURCES["multilabel"], "fine-tuned, 1% labels", "map_micro", 0.01,
         splits=_SYNTHETIC_SPLITS, quick=_FINETUNE_QUICK,
         stands_for=("bigearthnet_1pct_finetune",)),
    Task("synthetic_single_label_linear", "linear", "single_label",
         SYNTHETIC_SOURCES["single_label"], "linear probe, frozen", "top1",
         splits=("train", "heldout"), stands_for=("eurosat_linear", "so2sat_linear")),
    Task("synthetic_single_label_finetune", "finetune", "single_label",
         SYNTHETIC_SOURCES["single_label"], "fine-tuned", "top1", splits=("train", "heldout"),
         quick=_FINETUNE_QUICK, stands_for=("eurosat_finetune",)),
    Task("synthetic_upernet_10pct", "segmentation", "segmentation",
         SYNTHETIC_SOURCES["segmentation"], "UPerNet, frozen encoder, 10% scenes", "miou", 0.1,
         splits=_SYNTHETIC_SPLITS, settings=_UPERNET, quick=_UPERNET_QUICK,
         stands_for=("dfc2020_upernet",)),
    Task("synthetic_upernet_finetune_1pct", "segmentation", "segmentation",
         SYNTHETIC_SOURCES["segmentation"], "UPerNet, fine-tuned, 1% scenes", "miou", 0.01,
         splits=_SYNTHETIC_SPLITS, settings=_UPERNET + (("mode", "finetune"),),
         quick=_UPERNET_FINETUNE_QUICK, stands_for=("dfc2020_upernet_finetune_1pct",)),
    Task("synthetic_upernet_finetune_10pct", "segmentation", "segmentation",
         SYNTHETIC_SOURCES["segmentation"], "UPerNet, fine-tuned, 10% scenes", "miou", 0.1,
         splits=_SYNTHETIC_SPLITS, settings=_UPERNET + (("mode", "finetune"),),
         quick=_UPERNET_FINETUNE_QUICK,
         stands_for=("dfc2020_upernet_finetune_10pct", "vaihingen_upernet_finetune")),
    Task("synthetic_change", "change_detection", "change", SYNTHETIC_SOURCES["change"],
         "UPerNet on |f(t2) - f(t1)|, frozen", "f1", splits=(None, None),
         quick=_UPERNET_QUICK, stands_for=("oscd_change",)),
)

_BY_NAME = {t.name: t for t in TASKS}


def suites_of(task: Task) -> tuple[str, ...]:
    """A real task's suites, or the union of those a synthetic task stands for."""
    if not task.stands_for:
        return task.suites
    return tuple(s for s in SUITES if any(s in _BY_NAME[name].suites for name in task.stands_for))


def select(suite: str, synthetic: bool) -> list[Task]:
    """The tasks of ``suite`` ("all" or one of ``SUITES``), real or synthetic, in table order."""
    if suite != "all" and suite not in SUITES:
        raise ValueError(f"suite: expected all or one of {', '.join(SUITES)}, found {suite!r}")
    table = SYNTHETIC_TASKS if synthetic else TASKS
    return [t for t in table if suite == "all" or suite in suites_of(t)]


def budget_flags(task: Task, budget: str) -> dict:
    """The flags ``budget`` changes for ``task`` (nothing at the papers' budget)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {', '.join(BUDGETS)}, found {budget!r}")
    flags = {}
    if budget in ("quick", "smoke"):
        flags.update(task.quick)
    if budget == "smoke":
        flags.update(SMOKE[task.probe])
    return flags
