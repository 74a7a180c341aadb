"""One run per workdir: ``workdir/run.lock``, held (``flock``) from before the workdir changes until
the run ends.

The file names its holder (host, pid, the process's start time, command). A second run finds the
lock held and is refused with :class:`WorkdirInUseError` naming that holder. A lock nobody holds any
more (its process died: ``kill -9``, a lost machine) is taken over with one warning. Where the
filesystem offers no ``flock`` (some network mounts), a holder on this host counts as alive while
its pid runs with the recorded start time (so a reused pid is not mistaken for it), and one on
another host is refused with the advice to remove the file if that run is gone.

Multi-process runs: process 0 alone takes the lock (one run = one lock, whatever its process
count) and tells the others the outcome, so that all of them stop when the workdir is in use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

LOCK_NAME = "run.lock"


class WorkdirInUseError(RuntimeError):
    """Another run holds the workdir's lock."""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # the fields after "(comm)" start at field 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def holder_alive_here(holder: dict) -> bool:
    """True when ``holder`` (a lock file's record) names a running process of this host."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if not _alive(pid):
        return False
    recorded, now = holder.get("start_time"), _start_time(pid)
    if recorded is not None and now is not None:
        return recorded == now
    return pid != os.getpid()  # without start times, this process's own pid is no other holder


def describe(holder: dict) -> str:
    if not holder:
        return "another process (its lock file is empty: it is being written)"
    since = holder.get("started", "?")
    command = " ".join(holder.get("command", []))[:200]
    return (f"process {holder.get('pid')} on host {holder.get('host')} (since {since}"
            + (f": {command}" if command else "") + ")")


class WorkdirLock:
    """``acquire()`` / ``release()`` of ``workdir/run.lock`` (also a context manager). A workdir
    that ``acquire`` had to create is removed again on ``release`` if it is still empty."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self._fd: int | None = None
        self._created_workdir = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self._created_workdir = not os.path.isdir(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        try:
            while (fd := self._try_open_locked()) is None:
                pass  # the holder released (and removed) the file between our open and flock
        except BaseException:
            self._remove_created_workdir()
            raise
        self._fd = fd

    def _try_open_locked(self) -> int | None:
        """The file descriptor of the lock file, locked and naming us; None to try again."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkdirInUseError(self._refusal(_read(fd))) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                locked = False  # no flock on this filesystem: the holder record decides alone
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    return None
            except FileNotFoundError:
                os.close(fd)
                return None
            holder = _read(fd)
            if holder and holder_alive_here(holder):
                raise WorkdirInUseError(self._refusal(holder))
            if holder and not locked and holder.get("host") != socket.gethostname():
                raise WorkdirInUseError(self._refusal(holder) + (
                    f" (this filesystem has no flock: a run on another host cannot be checked "
                    f"from here; if it is gone, remove {self.path})"))
            if holder:
                logging.warning("%s: taking over the lock of %s, which is no longer running",
                                self.path, describe(holder))
            _write(fd, {"host": socket.gethostname(), "pid": os.getpid(),
                        "start_time": _start_time(os.getpid()),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "command": [os.path.basename(sys.argv[0])] + sys.argv[1:]})
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _refusal(self, holder: dict) -> str:
        return (f"workdir {self.workdir} is in use by {describe(holder)}; wait for that run to "
                f"end, stop it (SIGTERM: it checkpoints and exits) or choose another --workdir")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.remove(self.path)  # before unlocking: a waiter then sees a removed file
        os.close(self._fd)
        self._fd = None
        self._remove_created_workdir()

    def _remove_created_workdir(self) -> None:
        if self._created_workdir:
            with contextlib.suppress(OSError):
                os.rmdir(self.workdir)  # only when empty: the run changed nothing in it


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 1 << 16, 0).decode(errors="replace")
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"host": "?", "pid": "?", "started": "? (unreadable lock file)"}


def _write(fd: int, holder: dict) -> None:
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextlib.contextmanager
def hold(workdir: str):
    """The run's lock on ``workdir`` for the ``with`` block: process 0 takes it and every process
    raises :class:`WorkdirInUseError` when it is held by another run."""
    import jax
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except WorkdirInUseError as e:
            refusal = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        free = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is None)))
        if not free and refusal is None:
            refusal = WorkdirInUseError(f"workdir {os.path.abspath(workdir)} is in use by "
                                        f"another run (process 0 found its lock held)")
    if refusal is not None:
        raise refusal
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
