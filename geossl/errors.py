"""Exceptions shared by every layer (the bottom of the import layers), and how a command line
reports them."""

import ast
import os
import sys
import traceback


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message names its config path."""


class DataConfigMismatchError(ValueError):
    """A training record does not fit the config (e.g. its label count is not
    ``config.data.num_classes``); the message names the record and the config field."""


def one_line_list(problems: list[str], shown: int = 5) -> str:
    """Problems on one line: the first ``shown`` joined by "; ", then how many more."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")


#: Set to 1 to see the traceback of an error a command line reports in one line.
TRACEBACK_VARIABLE = "GEOSSL_TRACEBACK"
#: What a command line reports in one line: a value, field, file or record it cannot use
#: (geossl's own errors are ValueErrors), or a file it cannot read or write.
USER_ERRORS = (ValueError, OSError)


def one_line(error: BaseException) -> str:
    """An error's message on one line: newlines folded, a quoted message (ml_collections wraps a
    KeyError's repr) unquoted; an error without a message as its type."""
    text = str(error.args[0] if len(error.args) == 1 else error)
    if text[:1] in "'\"":
        try:
            text = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
    return " ".join(text.split()) or type(error).__name__


def report_user_error(prog: str, error: BaseException) -> str:
    """``prog: message`` for :func:`run_command`. An error raised by geossl's own code (its
    message names the field, file or record) stands alone; one raised elsewhere (numpy, json,
    the OS, ...) also names its type and how to see the traceback."""
    text = one_line(error)
    frames = traceback.extract_tb(error.__traceback__)
    where = os.path.abspath(frames[-1].filename) if frames else ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own = type(error).__module__.split(".")[0] in ("geossl", "data_prep") or any(
        where.startswith(os.path.join(root, package) + os.sep)
        for package in ("geossl", "data_prep", "benchmarks"))
    if not own:
        text = f"{type(error).__name__}: {text} ({TRACEBACK_VARIABLE}=1 shows the traceback)"
    return f"{prog}: {text}"


def traceback_requested() -> bool:
    """Whether ``GEOSSL_TRACEBACK`` asks for tracebacks instead of one-line reports."""
    return os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0")


def run_command(main, prog: str, status: int = 1):
    """``main()`` of a command line; a :data:`USER_ERRORS` error ends it with one line on stderr
    and exit ``status`` instead of a traceback (``GEOSSL_TRACEBACK=1``: raised as it is)."""
    try:
        return main()
    except USER_ERRORS as e:
        if traceback_requested():
            raise
        print(report_user_error(prog, e), file=sys.stderr)
        sys.exit(status)
