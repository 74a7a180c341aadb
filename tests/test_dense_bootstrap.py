"""Bootstrapped intervals of the per-pixel probes (segmentation, change detection): images are
resampled, not pixels; checked against a direct loop over the same resamples."""

import numpy as np
import pytest

from geossl.eval import bootstrap, change_detection, dense_probe, segmentation
from geossl.eval import segmentation_metrics as seg_metrics


def _maps(n, k, seed, size=(5, 6), rare_last=True):
    """Label maps with unlabelled pixels and noisy predictions of them; ``rare_last``: the last
    class is in image 0 only (labels and predictions), so replicates without it leave it out."""
    rng = np.random.default_rng(seed)
    common = k - 1 if rare_last else k
    labels = rng.integers(0, common, size=(n,) + size)
    labels[rng.random(labels.shape) < 0.1] = 255
    if rare_last:
        labels[0, 0, :3] = k - 1
    predictions = np.where(rng.random(labels.shape) < 0.6, np.where(labels == 255, 0, labels),
                           rng.integers(0, common, size=labels.shape))
    return labels, predictions


def _per_image(labels, predictions, k):
    return np.stack([seg_metrics.confusion_matrix(l, p, k) for l, p in zip(labels, predictions)])


def _loop_intervals(per_image, replicates, seed, report):
    """The percentile intervals of ``report(summed confusion)`` over the replicates drawn as
    rows of ``default_rng(seed).integers(0, N, (B, N))``, one resample at a time."""
    n = len(per_image)
    draws = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    values = [report(per_image[row].sum(axis=0)) for row in draws]
    return {name: np.nanpercentile(np.asarray([v[name] for v in values], np.float64),
                                   [2.5, 97.5], axis=0) for name in values[0]}


def test_segmentation_intervals_match_a_loop_over_resampled_images():
    k, replicates, seed = 4, 60, 3
    labels, predictions = _maps(9, k, seed=0)
    per_image = _per_image(labels, predictions, k)
    names = ["a", "b", "c", "d"]

    def report(confusion):
        iou = seg_metrics.iou_per_class(confusion)
        r = seg_metrics.segmentation_report(confusion, names)
        return {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"], "iou": iou}

    want = _loop_intervals(per_image, replicates, seed, report)
    got = segmentation.segmentation_ci(per_image, names, replicates=replicates, seed=seed)
    np.testing.assert_allclose(got["miou"], want["miou"], atol=1e-12)
    np.testing.assert_allclose(got["pixel_accuracy"], want["pixel_accuracy"], atol=1e-12)
    assert set(got["iou_per_class"]) == set(names)       # every class is in the test set
    for c, name in enumerate(names):
        np.testing.assert_allclose(got["iou_per_class"][name], want["iou"][:, c], atol=1e-12)
    # class "d" is in image 0 only: the replicates without it (about (8/9)^9 = 35%) leave it out
    draws = np.random.default_rng(seed).integers(0, 9, size=(replicates, 9))
    assert 0.2 < np.mean(~(draws == 0).any(axis=1)) < 0.5


def test_change_intervals_match_a_loop_over_resampled_pairs():
    replicates, seed = 80, 1
    labels, predictions = _maps(7, 2, seed=4, rare_last=False)
    predictions[3] = 0                             # a pair without predicted change
    per_pair = _per_image(labels, predictions, 2)
    fields = ("f1", "iou", "precision", "recall", "accuracy", "miou")

    def report(confusion):
        r = seg_metrics.change_report(confusion)
        return {name: r[name] for name in fields}

    want = _loop_intervals(per_pair, replicates, seed, report)
    got = dense_probe.confusion_ci(per_pair, change_detection.change_figures,
                                   replicates=replicates, seed=seed)
    assert set(got) == set(fields)
    for name in fields:
        np.testing.assert_allclose(got[name], want[name], atol=1e-12, err_msg=name)


def test_replicate_chunks_do_not_change_the_intervals(monkeypatch):
    labels, predictions = _maps(6, 3, seed=2)
    per_image = _per_image(labels, predictions, 3)
    whole = segmentation.segmentation_ci(per_image, replicates=50, seed=5)
    monkeypatch.setattr(bootstrap, "MAX_ELEMENTS", 20)   # chunks of 3 replicates
    chunked = segmentation.segmentation_ci(per_image, replicates=50, seed=5)
    assert chunked == whole


def test_image_confusions_are_one_matrix_per_input():
    labels, predictions = _maps(5, 3, seed=6)

    class Fixed:
        """A segmenter whose prediction of input i is ``predictions[i]``."""

        def predict(self, inputs, size):
            assert tuple(size) == labels.shape[1:]
            return predictions[np.asarray(inputs, np.int64)]

    batches = [(np.arange(0, 2), labels[:2]), (np.arange(2, 5), labels[2:])]
    per_image = dense_probe.image_confusions(Fixed(), batches, 3)
    assert per_image.shape == (5, 3, 3)
    for i in range(5):
        np.testing.assert_array_equal(per_image[i],
                                      seg_metrics.confusion_matrix(labels[i], predictions[i], 3))
    np.testing.assert_array_equal(dense_probe.confusion(Fixed(), batches, 3),
                                  seg_metrics.confusion_matrix(labels, predictions, 3))
    with pytest.raises(ValueError, match="label 7 outside"):
        dense_probe.image_confusions(Fixed(), [(np.arange(1), np.full((1, 5, 6), 7))], 3)


# ----- the command lines pass --bootstrap on and print the intervals ------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(a tiny synthetic data folder, a backbone-only ViT workdir)."""
    import jax
    import jax.numpy as jnp

    from data_prep import synthetic
    from geossl import models
    from geossl.train.checkpoint import save_backbone
    data = str(tmp_path_factory.mktemp("dense-bootstrap-data"))
    synthetic.generate(data, num_locations=8, heldout=8, num_shards=1, size=16, num_workers=1,
                       verbose=False)
    kw = dict(in_chans=13, img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=1)
    model = models.create("vit_tiny_patch16", **kw)
    workdir = str(tmp_path_factory.mktemp("dense-bootstrap-workdir"))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 13)))
    save_backbone(jax.device_get(variables), "vit_tiny_patch16", workdir, **kw)
    return data, workdir


@pytest.mark.parametrize("probe", ["segmentation", "change_detection"])
def test_cli_bootstrap_flag_reaches_the_probe_and_the_table(probe, tiny_run, monkeypatch, capsys,
                                                            tmp_path):
    from geossl.cli import change_detection as change_cli
    from geossl.cli import segmentation as segmentation_cli
    data, workdir = tiny_run
    monkeypatch.setenv("GEOSSL_DATA", data)
    seen = {}
    result = {"miou": 0.2, "iou_per_class": {"water": 0.25},
              "ci95": {"miou": [0.1, 0.3], "iou_per_class": {"water": [0.125, 0.375]}}}

    def fake_probe(*args, **kw):
        seen.update(kw)
        return result

    module, cli = ((segmentation, segmentation_cli) if probe == "segmentation"
                   else (change_detection, change_cli))
    monkeypatch.setattr(module, f"{probe}_probe", fake_probe)
    report = cli.main(["--workdir", workdir, "--dataset", "synthetic", "--bootstrap", "7",
                       "--seed", "3", "--output", str(tmp_path / "r.json")])
    assert (seen["bootstrap"], seen["bootstrap_seed"]) == (7, 3)
    unit = "images" if probe == "segmentation" else "pairs"
    assert report["bootstrap"]["replicates"] == 7 and unit in report["bootstrap"]["resampled"]
    out = capsys.readouterr().out
    assert "iou_per_class water  0.2500 [0.1250, 0.3750]" in out
    with pytest.raises(SystemExit):
        cli.main(["--workdir", workdir, "--dataset", "synthetic", "--bootstrap", "-1"])
    assert "--bootstrap: expected >= 0, found -1" in capsys.readouterr().err
