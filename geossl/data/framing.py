"""TFRecord framing: one record's length and CRC fields, their checks, and whole-file compression.

Framing of one record (TensorFlow's, little-endian):
    uint64 length | uint32 masked_crc32c(the 8 length bytes) | data | uint32 masked_crc32c(data)
    masked_crc32c(x) = ((c >> 15 | c << 17) + 0xA282EAD8) mod 2**32 with c = crc32c(x).
Both CRCs are checked on every read. Shards may be GZIP- or ZLIB-compressed as whole streams
(TFRecordWriter with compression); detected by content, not by name. For random access a
compressed shard is decompressed once per process into memory.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import crc32c
import numpy as np

LENGTH = struct.Struct("<Q")
CRC = struct.Struct("<I")
HEADER = struct.Struct("<QI")   # length, masked CRC of the length


class CorruptRecordError(ValueError):
    """A shard's bytes do not form valid TFRecord framing (bad CRC, bad length, truncation)."""


def masked_crc32c(data) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = LENGTH.pack(len(data))
    return length + CRC.pack(masked_crc32c(length)) + data + CRC.pack(masked_crc32c(data))


def stream_note(compression: str) -> str:
    """The words that follow a byte offset in errors: offsets of compressed shards count in the
    decompressed stream."""
    return f" of the decompressed {compression} stream" if compression else ""


def check_header(header: bytes, path: str, index: int, offset: int, compression: str) -> int:
    """The data length of a (HEADER.size,) header whose length CRC matches; else an error."""
    length, crc = HEADER.unpack(header)
    expected = masked_crc32c(header[:8])
    if crc != expected:
        raise CorruptRecordError(
            f"{path}: record {index} at byte offset {offset}{stream_note(compression)}: corrupt "
            f"length field (length CRC expected 0x{expected:08x}, found 0x{crc:08x})")
    return length


def check_data(data, crc_bytes: bytes, path: str, index: int, offset: int,
               compression: str) -> None:
    """Raises CorruptRecordError unless ``crc_bytes`` is the masked CRC of ``data``."""
    (crc,) = CRC.unpack(crc_bytes)
    expected = masked_crc32c(data)
    if crc != expected:
        raise CorruptRecordError(
            f"{path}: record {index} at byte offset {offset}{stream_note(compression)}: data CRC "
            f"mismatch (expected 0x{expected:08x}, found 0x{crc:08x}); the record's "
            f"{len(data)} data bytes or its CRC are corrupt")


def scan_offsets(read_at, size: int, path: str, compression: str) -> np.ndarray:
    """Offsets (n + 1,) of every record from the length fields alone (data CRCs not read).

    ``read_at(offset, n)`` returns n bytes of the (decompressed) record stream of ``size`` bytes.
    """
    where = stream_note(compression)
    offsets, offset = [], 0
    while offset < size:
        index = len(offsets)
        if size - offset < HEADER.size:
            raise CorruptRecordError(
                f"{path}: record {index} at byte offset {offset}{where}: truncated "
                f"header ({size - offset} bytes left, expected {HEADER.size})")
        length = check_header(read_at(offset, HEADER.size), path, index, offset, compression)
        end = offset + HEADER.size + length + CRC.size
        if end > size:
            raise CorruptRecordError(
                f"{path}: record {index} at byte offset {offset}{where}: truncated "
                f"(length field says {length} data bytes, so {end - offset} bytes with framing; "
                f"{size - offset} bytes left)")
        offsets.append(offset)
        offset = end
    offsets.append(offset)
    return np.asarray(offsets, dtype=np.uint64)


def detect_compression(path: str) -> str:
    """'' for a plain TFRecord file, 'gzip' or 'zlib' for a compressed one."""
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if not head:
        return ""
    if len(head) == HEADER.size:
        if HEADER.unpack(head)[1] == masked_crc32c(head[:8]):
            return ""
    if head[:2] == b"\x1f\x8b" and _starts_stream(path, 16 + zlib.MAX_WBITS):
        return "gzip"
    if (len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
            and _starts_stream(path, zlib.MAX_WBITS)):
        return "zlib"
    if len(head) < HEADER.size:
        raise CorruptRecordError(f"{path}: record 0 at byte offset 0: truncated header "
                                 f"({len(head)} bytes, expected {HEADER.size})")
    check_header(head, path, 0, 0, "")  # raises the corrupt-length message
    raise AssertionError("unreachable")


def _starts_stream(path: str, wbits: int) -> bool:
    """Whether the file's first 4 kB decompress as a gzip / zlib stream (a plain shard whose
    first length field, its CRC damaged, happens to begin like one of their headers does not)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        zlib.decompressobj(wbits).decompress(head)
    except zlib.error:
        return False
    return True


def decompress(path: str, compression: str) -> bytes:
    """The whole record stream of a 'gzip' or 'zlib' shard."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return gzip.decompress(raw) if compression == "gzip" else zlib.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptRecordError(f"{path}: corrupt or truncated {compression} stream "
                                 f"({len(raw)} bytes): {e}") from None
