"""data_prep.images: image folders (PNG + TIFF, class sub-folders, a reference map) to shards that
the training pipeline reads back with labels, classes and land_cover."""

import json
import os

import ml_collections
import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import common
from data_prep import images
from data_prep.common import BadInputError
from geossl.data import ShardSource
from geossl.data.bands import norm_coefficients
from geossl.data.pipeline import make_train_iterator, train_files
from geossl.objectives import gfm_views


def write_tree(root) -> dict:
    """RESISC-like tree: forest/ (RGB PNG, RGB TIFF), river/ (grey PNG, channel-first TIFF) and one
    reference map for forest/f1; returns {relative path: the (H, W, 3) uint8 it must become}."""
    rng = np.random.default_rng(0)
    made = {}
    for rel, shape in (("forest/f1.png", (12, 10, 3)), ("forest/f2.tif", (8, 8, 3)),
                       ("river/r1.png", (9, 11)), ("river/r2.tiff", (3, 20, 18))):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        if rel.endswith(".png"):
            Image.fromarray(a).save(os.path.join(root, rel))
        else:
            tifffile.imwrite(os.path.join(root, rel), a)
        made[rel] = (np.repeat(a[..., None], 3, -1) if a.ndim == 2
                     else np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a)
    return made


def test_folders_become_labelled_shards_read_back_by_the_pipeline(tmp_path):
    src, masks, out = tmp_path / "RESISC", tmp_path / "maps", tmp_path / "shards"
    made = write_tree(str(src))
    cover = np.random.default_rng(1).integers(0, 6, (12, 10), dtype=np.uint8)
    cover[0, :3] = 255
    os.makedirs(masks / "forest")
    Image.fromarray(cover).save(masks / "forest" / "f1.png")

    summary = images.main(["--input", str(src), "--masks", str(masks), "--output", str(out),
                           "--num_shards", "2", "--num_workers", "1"])
    assert summary["records"] == 4 and summary["classes"] == ["forest", "river"]
    assert summary["label_set"] == "RESISC" and summary["masks"] == 1
    with open(out / "train.summary.json") as f:
        assert json.load(f)["classes"] == ["forest", "river"]

    files = train_files(str(out / "train-*.tfrecord"))            # manifest checked
    source = ShardSource(files)
    seen = {}
    for i in range(len(source)):
        r = source[i]
        rel = r["key"].split("/", 1)[1]
        seen[rel] = r
        np.testing.assert_array_equal(r["image"], made[rel][None])
        assert r["image"].dtype == np.uint8 and r["bands"] == ["R", "G", "B"]
        assert r["labels"].tolist() == [0 if rel.startswith("forest") else 1]
        assert (r["label_set"], r["num_classes"].tolist(), r["sensor"]) == ("RESISC", [2], "rgb")
        assert ("land_cover" in r) == (rel == "forest/f1.png")
    assert sorted(seen) == sorted(made)
    lc = seen["forest/f1.png"]["land_cover"]
    assert lc.shape == (1, 12, 10) and lc.dtype == np.uint8
    np.testing.assert_array_equal(lc[0], cover)

    # The train iterator makes GFM views of them: 8 px crops, ImageNet normalisation.
    c = common.base()
    c.data.train = str(out / "train-*.tfrecord")
    c.global_batch = 4
    view = gfm_views.MaskedCropConfig(img_size=8, bands=("R", "G", "B"), norm="meanstd")
    batch = next(make_train_iterator(c, lambda rec, rng: gfm_views.masked_crop_sample(rec, rng, view),
                                     source=source, process_index=0, process_count=1))
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    scale, offset = norm_coefficients(("R", "G", "B"), "meanstd")
    lo, hi = offset, 255 * scale + offset          # ImageNet-normalised 0 and 255
    assert np.all(batch["image"] >= lo - 1e-4) and np.all(batch["image"] <= hi + 1e-4)
    np.testing.assert_allclose(scale, 1 / (255 * np.array([0.229, 0.224, 0.225])), rtol=1e-6)


def test_a_broken_image_is_named(tmp_path):
    src = tmp_path / "imgs" / "cls"
    os.makedirs(src)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src / "ok.png")
    (src / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(BadInputError, match=r"broken\.jpg: unreadable image"):
        images.convert([str(tmp_path / "imgs")], str(tmp_path / "out"), num_shards=1,
                       num_workers=1, verbose=False)
    assert not any(n.endswith(".manifest.json") for n in os.listdir(tmp_path / "out"))
    summary = images.convert([str(tmp_path / "imgs")], str(tmp_path / "out"), num_shards=1,
                             num_workers=1, skip_bad=True, verbose=False)
    assert (summary["records"], summary["skipped"]) == (1, 1)
    assert "broken.jpg" in summary["bad"][0]["item"]


def test_a_reference_map_of_another_size_is_named(tmp_path):
    os.makedirs(tmp_path / "imgs" / "cls")
    os.makedirs(tmp_path / "maps" / "cls")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "imgs" / "cls" / "a.png")
    Image.fromarray(np.zeros((6, 4), np.uint8)).save(tmp_path / "maps" / "cls" / "a.png")
    with pytest.raises(BadInputError, match=r"maps/cls/a\.png: class map of size \(6, 4\) for an "
                                            r"image of size \(4, 6\)"):
        images.convert([str(tmp_path / "imgs")], str(tmp_path / "out"), masks=str(tmp_path / "maps"),
                       num_shards=1, num_workers=1, verbose=False)
