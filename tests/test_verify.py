"""python -m data_prep.verify: every shard's CRC32C against its manifest, each bad shard named."""

import os
import shutil

import crc32c
import pytest

from data_prep import synthetic, verify
from geossl.data import manifest


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    synthetic.generate(out, num_locations=12, heldout=4, size=8, seasons=1, num_shards=3,
                       num_workers=1, verbose=False)
    return out


def test_intact_sets_pass(shard_dir, capsys):
    assert verify.main([shard_dir, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 shards of 2 sets" in out and "all intact" in out


def test_a_flipped_byte_is_named_with_both_crcs(shard_dir, tmp_path, capsys):
    folder = str(tmp_path / "copy")
    shutil.copytree(shard_dir, folder)
    bad = os.path.join(folder, "train-00001-of-00003.tfrecord")
    with open(bad, "rb") as f:
        data = bytearray(f.read())
    listed = {s["name"]: s for s in manifest.read_manifest(
        manifest.manifest_path(folder, "train"))["shards"]}
    assert listed[os.path.basename(bad)]["crc32c"] == crc32c.crc32c(bytes(data))
    data[len(data) // 2] ^= 0x10
    with open(bad, "wb") as f:
        f.write(data)
    manifest.check_shard_set([bad])  # training's size check cannot see it (same size)

    assert verify.main([os.path.join(folder, "train-*.tfrecord")]) == 1
    out = capsys.readouterr().out.splitlines()
    expected = (f"BAD {bad}: CRC32C {crc32c.crc32c(bytes(data)):#010x}, the manifest says "
                f"{listed[os.path.basename(bad)]['crc32c']:#010x}")
    assert expected in out and sum(l.startswith("BAD ") for l in out) == 1, out
    assert out[-1].startswith("3 shards of 1 sets") and out[-1].endswith(": 1 bad")


def test_missing_unlisted_and_interrupted_sets_are_named(shard_dir, tmp_path):
    folder = str(tmp_path / "copy")
    shutil.copytree(shard_dir, folder)
    os.remove(os.path.join(folder, "train-00002-of-00003.tfrecord"))
    shutil.copy(os.path.join(folder, "train-00000-of-00003.tfrecord"),
                os.path.join(folder, "train-00000-of-00001.tfrecord"))
    open(manifest.marker_path(folder, "heldout"), "w").close()
    result = verify.verify([os.path.join(folder, "train"), folder], workers=2, verbose=False)
    assert result["sets"] == 2 and result["shards"] == 4
    assert sorted(result["bad"]) == sorted([
        (os.path.join(folder, "heldout.incomplete"),
         "a data_prep run writing this set stopped: run it again"),
        (os.path.join(folder, "train-00000-of-00001.tfrecord"), "not in the manifest"),
        (os.path.join(folder, "train-00002-of-00003.tfrecord"), "missing (listed with 4 records)"),
    ])


def test_a_target_without_manifest_is_exit_2(tmp_path, capsys):
    assert verify.main([str(tmp_path)]) == 2
    assert "no shard manifest for" in capsys.readouterr().err
