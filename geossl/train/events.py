"""TensorBoard event files of scalars, written directly (no TensorBoard library to import).

A file ``events.out.tfevents.<unix time>.<host>.<pid>.<n>`` (n counts a process's files) in the
given folder holds TFRecord-framed ``tensorflow.Event`` protobufs: first ``file_version``
"brain.Event:2", then a ``SessionLog`` START at the step the run (re)starts from — TensorBoard
then drops the events of earlier files at that step and later, which a resumed run writes again —
then one ``Summary`` of ``simple_value`` scalars per step.

The messages are those of ``geossl.train.event_proto``; the file framing is TFRecord's
(``geossl.data.framing``).
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from geossl.data import framing
from geossl.train.event_proto import Event, SessionLog

FILE_VERSION = "brain.Event:2"
_FILE_NUMBERS = itertools.count()


def event(step: int, *, wall_time: float, file_version: str | None = None,
          scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    """One serialized Event: the file-version header, a session START, or a Summary of scalars
    (float32 values; beyond float32's range ±inf, as a cast gives)."""
    message = Event(wall_time=wall_time, step=step)
    if file_version is not None:
        message.file_version = file_version
    if scalars:
        for tag, value in scalars.items():
            message.summary.value.add(tag=tag, simple_value=value)
    if session_start:
        message.session_log.status = SessionLog.START
    return message.SerializeToString()


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
