"""Which shard files to train on: ``config.data.train``, or the synthetic demo data generated once
into ``default_data_dir()`` ($GEOSSL_DATA, else ~/.cache/geossl/synthetic-v1).

The demo data has two renderings of the same scenes (geossl.data.synthetic): Sentinel-2
(``train-*``, ``heldout-*``) and Sentinel-1 (``s1-train-*``, ``s1-heldout-*``). A config whose
``data.bands`` are all Sentinel-1 bands (VV, VH) trains on the S1 sets, any other on the S2 sets
(:func:`demo_modality`); the S1 sets are added to an S2-only folder on first use."""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile

from absl import logging

from geossl.data import bands as bands_lib

_DEMO_SHARDS = "train-*.tfrecord"


def default_data_dir() -> str:
    return os.path.expanduser(os.environ.get("GEOSSL_DATA", "~/.cache/geossl/synthetic-v1"))


def demo_modality(bands) -> str:
    """The synthetic rendering that ``bands`` (a config's ``data.bands``) read: "s1" when every
    band is a Sentinel-1 band (VV, VH), else "s2"."""
    names = {bands_lib.canonical(b) for b in (bands or ())}
    return "s1" if names and names <= set(bands_lib.S1) else "s2"


def demo_files(modality: str = "s2", directory: str | None = None) -> str:
    """The glob of the demo training shards of ``modality``, generated first where missing."""
    from geossl.data import synthetic
    directory = directory or default_data_dir()
    if not glob.glob(os.path.join(directory, _DEMO_SHARDS)):
        generate_demo_data(directory, modality)
    if modality != "s2" and not synthetic.is_current(directory, modality):
        add_demo_rendering(directory, modality)
    return os.path.join(directory, f"{synthetic.set_prefix(modality, 'train')}-*.tfrecord")


def heldout_pattern(train_file: str) -> str:
    """The labelled held-out shards beside a training shard: a set named ``train`` or ``X-train``
    (``s1-train``) pairs with ``heldout`` / ``X-heldout``, any other set with ``heldout``."""
    folder, name = os.path.split(os.path.abspath(train_file))
    prefix = re.sub(r"-\d{5}-of-\d{5}\.tfrecord(\.gz)?$", "", name)
    paired = prefix == "train" or prefix.endswith(("-train", "_train"))
    held = prefix[:-len("train")] + "heldout" if paired else "heldout"
    return os.path.join(folder, f"{held}-*.tfrecord")


def resolve_train_files(config) -> list[str]:
    """``config.data.train`` (glob or list); empty → the synthetic demo data of the config's
    bands (:func:`demo_modality`), generated once."""
    return resolve_files(config.data.get("train", ""), config.data.get("bands", None))


def resolve_files(pattern, bands) -> list[str]:
    """Sorted shard paths of ``pattern`` (glob or list of globs, ``~`` expanded); empty → the
    synthetic demo data of ``bands`` (:func:`demo_modality`), generated once."""
    if not pattern:
        pattern = demo_files(demo_modality(bands))
    from geossl.data.pipeline import train_files   # grain, only when training files are needed
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return train_files([os.path.expanduser(p) for p in patterns])


def generate_demo_data(directory: str, modality: str = "s2") -> None:
    """Generates the synthetic data (S2, and S1 for ``modality`` "s1") into a temporary folder
    renamed into place (no partial data)."""
    from geossl.data import synthetic
    logging.info("no data configured: generating the synthetic demo data in %s", directory)
    parent = os.path.dirname(directory.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        # In-process (a few seconds): worker processes would be spawned, which re-runs a user's
        # script that lacks an ``if __name__ == "__main__"`` guard, endlessly.
        synthetic.generate(tmp, num_workers=1, modality="s2" if modality == "s2" else "both")
        try:
            os.rename(tmp, directory)
        except OSError:  # another process finished first, or an empty folder is in the way
            if glob.glob(os.path.join(directory, _DEMO_SHARDS)):
                return
            os.rmdir(directory)
            os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_demo_rendering(directory: str, modality: str) -> None:
    """Renders ``modality`` of the demo scenes (with the S2 sets' parameters) in a temporary folder
    inside ``directory`` and moves it in: shards, then manifests, then (after removing an older
    set's shards or an interrupted writer's marker) its metadata, which makes it current
    (``synthetic.is_current``). The S2 sets are not touched."""
    from geossl.data import manifest, synthetic
    params = (synthetic.read_meta(directory, "s2") or {}).get("params", {})
    logging.info("adding the %s rendering of the synthetic demo data to %s", modality, directory)
    tmp = tempfile.mkdtemp(prefix=f".{modality}-", dir=directory)
    try:
        synthetic.generate(tmp, **params, modality=modality, num_workers=1, verbose=False)
        meta = synthetic.META[modality]
        names = sorted((n for n in os.listdir(tmp) if n != meta),
                       key=lambda n: (n.endswith(".manifest.json"), n))
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
        for split in ("train", "heldout"):
            prefix = synthetic.set_prefix(modality, split)
            stale = [p for p in manifest.shards_on_disk(directory, prefix)
                     if os.path.basename(p) not in names]
            for path in stale + glob.glob(manifest.marker_path(glob.escape(directory), prefix)):
                os.remove(path)
        os.replace(os.path.join(tmp, meta), os.path.join(directory, meta))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
