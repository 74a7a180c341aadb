"""data_prep.images: image folders (PNG + TIFF, class sub-folders, a reference map) to shards that
the training pipeline reads back with labels, classes and land_cover."""

import json
import os
import pathlib
import subprocess
import sys

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
                           "--num_shards", "2", "--num_workers", "1", "--mixed_sizes"])
    assert summary["records"] == 4 and summary["classes"] == ["forest", "river"]
    assert summary["label_set"] == "RESISC" and summary["masks"] == 1
    assert summary["converted"] == {"grey → R = G = B": 1}           # river/r1.png
    assert summary["sizes"] == {"12x10": 1, "20x18": 1, "8x8": 1, "9x11": 1}
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
    assert not (tmp_path / "out").exists()  # refused from the headers, before any writing
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
    assert not (tmp_path / "out").exists()


# ----- what cannot be stored as it is: converted by a stated rule, or refused by name -----------
def _convert(src, out, **kw):
    return images.convert([str(src)], str(out), num_shards=1, num_workers=1, verbose=False, **kw)


def _records(out) -> dict:
    """{key without the input folder: record} of the shard set in ``out``."""
    source = ShardSource(train_files(str(out / "train-*.tfrecord")))
    return {source[i]["key"].split("/", 1)[1]: source[i] for i in range(len(source))}


def _records_of(summary: dict) -> dict:
    return _records(pathlib.Path(summary["output_dir"]))


def _snapshot(folder) -> dict:
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def _png16(path, a: np.ndarray) -> None:
    """A 16-bit PNG of ``a`` (H, W, C) uint16, C = 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA),
    written chunk by chunk (Pillow writes 16-bit grey only)."""
    import struct
    import zlib
    h, w, c = a.shape
    rows = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_pillow_modes_become_rgb_by_their_stated_rules_and_are_counted(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "modes" / "cls"
    os.makedirs(src)
    grey, alpha = rng.integers(0, 256, (2, 6, 6), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    index = rng.integers(0, 4, (6, 6), dtype=np.uint8)
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    bits = rng.random((6, 6)) > 0.5
    p = Image.fromarray(index, "P")
    p.putpalette(palette.ravel().tolist())
    p.save(src / "p.png")
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(src / "la.png")
    Image.fromarray(grey, "L").save(src / "l.png")
    Image.fromarray(bits).save(src / "one.png")                          # mode "1"
    Image.fromarray(rgba, "CMYK").save(src / "cmyk.jpg", quality=95)
    cmyk = np.asarray(Image.open(src / "cmyk.jpg")).astype(np.float64)  # as decoded (lossy)

    summary = _convert(tmp_path / "modes", tmp_path / "out")
    got = {k.split("/")[-1]: r["image"][0] for k, r in _records(tmp_path / "out").items()}
    expected = {
        "p.png": palette[index],
        "rgba.png": rgba[..., :3],                                       # alpha dropped
        "la.png": np.repeat(grey[..., None], 3, -1),
        "l.png": np.repeat(grey[..., None], 3, -1),
        "one.png": np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, -1),
        "cmyk.jpg": np.round((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255).astype(np.uint8),
    }
    for name, want in expected.items():
        assert got[name].dtype == np.uint8, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert summary["converted"] == {
        "palette → its colours": 1, "RGBA → R, G, B, alpha dropped": 1,
        "grey + alpha → R = G = B, alpha dropped": 1, "grey → R = G = B": 1,
        "1-bit → R = G = B = 0 or 255": 1,
        "CMYK → R = round((255 − C)(255 − K)/255), G and B likewise": 1}


def test_16bit_is_refused_by_name_and_the_output_folder_is_left_as_it_was(tmp_path):
    src, out = tmp_path / "imgs", tmp_path / "out"
    os.makedirs(src / "cls")
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(src / "cls" / "a.png")
    _convert(src, out)
    before = _snapshot(out)
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1031)       # spans 0..64953
    Image.fromarray(grey16).save(src / "cls" / "b16.png")                # Pillow mode I;16
    with pytest.raises(BadInputError) as e:
        _convert(src, out)
    assert str(e.value) == (
        f"{src}/cls/b16.png: 16-bit pixels (uint16, 1 channel, Pillow mode I;16); expected 8-bit "
        f"for bands R, G, B (the configs scale them by 1/255): --convert_16bit=scale stores "
        f"v // 256 (for values spanning 0..65535), or --bands NAMES keeps the values under other "
        f"band names")
    assert _snapshot(out) == before                     # no shard, marker or manifest touched

    summary = _convert(src, out, convert_16bit="scale")
    stored = _records(out)["cls/b16.png"]
    assert stored["bands"] == ["R", "G", "B"] and stored["image"].dtype == np.uint8
    np.testing.assert_array_equal(stored["image"][0], np.repeat((grey16 // 256)[..., None], 3, -1))
    assert summary["converted"] == {"16-bit → 8-bit: v // 256, grey → R = G = B": 1}


def test_16bit_colour_png_and_tiff_need_a_rule_or_band_names(tmp_path):
    rgb16 = np.random.default_rng(1).integers(0, 65536, (5, 5, 3)).astype(np.uint16)
    png, tif = tmp_path / "png", tmp_path / "tif"
    os.makedirs(png)
    os.makedirs(tif)
    _png16(png / "c16.png", rgb16)
    with pytest.raises(BadInputError, match=r"c16\.png: a 16-bit colour PNG \(Pillow reads only "
                                            r"its high byte\); expected 8-bit .*--convert_16bit="
                                            r"scale stores v // 256 \(for values spanning "
                                            r"0\.\.65535\)$"):
        _convert(png, tmp_path / "out1")
    stored = _records_of(_convert(png, tmp_path / "out1", convert_16bit="scale"))["c16.png"]
    np.testing.assert_array_equal(stored["image"][0], (rgb16 >> 8).astype(np.uint8))

    tifffile.imwrite(tif / "t16.tif", rgb16)
    with pytest.raises(BadInputError, match=r"t16\.tif: 16-bit pixels \(uint16, 3 channels, "
                                            r"TIFF\)"):
        _convert(tif, tmp_path / "out2")
    with pytest.raises(BadInputError, match=r"t16\.tif: 16-bit pixels .* expected 8-bit for bands "
                                            r"R, G, B"):                 # named R, G, B: refused
        _convert(tif, tmp_path / "out2", bands=("R", "G", "B"))
    stored = _records_of(_convert(tif, tmp_path / "out2", bands=("B4", "B3", "B2")))["t16.tif"]
    assert stored["bands"] == ["B4", "B3", "B2"] and stored["image"].dtype == np.uint16
    np.testing.assert_array_equal(stored["image"][0], rgb16)           # kept as it is
    tifffile.imwrite(tif / "t16.tif", rgb16.astype(np.float32))
    with pytest.raises(BadInputError, match=r"32-bit pixels \(float32, 3 channels, TIFF\); "
                                            r"expected 8-bit .*: --bands NAMES keeps"):
        _convert(tif, tmp_path / "out3")


def test_an_image_of_another_size_is_refused_or_all_are_center_cropped(tmp_path):
    src, maps = tmp_path / "imgs", tmp_path / "maps"
    rng = np.random.default_rng(2)
    made = {}
    for rel, shape in (("a/1.png", (8, 8, 3)), ("a/2.png", (8, 8, 3)), ("b/3.png", (8, 8, 3)),
                       ("b/odd.png", (8, 11, 3))):
        os.makedirs(src / os.path.dirname(rel), exist_ok=True)
        made[rel] = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(made[rel]).save(src / rel)
    cover = rng.integers(0, 5, (8, 11), dtype=np.uint8)
    os.makedirs(maps / "b")
    Image.fromarray(cover).save(maps / "b" / "odd.png")
    with pytest.raises(BadInputError) as e:
        _convert(src, tmp_path / "out", masks=str(maps))
    assert str(e.value) == (
        f"{src}/b/odd.png: 8x11 pixels, but 3 of the 4 images are 8x8: one shard set holds one "
        f"image size (the probes stack them); --center_crop S stores every image's central SxS, "
        f"--mixed_sizes keeps each size (for pretraining only)")
    assert not (tmp_path / "out").exists()

    summary = _convert(src, tmp_path / "out", masks=str(maps), center_crop=6)
    stored = _records(tmp_path / "out")
    for rel, a in made.items():   # top-left corner ((H - 6) // 2, (W - 6) // 2)
        top, left = (a.shape[0] - 6) // 2, (a.shape[1] - 6) // 2
        np.testing.assert_array_equal(stored[rel]["image"][0], a[top:top + 6, left:left + 6])
    np.testing.assert_array_equal(stored["b/odd.png"]["land_cover"][0], cover[1:7, 2:8])
    assert (summary["center_cropped"], summary["sizes"]) == (4, {"6x6": 4})

    with pytest.raises(BadInputError, match=r"1\.png: 8x8 pixels, smaller than --center_crop 9"):
        _convert(src, tmp_path / "out2", center_crop=9)
    summary = _convert(src, tmp_path / "out3", skip_bad=True)
    assert (summary["records"], summary["skipped"]) == (3, 1)
    assert summary["bad"][0]["item"] == f"{src}/b/odd.png"


def test_non_image_files_and_empty_class_folders_are_counted_and_named(tmp_path, capsys):
    src = tmp_path / "imgs"
    for folder in ("cls", "lake", "river/sub", ".cache"):
        os.makedirs(src / folder)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / "cls" / "a.png")
    (src / "cls" / "notes.txt").write_text("x")
    (src / "river" / "sub" / "labels.csv").write_text("x")
    (src / "cls" / ".DS_Store").write_text("x")                       # hidden: not counted
    summary = images.convert([str(src)], str(tmp_path / "out"), num_shards=1, num_workers=1)
    assert summary["classes"] == ["cls"] and summary["records"] == 1
    assert summary["not_images"] == {"count": 2, "files": ["imgs/cls/notes.txt",
                                                           "imgs/river/sub/labels.csv"]}
    assert summary["empty_class_folders"] == ["imgs/lake", "imgs/river"]
    assert capsys.readouterr().out.splitlines()[-1] == (
        "train: converted 1 (1 grey → R = G = B); skipped 2 non-image files (imgs/cls/notes.txt, "
        "imgs/river/sub/labels.csv), 2 empty class folders (imgs/lake, imgs/river: no class)")


@pytest.mark.parametrize("case", ["broken", "16bit"])
def test_the_cli_refuses_in_one_line_naming_the_file_and_the_flag(tmp_path, case):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(tmp_path / "imgs" / "cls")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "cls" / "ok.png")
    if case == "broken":
        (tmp_path / "imgs" / "cls" / "bad.jpg").write_bytes(b"not a jpeg")
        message = (f"{tmp_path}/imgs/cls/bad.jpg: unreadable image (UnidentifiedImageError: cannot "
                   f"identify image file '{tmp_path}/imgs/cls/bad.jpg') [--skip_bad skips such "
                   f"inputs, counted in the summary]")
    else:
        Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "imgs" / "cls" / "bad.png")
        message = (f"{tmp_path}/imgs/cls/bad.png: 16-bit pixels (uint16, 1 channel, Pillow "
                   f"mode I;16)")
    done = subprocess.run([sys.executable, "-m", "data_prep.images", "--input",
                           str(tmp_path / "imgs"), "--output", str(tmp_path / "out")],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"python -m data_prep.images: {message}"), lines
    assert "--convert_16bit=scale" in lines[0] or case == "broken"
    assert not (tmp_path / "out").exists()


def test_tiff_channel_planes_are_the_smallest_leading_axis(tmp_path):
    """Channel-first planes are moved last only when the first axis is the smallest (and at most
    16): a 16 × 16 image of 20 bands keeps its layout; the header agrees with the array."""
    from data_prep import images
    cases = {"planes.tif": ((13, 24, 24), (24, 24, 13)), "last.tif": ((16, 16, 20), (16, 16, 20)),
             "rgb.tif": ((8, 16, 3), (8, 16, 3)), "wide.tif": ((3, 16, 40), (16, 40, 3))}
    rng = np.random.default_rng(0)
    for name, (stored, read) in cases.items():
        data = rng.integers(0, 255, stored, dtype=np.uint8)
        tifffile.imwrite(tmp_path / name, data)
        array = images.read_array(str(tmp_path / name))
        assert array.shape == read, name
        expected = np.moveaxis(data, 0, -1) if stored != read else data
        np.testing.assert_array_equal(array, expected)
        header = images.read_header(str(tmp_path / name))
        assert (header.height, header.width, header.channels) == read, name


def test_tiff_samples_per_pixel_are_the_bands_whatever_their_sizes(tmp_path):
    """A single-page band stack (tifffile's axis S, as GDAL / rasterio write it) is read with its
    samples last in either interleave, whatever the sizes: 20 band-interleaved bands of 16 × 16
    (planes_first alone keeps 20 as the height) and a 1 × 16 RGB strip (squeezing alone made it a
    16 × 3 grey image); the header and the tiler's size agree with the array, pages too."""
    from data_prep import images, tiling
    rng = np.random.default_rng(1)
    bands20 = rng.integers(0, 4000, (16, 16, 20), dtype=np.uint16)
    strip = rng.integers(0, 255, (1, 16, 3), dtype=np.uint8)
    pages = rng.integers(0, 255, (24, 40, 13), dtype=np.uint8)  # tifffile: 24 pages of 40 × 13
    cases = {"separate.tif": (np.moveaxis(bands20, -1, 0),
                              dict(photometric="minisblack", planarconfig="separate"), bands20),
             "contig.tif": (bands20, dict(photometric="minisblack", planarconfig="contig"), bands20),
             "strip.tif": (strip, dict(photometric="rgb"), strip),
             "pages.tif": (pages, {}, pages)}
    for name, (stored, options, want) in cases.items():
        tifffile.imwrite(tmp_path / name, stored, **options)
        array = images.read_array(str(tmp_path / name))
        np.testing.assert_array_equal(array, want, err_msg=name)
        header = images.read_header(str(tmp_path / name))
        assert (header.height, header.width, header.channels) == want.shape, name
        assert tiling.image_size(str(tmp_path / name)) == want.shape[:2], name  # its tiles agree
