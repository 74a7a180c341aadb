"""TFRecord shards: codec, framing, CRC, offset index, gzip, errors, source, atomic writer, TF."""

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib

import crc32c
import numpy as np
import pytest

from geossl.data import (CorruptRecordError, ExampleDecodeError, ShardSource, ShardWriter,
                         decode_example, encode_example, read_records, shard_name)
from geossl.data import codec, framing, offset_index
from geossl.data.example_proto import Example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(i, dtype="uint16", shape=(2, 4, 5, 3)):
    rng = np.random.default_rng(i)
    image = (rng.standard_normal(shape) * 1000).astype(dtype)
    return {"image": image, "bands": ["B2", "B3", "B4"][:shape[-1]], "sensor": "s2_l1c",
            "key": f"loc-{i}", "labels": np.array([i % 9, 8]), "label_set": "dynamic_world_9"}


def _masked(data):
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_encode_decode_round_trip(dtype):
    record = _record(3, dtype)
    record.update(note="hello", raw=b"\x00\xff", names=["a", "b"], count=7, scale=0.5,
                  acq_labels=np.array([0, 1, 1, 0]), weights=np.array([0.25, 2.0]),
                  land_cover=np.arange(40, dtype=np.uint8).reshape(2, 4, 5))
    out = decode_example(encode_example(record))
    np.testing.assert_array_equal(out["image"], record["image"])
    assert out["image"].dtype == np.dtype(dtype) and out["image"].flags.writeable
    assert out["labels"].dtype == np.int64 and out["labels"].tolist() == [3, 8]
    assert (out["key"], out["sensor"], out["label_set"]) == ("loc-3", "s2_l1c", "dynamic_world_9")
    assert out["bands"] == ["B2", "B3", "B4"]
    assert out["note"] == b"hello" and out["raw"] == b"\x00\xff" and out["names"] == [b"a", b"b"]
    assert out["count"].tolist() == [7] and out["count"].dtype == np.int64
    assert out["scale"].dtype == np.float32 and out["scale"].tolist() == [0.5]
    assert out["acq_labels"].tolist() == [0, 1, 1, 0]
    np.testing.assert_array_equal(out["land_cover"], record["land_cover"])
    assert "shape" not in out and "land_cover_shape" not in out


def test_image_bytes_are_little_endian_c_order():
    record = _record(1)
    record["image"] = record["image"].astype(">u2")  # big-endian input is converted
    example = Example.FromString(encode_example(record))
    feature = example.features.feature
    assert feature["image"].bytes_list.value[0] == record["image"].astype("<u2").tobytes()
    assert list(feature["shape"].int64_list.value) == [2, 4, 5, 3]
    assert feature["dtype"].bytes_list.value[0] == b"uint16"


def test_encode_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'loc-1'.*missing required field.*'sensor'"):
        encode_example({k: v for k, v in _record(1).items() if k != "sensor"})
    with pytest.raises(ValueError, match=r"\(T, H, W, C\), found shape \(4, 5, 3\)"):
        encode_example(dict(_record(1), image=np.zeros((4, 5, 3), np.uint16)))
    with pytest.raises(ValueError, match="found int32"):
        encode_example(dict(_record(1), image=np.zeros((1, 2, 2, 3), np.int32)))
    with pytest.raises(ValueError, match="2 band names"):
        encode_example(dict(_record(1), bands=["B1", "B2"]))
    # an array feature's companions are its own, in whichever order the record lists them
    mask = np.zeros((2, 2), np.uint8)
    for extra in ({"mask": mask, "mask_shape": [5]}, {"mask_shape": [5], "mask": mask},
                  {"mask": mask, "mask_dtype": "uint8"}):
        companion = next(k for k in extra if k != "mask")
        with pytest.raises(ValueError, match=f"record 'loc-1': feature '{companion}' collides "
                                             "with the array feature 'mask'"):
            encode_example(dict(_record(1), **extra))


def test_decode_errors_name_the_feature():
    example = Example.FromString(encode_example(_record(2)))
    example.features.feature["image"].bytes_list.value[0] = b"\x00" * 10
    with pytest.raises(ExampleDecodeError, match=r"expected 240 bytes .* found 10"):
        decode_example(example.SerializeToString())
    del example.features.feature["image"]
    with pytest.raises(ExampleDecodeError, match="missing feature 'image'"):
        decode_example(example.SerializeToString())
    with pytest.raises(ExampleDecodeError, match="not a tf.train.Example"):
        decode_example(b"\xff\xff\xff")
    # text that is not UTF-8 names its feature; a shape whose product overflows int64 is refused
    for name in ("key", "bands"):
        bad = Example.FromString(encode_example(_record(2)))
        bad.features.feature[name].bytes_list.value[0] = b"\xffk"
        with pytest.raises(ExampleDecodeError, match=f"feature '{name}': expected UTF-8 text, "
                                                     r"found b'\\xffk' \(invalid start byte"):
            decode_example(bad.SerializeToString())
    huge = Example.FromString(encode_example(_record(2)))
    del huge.features.feature["shape"].int64_list.value[:]
    huge.features.feature["shape"].int64_list.value.extend([2**32, 2**32, 1, 1])
    with pytest.raises(ExampleDecodeError, match="expected 36893488147419103232 bytes"):
        decode_example(huge.SerializeToString())


def test_framing_and_crc():
    assert crc32c.crc32c(b"123456789") == 0xE3069283  # Castagnoli, not zlib's CRC-32
    framed = framing.frame(b"abc")
    assert len(framed) == 8 + 4 + 3 + 4
    (length,) = struct.unpack("<Q", framed[:8])
    assert length == 3
    assert struct.unpack("<I", framed[8:12])[0] == _masked(framed[:8])
    assert framed[12:15] == b"abc"
    assert struct.unpack("<I", framed[15:])[0] == _masked(b"abc")


def _write(path, records, **kw):
    with ShardWriter(path, **kw) as writer:
        for r in records:
            writer.write(r)
    return path


def test_shard_source_across_shards_and_index_format(tmp_path):
    counts = [3, 0, 5]
    records = [_record(i) for i in range(sum(counts))]
    start = 0
    for k, n in enumerate(counts):
        _write(tmp_path / shard_name("train", k, 3), records[start:start + n])
        start += n
    assert sorted(os.listdir(tmp_path))[:2] == ["train-00000-of-00003.tfrecord",
                                                "train-00000-of-00003.tfrecord.index"]
    src = ShardSource(str(tmp_path / "train-*"))
    assert len(src) == 8 and len(src.paths) == 3
    assert [src[i]["key"] for i in range(8)] == [f"loc-{i}" for i in range(8)]
    np.testing.assert_array_equal(src[6]["image"], records[6]["image"])
    assert src[-1]["key"] == "loc-7"
    with pytest.raises(IndexError, match="out of range for 8 records in 3 shard"):
        src[8]
    assert len(ShardSource(tmp_path)) == 8  # a folder means all shards in it

    # Index layout: magic, flags, size, mtime_ns, n, then n + 1 offsets.
    shard = str(tmp_path / "train-00002-of-00003.tfrecord")
    blob = open(shard + ".index", "rb").read()
    magic, flags, size, mtime_ns, n = struct.unpack_from("<8sQQqQ", blob)
    assert (magic, flags, size, n) == (b"GSSLIDX1", 0, os.path.getsize(shard), 5)
    assert mtime_ns == os.stat(shard).st_mtime_ns
    offsets = np.frombuffer(blob, "<u8", offset=40)
    lengths = [len(encode_example(r)) + 16 for r in records[3:]]
    assert offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()


def test_index_rebuilt_when_missing_or_stale(tmp_path):
    path = str(_write(tmp_path / "a.tfrecord", [_record(i) for i in range(3)]))
    os.remove(path + ".index")
    assert len(ShardSource(path)) == 3
    assert os.path.isfile(path + ".index")  # rewritten
    with open(path + ".index", "r+b") as f:
        f.write(b"garbage!")
    assert len(ShardSource(path)) == 3
    with open(path, "ab") as f:  # the shard grows behind the index's back: stale
        f.write(framing.frame(encode_example(_record(9))))
    src = ShardSource(path)
    assert len(src) == 4 and src[3]["key"] == "loc-9"
    assert offset_index._read_index(path)[0].size == 5
    # damaged offsets under an intact header (size and mtime still the shard's) are not trusted
    head = offset_index._INDEX_HEAD.size
    for where, flip in ((head + 8 * 2 + 7, 0x80), (head, 0x01),
                        (head + 8 * 4, 0x02)):
        blob = bytearray(open(path + ".index", "rb").read())
        blob[where] ^= flip
        with open(path + ".index", "r+b") as f:
            f.write(bytes(blob))
        assert offset_index._read_index(path) is None, (where, flip)
        assert [r["key"] for r in ShardSource(path)] == ["loc-0", "loc-1", "loc-2", "loc-9"]


def test_gzip_and_zlib_shards(tmp_path):
    records = [_record(i) for i in range(4)]
    gz = str(_write(tmp_path / "g-00000-of-00001.tfrecord.gz", records))
    assert open(gz, "rb").read(2) == b"\x1f\x8b"
    src = ShardSource(gz)
    assert len(src) == 4 and src[2]["key"] == "loc-2"
    assert [r["key"] for r in read_records(gz, decode=True)] == [f"loc-{i}" for i in range(4)]
    # Detected by content, whatever the name; zlib streams too.
    plain = b"".join(framing.frame(encode_example(r)) for r in records)
    (tmp_path / "hidden_gzip.tfrecord").write_bytes(gzip.compress(plain))
    (tmp_path / "z.tfrecord").write_bytes(zlib.compress(plain))
    for name in ("hidden_gzip.tfrecord", "z.tfrecord"):
        src = ShardSource(str(tmp_path / name))
        assert len(src) == 4 and src[3]["key"] == "loc-3"
        assert len(list(read_records(tmp_path / name))) == 4


def _three_record_shard(tmp_path):
    path = str(_write(tmp_path / "c.tfrecord", [_record(i) for i in range(3)]))
    offsets = offset_index._read_index(path)[0].tolist()
    return path, offsets


def test_flipped_data_byte_names_file_and_offset(tmp_path):
    path, offsets = _three_record_shard(tmp_path)
    blob = bytearray(open(path, "rb").read())
    blob[offsets[1] + 40] ^= 0x01
    with open(path, "r+b") as f:
        f.write(blob)
    offset_index.write_index(path, np.array(offsets, np.uint64), "")  # same offsets, fresh mtime
    src = ShardSource(path)
    assert src[0]["key"] == "loc-0" and src[2]["key"] == "loc-2"
    message = rf"{path}: record 1 at byte offset {offsets[1]}: data CRC mismatch"
    with pytest.raises(CorruptRecordError, match=message):
        src[1]
    with pytest.raises(CorruptRecordError, match=message):
        list(read_records(path))


def test_corrupt_length_and_truncation_name_file_and_offset(tmp_path):
    path, offsets = _three_record_shard(tmp_path)
    blob = open(path, "rb").read()
    broken = bytearray(blob)
    broken[offsets[2] + 1] ^= 0x40  # inside record 2's length field
    (tmp_path / "len.tfrecord").write_bytes(bytes(broken))
    bad = str(tmp_path / "len.tfrecord")
    with pytest.raises(CorruptRecordError,
                       match=rf"{bad}: record 2 at byte offset {offsets[2]}: corrupt length field"):
        ShardSource(bad)
    (tmp_path / "cut.tfrecord").write_bytes(blob[:-5])
    cut = str(tmp_path / "cut.tfrecord")
    with pytest.raises(CorruptRecordError,
                       match=rf"{cut}: record 2 at byte offset {offsets[2]}: truncated"):
        ShardSource(cut)
    with pytest.raises(CorruptRecordError, match=rf"record 2 at byte offset {offsets[2]}"):
        list(read_records(cut))
    gz = tmp_path / "cut.tfrecord.gz"
    gz.write_bytes(gzip.compress(blob)[:-30])
    with pytest.raises(CorruptRecordError, match=rf"{gz}: corrupt or truncated gzip stream"):
        ShardSource(str(gz))


def test_pickle_and_read_in_worker_process(tmp_path):
    path = str(_write(tmp_path / "p.tfrecord", [_record(i) for i in range(3)]))
    src = ShardSource(path)
    src[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(src))
    assert clone[2]["key"] == "loc-2"
    assert clone._shards[0]._file is not None
    assert "_file" not in clone._shards[0].__getstate__()
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_key_of, [(src, 1), (src, 2)]) == ["loc-1", "loc-2"]


def _key_of(args):
    src, i = args
    return src[i]["key"]


def test_grain_map_dataset_reads_source(tmp_path):
    grain = pytest.importorskip("grain")
    path = str(_write(tmp_path / "g.tfrecord", [_record(i) for i in range(5)]))
    dataset = grain.MapDataset.source(ShardSource(path)).shuffle(seed=0)
    assert sorted(dataset[i]["key"] for i in range(5)) == [f"loc-{i}" for i in range(5)]


def test_atomic_writer_never_leaves_a_partial_shard(tmp_path):
    path = tmp_path / "w-00000-of-00001.tfrecord"
    with pytest.raises(RuntimeError):
        with ShardWriter(path) as writer:
            writer.write(_record(0))
            raise RuntimeError("converter failed")
    assert os.listdir(tmp_path) == []

    _write(path, [_record(i) for i in range(2)])
    finished = path.read_bytes()
    with pytest.raises(ValueError, match="missing required field"):
        with ShardWriter(path) as writer:
            writer.write(_record(5))
            writer.write({"key": "broken"})
    assert path.read_bytes() == finished and len(ShardSource(str(path))) == 2

    # A hard crash (no cleanup at all) mid-write: the finished shard is untouched and the
    # leftover is a hidden temporary file that no shard pattern or folder listing picks up.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        import numpy as np
        from geossl.data import ShardWriter
        w = ShardWriter({str(path)!r})
        for i in range(3):
            w.write({{"image": np.zeros((1, 2, 2, 1), np.uint8), "bands": ["B1"],
                     "sensor": "s", "key": str(i)}})
        w._raw.flush()
        os._exit(1)
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 1
    assert path.read_bytes() == finished
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]
    assert ShardSource(str(tmp_path)).paths == [str(path)]
    assert ShardSource(str(tmp_path / "w-*")).paths == [str(path)]


# ---------------------------------------------------------------------------------------------
# TensorFlow interoperability, in another interpreter (GEOSSL_TF_PYTHON, e.g. .venv-tf/bin/python)

_TF_SCRIPT = """
import hashlib, json, sys
import numpy as np
import tensorflow as tf

job = json.load(open(sys.argv[1]))
spec = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "shape": tf.io.VarLenFeature(tf.int64),
    "dtype": tf.io.FixedLenFeature([], tf.string),
    "bands": tf.io.VarLenFeature(tf.string),
    "sensor": tf.io.FixedLenFeature([], tf.string),
    "key": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.VarLenFeature(tf.int64),
    "label_set": tf.io.FixedLenFeature([], tf.string),
}
read = {}
for path in job["ours"]:
    compression = "GZIP" if path.endswith(".gz") else ""
    rows = []
    for raw in tf.data.TFRecordDataset(path, compression_type=compression):
        ex = tf.io.parse_single_example(raw, spec)
        rows.append({"key": ex["key"].numpy().decode(),
                     "sha": hashlib.sha256(ex["image"].numpy()).hexdigest(),
                     "shape": tf.sparse.to_dense(ex["shape"]).numpy().tolist(),
                     "dtype": ex["dtype"].numpy().decode(),
                     "bands": [b.decode() for b in tf.sparse.to_dense(ex["bands"]).numpy()],
                     "labels": tf.sparse.to_dense(ex["labels"]).numpy().tolist()})
    read[path] = rows

def feature(value):
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
    if isinstance(value, list) and value and isinstance(value[0], float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=value))

for path, compression in job["theirs"]:
    options = tf.io.TFRecordOptions(compression_type=compression)
    with tf.io.TFRecordWriter(path, options) as writer:
        for i in range(3):
            image = (np.arange(2 * 3 * 4 * 2, dtype="<u2") * (i + 1)).reshape(2, 3, 4, 2)
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image": feature([image.tobytes()]), "shape": feature([2, 3, 4, 2]),
                "dtype": feature([b"uint16"]), "bands": feature([b"VV", b"VH"]),
                "sensor": feature([b"s1_grd"]), "key": feature([f"tf-{i}".encode()]),
                "labels": feature([i, 5]), "label_set": feature([b"bigearthnet_19"]),
                "weights": feature([0.5, 1.5])}))
            writer.write(ex.SerializeToString())
for path in job.get("prep", []):
    rows = []
    for raw in tf.data.TFRecordDataset(path):
        ex = tf.io.parse_single_example(raw, spec)
        names = sorted(tf.train.Example.FromString(raw.numpy()).features.feature)
        rows.append({"key": ex["key"].numpy().decode(), "names": names,
                     "sha": hashlib.sha256(ex["image"].numpy()).hexdigest(),
                     "shape": tf.sparse.to_dense(ex["shape"]).numpy().tolist(),
                     "labels": tf.sparse.to_dense(ex["labels"]).numpy().tolist()})
    read[path] = rows
for path in job.get("events", []):   # TensorBoard event files (geossl.train.events)
    read[path] = [{"step": e.step, "wall_time": e.wall_time, "what": e.WhichOneof("what"),
                   "file_version": e.file_version, "session": e.session_log.status,
                   "values": [[v.tag, v.simple_value] for v in e.summary.value]}
                  for e in tf.compat.v1.train.summary_iterator(path)]
json.dump(read, open(sys.argv[2], "w"))
"""


def test_tensorflow_reads_our_shards_and_we_read_theirs(tmp_path, tf_python):
    python = tf_python
    ours = []
    for k, suffix in enumerate([".tfrecord", ".tfrecord.gz"]):
        records = [_record(10 * k + i, dtype) for i, dtype in
                   enumerate(["uint16", "float32", "int16", "uint8"])]
        records[3]["labels"] = np.zeros((0,), np.int64)  # unlabelled
        ours.append((str(_write(tmp_path / f"ours-{k}{suffix}", records)), records))
    theirs = [(str(tmp_path / "tf.tfrecord"), ""), (str(tmp_path / "tf.tfrecord.gz"), "GZIP")]
    from geossl.train import events
    board = events.EventWriter(str(tmp_path / "tb"), start_step=5)
    board.scalars(5, {"loss": 0.75, "lr": 0.5})
    board.scalars(6, {"loss": -1.5})
    board.close()
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"ours": [p for p, _ in ours], "theirs": theirs,
                               "events": [board.path]}))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    (tmp_path / "tf_job.py").write_text(_TF_SCRIPT)
    done = subprocess.run([python, str(tmp_path / "tf_job.py"), str(job), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads((tmp_path / "out").read_text())

    import hashlib
    for path, records in ours:
        rows = read[path]
        assert len(rows) == len(records)
        for row, record in zip(rows, records):
            image = record["image"]
            assert row["sha"] == hashlib.sha256(image.astype(image.dtype.newbyteorder("<"))
                                                .tobytes()).hexdigest()
            assert (row["key"], row["shape"], row["dtype"]) == (
                record["key"], list(image.shape), image.dtype.name)
            assert row["bands"] == record["bands"] and row["labels"] == record["labels"].tolist()

    for path, _ in theirs:
        src = ShardSource(path)
        assert len(src) == 3 and os.path.isfile(path + ".index")
        for i in range(3):
            r = src[i]
            expected = (np.arange(48, dtype=np.uint16) * (i + 1)).reshape(2, 3, 4, 2)
            np.testing.assert_array_equal(r["image"], expected)
            assert (r["key"], r["sensor"], r["bands"]) == (f"tf-{i}", "s1_grd", ["VV", "VH"])
            assert r["labels"].tolist() == [i, 5] and r["weights"].tolist() == [0.5, 1.5]
        assert [d["key"] for d in read_records(path, decode=True)] == ["tf-0", "tf-1", "tf-2"]

    board_events = read[board.path]   # TensorFlow's summary_iterator: its framing and protobufs
    assert [(e["step"], e["what"]) for e in board_events] == [
        (5, "file_version"), (5, "session_log"), (5, "summary"), (6, "summary")]
    assert board_events[0]["file_version"] == "brain.Event:2" and board_events[1]["session"] == 1
    assert [e["values"] for e in board_events[2:]] == [[["loss", 0.75], ["lr", 0.5]],
                                                      [["loss", -1.5]]]
    assert all(abs(e["wall_time"] - board_events[0]["wall_time"]) < 60 for e in board_events)


def _slow_values(data):
    example = Example.FromString(bytes(data))
    return {n: codec._feature_values(f) for n, f in example.features.feature.items()}


def _same_values(fast, slow):
    assert sorted(fast) == sorted(slow)
    for name in slow:
        a, b = fast[name], slow[name]
        if isinstance(b, list):
            assert [bytes(v) for v in a] == b, name
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_zero_copy_walk_equals_protobuf_parse():
    """The in-place walk gives the protobuf runtime's values, views for large bytes features,
    and falls back to the full parse for what it does not handle."""
    big = _record(2, shape=(2, 40, 40, 3))
    big.update(long_ints=np.arange(3000), many=[b"x" * 3000, b"y" * 3000], note="n")
    data = bytearray(encode_example(big))
    fast = codec._feature_dict(data)
    _same_values(fast, _slow_values(data))
    assert isinstance(fast["image"][0], memoryview) and fast["image"][0].obj is data
    out = decode_example(data)
    assert np.shares_memory(out["image"], np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(out["image"], big["image"])
    assert out["long_ints"].tolist() == list(range(3000)) and out["many"][1] == b"y" * 3000

    # a repeated map key (last wins), an unknown top-level field: same answer as protobuf
    ex = Example.FromString(encode_example(_record(4)))
    dup = Example()
    dup.features.feature["key"].bytes_list.value.append(b"first")
    twice = dup.SerializeToString() + bytes(ex.SerializeToString())
    _same_values(codec._feature_dict(twice), _slow_values(twice))
    assert decode_example(twice)["key"] == "loc-4"
    unknown = bytes(encode_example(_record(5))) + b"\x10\x05"   # field 2, varint 5
    _same_values(codec._feature_dict(unknown), _slow_values(unknown))
    assert decode_example(unknown)["key"] == "loc-5"
    with pytest.raises(ExampleDecodeError, match="not a tf.train.Example"):
        decode_example(bytearray(b"\x0a\xff\xff\xff\xff\x0f"))


def test_source_image_is_a_writable_view(tmp_path):
    path = str(tmp_path / "v-00000-of-00001.tfrecord")
    records = [_record(i, shape=(2, 30, 30, 3)) for i in range(3)]
    with ShardWriter(path) as w:
        for r in records:
            w.write(r)
    src = ShardSource(path)
    image = src[1]["image"]
    assert image.flags.writeable and not image.flags.owndata
    np.testing.assert_array_equal(image, records[1]["image"])
    image[...] = 0                                   # the next read is not affected
    np.testing.assert_array_equal(src[1]["image"], records[1]["image"])


def test_tensorflow_reads_the_shards_data_prep_writes(tmp_path, tf_python):
    """Synthetic (with array extras) and BigEarthNet S2 / S1 shards, parsed by
    tf.io.parse_single_example: the same keys, image bytes, shapes, labels and feature names
    as geossl reads."""
    import hashlib
    import importlib.resources
    import tarfile
    from data_prep import bigearthnet, synthetic
    synthetic.generate(str(tmp_path / "syn"), num_locations=6, heldout=2, size=8, seasons=2,
                       num_shards=1, num_workers=1, verbose=False)
    paths = sorted(str(p) for p in (tmp_path / "syn").glob("*.tfrecord"))
    expected = 2
    try:
        package = importlib.resources.files("bigearthnet_common")
        for name in ("BigEarthNet-S2-Example.tar.bz2", "BigEarthNet-S1-Example.tar.bz2"):
            with importlib.resources.as_file(package / name) as path, tarfile.open(path) as tar:
                tar.extractall(tmp_path / "ben", filter="data")
        for modality in ("S2", "S1"):
            out = tmp_path / f"ben-{modality}"
            bigearthnet.convert(str(tmp_path / "ben" / f"BigEarthNet-{modality}-Example"),
                                str(out), num_shards=1, num_workers=1, verbose=False)
            paths += sorted(str(p) for p in out.glob("*.tfrecord"))
        expected = 4
    except ModuleNotFoundError:
        pass   # bigearthnet-common is a test extra; the synthetic shards still run
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"ours": [], "theirs": [], "prep": paths}))
    (tmp_path / "tf_job.py").write_text(_TF_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([tf_python, str(tmp_path / "tf_job.py"), str(job), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads((tmp_path / "out").read_text())
    assert len(read) == len(paths) == expected
    for path in paths:
        ours = [(r, Example.FromString(raw)) for r, raw in
                zip(read_records(path, decode=True), read_records(path))]
        assert len(read[path]) == len(ours) > 0, path
        for row, (record, example) in zip(read[path], ours):
            image = record["image"]
            assert row["key"] == record["key"] and row["shape"] == list(image.shape)
            assert row["sha"] == hashlib.sha256(image.astype(image.dtype.newbyteorder("<"))
                                                .tobytes()).hexdigest()
            assert row["labels"] == record["labels"].tolist()
            assert row["names"] == sorted(example.features.feature)


def test_an_absurd_length_with_a_valid_crc_is_a_truncation(tmp_path):
    """Both readers: the length field (its CRC intact) asks for exabytes; the file has 4 bytes."""
    for n in (2**62, 2**64 - 1):
        length = struct.pack("<Q", n)
        path = str(tmp_path / f"absurd-{n}.tfrecord")
        with open(path, "wb") as f:
            f.write(framing.frame(encode_example(_record(0))) + length
                    + struct.pack("<I", framing.masked_crc32c(length)) + b"rest")
        for read in (lambda: ShardSource(path), lambda: list(read_records(path))):
            with pytest.raises(CorruptRecordError, match=rf"{path}: record 1 at byte offset \d+: "
                                                         rf"truncated \(length field says {n} data"):
                read()


def test_a_plain_shard_that_begins_like_zlib_reports_its_length_crc(tmp_path):
    """A first record of 376 bytes has a length field beginning 78 01 (a zlib header): with its
    length CRC damaged, the shard is still plain, and the error is the length field's."""
    blob = bytearray(framing.frame(b"\x0a\xfa\x01" + b"x" * 373) * 2)
    assert bytes(blob[:2]) == b"\x78\x01"
    blob[8] ^= 1
    path = tmp_path / "z-like.tfrecord"
    path.write_bytes(bytes(blob))
    for read in (lambda: ShardSource(str(path)), lambda: list(read_records(path))):
        with pytest.raises(CorruptRecordError, match="record 0 at byte offset 0: corrupt length "
                                                     "field"):
            read()


def test_a_map_entry_holding_its_feature_twice_is_read_as_protobuf_reads_it():
    """protobuf merges the two Features (two image values): the fast walk does not pick one."""
    def field(number, payload):
        size, out = len(payload), b""
        while size > 0x7F:
            out, size = out + bytes([size & 0x7F | 0x80]), size >> 7
        return bytes([number << 3 | 2]) + out + bytes([size]) + payload
    example = Example.FromString(encode_example(_record(0)))
    image = example.features.feature["image"].SerializeToString()
    del example.features.feature["image"]
    data = field(1, field(1, field(1, b"image") + field(2, image) + field(2, image)))
    data += example.SerializeToString()
    assert len(Example.FromString(data).features.feature["image"].bytes_list.value) == 2
    with pytest.raises(ExampleDecodeError, match="feature 'image' must be a bytes list with one"):
        decode_example(data)
