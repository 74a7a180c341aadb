"""The probes' statistics: stratified label fractions (geossl.eval.sampling), bootstrapped
confidence intervals (geossl.eval.bootstrap) and intermediate-layer features (--layers)."""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from geossl import models
from geossl.cli import knn as knn_cli
from geossl.cli import linear_probe as linear_probe_cli
from geossl.cli import probe_flags
from geossl.eval import bootstrap, datasets, features, linear_probe, metrics, sampling


# ----- stratified label fractions -----------------------------------------------------------------
def _multilabel(n, k, seed):
    """Correlated multi-hot labels (n, k) with class shares from 1% to 50%."""
    rng = np.random.default_rng(seed)
    shares = np.geomspace(0.01, 0.5, k)
    z = rng.normal(size=(n, 3)) @ rng.normal(size=(3, k)) * 0.7 + rng.normal(size=(n, k))
    thresholds = np.array([np.quantile(z[:, c], 1 - shares[c]) for c in range(k)])
    return (z > thresholds).astype(np.float32)


def test_single_label_fraction_keeps_round_f_n_per_class_nested_and_seeded():
    counts = [50, 20, 7, 3, 1]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), counts))
    picked = {f: sampling.stratified_subset(labels, f, seed=4) for f in (0.05, 0.1, 0.5, 1.0)}
    for f, rows in picked.items():
        want = [max(1, round(f * c)) for c in counts]   # 0.1: 5, 2, 1, 1 (round 0.3 → 0), 1
        assert np.bincount(labels[rows], minlength=5).tolist() == want, f
        assert len(set(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    assert set(picked[0.05]) <= set(picked[0.1]) <= set(picked[0.5]) <= set(picked[1.0])
    np.testing.assert_array_equal(picked[0.1], sampling.stratified_subset(labels, 0.1, seed=4))
    assert not np.array_equal(picked[0.1], sampling.stratified_subset(labels, 0.1, seed=5))
    # datasets.subsample maps the positions back to the probe-train indices
    indices = 1000 + 3 * np.arange(len(labels))
    np.testing.assert_array_equal(datasets.subsample(indices, 0.1, 4, labels=labels),
                                  indices[picked[0.1]])


def test_multilabel_fraction_keeps_class_shares_closer_than_random_sampling():
    y = _multilabel(2000, 9, seed=1)
    share = y.mean(axis=0)
    deviation = {"stratified": [], "random": []}
    for seed in range(8):
        for name, rows in (("stratified", sampling.stratified_subset(y, 0.1, seed)),
                           ("random", sampling.random_subset(len(y), 0.1, seed))):
            assert len(rows) == 200
            deviation[name].append(np.abs(y[rows].mean(axis=0) - share) / share)
    stratified, random = (np.mean(deviation[k], axis=0) for k in ("stratified", "random"))
    # mean relative error of a class's share, over 8 seeds: measured 0.043 vs 0.184
    assert stratified.mean() < 0.5 * random.mean(), (stratified, random)
    assert stratified.max() < random.max()
    # the rarest class (20 rows) keeps about its 2 rows in every draw; random sampling does not
    rarest = np.argmin(share)
    kept = [y[sampling.stratified_subset(y, 0.1, s), rarest].sum() for s in range(8)]
    assert set(kept) <= {1.0, 2.0, 3.0}, kept


def test_multilabel_fraction_is_seeded_nested_and_sized():
    y = _multilabel(500, 6, seed=2)
    y[:20] = 0                                         # rows without labels are drawn too
    subsets = {f: sampling.stratified_subset(y, f, seed=3) for f in (0.01, 0.1, 0.4)}
    assert {f: len(rows) for f, rows in subsets.items()} == {0.01: 5, 0.1: 50, 0.4: 200}
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[0.4])
    np.testing.assert_array_equal(subsets[0.1], sampling.stratified_subset(y, 0.1, seed=3))
    assert not np.array_equal(subsets[0.1], sampling.stratified_subset(y, 0.1, seed=4))
    order = sampling.stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(500))
    np.testing.assert_array_equal(sampling.stratified_subset(y, 1.0, seed=3), np.arange(500))
    with pytest.raises(ValueError, match=r"expected a fraction in \(0, 1\], found 0"):
        sampling.stratified_subset(y, 0, seed=3)


def test_split_labels_are_those_read_for_the_acquisition():
    """The subset is stratified by the labels ``read`` yields: the acquisition's ``acq_labels``."""
    records = _records(3, 7)
    acq = np.zeros((2, 9), np.int64)
    acq[0, [1, 4]] = acq[1, [4, 8]] = 1
    for record in records:                              # T = 2; record 1 labelled per season
        record["image"] = np.concatenate([record["image"]] * 2)
    records[1]["acq_labels"] = acq.reshape(-1)
    split = datasets.RecordSplit(records)
    for t in (0, 1):
        _, read = next(split.read([0, 1, 2], datasets.Preprocess(norm="none", acquisition=t)))
        np.testing.assert_array_equal(split.labels([0, 1, 2], acquisition=t), read)
    assert np.flatnonzero(split.labels([1], acquisition=1)[0]).tolist() == [4, 8]


# ----- bootstrap ----------------------------------------------------------------------------------
def _loop_intervals(y, s, replicates, seed, multilabel):
    """Resamples drawn one by one, each metric recomputed by scikit-learn / numpy."""
    from sklearn.metrics import average_precision_score
    draws = np.random.default_rng(seed).integers(0, len(y), size=(replicates, len(y)))
    values = {}
    for idx in draws:
        yy, ss = y[idx], s[idx]
        if multilabel:
            present = [c for c in range(y.shape[1]) if yy[:, c].any()]
            per_class = [average_precision_score(yy[:, c], ss[:, c]) for c in present]
            values.setdefault("map_micro", []).append(
                average_precision_score(yy.ravel(), ss.ravel()))
            values.setdefault("map_macro", []).append(np.mean(per_class))
            values.setdefault("ap_class0", []).append(
                average_precision_score(yy[:, 0], ss[:, 0]) if yy[:, 0].any() else np.nan)
        else:
            values.setdefault("top1", []).append(np.mean(np.argmax(ss, -1) == yy))
            top5 = np.argsort(-ss, -1)[:, :5]
            values.setdefault("top5", []).append(np.mean((top5 == yy[:, None]).any(-1)))
    return {name: np.nanpercentile(v, [2.5, 97.5]) for name, v in values.items()}


def test_multilabel_intervals_equal_a_loop_over_resamples(monkeypatch):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < [0.5, 0.3, 0.2, 0.08]).astype(np.float32)
    s = np.round(y + rng.normal(size=y.shape), 1)          # ties inside and across classes
    want = _loop_intervals(y, s, 60, 7, multilabel=True)
    monkeypatch.setattr(bootstrap, "MAX_ELEMENTS", 3 * y.size)   # chunks of 3 replicates
    got = bootstrap.classification_ci(y, s, multilabel=True, replicates=60, seed=7)
    for name in ("map_micro", "map_macro"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["ap_per_class"][0], want["ap_class0"], rtol=0, atol=1e-12)
    monkeypatch.setattr(bootstrap, "MAX_ELEMENTS", 1 << 20)       # one chunk: same replicates
    assert bootstrap.classification_ci(y, s, multilabel=True, replicates=60, seed=7) == got
    assert bootstrap.classification_ci(y, s, multilabel=True, replicates=60, seed=8) != got
    # replicate by replicate: the weighted AP is the AP of the resampled set
    counts = next(bootstrap.replicate_counts(len(y), 3, 1, 3))
    draws = np.random.default_rng(1).integers(0, len(y), size=(3, len(y)))
    per_class = bootstrap.weighted_average_precision(y, s, counts)
    for b in range(3):
        resampled = y[draws[b]]
        np.testing.assert_array_equal(np.isnan(per_class[b]), ~resampled.any(axis=0))  # no positive
        np.testing.assert_allclose(np.nan_to_num(per_class[b]),
                                   metrics.average_precision(resampled, s[draws[b]]), atol=1e-12)


def test_single_label_intervals_equal_a_loop_over_resamples():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, 50)
    logits = rng.normal(size=(50, 8)) + 1.5 * np.eye(8)[labels]
    want = _loop_intervals(labels, logits, 80, 3, multilabel=False)
    got = bootstrap.classification_ci(labels, logits, multilabel=False, replicates=80, seed=3)
    for name in ("top1", "top5"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-12)


def test_intervals_hold_the_estimate_and_narrow_with_more_examples():
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 1600):
        y = (rng.random((n, 5)) < 0.3).astype(np.float32)
        s = y + rng.normal(size=y.shape)
        report = bootstrap.classification_report(y, s, multilabel=True, replicates=300, seed=0)
        for name in ("map_micro", "map_macro"):
            lo, hi = report["ci95"][name]
            assert lo < report[name] < hi, (n, name, report)
        widths.append(np.diff(report["ci95"]["map_micro"])[0])
    assert widths[1] < 0.4 * widths[0], widths   # ~1/sqrt(16) = 0.25


def test_a_thousand_replicates_of_the_heldout_set_take_well_under_a_second():
    rng = np.random.default_rng(3)
    y = (rng.random((512, 9)) < 0.3).astype(np.float32)
    s = y + rng.normal(size=y.shape)
    bootstrap.classification_ci(y[:50], s[:50], multilabel=True, replicates=10)   # warm
    t0 = time.perf_counter()
    bootstrap.classification_ci(y, s, multilabel=True, replicates=1000, seed=0)
    assert time.perf_counter() - t0 < 1.5     # measured ~0.2 s on 2 busy cores


# ----- per-layer features -------------------------------------------------------------------------
def _random_variables(model, shape, seed=0):
    """Variables of ``model`` filled with seeded random numbers of fan-in scale (no compiled
    init: ``jax.eval_shape`` gives the tree)."""
    tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if len(leaf.shape) < 2:
            return (float("scale" in name) + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, tree)


def _tiny_vit():
    model = models.create("vit_tiny_patch16", img_size=8, patch_size=4, depth=4, in_chans=4,
                          embed_dim=16, num_heads=2, num_register_tokens=1)
    return model, _random_variables(model, (1, 8, 8, 4))


def _tiny_resnet():
    model = models.create("resnet18", in_chans=4, width=4, stage_sizes=(1, 1, 1, 1))
    return model, _random_variables(model, (1, 16, 16, 4))


def test_vit_block_features_equal_the_blocks_final_normed_tokens():
    model, variables = _tiny_vit()
    family = models.family("vit_tiny_patch16")
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 4)).astype(np.float32)
    assert features.layer_count(model, family, variables) == 4
    layers = features.resolve_layers("1,-1", 4)
    assert layers == (1, 3) and features.resolve_layers("all", 4) == (0, 1, 2, 3)
    out = jax.jit(lambda v, x: model.apply(v, x, return_layers=(0, 1, 2, 3)))(variables, x)
    block1 = np.asarray(out["intermediates"][1])              # (B, 1 + 1 register + 4, D)
    got = features.extract_layer_features(model, variables, x, layers=layers, family=family,
                                          mode="cls+avgpool", batch_size=8)
    np.testing.assert_allclose(got[0], np.concatenate([block1[:, 0], block1[:, 2:].mean(1)], -1),
                               atol=1e-5)
    last = np.concatenate([out["embedding"], np.asarray(out["patch_tokens"]).mean(1)], -1)
    np.testing.assert_allclose(got[1], last, atol=1e-5)      # the last block: today's features
    concat = features.extract_layer_features(model, variables, x, layers=(0, 1, 2, 3),
                                             family=family, mode="cls")
    np.testing.assert_allclose(np.concatenate(concat, -1), features.extract_features(
        model, variables, x, mode="dinov2_4layer"), atol=1e-5)
    np.testing.assert_allclose(concat[2], np.asarray(out["intermediates"][2][:, 0]), atol=1e-5)
    for bad in ("4", "-5", "1,1", "x"):
        with pytest.raises(ValueError, match="--layers"):
            features.resolve_layers(bad, 4)


def test_resnet_stage_features_are_pooled_stage_maps():
    model, variables = _tiny_resnet()
    family = models.family("resnet18")
    assert features.layer_count(model, family, variables, 16) == 4
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 4)).astype(np.float32)
    got = features.extract_layer_features(model, variables, x, layers=(0, 2, 3), family=family)
    out = jax.jit(model.apply)(variables, x)
    for array, stage in zip(got, (0, 2, 3)):
        np.testing.assert_allclose(array, np.asarray(out["features"][stage]).mean(axis=(1, 2)),
                                   atol=1e-5)
    np.testing.assert_allclose(got[2], np.asarray(out["embedding"]), atol=1e-6)
    assert [a.shape[1] for a in got] == [4, 16, 32]
    with pytest.raises(ValueError, match="expected mode 'cls'"):
        features.extract_layer_features(model, variables, x, layers=(0,), family=family,
                                        mode="avgpool")


# ----- command lines ------------------------------------------------------------------------------
from test_eval_probe import BANDS, _records  # noqa: E402 - the probe CLI tests' records


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """A tiny ViT behind the CLIs' encoder loader, and a heldout split of 48 records."""
    from geossl.data import write_shard
    folder = str(tmp_path_factory.mktemp("probe_stats"))
    write_shard(os.path.join(folder, "heldout-00000-of-00001.tfrecord"), _records(48, 0))
    model, variables = _tiny_vit()
    config = ml_collections.ConfigDict({"model": {"name": "vit_tiny_patch16", "img_size": 8,
                                                  "in_chans": 4}})
    return folder, model, variables, config


def _stub_encoder(monkeypatch, run):
    from geossl.train import checkpoint
    _, model, variables, config = run
    monkeypatch.setattr(checkpoint, "load_encoder",
                        lambda workdir, step=None: (model, variables, config))


def test_linear_probe_cli_probes_each_block_with_intervals(tmp_path, vit_run, monkeypatch, capsys):
    _stub_encoder(monkeypatch, vit_run)
    data, model, variables, _ = vit_run
    flags = ["--workdir", str(tmp_path), "--dataset", data, "--label_fraction", "0.5", "--norm",
             "none", "--bands", ",".join(BANDS), "--epochs", "5", "--bootstrap", "200",
             "--seed", "1"]
    report = linear_probe_cli.main(flags + ["--layers", "all",
                                            "--output", str(tmp_path / "p.json")])
    table = capsys.readouterr().out
    assert report["layers"] == [0, 1, 2, 3] and report["feature_dim"] == [16] * 4
    rows = report["per_layer"]
    best = max(range(4), key=lambda i: rows[str(i)]["map_micro"])
    assert report["best_layer"] == best and report["metrics"] == rows[str(best)]
    assert "<- best" in table and table.count(" [") >= 10   # a row per layer, figures with CIs
    # each row is the library's probe of that block's features, on the same stratified subset
    split = datasets.probe_splits(data, label_fraction=0.5, seed=1)
    assert report["num_train"] == len(split.train_indices) == 12
    pre = datasets.Preprocess(bands=tuple(BANDS), norm="none")
    kw = dict(layers=(0, 1, 2, 3), family=models.family("vit_tiny_patch16"), img_size=8)
    train_x, train_y = datasets.features_and_labels(model, variables, split.train,
                                                    split.train_indices, pre, **kw)
    test_x, test_y = datasets.features_and_labels(model, variables, split.test,
                                                  split.test_indices, pre, **kw)
    probe_config = linear_probe.ProbeConfig(epochs=5, seed=1)
    for block in (0, 3):
        want = linear_probe.linear_probe(train_x[block], train_y, test_x[block], test_y,
                                         num_classes=9, multilabel=True, config=probe_config,
                                         bootstrap=200, bootstrap_seed=1)
        assert rows[str(block)]["map_micro"] == pytest.approx(want["map_micro"], abs=1e-6)
        np.testing.assert_allclose(rows[str(block)]["ci95"]["map_macro"],
                                   want["ci95"]["map_macro"], atol=1e-6)
    saved = json.loads((tmp_path / "p.json").read_text())
    lo, hi = saved["metrics"]["ci95"]["map_micro"]
    assert lo <= saved["metrics"]["map_micro"] <= hi and saved["bootstrap"]["replicates"] == 200


def test_knn_cli_layers_concat_and_default_agree(tmp_path, vit_run, monkeypatch):
    _stub_encoder(monkeypatch, vit_run)
    data = vit_run[0]
    flags = ["--workdir", str(tmp_path), "--dataset", data, "--label_fraction", "1", "--norm",
             "none", "--bands", ",".join(BANDS), "--k", "3,5", "--bootstrap", "100"]
    default = knn_cli.main(flags)
    layered = knn_cli.main(flags + ["--layers", "1,-1"])
    assert default["layers"] is None and layered["layers"] == [1, 3]
    assert layered["best_by"] == "k3/map_micro"
    # the last block's CLS is the default embedding: the same figures and intervals
    last = layered["per_layer"]["3"]
    for name, value in default["metrics"].items():
        if isinstance(value, float):
            assert last[name] == pytest.approx(value, abs=1e-6), name
    assert set(default["metrics"]["ci95"]) >= {"k3/map_micro", "k5/map_macro"}
    np.testing.assert_allclose(last["ci95"]["k5/map_micro"],
                               default["metrics"]["ci95"]["k5/map_micro"], atol=1e-6)
    # concatenated: one kNN on the four blocks' CLS tokens, dinov2_4layer's features
    joined = knn_cli.main(flags + ["--layers", "all", "--layers_concat", "--bootstrap", "0"])
    four = knn_cli.main(flags + ["--mode", "dinov2_4layer", "--bootstrap", "0"])
    assert joined["feature_dim"] == 64 and "per_layer" not in joined and joined["layers_concat"]
    assert "ci95" not in joined["metrics"]
    for name, value in four["metrics"].items():
        assert np.allclose(joined["metrics"][name], value, atol=1e-6), name


@pytest.mark.parametrize("flags, message", [
    (["--layers", "1,x"], "--layers: expected 'all' or distinct comma-separated integers"),
    (["--layers", "2,2"], "--layers: expected 'all' or distinct"),
    (["--layers", "all", "--mode", "dinov2_4layer"], "--layers: expected --mode in cls"),
    (["--bootstrap", "-1"], "--bootstrap: expected >= 0, found -1"),
])
def test_probe_clis_refuse_bad_layers_and_bootstrap(capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        linear_probe_cli.main(["--workdir", "/nonexistent", "--dataset", "/nonexistent", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_table_prints_each_figure_with_its_interval():
    report = {"task": "knn", "arch": "resnet18", "dataset": "d", "splits": "s", "num_train": 1,
              "num_test": 2, "num_classes": 9, "multilabel": True, "feature_dim": 8,
              "mode": "cls", "layers": None,
              "metrics": {"map_micro": 0.5, "map_macro": 0.25,
                          "ci95": {"map_micro": [0.4, 0.6], "map_macro": [0.125, 0.375]}},
              "bootstrap": {"replicates": 10, "seed": 0}}
    lines = probe_flags.format_table(report).splitlines()
    assert "  map_micro  0.5000 [0.4000, 0.6000]" in lines
    assert "  map_macro  0.2500 [0.1250, 0.3750]" in lines
    assert lines[-1] == ("  [lo, hi]: 95% percentile intervals over 10 bootstrap resamples of the "
                         "2 test examples (seed 0)")
