"""Writing TFRecord shards atomically (``ShardWriter``, ``write_shard``), named
``prefix-00003-of-00016.tfrecord`` (``shard_name``), each with its offset index."""

from __future__ import annotations

import gzip
import os
import uuid
from collections.abc import Sequence

import numpy as np

from geossl.data.codec import encode_example
from geossl.data.framing import frame
from geossl.data.offset_index import write_index


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
