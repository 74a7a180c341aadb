"""data_prep CLIs: synthetic demo data, BigEarthNet wheel samples, SSL4EO-S12 folders."""

import importlib.resources
import json
import os
import tarfile

import numpy as np
import pytest

from data_prep import bigearthnet, ssl4eo, synthetic
from data_prep.common import BadInputError
from geossl.data import ShardSource

# ---------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_records_are_consistent(tmp_path):
    summary = synthetic.generate(str(tmp_path), num_locations=24, seasons=4, size=16,
                                 num_shards=2, heldout=6, num_workers=1, verbose=False)
    assert summary["train"]["records"] == 24 and summary["heldout"]["records"] == 6
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".tfrecord")) == [
        "heldout-00000-of-00001.tfrecord", "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord"]
    train = ShardSource(str(tmp_path / "train-*.tfrecord"))
    heldout = ShardSource(str(tmp_path / "heldout-*.tfrecord"))
    assert len(train) == 24 and len(heldout) == 6
    season_changes = 0
    for i in range(len(train)):
        r = train[i]
        assert r["image"].shape == (4, 16, 16, 13) and r["image"].dtype == np.uint16
        assert r["bands"] == list(synthetic.BANDS) and r["bands"][8:11] == ["B8A", "B9", "B10"]
        assert (r["sensor"], r["label_set"]) == ("s2_l1c", "dynamic_world_9")
        assert r["num_classes"].tolist() == [9]
        cover = r["land_cover"]
        assert cover.shape == (4, 16, 16) and cover.max() < 9
        fractions = np.stack([np.bincount(c.ravel(), minlength=9) / c.size for c in cover])
        acq = r["acq_labels"].reshape(4, 9)
        np.testing.assert_array_equal(acq, fractions >= 0.05)
        assert r["labels"].tolist() == np.flatnonzero(acq.any(0)).tolist()
        assert 1 <= len(np.unique(cover[0])) <= 4 + 1  # regions, plus snow in winter
        # Seasons differ: every acquisition has its own pixels.
        means = r["image"].reshape(4, -1, 13).mean(1)
        assert np.abs(np.diff(means, axis=0)).max(axis=1).min() > 5
        season_changes += int((acq != acq[:1]).any())
    assert season_changes >= 1  # some labels change with the seasons (snow, crops)
    assert {heldout[i]["key"] for i in range(6)}.isdisjoint(train[i]["key"] for i in range(24))
    assert train[0]["key"] == "synthetic-train-000000"

    again = synthetic.generate(str(tmp_path), num_locations=24, seasons=4, size=16,
                               num_shards=2, heldout=6, num_workers=1, verbose=False)
    assert again["reused"]
    before = (tmp_path / "train-00001-of-00002.tfrecord").read_bytes()
    synthetic.generate(str(tmp_path), num_locations=24, seasons=4, size=16, num_shards=2,
                       heldout=6, num_workers=1, verbose=False, overwrite=True)
    assert (tmp_path / "train-00001-of-00002.tfrecord").read_bytes() == before  # deterministic


def test_synthetic_classes_have_distinct_spectra_and_seasons():
    spectra = synthetic.PEAK / np.linalg.norm(synthetic.PEAK, axis=1, keepdims=True)
    cosine = spectra @ spectra.T
    assert cosine[~np.eye(9, dtype=bool)].max() < 0.999
    assert len({tuple(row) for row in synthetic.PEAK}) == 9
    g = [synthetic.greenness(t, 4, 0.0) for t in range(4)]
    assert g[0] == 0.0 and g[2] == 1.0


def test_synthetic_cli_with_worker_processes(tmp_path, capsys):
    summary = synthetic.main(["--output", str(tmp_path), "--num_locations", "8", "--size", "8",
                              "--seasons", "2", "--num_shards", "2", "--heldout", "0",
                              "--num_workers", "2"])
    assert summary["train"]["records"] == 8 and summary["train"]["skipped"] == 0
    assert "train: 8 records in 2 shards, 0 skipped" in capsys.readouterr().out
    assert ShardSource(str(tmp_path / "train-*.tfrecord"))[7]["image"].shape == (2, 8, 8, 13)


# ---------------------------------------------------------------------------------------------
# BigEarthNet (six real S2 patches and their S1 pairs ship inside bigearthnet-common 2.8.0)


@pytest.fixture(scope="module")
def ben_examples(tmp_path_factory):
    pytest.importorskip("bigearthnet_common")
    root = tmp_path_factory.mktemp("ben")
    package = importlib.resources.files("bigearthnet_common")
    for name in ("BigEarthNet-S2-Example.tar.bz2", "BigEarthNet-S1-Example.tar.bz2"):
        with importlib.resources.as_file(package / name) as path, tarfile.open(path) as tar:
            tar.extractall(root, filter="data")
    return root


def test_bigearthnet_label_tables_match_bigearthnet_common():
    constants = pytest.importorskip("bigearthnet_common.constants")
    assert bigearthnet.LABELS_43 == tuple(constants.OLD_LABELS_ORIGINAL_ORDER)
    assert tuple(n for n, _ in bigearthnet.LABELS_19) == constants.NEW_LABELS_ORIGINAL_ORDER
    for i, name in enumerate(bigearthnet.LABELS_43):
        new = constants.OLD2NEW_LABELS_DICT[name]
        got = bigearthnet.LABELS_19[bigearthnet.TO_19[i]][0] if i in bigearthnet.TO_19 else None
        assert got == new, name


def test_bigearthnet_s2_round_trips_bit_exact(ben_examples, tmp_path):
    import tifffile
    constants = pytest.importorskip("bigearthnet_common.constants")
    summary = bigearthnet.convert(str(ben_examples / "BigEarthNet-S2-Example"), str(tmp_path),
                                  num_shards=2, num_workers=1, verbose=False)
    assert (summary["records"], summary["modality"]) == (6, "s2")
    src = ShardSource(str(tmp_path / "bigearthnet-*.tfrecord"))
    assert len(src) == 6
    for i in range(6):
        r = src[i]
        name = r["key"]
        folder = ben_examples / "BigEarthNet-S2-Example" / name
        assert r["image"].shape == (1, 120, 120, 12) and r["image"].dtype == np.uint16
        assert (r["sensor"], r["label_set"]) == ("s2_l2a", "bigearthnet_19")
        assert r["bands"] == ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9",
                              "B11", "B12"]
        for band, channel in (("B02", 1), ("B03", 2), ("B04", 3), ("B08", 7)):
            stored = tifffile.imread(folder / f"{name}_{band}.tif")
            np.testing.assert_array_equal(r["image"][0, :, :, channel], stored)
        b05 = tifffile.imread(folder / f"{name}_B05.tif")  # 60 px -> each pixel 2 x 2
        np.testing.assert_array_equal(r["image"][0, ::2, ::2, 4], b05)
        np.testing.assert_array_equal(r["image"][0, 1::2, 1::2, 4], b05)
        b01 = tifffile.imread(folder / f"{name}_B01.tif")  # 20 px -> 6 x 6
        np.testing.assert_array_equal(r["image"][0, 5::6, 5::6, 0], b01)
        meta = json.loads((folder / f"{name}_labels_metadata.json").read_text())
        new = constants.NEW_LABELS_ORIGINAL_ORDER
        expected = sorted({new.index(constants.OLD2NEW_LABELS_DICT[n]) for n in meta["labels"]
                           if constants.OLD2NEW_LABELS_DICT[n]})
        assert r["labels"].tolist() == expected


def test_bigearthnet_s1_and_43_labels(ben_examples, tmp_path):
    import tifffile
    summary = bigearthnet.main(["--input", str(ben_examples / "BigEarthNet-S1-Example"),
                                "--output", str(tmp_path), "--label_set", "43",
                                "--num_shards", "1", "--num_workers", "1", "--prefix", "s1"])
    assert (summary["records"], summary["modality"]) == (6, "s1")
    r = ShardSource(str(tmp_path / "s1-00000-of-00001.tfrecord"))[0]
    folder = ben_examples / "BigEarthNet-S1-Example" / r["key"]
    assert (r["sensor"], r["bands"], r["label_set"]) == ("s1_grd", ["VV", "VH"], "bigearthnet_43")
    assert r["image"].shape == (1, 120, 120, 2) and r["image"].dtype == np.float32
    np.testing.assert_array_equal(r["image"][0, :, :, 1],
                                  tifffile.imread(folder / f"{r['key']}_VH.tif"))
    meta = json.loads((folder / f"{r['key']}_labels_metadata.json").read_text())
    assert r["labels"].tolist() == sorted(bigearthnet.INDEX_43[n] for n in meta["labels"])
    assert r["pair_key"] == meta["corresponding_s2_patch"].encode()


def test_bigearthnet_bad_patch_is_named_or_skipped(ben_examples, tmp_path):
    import shutil
    source = ben_examples / "BigEarthNet-S2-Example"
    root = tmp_path / "in"
    names = sorted(os.listdir(source))[:2]
    for name in names:
        shutil.copytree(source / name, root / name)
    broken = root / names[1] / f"{names[1]}_B11.tif"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(BadInputError, match=rf"{broken}: unreadable TIFF"):
        bigearthnet.convert(str(root), str(tmp_path / "out"), num_shards=1, num_workers=1,
                            verbose=False)
    summary = bigearthnet.convert(str(root), str(tmp_path / "out"), num_shards=1,
                                  num_workers=1, skip_bad=True, verbose=False)
    assert (summary["records"], summary["skipped"]) == (1, 1)
    assert str(broken) in summary["bad"][0]["error"]


# ---------------------------------------------------------------------------------------------
# SSL4EO-S12 on a tiny fake tree

SEASONS = ("20210615T101031_20210615T101500_T32UQD", "20210310T101029_20210310T101400_T32UQD")


def _band_value(location, season, band_index):
    return 10000 * location + 1000 * season + 10 * band_index


def _write_ssl4eo_tree(root, modality="s2c", size=12):
    import tifffile
    for li, location in enumerate(("0000001", "0000002")):
        for ti, stamp in enumerate(sorted(SEASONS)):  # chronological index ti
            folder = root / modality / location / stamp
            folder.mkdir(parents=True)
            for b, band in enumerate(ssl4eo.BANDS[modality]):
                side = size * 10 // ssl4eo.RESOLUTION_M[band]
                pattern = np.arange(side * side).reshape(side, side)
                if modality == "s1":
                    array = (pattern - 20.0 - b).astype(np.float32)
                else:
                    array = (pattern + _band_value(li, ti, b)).astype(np.uint16)
                tifffile.imwrite(folder / f"{band}.tif", array)


def _labels_json(path, drop_second=False):
    march, june = sorted(SEASONS)
    table = {
        # Location 1 by full product ids (matched on date-time + tile), location 2 by its
        # integer id and the exact folder names.
        "0000001": {"S2B_MSIL1C_20210310T101029_N0300_R022_T32UQD_20210310T122000": ["0", "4"],
                    "S2A_MSIL1C_20210615T101031_N0300_R022_T32UQD_20210615T130000": ["1"]},
        "2": {march: ["7"], june: ["7", "8"]},
    }
    if drop_second:
        del table["2"]
    path.write_text(json.dumps(table))
    return str(path)


def test_ssl4eo_s2c_tree_with_labels(tmp_path):
    _write_ssl4eo_tree(tmp_path / "in")
    labels = _labels_json(tmp_path / "ssl4eo_multilabel.json")
    summary = ssl4eo.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--labels", labels, "--num_shards", "2", "--num_workers", "1",
                           "--seasons", "2"])
    assert (summary["records"], summary["skipped"]) == (2, 0)
    src = ShardSource(str(tmp_path / "out" / "ssl4eo_s2c-*.tfrecord"))
    first, second = src[0], src[1]
    assert first["key"] == "0000001" and second["key"] == "0000002"
    image = first["image"]
    assert image.shape == (2, 12, 12, 13) and image.dtype == np.uint16
    assert first["bands"] == list(ssl4eo.BANDS["s2c"]) and first["sensor"] == "s2_l1c"
    assert first["timestamps"] == [s.encode() for s in sorted(SEASONS)]  # chronological
    # 10 m band B2 (index 1) untouched; 20 m B5 (index 4) 2 x 2 repeated; 60 m B1 6 x 6.
    np.testing.assert_array_equal(image[1, :, :, 1], np.arange(144).reshape(12, 12)
                                  + _band_value(0, 1, 1))
    np.testing.assert_array_equal(image[0, ::2, ::2, 4], np.arange(36).reshape(6, 6)
                                  + _band_value(0, 0, 4))
    assert image[0, 1, 1, 4] == image[0, 0, 0, 4] and image[0, 5, 5, 0] == image[0, 0, 0, 0]
    assert image[0, 6, 6, 0] == _band_value(0, 0, 0) + 3
    acq = first["acq_labels"].reshape(2, 9)
    assert np.flatnonzero(acq[0]).tolist() == [0, 4] and np.flatnonzero(acq[1]).tolist() == [1]
    assert first["labels"].tolist() == [0, 1, 4] and first["label_set"] == "dynamic_world_9"
    assert second["acq_labels"].reshape(2, 9).nonzero()[1].tolist() == [7, 7, 8]
    assert second["num_classes"].tolist() == [9]


def test_ssl4eo_s1_and_s2a_modalities(tmp_path):
    for modality in ("s1", "s2a"):
        _write_ssl4eo_tree(tmp_path / "in", modality)
    labels = _labels_json(tmp_path / "labels.json")
    ssl4eo.convert(str(tmp_path / "in"), str(tmp_path / "out"), modality="s1", labels=labels,
                   num_shards=1, num_workers=1, verbose=False)
    s1 = ShardSource(str(tmp_path / "out" / "ssl4eo_s1-*"))[0]
    assert (s1["sensor"], s1["bands"], s1["image"].dtype) == ("s1_grd", ["VV", "VH"],
                                                              np.float32)
    assert s1["labels"].tolist() == [0, 1, 4] and "acq_labels" not in s1
    ssl4eo.convert(str(tmp_path / "in"), str(tmp_path / "out"), modality="s2a",
                   num_shards=1, num_workers=1, verbose=False)
    s2a = ShardSource(str(tmp_path / "out" / "ssl4eo_s2a-*"))[1]
    assert s2a["image"].shape == (2, 12, 12, 12) and "B10" not in s2a["bands"]
    assert s2a["label_set"] == "none" and s2a["labels"].size == 0


def _missing_band(root, labels_path):
    path = root / "s2c" / "0000002" / SEASONS[0] / "B5.tif"
    path.unlink()
    return str(path), "missing band file"


def _wrong_size(root, labels_path):
    import tifffile
    path = root / "s2c" / "0000002" / SEASONS[1] / "B8A.tif"
    tifffile.imwrite(path, np.zeros((5, 5), np.uint16))
    return str(path), "5x5 pixels, expected 12x12 or 6x6"


def _unreadable_tiff(root, labels_path):
    path = root / "s2c" / "0000002" / SEASONS[1] / "B3.tif"
    path.write_bytes(b"this is not a TIFF file")
    return str(path), "unreadable TIFF"


def _location_not_in_json(root, labels_path):
    _labels_json(labels_path, drop_second=True)
    return str(labels_path), "no entry for location '0000002'"


@pytest.mark.parametrize("damage", [_missing_band, _wrong_size, _unreadable_tiff,
                                    _location_not_in_json])
def test_ssl4eo_bad_inputs_are_named_or_skipped(tmp_path, damage):
    root = tmp_path / "in"
    _write_ssl4eo_tree(root)
    labels = _labels_json(tmp_path / "labels.json")
    where, problem = damage(root, tmp_path / "labels.json")
    kw = dict(labels=labels, num_shards=1, num_workers=1, verbose=False)
    with pytest.raises(BadInputError) as info:
        ssl4eo.convert(str(root), str(tmp_path / "out"), **kw)
    assert where in str(info.value) and problem in str(info.value)
    assert not (tmp_path / "out" / "ssl4eo_s2c-00000-of-00001.tfrecord").exists()
    summary = ssl4eo.convert(str(root), str(tmp_path / "out"), skip_bad=True, **kw)
    assert (summary["records"], summary["skipped"]) == (1, 1)
    assert where in summary["bad"][0]["error"]
    assert [r["key"] for r in map(ShardSource(str(tmp_path / "out")).__getitem__, [0])] == [
        "0000001"]


def test_probe_clis_run_on_the_bigearthnet_sample_shards(ben_examples, tmp_path):
    """linear_probe and knn on the six real S2 patches (12 L2A bands, B10 zero-filled for a
    13-band encoder, 120 px resized to the model's 16 px)."""
    import jax
    import jax.numpy as jnp
    from geossl import models
    from geossl.cli import knn, linear_probe
    from geossl.train.checkpoint import save_backbone
    bigearthnet.convert(str(ben_examples / "BigEarthNet-S2-Example"), str(tmp_path / "ben"),
                        num_shards=1, num_workers=1, verbose=False)
    kw = dict(img_size=16, in_chans=13, patch_size=8, depth=2)
    model = models.create("vit_tiny_patch16", **kw)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 13)))
    workdir = str(tmp_path / "backbone")
    save_backbone(jax.device_get(variables), "vit_tiny_patch16", workdir, **kw)
    common = ["--workdir", workdir, "--dataset", str(tmp_path / "ben"), "--train_split",
              "bigearthnet", "--eval_split", "bigearthnet", "--label_fraction", "1.0",
              "--holdout_train_fraction", "0.5"]
    report = linear_probe.main(common + ["--epochs", "10", "--output", str(tmp_path / "lp.json")])
    assert (report["num_train"], report["num_test"], report["num_classes"]) == (3, 3, 19)
    assert report["multilabel"] and 0 < report["metrics"]["map_micro"] <= 1
    saved = json.loads((tmp_path / "lp.json").read_text())
    assert saved["metrics"]["map_micro"] == pytest.approx(report["metrics"]["map_micro"])
    nearest = knn.main(common + ["--k", "1,2"])
    assert 0 < nearest["metrics"]["k1/map_micro"] <= 1
