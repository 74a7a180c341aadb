"""argparse types shared by every command line (geossl.cli, data_prep): a bad value is argparse's
one line, ``argument --flag: expected ..., found ...`` (exit 2)."""

from __future__ import annotations

import argparse


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {value}")
        return value
    return parse


#: argparse types: an integer >= 1, >= 0.
positive_int, non_negative_int = int_at_least(1), int_at_least(0)
