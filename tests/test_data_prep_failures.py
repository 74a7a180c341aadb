"""Refused data_prep runs: one line naming the flag, file or record, and every file as it was."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from data_prep import common, eurosat, images, segmentation_folders, synthetic, verify
from geossl.data import manifest
from geossl.data.parallel_writer import BadInputError
from tests.test_data_prep_downstream import write_eurosat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def listing(folder):
    """Path, size and mtime of ``folder`` and everything under it."""
    paths = [folder, *folder.rglob("*")]
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def cli(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", f"data_prep.{module}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def last_line(stderr):
    return stderr.strip().replace("\r", "\n").split("\n")[-1]


def write_pngs(folder, count=4, size=8):
    (folder / "a").mkdir(parents=True)
    for k in range(count):
        Image.fromarray(np.full((size, size, 3), k, np.uint8)).save(folder / "a" / f"{k}.png")


@pytest.fixture
def previous(tmp_path):
    """A good earlier set in tmp_path/out and an input folder with a truncated PNG."""
    write_pngs(tmp_path / "good")
    images.convert([str(tmp_path / "good")], str(tmp_path / "out"), num_shards=2, num_workers=1,
                   verbose=False)
    write_pngs(tmp_path / "bad")
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "bad" / "a" / "3.png")
    data = (tmp_path / "bad" / "a" / "3.png").read_bytes()  # header whole, pixels cut short
    (tmp_path / "bad" / "a" / "3.png").write_bytes(data[:len(data) - 40])
    return tmp_path


# 1. a refused run leaves an earlier set (and a fresh --output) as they were


def test_refused_images_run_keeps_the_earlier_set_and_creates_nothing(previous):
    before = listing(previous)
    done = cli("images", "--input", previous / "bad", "--output", previous / "out",
               "--num_shards", 2)
    assert done.returncode == 1, done.stderr
    assert last_line(done.stderr).startswith(
        f"python -m data_prep.images: {previous}/bad/a/3.png: unreadable image")
    assert "Traceback" not in done.stderr
    with pytest.raises(BadInputError):
        images.convert([str(previous / "bad")], str(previous / "new" / "deeper"), num_workers=2,
                       num_shards=2, verbose=False)
    assert listing(previous) == before
    manifest.check_shard_set([str(previous / "out" / "train-00000-of-00002.tfrecord")])


def test_refused_segmentation_run_keeps_the_earlier_set(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "map").mkdir()
    for k in range(3):
        Image.fromarray(np.full((6, 6, 3), k, np.uint8)).save(tmp_path / "img" / f"{k}.png")
        Image.fromarray(np.full((6, 6), k, np.uint8)).save(tmp_path / "map" / f"{k}.png")
    run = dict(num_workers=1, num_shards=2, verbose=False)
    segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                 str(tmp_path / "out"), num_classes=3, **run)
    before = listing(tmp_path)
    with pytest.raises(BadInputError, match=r"2\.png: .*class 2 .*--num_classes 2"):
        segmentation_folders.convert(str(tmp_path / "img"), str(tmp_path / "map"),
                                     str(tmp_path / "out"), num_classes=2, **run)
    assert listing(tmp_path) == before


def test_a_bad_image_in_val_leaves_the_earlier_train_set(tmp_path):
    made = write_eurosat(str(tmp_path / "in"), np.random.default_rng(0), per_class=2)
    splits = tmp_path / "splits"
    splits.mkdir()
    names = sorted(made)
    for split, stems in (("train", names[:10]), ("val", names[10:15]), ("test", names[15:])):
        (splits / f"eurosat-{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    run = dict(splits_dir=str(splits), num_shards=2, num_workers=1, verbose=False)
    eurosat.convert(str(tmp_path / "in"), str(tmp_path / "out"), **run)
    bad = next((tmp_path / "in").rglob(f"{names[12]}.tif"))
    tifffile.imwrite(bad, made[names[12]].astype(np.uint8), photometric="minisblack")
    before = listing(tmp_path)
    with pytest.raises(BadInputError, match=rf"{names[12]}\.tif: expected uint16"):
        eurosat.convert(str(tmp_path / "in"), str(tmp_path / "out"), **run)
    assert listing(tmp_path) == before


# 4. a broken manifest or a shard that is a directory: named in one line


@pytest.mark.parametrize("content, problem", [
    (None, "unreadable JSON"),
    ('{"shards": 5}', "expected a string 'prefix'"),
    ('{"prefix": "train", "shards": 5}', "expected a list 'shards', found 5"),
])
def test_a_broken_manifest_is_named(tmp_path, content, problem):
    write_pngs(tmp_path / "in")
    images.convert([str(tmp_path / "in")], str(tmp_path / "out"), num_shards=2, num_workers=1,
                   verbose=False)
    path = tmp_path / "out" / "train.manifest.json"
    path.write_text(path.read_text()[:50] if content is None else content)
    with pytest.raises(manifest.ManifestError, match=rf"^{path}: not a shard manifest \(.*{problem}"):
        manifest.check_shard_set([str(tmp_path / "out" / "train-00000-of-00002.tfrecord")])
    done = cli("verify", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().split("\n")[-1].startswith(
        f"python -m data_prep.verify: {path}: not a shard manifest (")
    assert problem in done.stderr and "Traceback" not in done.stderr


def test_a_shard_replaced_by_a_directory_is_named(tmp_path):
    write_pngs(tmp_path / "in")
    images.convert([str(tmp_path / "in")], str(tmp_path / "out"), num_shards=2, num_workers=1,
                   verbose=False)
    shard = tmp_path / "out" / "train-00001-of-00002.tfrecord"
    shard.unlink()
    shard.mkdir()
    assert verify.verify([str(tmp_path / "out")], verbose=False)["bad"] == [
        (str(shard), "a directory, expected a shard file")]
    with pytest.raises(manifest.IncompleteDatasetError, match="00002.tfrecord: a directory"):
        manifest.check_shard_set([str(shard)])


# 3. and 5. bad flags: argparse's one line naming the flag (status 2); other errors one line


@pytest.mark.parametrize("module, argv, message", [
    ("segmentation_folders", ["--class_map", "1:x"], "--class_map: expected VALUE:CLASS pairs"),
    ("segmentation_folders", ["--num_classes", "300"], "--num_classes: expected 1..255, found 300"),
    ("segmentation_folders", ["--num_classes", "3", "--tile", "-4"], "--tile: expected 0"),
    ("segmentation_folders", ["--num_classes", "3", "--pair", "nocolon"], "--pair: expected OLD:NEW"),
    ("images", ["--num_shards", "0"], "argument --num_shards: expected an integer >= 1, found 0"),
    ("images", ["--output", "FILE"], "argument --output: expected a folder (existing or new), found "
                                     "the file"),
    ("synthetic", ["--size", "0"], "argument --size: expected an integer >= 1, found 0"),
    ("synthetic", ["--num_locations", "0"], "argument --num_locations: expected an integer >= 1"),
    ("synthetic", ["--num_locations", "-3"], "argument --num_locations: expected an integer >= 1"),
    ("synthetic", ["--heldout", "-1"], "argument --heldout: expected an integer >= 0, found -1"),
    ("synthetic", ["--seasons", "0"], "argument --seasons: expected an integer >= 1, found 0"),
    ("synthetic", ["--heldout_shards", "0"], "argument --heldout_shards: expected an integer >= 1"),
])
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, capsys, module, argv, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    inputs = {"segmentation_folders": ["--images", str(tmp_path / "in"), "--masks",
                                       str(tmp_path / "in")],
              "images": ["--input", str(tmp_path / "in")], "synthetic": []}[module]
    output = [] if "--output" in argv else ["--output", str(tmp_path / "out")]
    before = listing(tmp_path)
    with pytest.raises(SystemExit) as stop:
        {"images": images, "segmentation_folders": segmentation_folders,
         "synthetic": synthetic}[module].main(inputs + output + argv)
    assert stop.value.code == 2
    assert last_line(capsys.readouterr().err).startswith(
        f"python -m data_prep.{module}: error: {message}")
    assert listing(tmp_path) == before


def test_run_cli_reports_value_and_os_errors_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(common.signals, "install_interrupt_handlers", lambda: None)

    def fails():
        json.loads("{")

    with pytest.raises(SystemExit) as stop:
        common.run_cli(fails, "prog")
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        "prog: JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1) (GEOSSL_TRACEBACK=1 shows the traceback)\n")
    with pytest.raises(SystemExit):
        common.run_cli(lambda: open("/nonexistent/x/y"), "prog")
    assert capsys.readouterr().err.startswith(
        "prog: FileNotFoundError: [Errno 2] No such file or directory")
    monkeypatch.setenv("GEOSSL_TRACEBACK", "1")
    with pytest.raises(json.JSONDecodeError):
        common.run_cli(fails, "prog")


# 2. and 6. EuroSAT: split names checked before writing; image size checked


def test_eurosat_missing_split_name_is_refused_before_writing(tmp_path):
    made = write_eurosat(str(tmp_path / "in"), np.random.default_rng(0), per_class=1)
    splits = tmp_path / "splits"
    splits.mkdir()
    names = sorted(made)
    (splits / "eurosat-train.txt").write_text("".join(f"{s}\n" for s in names[:6]))
    (splits / "eurosat-val.txt").write_text("".join(f"{s}\n" for s in names[6:8]))
    (splits / "eurosat-test.txt").write_text("".join(f"{s}\n" for s in names[8:]) + "Nowhere_1\n")
    before = listing(tmp_path)
    with pytest.raises(BadInputError, match=r"1 listed name\(s\) without a \.tif .*"
                                            r"\(eurosat-test\.txt: Nowhere_1\)"):
        eurosat.convert(str(tmp_path / "in"), str(tmp_path / "out"), splits_dir=str(splits),
                        num_workers=1, verbose=False)
    assert listing(tmp_path) == before


def test_eurosat_image_of_another_size_is_refused(tmp_path):
    write_eurosat(str(tmp_path / "in"), np.random.default_rng(0), per_class=1)
    bad = next((tmp_path / "in").rglob("River_1.tif"))
    tifffile.imwrite(bad, np.zeros((32, 48, 13), np.uint16), photometric="minisblack")
    before = listing(tmp_path)
    with pytest.raises(BadInputError, match=r"River_1\.tif: expected 64x64 px, found 32x48$"):
        eurosat.convert(str(tmp_path / "in"), str(tmp_path / "out"), num_workers=1,
                        verbose=False)
    assert listing(tmp_path) == before
