"""A set of shards is complete or refused: the writer's manifest and the readers' check.

``write_shards`` marks ``<prefix>.incomplete`` before it writes, and only after every shard is
in place writes ``<prefix>.manifest.json`` (shard names, records, bytes, CRC32C of each file),
removes the older set's shards of the same prefix and then the marker. Readers call
:func:`check_shard_set`: a marker means an interrupted run (refused); with a manifest, a listed
shard that is missing or has another size, or a shard of that prefix that is not listed, is
refused by name. Shards without either file (written by TensorFlow or another tool) pass.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence

import crc32c

from geossl.errors import ConfigError

_SHARD = re.compile(r"^(?P<prefix>.+)-\d{5}-of-\d{5}\.tfrecord(\.gz)?$")


class IncompleteDatasetError(ConfigError):
    """A shard set that its manifest (or an interrupted writer's marker) says is not whole."""


def manifest_path(folder: str, prefix: str) -> str:
    return os.path.join(folder, f"{prefix}.manifest.json")


def marker_path(folder: str, prefix: str) -> str:
    return os.path.join(folder, f"{prefix}.incomplete")


def begin(folder: str, prefix: str) -> None:
    """Before writing: the marker is placed and the old manifest withdrawn."""
    os.makedirs(folder, exist_ok=True)
    with open(marker_path(folder, prefix), "w") as f:
        f.write("a data_prep run is writing (or was interrupted while writing) these shards\n")
    if os.path.exists(manifest_path(folder, prefix)):
        os.remove(manifest_path(folder, prefix))


def file_crc32c(path: str, chunk: int = 1 << 24) -> int:
    value = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            value = crc32c.crc32c(block, value)
    return value


def finish(folder: str, prefix: str, paths: Sequence[str], records: Sequence[int]) -> dict:
    """After every shard is written: manifest (atomically), old set removed, marker removed."""
    shards = [{"name": os.path.basename(p), "records": int(n), "bytes": os.path.getsize(p),
               "crc32c": file_crc32c(p)} for p, n in zip(paths, records)]
    manifest = {"prefix": prefix, "records": int(sum(records)), "shards": shards}
    tmp = manifest_path(folder, prefix) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, manifest_path(folder, prefix))
    keep = {s["name"] for s in shards}
    for path in _shards_on_disk(folder, prefix):
        if os.path.basename(path) not in keep:  # the older set this run replaces
            for stale in (path, path + ".index"):
                if os.path.exists(stale):
                    os.remove(stale)
    os.remove(marker_path(folder, prefix))
    return manifest


def _shards_on_disk(folder: str, prefix: str) -> list[str]:
    pattern = os.path.join(glob.escape(folder), f"{glob.escape(prefix)}-*-of-*.tfrecord*")
    return sorted(p for p in glob.glob(pattern)
                  if not p.endswith(".index") and _SHARD.match(os.path.basename(p)))


def check_shard_set(files: Sequence[str]) -> None:
    """Raises :class:`IncompleteDatasetError` naming the folder, the prefix and each missing,
    resized or unlisted shard, for every (folder, prefix) set among ``files``."""
    sets = sorted({(os.path.dirname(os.path.abspath(f)), m.group("prefix"))
                   for f in files if (m := _SHARD.match(os.path.basename(f)))})
    for folder, prefix in sets:
        if os.path.exists(marker_path(folder, prefix)):
            raise IncompleteDatasetError(
                f"{folder}: the {prefix!r} shards are incomplete ({marker_path(folder, prefix)} "
                f"exists: the data_prep run writing them stopped); run it again")
        if not os.path.exists(manifest_path(folder, prefix)):
            continue
        with open(manifest_path(folder, prefix)) as f:
            listed = {s["name"]: s for s in json.load(f)["shards"]}
        on_disk = {os.path.basename(p): p for p in _shards_on_disk(folder, prefix)}
        problems = [f"missing {name} (listed with {s['records']} records)"
                    for name, s in listed.items() if name not in on_disk]
        problems += [f"{name}: {os.path.getsize(on_disk[name])} bytes, the manifest says "
                     f"{s['bytes']}" for name, s in listed.items()
                     if name in on_disk and os.path.getsize(on_disk[name]) != s["bytes"]]
        problems += [f"extra {name} (not in the manifest)" for name in on_disk if name not in listed]
        if problems:
            raise IncompleteDatasetError(
                f"{folder}: the {prefix!r} shards do not match {os.path.basename(manifest_path(folder, prefix))}:"
                "\n  " + "\n  ".join(problems[:20]))
