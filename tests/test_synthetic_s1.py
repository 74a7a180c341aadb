"""The synthetic data's Sentinel-1 rendering: σ0 table, speckle, co-registration with S2, the S2
bytes it leaves alone, the shard sets, and who reads them (S1 configs, probes, online probe)."""

import hashlib
import importlib
import os

import ml_collections
import numpy as np
import pytest
from scipy.special import digamma

from data_prep import synthetic as synthetic_cli
from geossl.data import ShardSource, files, synthetic
from geossl.data import synthetic_s1 as s1

DB_PER_NEPER = 10 / np.log(10)
TINY = dict(num_locations=12, heldout=8, size=16, seasons=2, num_shards=2, heldout_shards=1,
            num_workers=1, verbose=False)


def test_s2_records_are_unchanged_by_the_s1_rendering():
    """Digest of S2 records computed with the generator before the S1 rendering existed."""
    h = hashlib.sha256()
    for split, index, seasons, size, seed in [("train", 0, 4, 32, 0), ("train", 5, 4, 32, 0),
                                              ("heldout", 3, 4, 32, 0), ("train", 7, 2, 16, 3),
                                              ("train", 11, 3, 16, 1)]:
        r = synthetic.make_location(index, split=split, seasons=seasons, size=size, seed=seed)
        for name in ("image", "land_cover", "labels", "acq_labels"):
            h.update(np.ascontiguousarray(r[name]).tobytes())
        h.update(r["key"].encode())
    assert h.hexdigest() == "66be03b519bda177d20cd733118b3e6350513b68c27b93f0fb4ebe93110d6f88"


def test_backscatter_follows_the_table_seasons_angle_and_conditions():
    ref = s1.REFERENCE_INCIDENCE
    for c in range(len(synthetic.CLASSES)):
        cover = np.full((4, 4), c)
        for g, expected in ((0.0, s1.SIGMA0_DB[c, 0]), (1.0, s1.SIGMA0_DB[c, 1]),
                            (0.25, 0.75 * s1.SIGMA0_DB[c, 0] + 0.25 * s1.SIGMA0_DB[c, 1])):
            np.testing.assert_allclose(s1.backscatter_db(cover, g, ref), np.broadcast_to(
                expected, (4, 4, 2)), atol=1e-12)
        steep = s1.backscatter_db(cover, 1.0, ref + 7.5) - s1.backscatter_db(cover, 1.0, ref)
        np.testing.assert_allclose(steep, np.full((4, 4, 2), 7.5 * s1.ANGLE_SLOPE_DB[c]),
                                   atol=1e-12)
        wet = s1.backscatter_db(cover, 1.0, ref, wind_db=3.0, moisture_db=-2.0)
        wind = 3.0 if synthetic.CLASSES[c] == "water" else 0.0
        np.testing.assert_allclose(wet - s1.backscatter_db(cover, 1.0, ref), np.full(
            (4, 4, 2), wind - 2.0 * s1.MOISTURE_GAIN[c]), atol=1e-12)
    # crops follow each field's phenology; a texture shows in dB with the class gain
    crops, built = synthetic.CLASSES.index("crops"), synthetic.CLASSES.index("built")
    shift = np.linspace(-0.5, 0.5, 16).reshape(4, 4)
    w = np.clip(0.5 + shift, 0, 1)[..., None]
    np.testing.assert_allclose(
        s1.backscatter_db(np.full((4, 4), crops), 0.5, ref, parcel_shift=shift),
        s1.SIGMA0_DB[crops, 0] * (1 - w) + s1.SIGMA0_DB[crops, 1] * w, atol=1e-12)
    texture = np.full((4, 4), 0.5)
    np.testing.assert_allclose(
        s1.backscatter_db(np.full((4, 4), built), 1.0, ref, textures={built: texture}),
        np.broadcast_to(s1.SIGMA0_DB[built, 1] + 3.0 * 10 * np.log10(0.5), (4, 4, 2)), atol=1e-12)
    # the physics the table encodes: cross-pol darker, water darkest, built and double bounce bright
    vv, vh = s1.SIGMA0_DB[..., 0], s1.SIGMA0_DB[..., 1]
    assert (vh < vv).all()
    assert vv.argmin() // 2 in (0, 8) and vv[0].max() < vv[[1, 2, 4, 5, 7]].min()
    assert vv[6].min() > vv[3].max() > vv[1].max()


def test_speckle_has_the_stated_enl_and_is_unbiased_in_power():
    rng = np.random.default_rng(0)
    observed = s1.speckle(rng, np.full((128, 128), -10.0))
    power = 10 ** (observed / 10)
    assert abs(power.mean() / 0.1 - 1) < 0.02
    assert abs(power.mean() ** 2 / power.var() / s1.ENL - 1) < 0.06
    # the mean in dB sits below σ0 by 10·log10(e)·(ψ(L) − ln L), −0.51 dB for L = 4.4
    bias = DB_PER_NEPER * (digamma(s1.ENL) - np.log(s1.ENL))
    assert abs(observed.mean() - (-10 + bias)) < 0.08 and -0.6 < bias < -0.45


def test_s1_record_is_coregistered_with_s2_and_speckled_as_stated():
    ratios, pooled, labels = [], {}, {}
    for i in range(16):
        kw = dict(split="train", seasons=4, size=16, seed=0)
        radar, optical = s1.make_s1_location(i, **kw), synthetic.make_location(i, **kw)
        clean = s1.make_s1_location(i, speckled=False, **kw)
        assert radar["key"] == optical["key"] == f"synthetic-train-{i:06d}"
        for name in ("labels", "acq_labels", "num_classes", "land_cover"):
            np.testing.assert_array_equal(radar[name], optical[name])
        assert (radar["bands"], radar["sensor"], radar["label_set"]) == (
            ["VV", "VH"], "s1_grd", "dynamic_world_9")
        assert radar["image"].shape == (4, 16, 16, 2) and radar["image"].dtype == np.float32
        assert ((radar["incidence_angle"] > 29.1) & (radar["incidence_angle"] < 46.0)).all()
        ratios.append(10 ** ((radar["image"].astype(np.float64) - clean["image"]) / 10))
        for c in np.unique(radar["land_cover"]):
            pooled.setdefault(int(c), []).append(clean["image"][radar["land_cover"] == c])
        labels[i] = radar["labels"]
    ratio = np.concatenate([r.ravel() for r in ratios])
    assert abs(ratio.mean() - 1) < 0.02 and abs(1 / ratio.var() / s1.ENL - 1) < 0.1
    # per-class mean σ0 of the scenes: the table's seasonal midpoint (+2 dB mean wind on water)
    for c, chunks in pooled.items():
        expected = s1.SIGMA0_DB[c].mean(0) + (2.0 if c == 0 else 0.0)
        np.testing.assert_allclose(np.concatenate(chunks).mean(0), expected, atol=2.0,
                                   err_msg=synthetic.CLASSES[c])
    assert len(pooled) >= 7


def test_generate_adds_s1_sets_beside_s2_without_rewriting_them(tmp_path):
    out = str(tmp_path)
    synthetic.generate(out, **TINY)
    s2_files = sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))
    before = {n: (os.stat(os.path.join(out, n)).st_mtime_ns,
                  (tmp_path / n).read_bytes()) for n in s2_files}
    summary = synthetic.generate(out, modality="both", **TINY)
    assert summary["reused"] and not summary["s1"]["reused"]
    assert summary["s1"]["train"]["records"] == 12 and summary["s1"]["heldout"]["records"] == 8
    assert before == {n: (os.stat(os.path.join(out, n)).st_mtime_ns,
                          (tmp_path / n).read_bytes()) for n in s2_files}
    for split in ("train", "heldout"):
        assert os.path.isfile(tmp_path / f"s1-{split}.manifest.json")
        radar = ShardSource(str(tmp_path / f"s1-{split}-*.tfrecord"))
        optical = ShardSource(str(tmp_path / f"{split}-*.tfrecord"))
        assert [radar[i]["key"] for i in range(len(radar))] == [
            optical[i]["key"] for i in range(len(optical))]
        assert radar[3]["bands"] == ["VV", "VH"] and radar[3]["image"].dtype == np.float32
    assert synthetic.generate(out, modality="s1", **TINY)["reused"]
    with pytest.raises(SystemExit) as stop:  # S1 of other parameters than the S2 sets: refused
        synthetic_cli.main(["--output", out, "--modality", "s1", "--num_locations", "13",
                            "--size", "16", "--seasons", "2", "--num_shards", "2"])
    assert stop.value.code == 2


def test_demo_data_gains_s1_with_the_s2_parameters_on_first_use(tmp_path, monkeypatch):
    out = str(tmp_path / "demo")
    synthetic.generate(out, **{**TINY, "num_locations": 6, "size": 8})
    s2_bytes = (tmp_path / "demo" / "train-00000-of-00002.tfrecord").read_bytes()
    # an interrupted S1 writer's marker and a shard of an older S1 set: cleared on the way in
    (tmp_path / "demo" / "s1-train.incomplete").write_text("stopped")
    (tmp_path / "demo" / "s1-train-00000-of-00005.tfrecord").write_bytes(b"old")
    monkeypatch.setenv("GEOSSL_DATA", out)
    config = ml_collections.ConfigDict({"data": {"train": "", "bands": ("VV", "VH")}})
    assert [os.path.basename(f) for f in files.resolve_train_files(config)] == [
        "s1-train-00000-of-00002.tfrecord", "s1-train-00001-of-00002.tfrecord"]
    meta = synthetic.read_meta(out, "s1")
    assert meta["params"] == synthetic.read_meta(out, "s2")["params"]
    assert not [n for n in os.listdir(out) if n.startswith(".s1-")]  # staging folder gone
    assert ShardSource(os.path.join(out, "s1-train-*.tfrecord"))[5]["image"].shape == (2, 8, 8, 2)
    assert (tmp_path / "demo" / "train-00000-of-00002.tfrecord").read_bytes() == s2_bytes


def test_demo_modality_and_heldout_pairing():
    assert files.demo_modality(("VV", "VH")) == files.demo_modality(["vv"]) == "s1"
    assert files.demo_modality(("VV", "B2")) == files.demo_modality(None) == "s2"
    assert files.demo_modality(("B4", "B3", "B2")) == "s2"
    pattern = files.heldout_pattern("/d/s1-train-00001-of-00004.tfrecord")
    assert pattern == "/d/s1-heldout-*.tfrecord"
    assert files.heldout_pattern("/d/train-00000-of-00004.tfrecord") == "/d/heldout-*.tfrecord"
    assert files.heldout_pattern("/d/ssl4eo_s1-00000-of-00064.tfrecord") == "/d/heldout-*.tfrecord"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic-both"))
    synthetic.generate(out, modality="both", **TINY)
    return out


@pytest.mark.parametrize("name", ["softcon_vit_s", "softcon_vit_b", "softcon_rn50"])
def test_sar_demo_configs_train_and_monitor_on_the_s1_sets(name, demo_data, monkeypatch):
    from geossl.eval import monitor, online
    monkeypatch.setenv("GEOSSL_DATA", demo_data)
    config = importlib.import_module(f"configs.{name}").get_config("sar,demo")
    train = files.resolve_train_files(config)
    assert [os.path.basename(f) for f in train] == [
        "s1-train-00000-of-00002.tfrecord", "s1-train-00001-of-00002.tfrecord"]
    held = online.load_holdout_records(config, train)
    assert len(held) == 8 and {r["sensor"] for r in held} == {"s1_grd"}
    records, where = monitor.monitor_records(config, train)
    assert "s1-heldout" in where and records[0]["bands"] == ["VV", "VH"]
    optical = importlib.import_module(f"configs.{name}").get_config("demo")
    assert os.path.basename(files.resolve_train_files(optical)[0]).startswith("train-")


def test_probe_reads_the_s1_rendering_as_synthetic_s1(demo_data, monkeypatch):
    from configs import softcon_vit_s
    from geossl.eval import datasets
    monkeypatch.setenv("GEOSSL_DATA", demo_data)
    radar = datasets.probe_splits("synthetic:s1", label_fraction=1.0)
    optical = datasets.probe_splits("synthetic", label_fraction=1.0)
    assert radar.train.name.endswith("/s1-train") and radar.test.name.endswith("/s1-heldout")
    assert optical.test.name.endswith("/heldout")
    assert radar.test.records[0]["bands"] == ["VV", "VH"]
    np.testing.assert_array_equal(radar.test.labels(range(8)), optical.test.labels(range(8)))
    preprocess = datasets.Preprocess.from_config(softcon_vit_s.get_config("sar,demo"))
    images, _ = next(radar.test.read(range(4), preprocess))
    assert images.shape == (4, 16, 16, 2) and np.isfinite(images).all()
    with pytest.raises(ValueError, match="synthetic:s1"):
        datasets.open_split("synthetic:s3", "heldout")


def test_plain_synthetic_dataset_follows_the_workdirs_bands(tmp_path):
    """``--dataset synthetic`` probes an S1 encoder on the S1 rendering, an S2 one on S2."""
    import argparse
    from configs import softcon_vit_b
    from geossl.cli.probe_flags import dataset_from_args
    from geossl.train import checkpoint
    for variant, expected in (("sar,demo", "synthetic:s1"), ("demo", "synthetic:s2")):
        workdir = str(tmp_path / variant.replace(",", "_"))
        checkpoint.write_config(workdir, softcon_vit_b.get_config(variant))
        args = argparse.Namespace(dataset="synthetic", bands=None, workdir=workdir)
        assert dataset_from_args(args) == expected
    args = argparse.Namespace(dataset="synthetic", bands="VV,VH", workdir=str(tmp_path / "none"))
    assert dataset_from_args(args) == "synthetic:s1"
    args = argparse.Namespace(dataset="synthetic:s2", bands="VV,VH", workdir=workdir)
    assert dataset_from_args(args) == "synthetic:s2"  # named explicitly: kept
