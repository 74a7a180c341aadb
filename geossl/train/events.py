"""TensorBoard event files of scalars, written directly (no TensorBoard library to import).

A file ``events.out.tfevents.<unix time>.<host>.<pid>.<n>`` (n counts a process's files) in the
given folder holds TFRecord-framed ``tensorflow.Event`` protobufs: first ``file_version``
"brain.Event:2", then a ``SessionLog`` START at the step the run (re)starts from — TensorBoard
then drops the events of earlier files at that step and later, which a resumed run writes again —
then one ``Summary`` of ``simple_value`` scalars per step.

The messages used, with their field numbers (tensorflow/core/util/event.proto, summary.proto):
Event {wall_time = 1 double, step = 2 int64, and one of file_version = 3 string, summary = 5,
session_log = 7}; SessionLog {status = 1 enum, START = 1}; Summary {value = 1 repeated};
Summary.Value {tag = 1 string, simple_value = 2 float}.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time

from geossl.data import framing

FILE_VERSION = "brain.Event:2"
SESSION_START = 1
_FILE_NUMBERS = itertools.count()


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1   # int64 fields: negatives as 10-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _float32(value: float) -> bytes:
    """Little-endian float32; beyond its range ±inf (struct raises there), as a cast rounds."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, *, wall_time: float, file_version: str | None = None,
          scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    """One serialized Event: the file-version header, a session START, or a Summary of scalars."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5)
                                       + _float32(value))
                          for tag, value in scalars.items())
        out += _bytes_field(5, values)
    if session_start:
        out += _bytes_field(7, _varint(1 << 3) + _varint(SESSION_START))
    return out


class EventWriter:
    """Appends scalar events to a new event file in ``folder`` (created). ``start_step``: the first
    step this run writes; events of earlier files from that step on are superseded."""

    def __init__(self, folder: str, start_step: int = 0):
        os.makedirs(folder, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_FILE_NUMBERS)}")
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "xb")
        now = time.time()
        self._write(event(start_step, wall_time=now, file_version=FILE_VERSION))
        self._write(event(start_step, wall_time=now, session_start=True))
        self.flush()

    def _write(self, data: bytes) -> None:
        self._file.write(framing.frame(data))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event of ``values`` (tag → number) at ``step`` (a whole number, of any numeric
        type); flush() makes it visible."""
        if values:
            self._write(event(int(step), wall_time=time.time(),
                              scalars={k: float(v) for k, v in values.items()}))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
