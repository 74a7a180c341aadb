"""TFRecord shards of tf.train.Example: record codec, framing, offset index, reader, writer.

Framing of one record (TensorFlow's, little-endian):
    uint64 length | uint32 masked_crc32c(the 8 length bytes) | data | uint32 masked_crc32c(data)
    masked_crc32c(x) = ((c >> 15 | c << 17) + 0xA282EAD8) mod 2**32 with c = crc32c(x).
Both CRCs are checked on every read. Shards may be GZIP- or ZLIB-compressed as whole streams
(TFRecordWriter with compression); detected by content, not by name. For random access a
compressed shard is decompressed once per process into memory.

Offset index, written beside each shard as ``<shard file name>.index`` (all little-endian):
    8 bytes magic b"GSSLIDX1" | uint64 flags | uint64 shard size | int64 shard mtime_ns | uint64 n
    | (n + 1) x uint64 offsets
offsets[i] is where record i's length field starts and offsets[n] the end of the record stream,
counted in the decompressed stream for compressed shards (flags: 1 = gzip, 2 = zlib, 0 = none).
An index whose size or mtime differs from the shard's is stale: it is rebuilt by one scan of the
length fields and rewritten (atomically) where the folder is writable.

Record dict <-> tf.train.Example (see docs/DESIGN.md "Data records"):
    image (T,H,W,C) ndarray  -> "image" raw little-endian C-order bytes, "shape" int64 [T,H,W,C],
                                "dtype" bytes (uint8, uint16, int16 or float32)
    bands list[str], sensor/key/label_set str, labels int (k,)  -> bytes list / bytes / int64 list
    extra features: str/bytes (or lists of them) -> bytes list; ints -> int64 list; floats ->
    float list; arrays with ndim >= 2 -> raw bytes plus "<name>_shape" and "<name>_dtype", decoded
    back to arrays. Decoding gives int64 arrays, float32 arrays, bytes (a 1-value bytes list) or
    list[bytes].
"""

from __future__ import annotations

import glob
import gzip
import io
import operator
import os
import struct
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence

import crc32c
import numpy as np
from google.protobuf import message as _pb_message

from geossl.data import wire
from geossl.data.example_proto import Example, Feature

IMAGE_DTYPES = ("uint8", "uint16", "int16", "float32")
REQUIRED = ("image", "bands", "sensor", "key")
_CORE = ("image", "shape", "dtype", "bands", "sensor", "key", "labels", "label_set")

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<QI")
_INDEX_MAGIC = b"GSSLIDX1"
_INDEX_HEAD = struct.Struct("<8sQQqQ")
_FLAGS = {"": 0, "gzip": 1, "zlib": 2}
_KINDS = {v: k for k, v in _FLAGS.items()}


class CorruptRecordError(ValueError):
    """A shard's bytes do not form valid TFRecord framing (bad CRC, bad length, truncation)."""


class ExampleDecodeError(ValueError):
    """A record is not a tf.train.Example in the geossl record layout."""


# ---------------------------------------------------------------------------------------------
# Record codec


def _as_text(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected str or bytes, found {type(value).__name__}")


def _le_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _put_extra(features, name: str, value, where: str) -> None:
    if isinstance(value, (str, bytes)):
        features[name].bytes_list.value.append(_as_text(value))
        return
    if (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, (str, bytes)) for v in value)):
        features[name].bytes_list.value.extend(_as_text(v) for v in value)
        return
    array = np.asarray(value)
    if array.ndim >= 2:
        if array.dtype.name not in IMAGE_DTYPES:
            raise ValueError(f"{where}: array feature {name!r} has dtype {array.dtype.name}, "
                             f"expected one of {IMAGE_DTYPES}")
        for suffix in ("_shape", "_dtype"):
            if name + suffix in features:
                raise ValueError(f"{where}: feature {name + suffix!r} collides with the array "
                                 f"feature {name!r}")
        features[name].bytes_list.value.append(_le_bytes(array))
        features[name + "_shape"].int64_list.value.extend(array.shape)
        features[name + "_dtype"].bytes_list.value.append(array.dtype.name.encode())
    elif array.dtype.kind in "biu" or (array.size == 0 and not isinstance(value, np.ndarray)):
        features[name].int64_list.value.extend(array.astype(np.int64).ravel().tolist())
    elif array.dtype.kind == "f":
        features[name].float_list.value.extend(array.astype(np.float32).ravel().tolist())
    else:
        raise ValueError(f"{where}: feature {name!r} of type {type(value).__name__} "
                         f"(dtype {array.dtype}) has no tf.train.Example encoding")


def encode_example(record: Mapping) -> bytes:
    """Serialises a record dict (see the module docstring) to tf.train.Example bytes."""
    where = f"record {record.get('key')!r}"
    missing = [name for name in REQUIRED if name not in record]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}; found {sorted(record)}")
    image = np.asarray(record["image"])
    if image.ndim != 4:
        raise ValueError(f"{where}: 'image' must be (T, H, W, C), found shape {image.shape}")
    if image.dtype.name not in IMAGE_DTYPES:
        raise ValueError(f"{where}: 'image' dtype must be one of {IMAGE_DTYPES}, "
                         f"found {image.dtype.name}")
    bands = [str(b) for b in record["bands"]]
    if len(bands) != image.shape[-1]:
        raise ValueError(f"{where}: {len(bands)} band names {bands} for an image with "
                         f"{image.shape[-1]} channels")
    for name in ("shape", "dtype"):
        if name in record:
            raise ValueError(f"{where}: {name!r} is derived from 'image'; do not pass it")
    labels = np.asarray(record.get("labels", ()))
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: 'labels' must be integer class indices, found {labels.dtype}")

    example = Example()
    features = example.features.feature
    features["image"].bytes_list.value.append(_le_bytes(image))
    features["shape"].int64_list.value.extend(image.shape)
    features["dtype"].bytes_list.value.append(image.dtype.name.encode())
    features["bands"].bytes_list.value.extend(b.encode() for b in bands)
    features["sensor"].bytes_list.value.append(_as_text(record["sensor"]))
    features["key"].bytes_list.value.append(_as_text(record["key"]))
    features["labels"].int64_list.value.extend(labels.astype(np.int64).ravel().tolist())
    features["label_set"].bytes_list.value.append(_as_text(record.get("label_set", "none")))
    for name, value in record.items():
        if name not in _CORE:
            _put_extra(features, name, value, where)
    return example.SerializeToString(deterministic=True)


def _feature_values(feature):
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return list(feature.bytes_list.value)
    if kind == "int64_list":
        return np.asarray(feature.int64_list.value, dtype=np.int64)
    if kind == "float_list":
        return np.asarray(feature.float_list.value, dtype=np.float32)
    return None


def _decode_array(values: dict, name: str) -> np.ndarray:
    shape_name, dtype_name = name + "_shape", name + "_dtype"
    if name == "image":
        shape_name, dtype_name = "shape", "dtype"
    for needed in (name, shape_name, dtype_name):
        if needed not in values:
            raise ExampleDecodeError(f"missing feature {needed!r}; found {sorted(values)}")
    buf, shape, dtype = values[name], values[shape_name], values[dtype_name]
    if not (isinstance(buf, list) and len(buf) == 1):
        raise ExampleDecodeError(f"feature {name!r} must be a bytes list with one value")
    if not (isinstance(dtype, list) and len(dtype) == 1):
        raise ExampleDecodeError(f"feature {dtype_name!r} must be a bytes list with one value")
    if not isinstance(shape, np.ndarray) or shape.dtype != np.int64 or (shape < 0).any():
        raise ExampleDecodeError(f"feature {shape_name!r} must be a non-negative int64 list, "
                                 f"found {shape!r}")
    dtype_str = dtype[0].decode("utf-8", "replace")
    if dtype_str not in IMAGE_DTYPES:
        raise ExampleDecodeError(f"feature {dtype_name!r}: expected one of {IMAGE_DTYPES}, "
                                 f"found {dtype_str!r}")
    if name == "image" and shape.size != 4:
        raise ExampleDecodeError(f"feature 'shape': expected 4 values [T, H, W, C], found "
                                 f"{shape.tolist()}")
    native = np.dtype(dtype_str)
    expected = int(np.prod(shape)) * native.itemsize
    if len(buf[0]) != expected:
        raise ExampleDecodeError(
            f"feature {name!r}: expected {expected} bytes for shape {shape.tolist()} dtype "
            f"{dtype_str}, found {len(buf[0])}")
    little = np.frombuffer(buf[0], dtype=native.newbyteorder("<")).reshape(tuple(shape.tolist()))
    if little.dtype == native and little.flags.writeable:   # a view of the record's buffer
        return little
    return little.astype(native)   # writable native-order copy


def _text(values: dict, name: str, default=None) -> str:
    value = values.get(name)
    if value is None:
        if default is not None:
            return default
        raise ExampleDecodeError(f"missing feature {name!r}; found {sorted(values)}")
    if not (isinstance(value, list) and len(value) == 1):
        raise ExampleDecodeError(f"feature {name!r} must be a bytes list with one value")
    return value[0].decode("utf-8")


_LARGE = 4096  # features above this many bytes are viewed in place when they are one bytes value


def _feature_dict(data) -> dict:
    """{name: values} of serialized Example bytes. Large single-value bytes features (the image)
    are memoryviews into ``data``; every other feature is parsed by the protobuf runtime, and the
    whole message is when the zero-copy walk meets anything unusual."""
    try:
        views = wire.example_features(data)
        values = {}
        for name, view in views.items():
            if len(view) > _LARGE:
                try:
                    values[name] = [wire.single_bytes_value(view)]
                    continue
                except wire.WireFormatError:
                    pass
            values[name] = _feature_values(Feature.FromString(bytes(view)))
        return values
    except (wire.WireFormatError, UnicodeDecodeError, _pb_message.DecodeError):
        pass
    try:
        example = Example.FromString(bytes(data))
    except _pb_message.DecodeError as e:
        raise ExampleDecodeError(f"not a tf.train.Example protobuf ({e})") from None
    return {name: _feature_values(f) for name, f in example.features.feature.items()}


def decode_example(data) -> dict:
    """Parses tf.train.Example bytes (any buffer) into the record dict of docs/DESIGN.md. On
    little-endian hosts the image (and other array features) is a view of ``data`` when ``data``
    is a writable buffer (ShardSource reads into one), else a copy; arrays are always writable."""
    values = _feature_dict(data)
    bands = values.get("bands")
    if not isinstance(bands, list):
        raise ExampleDecodeError(f"missing bytes feature 'bands'; found {sorted(values)}")
    labels = values.get("labels")
    if labels is None:
        labels = np.zeros((0,), np.int64)
    elif not (isinstance(labels, np.ndarray) and labels.dtype == np.int64):
        raise ExampleDecodeError("feature 'labels' must be an int64 list")
    record = {
        "image": _decode_array(values, "image"),
        "labels": labels,
        "key": _text(values, "key"),
        "bands": [b.decode("utf-8") for b in bands],
        "sensor": _text(values, "sensor"),
        "label_set": _text(values, "label_set", default=""),
    }
    if len(record["bands"]) != record["image"].shape[-1]:
        raise ExampleDecodeError(f"{len(record['bands'])} band names for an image of shape "
                                 f"{record['image'].shape}")
    arrays = {n for n in values if n + "_shape" in values and n + "_dtype" in values}
    consumed = set(_CORE) | {a + s for a in arrays for s in ("_shape", "_dtype")}
    for name, value in values.items():
        if name in consumed:
            continue
        if name in arrays:
            record[name] = _decode_array(values, name)
        elif isinstance(value, list):
            value = [bytes(v) for v in value]
            record[name] = value[0] if len(value) == 1 else value
        else:
            record[name] = value
    return record


# ---------------------------------------------------------------------------------------------
# Framing


def masked_crc32c(data) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = _LEN.pack(len(data))
    return length + _CRC.pack(masked_crc32c(length)) + data + _CRC.pack(masked_crc32c(data))


def _where(compression: str) -> str:
    return f" of the decompressed {compression} stream" if compression else ""


def _check_header(header: bytes, path: str, index: int, offset: int, compression: str) -> int:
    length, crc = _HEADER.unpack(header)
    expected = masked_crc32c(header[:8])
    if crc != expected:
        raise CorruptRecordError(
            f"{path}: record {index} at byte offset {offset}{_where(compression)}: corrupt "
            f"length field (length CRC expected 0x{expected:08x}, found 0x{crc:08x})")
    return length


def _check_data(data, crc_bytes: bytes, path: str, index: int, offset: int,
                compression: str) -> None:
    (crc,) = _CRC.unpack(crc_bytes)
    expected = masked_crc32c(data)
    if crc != expected:
        raise CorruptRecordError(
            f"{path}: record {index} at byte offset {offset}{_where(compression)}: data CRC "
            f"mismatch (expected 0x{expected:08x}, found 0x{crc:08x}); the record's "
            f"{len(data)} data bytes or its CRC are corrupt")


def _scan(read_at, size: int, path: str, compression: str) -> np.ndarray:
    """Offsets (n + 1,) of every record from the length fields alone (data CRCs not read)."""
    offsets, offset = [], 0
    while offset < size:
        index = len(offsets)
        if size - offset < _HEADER.size:
            raise CorruptRecordError(
                f"{path}: record {index} at byte offset {offset}{_where(compression)}: truncated "
                f"header ({size - offset} bytes left, expected {_HEADER.size})")
        length = _check_header(read_at(offset, _HEADER.size), path, index, offset, compression)
        end = offset + _HEADER.size + length + _CRC.size
        if end > size:
            raise CorruptRecordError(
                f"{path}: record {index} at byte offset {offset}{_where(compression)}: truncated "
                f"(length field says {length} data bytes, so {end - offset} bytes with framing; "
                f"{size - offset} bytes left)")
        offsets.append(offset)
        offset = end
    offsets.append(offset)
    return np.asarray(offsets, dtype=np.uint64)


def detect_compression(path: str) -> str:
    """'' for a plain TFRecord file, 'gzip' or 'zlib' for a compressed one."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if not head:
        return ""
    if len(head) == _HEADER.size:
        if _HEADER.unpack(head)[1] == masked_crc32c(head[:8]):
            return ""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    if len(head) < _HEADER.size:
        raise CorruptRecordError(f"{path}: record 0 at byte offset 0: truncated header "
                                 f"({len(head)} bytes, expected {_HEADER.size})")
    _check_header(head, path, 0, 0, "")  # raises the corrupt-length message
    raise AssertionError("unreachable")


def _decompress(path: str, compression: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return gzip.decompress(raw) if compression == "gzip" else zlib.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptRecordError(f"{path}: corrupt or truncated {compression} stream "
                                 f"({len(raw)} bytes): {e}") from None


# ---------------------------------------------------------------------------------------------
# Offset index


def index_path(path: str) -> str:
    return os.fspath(path) + ".index"


def write_index(path: str, offsets: np.ndarray, compression: str) -> str:
    """Writes ``path + '.index'`` atomically for the shard as it is on disk now."""
    stat = os.stat(path)
    offsets = np.asarray(offsets, dtype="<u8")
    head = _INDEX_HEAD.pack(_INDEX_MAGIC, _FLAGS[compression], stat.st_size, stat.st_mtime_ns,
                            len(offsets) - 1)
    target = index_path(path)
    tmp = os.path.join(os.path.dirname(target) or ".",
                       f".{os.path.basename(target)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(head + offsets.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _read_index(path: str):
    """(offsets, compression) from a valid, fresh index file, else None."""
    try:
        with open(index_path(path), "rb") as f:
            blob = f.read()
        stat = os.stat(path)
    except OSError:
        return None
    if len(blob) < _INDEX_HEAD.size:
        return None
    magic, flags, size, mtime_ns, n = _INDEX_HEAD.unpack_from(blob)
    if (magic != _INDEX_MAGIC or flags not in _KINDS or size != stat.st_size
            or mtime_ns != stat.st_mtime_ns or len(blob) != _INDEX_HEAD.size + 8 * (n + 1)):
        return None
    offsets = np.frombuffer(blob, dtype="<u8", offset=_INDEX_HEAD.size).astype(np.uint64)
    return offsets, _KINDS[flags]


def build_index(path: str):
    """Scans a shard: (offsets (n + 1,) uint64, compression)."""
    compression = detect_compression(path)
    if compression:
        buf = _decompress(path, compression)
        return _scan(lambda o, n: buf[o:o + n], len(buf), path, compression), compression
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        return _scan(lambda o, n: os.pread(f.fileno(), n, o), size, path, ""), compression


def load_index(path: str, *, write: bool = True):
    """(offsets, compression), from the index file when fresh, else rebuilt (and rewritten)."""
    found = _read_index(path)
    if found is not None:
        return found
    offsets, compression = build_index(path)
    if write:
        try:
            write_index(path, offsets, compression)
        except OSError:
            pass  # read-only folder: keep the index in memory
    return offsets, compression


# ---------------------------------------------------------------------------------------------
# Readers


class _Shard:
    """One shard: its offsets, and a file (or decompressed buffer) opened lazily per process."""

    def __init__(self, path: str, write_index: bool):
        self.path = path
        self.offsets, self.compression = load_index(path, write=write_index)
        self._reset()

    def _reset(self):
        self._pid, self._file, self._buf = None, None, None

    def __getstate__(self):
        return {"path": self.path, "offsets": self.offsets, "compression": self.compression}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __len__(self):
        return len(self.offsets) - 1

    def _read_at(self, offset: int, n: int) -> memoryview:
        if self._pid != os.getpid():
            self._file = self._buf = None
            if self.compression:
                self._buf = _decompress(self.path, self.compression)
            else:
                self._file = open(self.path, "rb", buffering=0)
            self._pid = os.getpid()
        if self._buf is not None:
            return memoryview(bytearray(self._buf[offset:offset + n]))
        out = np.empty(n, np.uint8)   # writable, not zero-filled: arrays decoded from it are views
        got = os.preadv(self._file.fileno(), [out], offset)
        return memoryview(out)[:got]

    def read(self, index: int) -> memoryview:
        """Data of record ``index`` (a view of the bytes read) with both CRCs checked."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        blob = self._read_at(start, end - start)
        where = _where(self.compression)
        if len(blob) != end - start:
            raise CorruptRecordError(
                f"{self.path}: record {index} at byte offset {start}{where}: truncated (index "
                f"expects {end - start} bytes, read {len(blob)}); the file changed after its "
                f"index was written")
        length = _check_header(blob[:_HEADER.size], self.path, index, start, self.compression)
        if length != end - start - _HEADER.size - _CRC.size:
            raise CorruptRecordError(
                f"{self.path}: record {index} at byte offset {start}{where}: length field says "
                f"{length} bytes, index says {end - start - 16}; delete {index_path(self.path)} "
                f"if the shard was rewritten")
        data = blob[_HEADER.size:_HEADER.size + length]   # a view, no copy
        _check_data(data, blob[-_CRC.size:], self.path, index, start, self.compression)
        return data


def _expand(paths) -> list[str]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            matches = glob.glob(os.path.join(item, "*.tfrecord")) + glob.glob(
                os.path.join(item, "*.tfrecord.gz"))
        elif glob.has_magic(item):
            matches = glob.glob(item)
        else:
            out.append(item)
            continue
        out.extend(sorted(m for m in matches
                          if not m.endswith(".index") and not os.path.basename(m).startswith(".")))
    return out


class ShardSource:
    """Random access over TFRecord shards: a grain RandomAccessDataSource.

    ``paths``: shard paths, glob patterns or folders (all ``*.tfrecord[.gz]`` inside), in order.
    ``src[i]`` is the record dict of docs/DESIGN.md; records are numbered shard after shard.
    Picklable: files are opened lazily in each process that reads.
    """

    def __init__(self, paths, *, write_index: bool = True):
        self.paths = _expand(paths)
        if not self.paths:
            raise FileNotFoundError(f"no TFRecord shards match {paths!r}")
        for path in self.paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard not found: {path}")
        self._shards = [_Shard(p, write_index) for p in self.paths]
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, record_key) -> tuple[_Shard, int]:
        i = operator.index(record_key)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {record_key} out of range for {n} records in "
                             f"{len(self.paths)} shard(s)")
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._shards[s], i - int(self._starts[s])

    def read_raw(self, record_key) -> bytes:
        """Serialized tf.train.Example bytes of one record (CRC-checked)."""
        shard, j = self._locate(record_key)
        return bytes(shard.read(j))

    def __getitem__(self, record_key) -> dict:
        shard, j = self._locate(record_key)
        try:
            return decode_example(shard.read(j))
        except ExampleDecodeError as e:
            raise ExampleDecodeError(
                f"{shard.path}: record {j} at byte offset {int(shard.offsets[j])}"
                f"{_where(shard.compression)}: {e}") from None

    def __repr__(self) -> str:
        first = self.paths[0] if self.paths else ""
        return f"ShardSource({len(self.paths)} shards from {first!r}, {len(self)} records)"


def read_records(path, *, decode: bool = False) -> Iterator:
    """Yields every record of one shard in order (bytes, or record dicts with decode=True).

    Sequential and index-free; both CRCs checked. Compressed shards are streamed.
    """
    path = os.fspath(path)
    compression = detect_compression(path)
    opener = {"": lambda p: open(p, "rb"), "gzip": gzip.open}.get(compression)
    if opener is None:  # zlib: no stdlib stream reader, decompress whole
        stream = io.BytesIO(_decompress(path, compression))
    else:
        stream = opener(path)
    where = _where(compression)
    with stream:
        offset, index = 0, 0
        while True:
            try:
                header = stream.read(_HEADER.size)
            except (OSError, EOFError, zlib.error) as e:
                raise CorruptRecordError(f"{path}: corrupt {compression} stream near record "
                                         f"{index} (byte offset {offset}{where}): {e}") from None
            if not header:
                return
            if len(header) < _HEADER.size:
                raise CorruptRecordError(
                    f"{path}: record {index} at byte offset {offset}{where}: truncated header "
                    f"({len(header)} bytes left, expected {_HEADER.size})")
            length = _check_header(header, path, index, offset, compression)
            try:
                body = stream.read(length + _CRC.size)
            except (OSError, EOFError, zlib.error) as e:
                raise CorruptRecordError(f"{path}: record {index} at byte offset {offset}"
                                         f"{where}: corrupt {compression} stream: {e}") from None
            if len(body) != length + _CRC.size:
                raise CorruptRecordError(
                    f"{path}: record {index} at byte offset {offset}{where}: truncated (length "
                    f"field says {length} data bytes, {len(body)} bytes left with the CRC)")
            data = body[:length]
            _check_data(data, body[length:], path, index, offset, compression)
            if decode:
                try:
                    yield decode_example(data)
                except ExampleDecodeError as e:
                    raise ExampleDecodeError(
                        f"{path}: record {index} at byte offset {offset}{where}: {e}") from None
            else:
                yield data
            offset += _HEADER.size + length + _CRC.size
            index += 1


# ---------------------------------------------------------------------------------------------
# Writer


def shard_name(prefix: str, index: int, num_shards: int, suffix: str = ".tfrecord") -> str:
    """``prefix-00003-of-00016.tfrecord``."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} outside [0, {num_shards})")
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ShardWriter:
    """Writes one shard atomically, then its offset index.

    Records go to a hidden temporary file beside ``path``; ``close()`` flushes, fsyncs and
    ``os.replace``s it onto ``path``, so a crash or an exception never leaves a partial file under
    the shard's name and never replaces an existing finished shard. As a context manager it
    commits on normal exit and discards the temporary file on an exception.
    ``compression``: None (gzip when the name ends in ".gz"), "" or "gzip".
    """

    def __init__(self, path, *, compression: str | None = None):
        self.path = os.fspath(path)
        if compression is None:
            compression = "gzip" if self.path.endswith(".gz") else ""
        if compression not in ("", "gzip"):
            raise ValueError(f"compression must be '' or 'gzip', found {compression!r}")
        self.compression = compression
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        self._tmp = os.path.join(folder, f".{os.path.basename(self.path)}.tmp-{os.getpid()}-"
                                         f"{uuid.uuid4().hex[:8]}")
        self._raw = open(self._tmp, "wb")
        self._out = (gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
                     if compression else self._raw)
        self._offsets = [0]
        self.closed = False

    @property
    def num_records(self) -> int:
        return len(self._offsets) - 1

    @property
    def num_bytes(self) -> int:
        """Uncompressed bytes written so far (framing included)."""
        return self._offsets[-1]

    def write(self, record) -> None:
        """Appends a record dict (encoded here) or already-serialised Example bytes."""
        if self.closed:
            raise ValueError(f"{self.path}: write after close")
        data = bytes(record) if isinstance(record, (bytes, bytearray, memoryview)) \
            else encode_example(record)
        framed = frame(data)
        self._out.write(framed)
        self._offsets.append(self._offsets[-1] + len(framed))

    def close(self) -> str:
        """Commits the shard and its index; returns the shard path."""
        if self.closed:
            return self.path
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        _fsync_dir(os.path.dirname(self.path) or ".")
        write_index(self.path, np.asarray(self._offsets, np.uint64), self.compression)
        return self.path

    def abort(self) -> None:
        """Discards everything written; an existing shard at ``path`` stays as it was."""
        self.closed = True
        for f in (self._out, self._raw):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - best effort on an abandoned file
                pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):
        if not getattr(self, "closed", True):
            self.abort()


def write_shard(path, records: Sequence, **kw) -> str:
    """Writes ``records`` (dicts or bytes) to one shard atomically; returns its path."""
    with ShardWriter(path, **kw) as writer:
        for record in records:
            writer.write(record)
    return writer.path
