"""geossl.errors.run_command: what a command line reports in one line, and what it does not."""

import json

import pytest

from geossl import errors
from geossl.data import manifest


def _run(monkeypatch, capsys, fn, traceback=None):
    if traceback is None:
        monkeypatch.delenv(errors.TRACEBACK_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(errors.TRACEBACK_VARIABLE, traceback)
    with pytest.raises(SystemExit) as stop:
        errors.run_command(fn, "prog", status=3)
    return stop.value.code, capsys.readouterr().err


def test_geossl_message_stands_alone(monkeypatch, capsys):
    def main():
        raise errors.ConfigError("config.model.dtype: expected float32,\n found 'float8'")
    code, err = _run(monkeypatch, capsys, main)
    assert code == 3
    assert err == "prog: config.model.dtype: expected float32, found 'float8'\n"


def test_third_party_error_names_its_type_and_the_traceback_switch(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{")
    code, err = _run(monkeypatch, capsys, lambda: json.loads(bad.read_text()))
    assert code == 3 and err.count("\n") == 1
    assert err.startswith("prog: JSONDecodeError: Expecting property name")
    assert f"({errors.TRACEBACK_VARIABLE}=1 shows the traceback)" in err
    code, err = _run(monkeypatch, capsys, lambda: open(tmp_path / "missing.txt"))
    assert code == 3 and "FileNotFoundError: [Errno 2]" in err and "missing.txt" in err


def test_quoted_key_error_message_is_unquoted():
    # ml_collections raises KeyError(repr(message)) for an unknown override
    wrapped = KeyError(repr("'total_stepz'\nDid you mean"))
    assert errors.one_line(wrapped) == "'total_stepz' Did you mean"
    assert errors.one_line(OSError()) == "OSError"


def test_traceback_variable_reraises(monkeypatch, capsys):
    def main():
        raise ValueError("bad")
    monkeypatch.setenv(errors.TRACEBACK_VARIABLE, "1")
    with pytest.raises(ValueError, match="bad"):
        errors.run_command(main, "prog")
    monkeypatch.setenv(errors.TRACEBACK_VARIABLE, "0")   # "0" is off
    code, err = _run(monkeypatch, capsys, main, traceback="0")
    assert code == 3 and err.startswith("prog: ")


def test_bugs_are_not_swallowed(monkeypatch):
    """Only ValueError / OSError are a user's input; anything else keeps its traceback."""
    monkeypatch.delenv(errors.TRACEBACK_VARIABLE, raising=False)
    with pytest.raises(TypeError):
        errors.run_command(lambda: len(1), "prog")
    with pytest.raises(KeyError):
        errors.run_command(lambda: {}["x"], "prog")
    assert errors.run_command(lambda: 7, "prog") == 7


def test_incomplete_set_is_a_user_error():
    assert issubclass(manifest.IncompleteDatasetError, errors.USER_ERRORS)


def test_every_probe_entry_point_reports_a_missing_workdir_in_one_line(tmp_path):
    """The ``python -m geossl.eval.*`` shims run their command through ``run_command``: each one,
    run as ``__main__`` in one subprocess, ends with one line and exit 1 (argparse's own errors
    keep exit 2)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"""
import contextlib, io, runpy, sys
for module in ("linear_probe", "knn", "segmentation", "finetune", "change_detection", "suite"):
    sys.argv = ["x", "--workdir", {str(tmp_path / "none")!r}, "--dataset", "synthetic"]
    if module == "suite":
        sys.argv = sys.argv[:3] + ["--data_root", "synthetic"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("geossl.eval." + module, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code
    print(module, code, repr(err.getvalue()))
"""
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    env.pop(errors.TRACEBACK_VARIABLE, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" ", 2) for line in done.stdout.splitlines() if line.strip()]
    assert len(rows) == 6, done.stdout
    for module, code, err in rows:
        text = eval(err)  # noqa: S307 (the repr printed above)
        assert code in ("1", "2") and text.count("\n") == 1, (module, code, text)
        assert "Traceback" not in text and str(tmp_path / "none") in text, (module, text)


def test_one_line_list_shows_the_first_problems_and_counts_the_rest():
    assert errors.one_line_list(["a", "b"]) == "a; b"
    assert errors.one_line_list([f"p{i}" for i in range(8)], shown=3) == "p0; p1; p2; and 5 more"
    assert errors.one_line_list([f"p{i}" for i in range(5)]) == "p0; p1; p2; p3; p4"
