"""The ``--help`` text of many command lines from one process (tests/test_readme.py).

    python tests/help_texts.py < prefixes.json > texts.json

stdin: a JSON list of argv prefixes (``["-m", "geossl.eval.knn"]``, ``["main.py"]``); stdout: a
JSON list of ``[exit code, stdout, stderr]``, one per prefix, in order. The libraries every
command imports (jax, flax, optax, ml_collections, absl) load once here; each command then runs
with ``--help`` in a fork of this process, as ``python PREFIX --help`` would run it (the same
text), because absl keeps its flags in one global registry that two commands' modules would both
fill. No flags are defined before the fork: nothing of geossl is imported here.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback

SHARED = ("numpy", "jax", "jax.numpy", "flax.linen", "optax", "ml_collections", "absl.app",
          "absl.flags", "absl.logging")


def _child(prefix: list[str], out_fd: int, err_fd: int) -> None:
    """Runs ``python PREFIX --help`` in this (forked) process, stdout on ``out_fd`` and stderr on
    ``err_fd``; never returns."""
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    code = 0
    try:
        if prefix[0] == "-m":
            sys.argv = [prefix[1], *prefix[2:], "--help"]
            runpy.run_module(prefix[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [prefix[0], *prefix[1:], "--help"]
            sys.path[0] = os.path.dirname(os.path.abspath(prefix[0]))
            runpy.run_path(prefix[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # as the interpreter does: the message on stderr, exit status 1
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (reported as the child's exit code and traceback)
        traceback.print_exc()
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def help_text(prefix: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python PREFIX --help``, run in a fork of this process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:
            _child(prefix, out.fileno(), err.fileno())
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


def main() -> None:
    for name in SHARED:
        __import__(name)
    prefixes = json.load(sys.stdin)
    json.dump([help_text(p) for p in prefixes], sys.stdout)


if __name__ == "__main__":
    main()
