"""geossl.eval.suite: the task table, the paper-figure rule, the runner's rows (failures,
baseline, ETA), and the command line on tiny synthetic data and on a data root holding one set."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.cli import suite as suite_cli
from geossl.data import bands as bands_lib
from geossl.eval import suite, suite_tasks
from geossl.eval.suite_tasks import SYNTHETIC_TASKS, TASKS

SIZE = 16
QUICK_TASKS = ["synthetic_multilabel_linear_10pct", "synthetic_multilabel_knn_10pct",
               "synthetic_single_label_linear"]


# ----- the task table -----------------------------------------------------------------------------
@pytest.mark.parametrize("budget", suite_tasks.BUDGETS)
def test_every_task_is_a_valid_probe_command_line(budget):
    """Each task's flags at each budget parse with its probe's own parser."""
    for task in TASKS + SYNTHETIC_TASKS:
        flags = {**dict(task.settings), **suite_tasks.budget_flags(task, budget)}
        run = suite.Planned(task, "D", flags, {}, None, [])
        bootstrap = None if task.probe == "finetune" else 10
        argv = suite.probe_argv(run, "W", "out.json", bootstrap=bootstrap, random_init=True)
        args = suite_cli.PROBE_CLIS[task.probe].build_parser().parse_args(argv)
        assert args.random_init and args.label_fraction == task.label_fraction
        for flag, value in flags.items():
            assert getattr(args, flag) == value, (task.name, flag)
        if budget == "paper":
            assert flags == dict(task.settings)


def test_synthetic_tasks_cover_each_kind_and_stand_for_real_tasks():
    names = {t.name for t in TASKS}
    kinds = {(t.probe, t.data) for t in SYNTHETIC_TASKS}
    assert {("linear", "single_label"), ("linear", "multilabel"), ("segmentation",
            "segmentation"), ("change_detection", "change")} <= kinds
    for task in SYNTHETIC_TASKS:
        assert task.stands_for and set(task.stands_for) <= names, task.name
        assert task.data in suite_tasks.SYNTHETIC_SOURCES and not task.paper
    stood_for = {n for t in SYNTHETIC_TASKS for n in t.stands_for}
    assert stood_for == names - {"bigearthnet_s1_10pct_linear"}  # the synthetic data has no S1
    for name in suite_tasks.SUITES:
        assert suite_tasks.select(name, True) and suite_tasks.select(name, False)
    assert [t.name for t in suite_tasks.select("dense", True)] == [
        "synthetic_upernet_finetune_1pct", "synthetic_upernet_finetune_10pct"]
    assert suite_tasks.suites_of(SYNTHETIC_TASKS[0]) == ("softcon",)
    with pytest.raises(ValueError, match="suite: expected all or one of"):
        suite_tasks.select("mae", False)


def test_paper_figure_only_where_the_setting_matches():
    from geossl import models
    eurosat = next(t for t in TASKS if t.name == "eurosat_linear")
    l1c = bands_lib.S2_L1C

    def shown(arch, bands=l1c, canonical=True, **kw):
        changed = () if canonical else ("depth",)
        encoder = suite.EncoderInfo(arch, changed, bands, suite.band_family(bands))
        kw = {"synthetic": False, "budget": "paper", "label_set": "eurosat_10", **kw}
        return [f.value for f in eurosat.paper if suite.match_figure(eurosat, f, encoder, **kw)[0]]

    assert shown("vit_small_patch14") == [97.1]
    assert shown("resnet50") == [98.6]
    assert shown("vit_base_patch14") == []               # SoftCon's used the 4-layer head
    assert shown("vit_small_patch14", canonical=False) == []
    assert shown("vit_small_patch14", bands=bands_lib.S1) == []
    assert shown("vit_small_patch14", budget="quick") == []
    assert shown("vit_small_patch14", synthetic=True) == []
    assert shown("vit_small_patch14", label_set="so2sat_lcz42_17") == []
    assert shown("vit_tiny_patch16") == []
    assert suite.band_family(bands_lib.S2_L2A) == "ms" and suite.band_family(("R", "G", "B")) \
        == "rgb" and suite.band_family(("B2", "B3", "B4", "B8")) == "other"
    config = {"model": {"name": "vit_small_patch14"}, "data": {"bands": list(l1c)}}
    import ml_collections
    config = ml_collections.ConfigDict(config)
    assert suite.describe_encoder(models.create("vit_small_patch14"), config).canonical
    small = suite.describe_encoder(models.create("vit_small_patch14", depth=2, patch_size=8),
                                   config)
    assert small.changed == ("depth", "patch_size") and not small.canonical
    assert small.describe() == "vit_small_patch14 (its depth, patch_size changed), 13 bands, ms"


# ----- the runner ---------------------------------------------------------------------------------
def test_failed_tasks_are_rows_and_the_suite_goes_on(tmp_path):
    by_name = {t.name: t for t in TASKS}
    tasks = [by_name[n] for n in ("bigearthnet_10pct_linear", "eurosat_linear", "so2sat_linear")]
    runs = [suite.Planned(t, f"D/{t.data}", {}, {}, None, []) for t in tasks]
    calls = []

    def runner(probe, argv):
        calls.append(argv)
        name = os.path.basename(argv[argv.index("--output") + 1])
        if name.startswith("eurosat"):
            raise ValueError("band B1 missing\nsecond line")
        if name.startswith("so2sat") and "--random_init" in argv:
            print("python -m geossl.eval.linear_probe: error: --epochs: expected > 0")
            raise SystemExit(2)
        scale = 0.5 if "--random_init" in argv else 1.0
        return {"metrics": {"map_micro": 0.8 * scale, "top1": 0.7 * scale,
                            "ci95": {"map_micro": [0.75 * scale, 0.85 * scale]}}}

    lines = []
    header = {"suite": "softcon", "workdir": str(tmp_path), "encoder": "x", "data": "D",
              "budget": "paper", "seed": 0, "bootstrap": 10}
    doc = suite.run_suite(runs, runner, str(tmp_path), header=header, baseline=True,
                          skipped=[(by_name["bigearthnet_10pct_knn"], "no folder D/bigearthnet")],
                          emit=lines.append, bootstrap=10, bootstrap_probes={"linear"})
    assert len(calls) == 6 and sum("--random_init" in a for a in calls) == 3
    assert all(a[a.index("--bootstrap") + 1] == "10" for a in calls)
    rows = {r["task"]: r for r in doc["rows"]}
    assert rows["bigearthnet_10pct_linear"]["ours"]["value"] == pytest.approx(80.0)
    assert rows["bigearthnet_10pct_linear"]["ours"]["ci95"] == pytest.approx([75.0, 85.0])
    assert rows["bigearthnet_10pct_linear"]["random_init"]["value"] == pytest.approx(40.0)
    assert rows["eurosat_linear"]["status"] == "failed: ValueError: band B1 missing"
    assert rows["so2sat_linear"]["status"] == "ok"
    assert rows["so2sat_linear"]["random_init"]["status"] == (
        "failed: exit 2: python -m geossl.eval.linear_probe: error: --epochs: expected > 0")
    assert len(lines) == 3 and lines[0].startswith("[1/3] bigearthnet_10pct_linear: micro mAP "
                                                   "80.0 [75.0, 85.0]; random init 40.0")
    assert "ETA" in lines[0] and lines[-1].endswith("ETA 0:00")
    with open(tmp_path / "eval_suite.md") as f:
        table = f.read()
    assert "| bigearthnet_10pct_linear | BigEarthNet-19 S2 | linear probe, frozen, 10% labels | " \
           "micro mAP | 80.0 [75.0, 85.0] | 40.0 [37.5, 42.5] |  | ok |" in table
    assert "| failed: ValueError: band B1 missing |" in table
    assert "- bigearthnet_10pct_knn: no folder D/bigearthnet" in table
    with open(tmp_path / "eval_suite.json") as f:
        assert json.load(f)["rows"][2]["ours"]["value"] == pytest.approx(70.0)
    assert os.path.isfile(tmp_path / "eval_suite" / "so2sat_linear_random_init.log")


def test_eta_weighs_the_tasks_left_by_their_cost(monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 10.0])
    monkeypatch.setattr(suite.time, "perf_counter", lambda: next(clock))
    lines = []
    progress = suite.Progress([1.0, 4.0], lines.append)   # started at 0
    progress.finished("a", "done", 10.0)                  # 1 unit in 10 s: 4 left, 40 s
    assert lines == ["[1/2] a: done (10.0 s) | elapsed 0:10, ETA 0:40"]


# ----- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    from data_prep import synthetic
    folder = str(tmp_path_factory.mktemp("suite-synthetic"))
    synthetic.generate(folder, num_locations=24, heldout=24, num_shards=1, size=SIZE,
                       num_workers=1, verbose=False)
    return folder


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    from geossl import models
    from geossl.train.checkpoint import save_backbone
    kw = dict(in_chans=13, img_size=SIZE, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    model = models.create("vit_tiny_patch16", **kw)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 13)))
    workdir = str(tmp_path_factory.mktemp("suite-workdir"))
    save_backbone(jax.device_get(variables), "vit_tiny_patch16", workdir, **kw)
    return workdir


def test_suite_on_synthetic_data(tiny_synthetic, tiny_workdir, monkeypatch, capsys):
    monkeypatch.setenv("GEOSSL_DATA", tiny_synthetic)
    doc = suite_cli.main(["--workdir", tiny_workdir, "--data_root", "synthetic", "--budget",
                          "smoke", "--bootstrap", "50", "--tasks", ",".join(QUICK_TASKS)])
    out = capsys.readouterr().out
    assert [r["task"] for r in doc["rows"]] == QUICK_TASKS
    assert all(r["status"] == "ok" and r["paper"] is None for r in doc["rows"])
    for row in doc["rows"]:
        with open(row["ours"]["report"]) as f:
            metrics = json.load(f)["metrics"]
        assert row["ours"]["value"] == pytest.approx(100 * metrics[row["metric"]])
        assert row["ours"]["ci95"] == pytest.approx([100 * v for v in metrics["ci95"][
            row["metric"]]])
    linear = doc["rows"][0]
    assert linear["flags"] == {"epochs": 2} and linear["metric"] == "map_micro"
    # the single-label stand-in: the dominant class of acquisition 0, counted here with numpy
    from geossl.eval import datasets
    derived = datasets.open_split(doc["rows"][2]["data"], "heldout")
    source = datasets.open_split("synthetic", "heldout")
    assert not derived.multilabel and derived.num_classes == 9 and len(derived) == 24
    for i in range(len(source)):
        cover = np.asarray(source.records[i]["land_cover"])[0]
        counts = [(cover == c).sum() for c in range(9)]
        assert derived.labels([i])[0] == int(np.argmax(counts))
        np.testing.assert_array_equal(derived.records[i]["image"][0],
                                      source.records[i]["image"][0])
    lines = out.splitlines()
    assert lines[0].startswith("eval suite all: 3 of 3 tasks on synthetic")
    assert lines[1].startswith("[1/3] synthetic_multilabel_linear_10pct: micro mAP ")
    with open(os.path.join(tiny_workdir, "eval_suite.md")) as f:
        table = f.read()
    assert table in out
    assert "| synthetic_single_label_linear | synthetic, dominant class | linear probe, frozen | " \
           "top-1 | " in table
    assert "- synthetic_multilabel_linear_10pct (for bigearthnet_10pct_linear): epochs 2 " \
           "(default 90)" in table


def _eurosat_records(n, seed):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(500, 3000, (1, SIZE, SIZE, 13)).astype(np.uint16),
             "labels": np.array([i % 10]), "label_set": "eurosat_10", "num_classes": 10,
             "bands": list(bands_lib.S2_L1C), "sensor": "s2_l1c", "key": f"{seed}-{i}"}
            for i in range(n)]


def test_a_data_root_runs_what_it_holds_and_skips_the_rest_by_name(tmp_path, tiny_workdir,
                                                                      capsys):
    from geossl.data import write_shard
    root = tmp_path / "D"
    (root / "eurosat").mkdir(parents=True)
    for split, n, seed in (("train", 20, 0), ("test", 20, 1)):
        write_shard(str(root / "eurosat" / f"{split}-00000-of-00001.tfrecord"),
                    _eurosat_records(n, seed))
    (root / "oscd").mkdir()                             # a folder without the test set
    (root / "dfc2020").mkdir()                          # a set whose writer was stopped
    write_shard(str(root / "dfc2020" / "test-00000-of-00001.tfrecord"), _eurosat_records(2, 2))
    (root / "dfc2020" / "test.incomplete").write_text("")
    doc = suite_cli.main(["--workdir", tiny_workdir, "--suite", "pera", "--data_root",
                          str(root), "--bootstrap", "20"])
    out = capsys.readouterr().out
    assert doc["budget"] == "paper"                     # the default on real data
    assert [r["task"] for r in doc["rows"]] == ["eurosat_linear", "dfc2020_upernet"]
    assert doc["rows"][0]["status"] == "ok" and doc["rows"][0]["paper"] is None
    assert doc["rows"][1]["status"].startswith(f"failed: IncompleteDatasetError: {root}/dfc2020: "
                                               f"the 'test' shards are incomplete")
    assert [(f["value"], f["matched"], f["why"]) for f in doc["rows"][0]["paper_figures"]] == [
        (98.6, False, "model vit_tiny_patch16, paper resnet50"),
        (97.1, False, "model vit_tiny_patch16, paper vit_small_patch14"),
        (98.0, False, "model vit_tiny_patch16, paper vit_base_patch14")]
    assert f"skipped oscd_change: no test-*.tfrecord shards in {root}/oscd (shard sets: none)" \
        in out
    assert [s["task"] for s in doc["skipped"]] == ["oscd_change"]
    assert out.count("skipped ") == 1 and "[2/2] dfc2020_upernet: failed: " in out



def test_so2sat_row_feeds_a_13_band_encoder_zeros_for_its_absent_bands(tmp_path, tiny_workdir):
    """So2Sat's S2 has 10 bands (no B1, B9, B10): the row probes a 13-band encoder with those
    three at 0 after normalisation (``--absent_bands``, SSL4EO-S12's rule) instead of failing."""
    from geossl.data import write_shard
    bands = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    root = tmp_path / "D"
    (root / "so2sat").mkdir(parents=True)
    for split, n, seed in (("train", 34, 0), ("test", 17, 1)):
        rng = np.random.default_rng(seed)
        write_shard(str(root / "so2sat" / f"{split}-00000-of-00001.tfrecord"), [
            {"image": rng.uniform(0, 0.3, (1, SIZE, SIZE, 10)).astype(np.float32) * 10000,
             "labels": np.array([i % 17]), "label_set": "so2sat_lcz42_17", "num_classes": 17,
             "bands": list(bands), "sensor": "s2_l1c", "key": f"{seed}-{i}"} for i in range(n)])
    doc = suite_cli.main(["--workdir", tiny_workdir, "--suite", "softcon", "--tasks",
                          "so2sat_linear", "--data_root", str(root), "--bootstrap", "0"])
    (row,) = doc["rows"]
    assert row["status"] == "ok", row["status"]
    with open(os.path.join(tiny_workdir, "eval_suite", "so2sat_linear.json")) as f:
        report = json.load(f)
    assert report["absent_bands"] == ["B1", "B9", "B10"] and len(report["bands"]) == 13

@pytest.mark.parametrize("flags, message", [
    (["--tasks", "nope"], "--tasks: expected names of suite all's tasks"),
    (["--data_root", "/nonexistent/eval"], "--data_root: expected a folder"),
    (["--suite", "mae"], "argument --suite: invalid choice: 'mae'"),
    (["--bootstrap", "-1"], "--bootstrap: expected >= 0, found -1"),
])
def test_bad_flags_are_one_line_and_exit_2(flags, message, tiny_workdir, capsys):
    argv = ["--workdir", tiny_workdir, "--data_root", "synthetic"] + flags
    with pytest.raises(SystemExit) as stop:
        suite_cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
