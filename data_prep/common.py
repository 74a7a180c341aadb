"""Shared pieces of the data_prep CLIs: GeoTIFF band reading and the writer flags.

A converter lists its work items (folders, indices), names a picklable ``make_record(item) ->
record dict`` and calls ``write_shards`` (geossl.data.parallel_writer, re-exported here): one
process writes each shard atomically, a tqdm bar counts records. ``make_record`` raises
``BadInputError`` (naming the file) for an input it cannot use: the run stops on it, or with
``skip_bad`` counts it as skipped and goes on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

import numpy as np

from geossl import errors
from geossl.arg_types import non_negative_int, positive_int  # noqa: F401 - re-exported
from geossl.data.parallel_writer import BadInputError, write_shards  # noqa: F401 - re-exported
from geossl.train import signals


# ---------------------------------------------------------------------------------------------
# Running a CLI


def run_cli(main: Callable[[], object], prog: str) -> None:
    """Runs a data_prep CLI's ``main()``: SIGINT (Ctrl-C) or SIGTERM stops it with one line on
    stderr and exit status 130 / 143, no traceback. Shards being written are staged under
    hidden names, so the stop removes them and leaves an older set as it was; only a stop while
    the finished shards replace the older set (renames, a moment) leaves it marked
    ``PREFIX.incomplete`` (readers refuse it until the same command is run again). An input it
    cannot use (BadInputError, naming the file), a missing input folder or any other ValueError /
    OSError is one line ``prog: message`` and exit status 1, the folder unchanged (bad flags:
    argparse's, status 2). ``GEOSSL_TRACEBACK=1`` re-raises those errors with their traceback."""
    signals.install_interrupt_handlers()
    try:
        main()
    except errors.USER_ERRORS as e:
        if errors.traceback_requested():
            raise
        line = errors.report_user_error(prog, e)
        if isinstance(e, BadInputError) and "--skip_bad" not in line:
            line += " [--skip_bad skips such inputs, counted in the summary]"
        print(line, file=sys.stderr)
        sys.exit(1)
    except (signals.Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{prog}: stopped by {signals.signal_name(signum)}; the shards it was writing are "
              f"removed and an older set is kept as it was (stopped while replacing it: "
              f"PREFIX.incomplete, refused until the same command is run again)",
              file=sys.stderr)
        sys.exit(signals.exit_code(signum))


# ---------------------------------------------------------------------------------------------
# GeoTIFF bands


def read_band(path: str) -> np.ndarray:
    """One single-band GeoTIFF as a (H, W) array in its stored dtype."""
    import tifffile

    if not os.path.isfile(path):
        raise BadInputError(f"{path}: missing band file")
    try:
        array = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for broken files
        raise BadInputError(f"{path}: unreadable TIFF ({type(e).__name__}: {e})") from None
    array = np.squeeze(array)
    if array.ndim != 2:
        raise BadInputError(f"{path}: expected a single-band image (H, W), found shape "
                            f"{array.shape}")
    return array


def upsample_to(band: np.ndarray, size: int, path: str) -> np.ndarray:
    """(h, w) -> (size, size) by pixel repetition; size must be an integer multiple of h == w.

    Repetition (nearest neighbour on the aligned grid) keeps every stored value exact, unlike
    bilinear resampling, and leaves any smoothing to the model's input pipeline.
    """
    h, w = band.shape
    if h != w or h == 0 or size % h:
        raise BadInputError(f"{path}: band of size {h}x{w} does not fit the {size}x{size} grid "
                            f"(expected a square band of size {size}/k for an integer k)")
    factor = size // h
    if factor == 1:
        return band
    return np.repeat(np.repeat(band, factor, axis=0), factor, axis=1)


def stack_bands(arrays: Sequence[np.ndarray], paths: Sequence[str]) -> np.ndarray:
    """Bands (each (S, S)) -> (S, S, C); bands of different dtypes are an error naming them."""
    if len({a.dtype for a in arrays}) > 1:
        found = ", ".join(f"{os.path.basename(p)}={a.dtype}" for a, p in zip(arrays, paths))
        raise BadInputError(f"{os.path.dirname(paths[0])}: bands have different dtypes ({found})")
    return np.stack(arrays, axis=-1)


def channels_last(array: np.ndarray, channels: int) -> np.ndarray:
    """(channels, H, W) band planes -> (H, W, channels); any other array is returned as it is."""
    if array.ndim == 3 and array.shape[0] == channels and array.shape[-1] != channels:
        return np.moveaxis(array, 0, -1)
    return array


def output_folder(text: str) -> str:
    """argparse type: a folder to write in (existing or new), not a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder (existing or new), found the file "
                                         f"{text}")
    return text


def add_writer_flags(parser: argparse.ArgumentParser, *, prefix: str | None, num_shards: int,
                     with_prefix: bool = True) -> None:
    """--output, --prefix (not with ``with_prefix=False``: CLIs naming their sets by split),
    --num_shards, --num_workers, --skip_bad."""
    parser.add_argument("--output", required=True, type=output_folder,
                        help="folder for the shards")
    if with_prefix:
        parser.add_argument("--prefix", default=prefix, help="shard name prefix")
    parser.add_argument("--num_shards", type=positive_int, default=num_shards,
                        help="shards to write")
    parser.add_argument("--num_workers", type=positive_int, default=None,
                        help="processes (default: min(num_shards, CPUs))")
    parser.add_argument("--skip_bad", action="store_true",
                        help="skip unusable inputs (counted in the summary) instead of stopping")
