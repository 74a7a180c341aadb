"""workdir/run.lock: a held lock refuses a second run by name; a dead holder's lock is taken over
with one warning; without flock, a live pid with its recorded start time (or a holder on another
host) still counts."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from geossl.train import workdir_lock
from geossl.train.workdir_lock import WorkdirInUseError, WorkdirLock


def _record(path):
    with open(path) as f:
        return json.load(f)


def test_second_lock_is_refused_naming_the_holder_and_released_lock_is_free(tmp_path):
    workdir = str(tmp_path / "w")
    first = WorkdirLock(workdir)
    first.acquire()
    holder = _record(os.path.join(workdir, "run.lock"))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(WorkdirInUseError, match=rf"workdir {workdir} is in use by process "
                                                rf"{os.getpid()} on host {socket.gethostname()} "):
        WorkdirLock(workdir).acquire()
    first.release()
    assert not os.path.exists(workdir)  # created by the lock, left empty: removed again
    with WorkdirLock(workdir):
        assert os.path.exists(os.path.join(workdir, "run.lock"))
        (tmp_path / "w" / "metrics.jsonl").write_text("")
    assert os.listdir(workdir) == ["metrics.jsonl"]  # a workdir the run wrote into stays


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lock_of_a_dead_process_is_taken_over_with_one_warning(tmp_path, caplog):
    workdir = tmp_path / "w"
    workdir.mkdir()
    pid = _dead_pid()
    (workdir / "run.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": pid, "start_time": 1, "started": "then",
         "command": ["main.py"]}))
    caplog.set_level("WARNING")
    with WorkdirLock(str(workdir)):
        assert _record(workdir / "run.lock")["pid"] == os.getpid()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"{workdir}/run.lock: taking over the lock of process {pid} on host "
                        f"{socket.gethostname()} (since then: main.py), which is no longer "
                        f"running"], warnings


def test_without_flock_a_running_holder_counts_and_a_reused_pid_does_not(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        workdir = tmp_path / "w"
        workdir.mkdir()
        lock_file = workdir / "run.lock"
        running = {"host": socket.gethostname(), "pid": sleeper.pid,
                   "start_time": workdir_lock._start_time(sleeper.pid)}
        lock_file.write_text(json.dumps(running))
        with pytest.raises(WorkdirInUseError, match=f"in use by process {sleeper.pid} "):
            WorkdirLock(str(workdir)).acquire()
        # the same pid with another start time: a new process that reused the number
        lock_file.write_text(json.dumps(dict(running, start_time=running["start_time"] - 1)))
        with WorkdirLock(str(workdir)):
            assert _record(lock_file)["pid"] == os.getpid()
        # another host's holder cannot be checked from here: refused, with what to do if it is gone
        lock_file.write_text(json.dumps(dict(running, host="elsewhere")))
        with pytest.raises(WorkdirInUseError, match=f"on host elsewhere .*if it is gone, remove "
                                                    f"{lock_file}"):
            WorkdirLock(str(workdir)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_hold_on_one_process_locks_and_refuses(tmp_path):
    workdir = str(tmp_path / "w")
    with workdir_lock.hold(workdir) as lock:
        assert lock is not None and os.path.exists(lock.path)
        with pytest.raises(WorkdirInUseError):
            with workdir_lock.hold(workdir):
                pass
        assert os.path.exists(lock.path)  # the refused second holder removed nothing
    assert not os.path.exists(os.path.join(workdir, "run.lock"))
