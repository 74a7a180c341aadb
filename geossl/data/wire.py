"""Zero-copy walk over the protobuf wire format of a tf.train.Example.

``example_features(data)`` splits serialized Example bytes into ``{feature name: memoryview of
its Feature message}`` without copying, and ``single_bytes_value(view)`` returns the one value of a
Feature holding a BytesList of one value as a memoryview, so an image of several MB is viewed in
place rather than copied by the protobuf runtime. Anything this walker does not expect (other wire
types, merged or unknown fields) raises ``WireFormatError`` and the caller falls back to the full
protobuf parse, so the fast path never decides what a valid message means on its own.

Wire format (protobuf encoding): a message is a sequence of (key varint = field << 3 | wire type,
payload); wire type 2 is a varint length then that many bytes; Example.features = 1,
Features.feature = 1 (map entries: key = 1 string, value = 2 Feature), Feature.bytes_list = 1,
BytesList.value = 1.
"""

from __future__ import annotations


class WireFormatError(ValueError):
    """The bytes are not in the shape the fast path handles (the caller falls back)."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise WireFormatError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yields (field number, start, end) of every length-delimited field in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        if key & 7 != 2:
            raise WireFormatError(f"field {key >> 3} has wire type {key & 7}, expected 2")
        length, pos = _varint(buf, pos, end)
        if pos + length > end:
            raise WireFormatError(f"field {key >> 3} runs past its message")
        yield key >> 3, pos, pos + length
        pos += length


def example_features(data) -> dict[str, memoryview]:
    """Serialized Example → {name: memoryview of the Feature message} (last entry of a name wins,
    as protobuf map parsing does)."""
    buf = memoryview(data).cast("B")
    out: dict[str, memoryview] = {}
    for number, a, b in _fields(buf, 0, len(buf)):
        if number != 1:
            raise WireFormatError(f"Example has field {number}")
        for entry_number, c, d in _fields(buf, a, b):
            if entry_number != 1:
                raise WireFormatError(f"Features has field {entry_number}")
            name, value = None, buf[0:0]
            for field, e, f in _fields(buf, c, d):
                if field == 1:
                    name = bytes(buf[e:f]).decode("utf-8")
                elif field == 2:
                    if len(value):   # protobuf would merge the two Features: not a record's
                        raise WireFormatError("map entry holds its Feature twice")
                    value = buf[e:f]
                else:
                    raise WireFormatError(f"map entry has field {field}")
            if name is None:
                raise WireFormatError("map entry without a key")
            out[name] = value
    return out


def single_bytes_value(feature: memoryview) -> memoryview:
    """The value of a Feature that is a BytesList with exactly one value, as a view."""
    fields = list(_fields(feature, 0, len(feature)))
    if len(fields) != 1 or fields[0][0] != 1:
        raise WireFormatError("not a single bytes_list")
    values = list(_fields(feature, fields[0][1], fields[0][2]))
    if len(values) != 1 or values[0][0] != 1:
        raise WireFormatError("not a bytes_list of one value")
    return feature[values[0][1]:values[0][2]]
