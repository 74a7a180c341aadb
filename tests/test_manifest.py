"""A shard set is whole or refused: manifest written last, interrupted runs and stale sets."""

import json
import os

import numpy as np
import pytest

from geossl.data import manifest
from geossl.data.parallel_writer import write_shards
from geossl.data.pipeline import train_files


def make_record(i):
    if i == "stop":
        raise KeyboardInterrupt  # the user's Ctrl-C in the middle of a run
    return {"image": np.full((1, 2, 2, 1), i, np.uint16), "bands": ["B1"], "sensor": "s2_l1c",
            "key": f"loc{i}", "labels": np.array([i % 3], np.int64), "label_set": "toy"}


def write(folder, items, num_shards):
    return write_shards(items, make_record, str(folder), "train", num_shards=num_shards,
                        num_workers=1, verbose=False)


def test_manifest_lists_every_shard_and_a_rerun_replaces_the_old_set(tmp_path):
    write(tmp_path, list(range(12)), 4)
    data = json.load(open(tmp_path / "train.manifest.json"))
    assert [s["name"] for s in data["shards"]] == [f"train-0000{k}-of-00004.tfrecord" for k in range(4)]
    assert data["records"] == 12 and [s["records"] for s in data["shards"]] == [3, 3, 3, 3]
    shard0 = tmp_path / "train-00000-of-00004.tfrecord"
    assert data["shards"][0]["bytes"] == shard0.stat().st_size
    assert data["shards"][0]["crc32c"] == manifest.file_crc32c(str(shard0))
    assert not (tmp_path / "train.incomplete").exists()
    assert len(train_files(str(tmp_path / "train-*.tfrecord"))) == 4

    write(tmp_path, list(range(12)), 2)  # another --num_shards: the 4-shard set is gone
    files = train_files(str(tmp_path / "train-*.tfrecord"))
    assert [os.path.basename(f) for f in files] == ["train-00000-of-00002.tfrecord",
                                                    "train-00001-of-00002.tfrecord"]
    assert not list(tmp_path.glob("train-*-of-00004.tfrecord*"))


def test_a_set_whose_name_starts_with_another_sets_is_left_alone(tmp_path):
    """Writing (or checking) set ``train`` neither removes nor counts ``train-2023``'s shards."""
    write_shards(list(range(4)), make_record, str(tmp_path), "train-2023", num_shards=2,
                 num_workers=1, verbose=False)
    other = sorted(p.name for p in tmp_path.glob("train-2023-*"))
    write(tmp_path, list(range(6)), 3)
    write(tmp_path, list(range(6)), 2)   # a rerun replaces train's own 3 shards only
    assert sorted(p.name for p in tmp_path.glob("train-2023-*")) == other and len(other) == 4
    assert [os.path.basename(p) for p in manifest.shards_on_disk(str(tmp_path), "train")] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    manifest.check_shard_set(train_files(str(tmp_path / "train-0*.tfrecord")))
    manifest.check_shard_set(train_files(str(tmp_path / "train-2023-*.tfrecord")))


def test_train_files_refuses_a_pattern_that_matches_nothing(tmp_path):
    write(tmp_path, list(range(4)), 2)
    good = str(tmp_path / "train-*.tfrecord")
    assert len(train_files([good])) == 2
    with pytest.raises(FileNotFoundError, match=r"no training shards match '.*/typo-\*.tfrecord' "
                                                r"\(of the patterns .*; the others match 2 files\)"):
        train_files([good, str(tmp_path / "typo-*.tfrecord")])
    with pytest.raises(FileNotFoundError, match="no training shards match"):
        train_files(str(tmp_path / "none-*.tfrecord"))


def listing(folder):
    """Path, size and mtime of everything under ``folder``."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_interrupted_run_leaves_the_older_set_and_a_fresh_folder_as_they_were(tmp_path):
    write(tmp_path / "set", list(range(12)), 4)
    before = listing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "set", list(range(8)) + ["stop"] + list(range(8, 12)), 4)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "new" / "deeper", ["stop"], 1)
    assert listing(tmp_path) == before
    assert len(train_files(str(tmp_path / "set" / "train-*.tfrecord"))) == 4


def test_a_stop_while_the_set_is_replaced_leaves_it_refused_until_rerun(tmp_path, monkeypatch):
    write(tmp_path, list(range(12)), 4)
    real_replace = os.replace

    def stop_after_first(source, target):
        real_replace(source, target)
        if target.endswith("00000-of-00004.tfrecord"):
            raise KeyboardInterrupt

    monkeypatch.setattr(manifest.os, "replace", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, list(range(12, 24)), 4)
    monkeypatch.undo()
    with pytest.raises(manifest.IncompleteDatasetError, match=r"'train' shards are incomplete .*train.incomplete"):
        train_files(str(tmp_path / "train-*.tfrecord"))
    assert not list(tmp_path.glob(".*"))
    write(tmp_path, list(range(12)), 4)
    assert len(train_files(str(tmp_path / "train-*.tfrecord"))) == 4


def test_missing_resized_or_extra_shard_is_named(tmp_path):
    write(tmp_path, list(range(12)), 4)
    pattern = str(tmp_path / "train-*.tfrecord")
    os.rename(tmp_path / "train-00001-of-00004.tfrecord", tmp_path / "moved.bin")
    with pytest.raises(manifest.IncompleteDatasetError, match=r"missing train-00001-of-00004.tfrecord \(listed with 3 records\)"):
        train_files(pattern)
    os.rename(tmp_path / "moved.bin", tmp_path / "train-00001-of-00004.tfrecord")
    with open(tmp_path / "train-00002-of-00004.tfrecord", "ab") as f:
        f.write(b"\0")
    with pytest.raises(manifest.IncompleteDatasetError, match=r"train-00002-of-00004.tfrecord: \d+ bytes, the manifest says \d+"):
        train_files(pattern)
    write(tmp_path, list(range(12)), 4)
    (tmp_path / "train-00007-of-00008.tfrecord").write_bytes(b"")
    with pytest.raises(manifest.IncompleteDatasetError, match=r"extra train-00007-of-00008.tfrecord"):
        train_files(pattern)


def test_fewer_items_than_shards_makes_no_empty_shards_and_foreign_sets_pass(tmp_path):
    summary = write(tmp_path / "few", list(range(6)), 16)
    assert summary["records"] == 6 and len(summary["shards"]) == 6
    assert all(json.load(open(tmp_path / "few" / "train.manifest.json"))["shards"][k]["records"] == 1
               for k in range(6))
    foreign = tmp_path / "foreign"  # shards another tool wrote: no manifest, no marker
    write(foreign, list(range(4)), 2)
    os.remove(foreign / "train.manifest.json")
    assert len(train_files(str(foreign / "train-*.tfrecord"))) == 2
