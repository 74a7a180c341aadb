"""Which shard files to train on: ``config.data.train``, or the synthetic demo data generated once
into ``default_data_dir()`` ($GEOSSL_DATA, else ~/.cache/geossl/synthetic-v1)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from absl import logging

_DEMO_SHARDS = "train-*.tfrecord"


def default_data_dir() -> str:
    return os.path.expanduser(os.environ.get("GEOSSL_DATA", "~/.cache/geossl/synthetic-v1"))


def resolve_train_files(config) -> list[str]:
    """``config.data.train`` (glob or list); empty → the synthetic demo data, generated once."""
    pattern = config.data.get("train", "")
    if not pattern:
        directory = default_data_dir()
        if not glob.glob(os.path.join(directory, _DEMO_SHARDS)):
            generate_demo_data(directory)
        pattern = os.path.join(directory, _DEMO_SHARDS)
    from geossl.data.pipeline import train_files   # grain, only when training files are needed
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return train_files([os.path.expanduser(p) for p in patterns])


def generate_demo_data(directory: str) -> None:
    """Generates the synthetic data into a temporary folder renamed into place (no partial data)."""
    from geossl.data import synthetic
    logging.info("no data configured: generating the synthetic demo data in %s", directory)
    parent = os.path.dirname(directory.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        # In-process (a few seconds): worker processes would be spawned, which re-runs a user's
        # script that lacks an ``if __name__ == "__main__"`` guard, endlessly.
        synthetic.generate(tmp, num_workers=1)
        try:
            os.rename(tmp, directory)
        except OSError:  # another process finished first, or an empty folder is in the way
            if glob.glob(os.path.join(directory, _DEMO_SHARDS)):
                return
            os.rmdir(directory)
            os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
