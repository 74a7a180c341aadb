"""data_prep readers of the downstream sets (EuroSAT-MS, So2Sat LCZ42, OSCD, image + map folders):
small files in each published layout, written here, converted and read back with ShardSource."""

import os

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from data_prep import eurosat, oscd, segmentation_folders, so2sat
from data_prep.common import BadInputError
from geossl.data import ShardSource
from geossl.data.pipeline import train_files

WRITER = ["--num_shards", "2", "--num_workers", "1"]


def read_set(folder, prefix) -> dict:
    """{key: record} of a whole shard set (its manifest checked)."""
    source = ShardSource(train_files(os.path.join(str(folder), f"{prefix}-*.tfrecord")))
    records = [source[i] for i in range(len(source))]
    return {r["key"]: r for r in records}


# ---------------------------------------------------------------------------------------------
# EuroSAT-MS


def write_eurosat(root, rng, per_class=2, size=eurosat.SIZE) -> dict:
    """torchgeo's EuroSATallBands layout; even images as pixel-interleaved (H, W, 13) TIFFs, odd
    ones as band planes (13, H, W). Returns {stem: (H, W, 13) array in file band order}."""
    tif_root = os.path.join(root, "ds", "images", "remote_sensing", "otherDatasets",
                            "sentinel_2", "tif")
    made = {}
    for cls in eurosat.CLASSES:
        os.makedirs(os.path.join(tif_root, cls))
        for i in range(1, per_class + 1):
            a = rng.integers(0, 10000, (size, size, 13), dtype=np.uint16)
            path = os.path.join(tif_root, cls, f"{cls}_{i}.tif")
            if i % 2:
                tifffile.imwrite(path, np.moveaxis(a, -1, 0), photometric="minisblack",
                                 planarconfig="separate")
            else:
                tifffile.imwrite(path, a, photometric="minisblack", planarconfig="contig")
            made[f"{cls}_{i}"] = a
    return made


def test_eurosat_splits_bands_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    made = write_eurosat(str(tmp_path / "EuroSAT"), rng)
    splits = tmp_path / "splits"
    splits.mkdir()
    names = sorted(made)
    chosen = {"train": names[0:12], "val": names[12:16], "test": names[16:19]}  # one left out
    for split, stems in chosen.items():
        (splits / f"eurosat-{split}.txt").write_text("".join(f"{s}.jpg\n" for s in stems))

    out = tmp_path / "shards"
    summaries = eurosat.main(["--input", str(tmp_path / "EuroSAT"), "--splits", str(splits),
                              "--output", str(out)] + WRITER)
    assert summaries["train"]["images_in_no_split"] == 1
    for split, stems in chosen.items():
        records = read_set(out, split)
        assert sorted(k.split("/")[1] for k in records) == sorted(stems)
        for key, r in records.items():
            cls, stem = key.split("/")
            np.testing.assert_array_equal(r["image"], made[stem][None])
            assert r["image"].dtype == np.uint16
            assert r["bands"][8:] == ["B9", "B10", "B11", "B12", "B8A"]   # B8A last, as stored
            assert r["labels"].tolist() == [eurosat.CLASSES.index(cls)]
            assert (r["label_set"], r["num_classes"].tolist(), r["sensor"]) == \
                ("eurosat_10", [10], "s2_l1c")


def test_eurosat_wrong_band_count_is_named(tmp_path):
    made = write_eurosat(str(tmp_path / "in"), np.random.default_rng(1), per_class=1)
    bad = tmp_path / "in" / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" \
        / "tif" / "River" / "River_1.tif"
    tifffile.imwrite(bad, made["River_1"][..., :12], photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(BadInputError, match=r"River_1\.tif: expected 13 bands .* found 12"):
        eurosat.convert(str(tmp_path / "in"), str(tmp_path / "out"), num_workers=1,
                        verbose=False)
    summary = eurosat.convert(str(tmp_path / "in"), str(tmp_path / "out"), num_workers=1,
                              num_shards=1, skip_bad=True, verbose=False)["all"]
    assert (summary["records"], summary["skipped"]) == (9, 1)


# ---------------------------------------------------------------------------------------------
# So2Sat LCZ42


def write_so2sat(path, rows, rng, *, sen2_bands=10) -> dict:
    data = {"sen1": rng.normal(0, 1e-3, (rows, 32, 32, 8)),
            "sen2": rng.uniform(0, 0.5, (rows, 32, 32, sen2_bands)),
            "label": np.eye(17)[rng.integers(0, 17, rows)]}
    with h5py.File(path, "w") as f:
        for name, value in data.items():
            f.create_dataset(name, data=value)       # float64, as published
    return data


def test_so2sat_both_sensors_in_chunks(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "so2sat"
    src.mkdir()
    train = write_so2sat(src / "training.h5", 5, rng)
    test = write_so2sat(src / "testing.h5", 3, rng)
    out = tmp_path / "shards"
    summaries = so2sat.main(["--input", str(src), "--output", str(out), "--sensor", "both",
                             "--chunk", "2"] + WRITER)
    assert sorted(summaries) == ["s1/test", "s1/train", "s2/test", "s2/train"]
    for split, data in (("train", train), ("test", test)):
        s2, s1 = read_set(out / "s2", split), read_set(out / "s1", split)
        assert len(s2) == len(s1) == len(data["label"])
        for row in range(len(data["label"])):
            key = f"{split}/{row:06d}"
            a, b = s2[key], s1[key]
            np.testing.assert_array_equal(
                a["image"], (data["sen2"][row].astype(np.float32) * np.float32(10000))[None])
            np.testing.assert_array_equal(b["image"], data["sen1"][row].astype(np.float32)[None])
            assert a["image"].dtype == np.float32 and a["image"].shape == (1, 32, 32, 10)
            assert a["bands"] == list(so2sat.S2_BANDS) and b["bands"] == list(so2sat.S1_BANDS)
            assert (a["sensor"], b["sensor"]) == ("s2_l1c", "s1_slc")
            label = int(np.flatnonzero(data["label"][row])[0])
            assert a["labels"].tolist() == b["labels"].tolist() == [label]
            assert (a["label_set"], a["num_classes"].tolist(), a["index"].tolist()) == \
                ("so2sat_lcz42_17", [17], [row])


def test_so2sat_bad_files_and_rows_are_named(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "a").mkdir()
    write_so2sat(tmp_path / "a" / "validation.h5", 3, rng, sen2_bands=9)
    with pytest.raises(BadInputError, match=r"validation\.h5: dataset 'sen2': expected shape "
                                            r"\(3, H, W, 10\), found \(3, 32, 32, 9\)"):
        so2sat.convert(str(tmp_path / "a"), str(tmp_path / "out"), verbose=False)
    (tmp_path / "b").mkdir()
    write_so2sat(tmp_path / "b" / "training.h5", 4, rng)
    with h5py.File(tmp_path / "b" / "training.h5", "r+") as f:
        f["label"][2] = np.ones(17)
    with pytest.raises(BadInputError, match=r"training\.h5: label row 2: expected a one-hot row"):
        so2sat.convert(str(tmp_path / "b"), str(tmp_path / "out"), num_workers=1, verbose=False)
    summary = so2sat.convert(str(tmp_path / "b"), str(tmp_path / "out"), num_workers=1,
                             num_shards=1, skip_bad=True, verbose=False)["s2/train"]
    assert (summary["records"], summary["skipped"]) == (3, 1)
    assert sorted(read_set(tmp_path / "out", "train")) == ["train/000000", "train/000001",
                                                            "train/000003"]


# ---------------------------------------------------------------------------------------------
# OSCD

GRID = (13, 14)          # 10 m px: not a multiple of 2 or 6
COARSE = {"B05": (7, 7), "B06": (7, 7), "B07": (7, 7), "B8A": (7, 7), "B11": (7, 7),
          "B12": (7, 7), "B01": (3, 3), "B09": (3, 3), "B10": (2, 3)}   # B10 one row short


def write_oscd_date(folder, rng) -> dict:
    os.makedirs(folder)
    bands = {}
    for band in oscd.FILE_BANDS:
        a = rng.integers(0, 5000, COARSE.get(band, GRID), dtype=np.uint16)
        tifffile.imwrite(os.path.join(folder, f"S2A_OPER_MSI_L1C_TL_SGS__20160101_{band}.tif"), a)
        bands[band] = a
    return bands


def on_grid(band, factor) -> np.ndarray:
    """Expected 10 m values: each band pixel repeated factor x factor, the edge row / column
    continued where the band is short, cut to the grid."""
    big = np.kron(band, np.ones((factor, factor), band.dtype))
    pad = [(0, max(0, g - s)) for g, s in zip(GRID, big.shape)]
    return np.pad(big, pad, mode="edge")[:GRID[0], :GRID[1]]


def write_oscd(root, rng) -> tuple[dict, dict]:
    images, train_labels, test_labels = (os.path.join(root, n) for n in
                                         ("Images", "Train Labels", "Test Labels"))
    os.makedirs(images)
    with open(os.path.join(images, "train.txt"), "w") as f:
        f.write("abudhabi,beirut")
    with open(os.path.join(images, "test.txt"), "w") as f:
        f.write("dubai\n")
    expected, masks = {}, {}
    for city in ("abudhabi", "beirut", "dubai"):
        dates = [write_oscd_date(os.path.join(images, city, f"imgs_{d}"), rng) for d in (1, 2)]
        expected[city] = np.stack([
            np.stack([on_grid(b[name], oscd.FACTORS.get(name, 1)) for name in oscd.FILE_BANDS],
                     -1) for b in dates])
        cm = os.path.join(test_labels if city == "dubai" else train_labels, city, "cm")
        os.makedirs(cm)
        change = rng.integers(0, 2, GRID).astype(np.uint8)
        if city == "abudhabi":          # the GeoTIFF mask: 1 no change, 2 change, 0 unknown
            values = change + 1
            values[0, 0] = 0
            tifffile.imwrite(os.path.join(cm, f"{city}-cm.tif"), values)
            change[0, 0] = 255
        else:                           # the PNG mask: 0 / 255
            Image.fromarray(change * 255).save(os.path.join(cm, "cm.png"))
        masks[city] = change
    with open(os.path.join(images, "abudhabi", "dates.txt"), "w") as f:
        f.write("date_1: 20160328\ndate_2: 20180317\n")
    return expected, masks


def test_oscd_pairs_on_the_10m_grid_with_change_masks(tmp_path):
    expected, masks = write_oscd(str(tmp_path), np.random.default_rng(4))
    labels = f"{tmp_path / 'Train Labels'},{tmp_path / 'Test Labels'}"
    out = tmp_path / "whole"
    oscd.main(["--images", str(tmp_path / "Images"), "--labels", labels, "--output", str(out)]
              + WRITER)
    for split, cities in (("train", ["abudhabi", "beirut"]), ("test", ["dubai"])):
        records = read_set(out, split)
        assert sorted(records) == cities
        for city, r in records.items():
            assert r["image"].shape == (2, 13, 14, 13) and r["image"].dtype == np.uint16
            np.testing.assert_array_equal(r["image"], expected[city])
            np.testing.assert_array_equal(r["change"], masks[city])
            assert r["bands"] == list(oscd.BANDS) and r["sensor"] == "s2_l1c"
            assert r["city"] == city.encode() and r["label_set"] == "oscd_change"
    assert read_set(out, "train")["abudhabi"]["dates"] == [b"20160328", b"20180317"]

    tiles = tmp_path / "tiles"
    oscd.main(["--images", str(tmp_path / "Images"), "--labels", labels, "--output", str(tiles),
               "--split", "train", "--tile", "8"] + WRITER)
    records = read_set(tiles, "train")
    assert sorted(k for k in records if k.startswith("abudhabi")) == [
        "abudhabi/r0_c0", "abudhabi/r0_c6", "abudhabi/r5_c0", "abudhabi/r5_c6"]
    r = records["abudhabi/r5_c6"]
    np.testing.assert_array_equal(r["image"], expected["abudhabi"][:, 5:13, 6:14])
    np.testing.assert_array_equal(r["change"], masks["abudhabi"][5:13, 6:14])


def test_oscd_missing_band_and_off_grid_band_are_named(tmp_path):
    write_oscd(str(tmp_path), np.random.default_rng(5))
    imgs_2 = tmp_path / "Images" / "beirut" / "imgs_2"
    b8a = next(p for p in os.listdir(imgs_2) if p.endswith("_B8A.tif"))
    os.remove(imgs_2 / b8a)
    with pytest.raises(BadInputError, match=r"beirut/imgs_2: missing band file\(s\) \['B8A'\]"):
        oscd.convert(str(tmp_path / "Images"), str(tmp_path / "out"), split="train",
                     num_workers=1, verbose=False)
    b05 = next(p for p in os.listdir(imgs_2) if p.endswith("_B05.tif"))
    tifffile.imwrite(imgs_2 / b8a, np.zeros((4, 4), np.uint16))
    tifffile.imwrite(imgs_2 / b05, np.zeros((4, 4), np.uint16))
    with pytest.raises(BadInputError, match=r"_B05\.tif: band of 4x4 px does not fit the 13x14 px"):
        oscd.convert(str(tmp_path / "Images"), str(tmp_path / "out"), split="train",
                     num_workers=1, verbose=False)


# ---------------------------------------------------------------------------------------------
# Image + class-map folders


def test_dfc2020_like_folders_tiled_with_class_map(tmp_path):
    rng = np.random.default_rng(6)
    images, masks = tmp_path / "ROIs0000_test" / "s2_0", tmp_path / "ROIs0000_test" / "dfc_0"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    made = {}
    for p in (0, 1):
        image = rng.integers(0, 10000, (13, 16, 16), dtype=np.uint16)       # band planes
        dfc = rng.choice(np.array([0, 1, 2, 4, 10], np.uint16), (16, 16))
        tifffile.imwrite(images / f"ROIs0000_test_s2_0_p{p}.tif", image, photometric="minisblack",
                         planarconfig="separate")
        tifffile.imwrite(masks / f"ROIs0000_test_dfc_0_p{p}.tif", dfc)
        classes = np.select([dfc == 1, dfc == 2, dfc == 4, dfc == 10], [0, 1, 2, 3], 255)
        made[f"ROIs0000_test_s2_0_p{p}.tif"] = (np.moveaxis(image, 0, -1), classes)
    out = tmp_path / "shards"
    summary = segmentation_folders.main([
        "--images", str(images), "--masks", str(masks), "--pair", "_s2_:_dfc_", "--bands",
        "s2_l1c", "--class_map", "1:0,2:1,4:2,10:3", "--ignore_index", "0", "--tile", "8",
        "--prefix", "test", "--output", str(out)] + WRITER)
    assert summary["records"] == 8 and summary["num_classes"] == 4
    records = read_set(out, "test")
    for name, (image, classes) in made.items():
        for top in (0, 8):
            for left in (0, 8):
                r = records[f"{name}/r{top}_c{left}"]
                np.testing.assert_array_equal(r["image"][0], image[top:top + 8, left:left + 8])
                np.testing.assert_array_equal(r["land_cover"][0],
                                              classes[top:top + 8, left:left + 8])
                assert r["land_cover"].dtype == np.uint8 and r["num_classes"].tolist() == [4]
                assert r["bands"][8] == "B8A" and r["sensor"] == "s2_l1c"


def test_colour_coded_maps_with_the_isprs_palette(tmp_path):
    rng = np.random.default_rng(7)
    (tmp_path / "top").mkdir()
    (tmp_path / "gts").mkdir()
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    legend = np.array([c for c, _ in segmentation_folders.PALETTES["isprs"]] + [(0, 0, 0)],
                      np.uint8)
    index = rng.integers(0, 7, (10, 12))
    Image.fromarray(image).save(tmp_path / "top" / "area1.png")
    tifffile.imwrite(tmp_path / "gts" / "area1.tif", legend[index])
    out = tmp_path / "shards"
    segmentation_folders.main(["--images", str(tmp_path / "top"), "--masks", str(tmp_path / "gts"),
                               "--palette", "isprs", "--output", str(out)] + WRITER)
    (r,) = read_set(out, "train").values()
    np.testing.assert_array_equal(r["image"][0], image)
    np.testing.assert_array_equal(r["land_cover"][0], np.where(index == 6, 255, index))
    assert r["bands"] == ["R", "G", "B"] and r["num_classes"].tolist() == [6]


def test_unpaired_or_misfit_maps_are_named(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "map").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{name}.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "map" / "a.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "map" / "b.png")
    run = dict(num_classes=5, num_workers=1, num_shards=1, verbose=False)
    with pytest.raises(BadInputError, match=r"map/a\.png: class map of 8x9 px for an image of 8x8"):
        segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                     str(tmp_path / "out"), **run)
    summary = segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                           str(tmp_path / "out"), skip_bad=True, **run)
    errors = [b["error"] for b in sorted(summary["bad"], key=lambda b: b["item"])]  # a, b, c
    assert summary["skipped"] == 3 and len(errors) == 3
    assert "class map of 8x9 px" in errors[0]
    assert errors[1].endswith("map/b.png: class 7 not below --num_classes 5")
    assert errors[2].endswith("img/c.png: no class map; expected " +
                              str(tmp_path / "map" / "c.{png,tif,tiff}"))


def test_16bit_images_are_not_stored_as_rgb(tmp_path):
    """A uint16 TIFF or 16-bit grey PNG would become bands R, G, B that the configs scale by
    1/255: refused by name (what it holds, what is expected); --bands keeps its values. A 16-bit
    colour PNG (Pillow keeps only its high byte) is refused whatever --bands says."""
    (tmp_path / "img").mkdir()
    (tmp_path / "map").mkdir()
    rgb16 = np.random.default_rng(0).integers(0, 65536, (6, 6, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img" / "t.tif", rgb16)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "map" / "t.png")
    run = dict(num_classes=2, num_workers=1, num_shards=1, verbose=False)
    with pytest.raises(BadInputError) as error:
        segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                     str(tmp_path / "out"), **run)
    assert str(error.value).startswith(
        f"{tmp_path}/img/t.tif: 16-bit pixels (uint16, 3 channels); expected 8-bit for bands R, "
        "G, B (the configs scale them by 1/255): convert the images to 8-bit first")
    assert not (tmp_path / "out").exists()  # a refused run creates nothing
    segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                 str(tmp_path / "out"), bands="B4,B3,B2", **run)
    record = ShardSource(train_files(str(tmp_path / "out")))[0]
    np.testing.assert_array_equal(record["image"][0], rgb16)
    assert list(record["bands"]) == ["B4", "B3", "B2"]
    from test_data_prep_images import _png16
    os.remove(tmp_path / "img" / "t.tif")
    _png16(tmp_path / "img" / "t.png", rgb16)
    with pytest.raises(BadInputError, match=r"t\.png: a 16-bit colour PNG \(Pillow reads only its "
                                            r"high byte\); expected 8-bit"):
        segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                     str(tmp_path / "out2"), bands="B4,B3,B2", **run)
