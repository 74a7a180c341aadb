"""data_prep.bigearthnet with BigEarthNet v2 reference maps: per-pixel CORINE codes -> land_cover."""

import json

import numpy as np
import pytest
import tifffile

from data_prep import bigearthnet
from data_prep.common import BadInputError
from geossl.data import ShardSource

V2_NAME = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"   # tile: all but the last two parts
V1_NAME = "S2B_MSIL2A_20180421T100029_12_34"

# CORINE code -> 19-class index, written out from the BigEarthNet 19-class nomenclature (Sumbul
# et al. 2021, table of the 43 -> 19 conversion); codes absent here have no 19-class label.
CLC_TO_19 = {111: 0, 112: 0, 121: 1, 211: 2, 212: 2, 213: 2, 221: 3, 222: 3, 223: 3, 231: 4,
             241: 3, 242: 5, 243: 6, 244: 7, 311: 8, 312: 9, 313: 10, 321: 11, 322: 12, 323: 12,
             324: 13, 331: 14, 333: 11, 411: 15, 412: 15, 421: 16, 422: 16, 511: 17, 512: 17,
             521: 18, 522: 18, 523: 18}
ALL_CODES = (111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223,
             231, 241, 242, 243, 244, 311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335,
             411, 412, 421, 422, 423, 511, 512, 521, 522, 523)


def _write_s2_patch(root, name, labels=("Pastures",)):
    folder = root / name
    folder.mkdir(parents=True)
    for b, band in enumerate(bigearthnet.S2_FILE_BANDS):
        side = bigearthnet.S2_SIZES.get(band, 120)
        tifffile.imwrite(folder / f"{name}_{band}.tif", np.full((side, side), 100 + b, np.uint16))
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps({"labels": list(labels)}))
    return folder


def _codes(size, seed=0):
    """A map (size, size) uint16 of every CORINE level-3 code plus no-data values 0 and 999."""
    values = np.array(ALL_CODES + (0, 999), np.uint16)
    return np.random.default_rng(seed).choice(values, size=(size, size))


def _write_map(path, codes):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, codes)


def _convert(tmp_path, patches, refs, out="out", **kw):
    summary = bigearthnet.convert(str(patches), str(tmp_path / out), reference_maps=str(refs),
                                  num_shards=1, num_workers=1, verbose=False, **kw)
    return summary, ShardSource(str(tmp_path / out / "bigearthnet-*.tfrecord"))


def test_reference_map_becomes_land_cover_in_19_and_43_classes(tmp_path):
    patches, refs = tmp_path / "S2", tmp_path / "Reference_Maps"
    _write_s2_patch(patches, V2_NAME)
    codes = _codes(120)
    _write_map(refs / V2_NAME.rsplit("_", 2)[0] / V2_NAME / f"{V2_NAME}_reference_map.tif", codes)

    summary, src = _convert(tmp_path, patches, refs)
    record = src[0]
    assert summary["records"] == 1 and record["key"] == V2_NAME
    cover = record["land_cover"]
    assert cover.shape == (1, 120, 120) and cover.dtype == np.uint8
    want = np.vectorize(lambda c: CLC_TO_19.get(int(c), 255))(codes)
    np.testing.assert_array_equal(cover[0], want)
    assert {122, 335, 0, 999} <= set(codes[cover[0] == 255].tolist())  # roads, glaciers, no data
    assert record["labels"].tolist() == [4]  # the JSON labels are unchanged (Pastures)

    _, src43 = _convert(tmp_path, patches, refs, out="out43", label_set="43")
    cover43 = src43[0]["land_cover"][0]
    index43 = {code: i for i, code in enumerate(c for c in ALL_CODES if c != 335)}
    np.testing.assert_array_equal(cover43, np.vectorize(lambda c: index43.get(int(c), 255))(codes))
    for code, name in ((122, "Road and rail networks and associated land"),
                       (523, "Sea and ocean"), (333, "Sparsely vegetated areas")):
        assert bigearthnet.LABELS_43[index43[code]] == name


def test_maps_of_another_size_are_resampled_by_nearest_neighbour():
    coarse = np.arange(60 * 60).reshape(60, 60)
    np.testing.assert_array_equal(bigearthnet.resize_nearest(coarse, 120),
                                  np.repeat(np.repeat(coarse, 2, 0), 2, 1))
    fine = np.arange(240 * 240).reshape(240, 240)
    np.testing.assert_array_equal(bigearthnet.resize_nearest(fine, 120), fine[1::2, 1::2])


def test_flat_layout_name_map_s1_pair_and_missing_maps(tmp_path):
    patches, refs = tmp_path / "S2", tmp_path / "maps"
    _write_s2_patch(patches, V1_NAME)
    other = "S2A_MSIL2A_20170717T113321_N9999_R080_T29UPU_40_01"
    codes = np.full((60, 60), 311, np.uint16)
    codes[:30] = 512
    _write_map(refs / f"{other}_reference_map.tif", codes)  # flat layout, 20 m sampling

    with pytest.raises(BadInputError, match=rf"{V1_NAME}: no reference map; looked for .*"
                                            rf"{V1_NAME}_reference_map\.tif"):
        _convert(tmp_path, patches, refs)
    summary = bigearthnet.convert(str(patches), str(tmp_path / "skip"), reference_maps=str(refs),
                                  num_shards=1, num_workers=1, skip_bad=True, verbose=False)
    assert (summary["records"], summary["skipped"]) == (0, 1)

    names = tmp_path / "names.csv"
    names.write_text(f"s2v1_name,patch_id\n{V1_NAME},{other}\n")
    _, src = _convert(tmp_path, patches, refs, out="mapped", reference_names=str(names))
    cover = src[0]["land_cover"][0]
    assert (cover[:60] == 17).all() and (cover[60:] == 8).all()  # water bodies / broad-leaved

    # An S1 patch takes the map of its S2 pair.
    s1 = tmp_path / "S1" / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57"
    s1.mkdir(parents=True)
    for band in ("VV", "VH"):
        tifffile.imwrite(s1 / f"{s1.name}_{band}.tif", np.zeros((120, 120), np.float32))
    (s1 / f"{s1.name}_labels_metadata.json").write_text(json.dumps(
        {"labels": ["Pastures"], "corresponding_s2_patch": other}))
    _, src1 = _convert(tmp_path, tmp_path / "S1", refs, out="s1")
    np.testing.assert_array_equal(src1[0]["land_cover"][0], cover)


def test_reference_map_errors_name_the_file(tmp_path):
    patches, refs = tmp_path / "S2", tmp_path / "maps"
    _write_s2_patch(patches, V2_NAME)
    path = refs / f"{V2_NAME}_reference_map.tif"
    _write_map(path, np.full((120, 120), 3.5, np.float32))
    with pytest.raises(BadInputError, match=rf"{path}: reference map of dtype float32"):
        _convert(tmp_path, patches, refs)
    with pytest.raises(FileNotFoundError, match="--reference_maps .*nowhere: not a folder"):
        bigearthnet.convert(str(patches), str(tmp_path / "o"), reference_maps=str(tmp_path / "nowhere"))
