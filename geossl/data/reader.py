"""Reading TFRecord shards: ``ShardSource`` (random access through the offset index, a grain
RandomAccessDataSource) and ``read_records`` (one shard in order, no index)."""

from __future__ import annotations

import glob
import gzip
import io
import operator
import os
import zlib
from collections.abc import Iterator

import numpy as np

from geossl.data.codec import ExampleDecodeError, decode_example
from geossl.data.framing import (CRC, HEADER, CorruptRecordError, check_data, check_header,
                                 decompress, detect_compression, stream_note)
from geossl.data.offset_index import index_path, load_index


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
                self._buf = decompress(self.path, self.compression)
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
        where = stream_note(self.compression)
        if len(blob) != end - start:
            raise CorruptRecordError(
                f"{self.path}: record {index} at byte offset {start}{where}: truncated (index "
                f"expects {end - start} bytes, read {len(blob)}); the file changed after its "
                f"index was written")
        length = check_header(blob[:HEADER.size], self.path, index, start, self.compression)
        if length != end - start - HEADER.size - CRC.size:
            raise CorruptRecordError(
                f"{self.path}: record {index} at byte offset {start}{where}: length field says "
                f"{length} bytes, index says {end - start - 16}; delete {index_path(self.path)} "
                f"if the shard was rewritten")
        data = blob[HEADER.size:HEADER.size + length]   # a view, no copy
        check_data(data, blob[-CRC.size:], self.path, index, start, self.compression)
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

    def __getitem__(self, record_key) -> dict:
        shard, j = self._locate(record_key)
        try:
            return decode_example(shard.read(j))
        except ExampleDecodeError as e:
            raise ExampleDecodeError(
                f"{shard.path}: record {j} at byte offset {int(shard.offsets[j])}"
                f"{stream_note(shard.compression)}: {e}") from None

    def __repr__(self) -> str:
        first = self.paths[0] if self.paths else ""
        return f"ShardSource({len(self.paths)} shards from {first!r}, {len(self)} records)"


_CHUNK = 1 << 26


def _read_up_to(stream, n: int) -> bytes:
    """At most ``n`` bytes of ``stream``, read 64 MB at a time: a damaged length field asking for
    exabytes reads what the stream has and stops (a truncation), not a MemoryError."""
    if n <= _CHUNK:
        return stream.read(n)
    parts, left = [], n
    while left:
        part = stream.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_records(path, *, decode: bool = False) -> Iterator:
    """Yields every record of one shard in order (bytes, or record dicts with decode=True).

    Sequential and index-free; both CRCs checked. Compressed shards are streamed.
    """
    path = os.fspath(path)
    compression = detect_compression(path)
    opener = {"": lambda p: open(p, "rb"), "gzip": gzip.open}.get(compression)
    if opener is None:  # zlib: no stdlib stream reader, decompress whole
        stream = io.BytesIO(decompress(path, compression))
    else:
        stream = opener(path)
    where = stream_note(compression)
    with stream:
        offset, index = 0, 0
        while True:
            try:
                header = stream.read(HEADER.size)
            except (OSError, EOFError, zlib.error) as e:
                raise CorruptRecordError(f"{path}: corrupt {compression} stream near record "
                                         f"{index} (byte offset {offset}{where}): {e}") from None
            if not header:
                return
            if len(header) < HEADER.size:
                raise CorruptRecordError(
                    f"{path}: record {index} at byte offset {offset}{where}: truncated header "
                    f"({len(header)} bytes left, expected {HEADER.size})")
            length = check_header(header, path, index, offset, compression)
            try:
                body = _read_up_to(stream, length + CRC.size)
            except (OSError, EOFError, zlib.error) as e:
                raise CorruptRecordError(f"{path}: record {index} at byte offset {offset}"
                                         f"{where}: corrupt {compression} stream: {e}") from None
            if len(body) != length + CRC.size:
                raise CorruptRecordError(
                    f"{path}: record {index} at byte offset {offset}{where}: truncated (length "
                    f"field says {length} data bytes, {len(body)} bytes left with the CRC)")
            data = body[:length]
            check_data(data, body[length:], path, index, offset, compression)
            if decode:
                try:
                    yield decode_example(data)
                except ExampleDecodeError as e:
                    raise ExampleDecodeError(
                        f"{path}: record {index} at byte offset {offset}{where}: {e}") from None
            else:
                yield data
            offset += HEADER.size + length + CRC.size
            index += 1
