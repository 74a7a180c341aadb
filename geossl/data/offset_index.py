"""The offset index of a shard: where every record starts, so records can be read in any order.

Written beside each shard as ``<shard file name>.index`` (all little-endian):
    8 bytes magic b"GSSLIDX1" | uint64 flags | uint64 shard size | int64 shard mtime_ns | uint64 n
    | (n + 1) x uint64 offsets
offsets[i] is where record i's length field starts and offsets[n] the end of the record stream,
counted in the decompressed stream for compressed shards (flags: 1 = gzip, 2 = zlib, 0 = none).
An index whose size or mtime differs from the shard's is stale: it is rebuilt by one scan of the
length fields and rewritten (atomically) where the folder is writable.
"""

from __future__ import annotations

import os
import struct
import uuid

import numpy as np

from geossl.data.framing import decompress, detect_compression, scan_offsets

_INDEX_MAGIC = b"GSSLIDX1"
_INDEX_HEAD = struct.Struct("<8sQQqQ")
_FLAGS = {"": 0, "gzip": 1, "zlib": 2}
_KINDS = {v: k for k, v in _FLAGS.items()}
_SMALLEST_RECORD = 16   # length (8) + its CRC (4) + no data + the data's CRC (4)


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
    steps = np.diff(offsets.astype(np.int64))   # damaged offsets: rebuilt, not trusted
    if offsets[0] != 0 or (steps < _SMALLEST_RECORD).any() or (not flags and offsets[-1] != size):
        return None
    return offsets, _KINDS[flags]


def build_index(path: str):
    """Scans a shard: (offsets (n + 1,) uint64, compression)."""
    compression = detect_compression(path)
    if compression:
        buf = decompress(path, compression)
        return scan_offsets(lambda o, n: buf[o:o + n], len(buf), path, compression), compression
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        return scan_offsets(lambda o, n: os.pread(f.fileno(), n, o), size, path, ""), compression


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
