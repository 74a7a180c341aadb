"""A set of shards is complete or refused: the writer's manifest and the readers' check.

``write_shards`` writes every shard under a hidden staged name; only then :func:`replace_set`
marks ``<prefix>.incomplete``, moves the shards onto their names, writes ``<prefix>.manifest.json``
(shard names, records, bytes, CRC32C of each file), removes the older set's shards of the same
prefix and then the marker (a run stopped inside these renames leaves the marker). Readers call
:func:`check_shard_set`: a marker means an interrupted run (refused); with a manifest, a listed
shard that is missing or has another size, or a shard of that prefix that is not listed, is
refused by name. Shards without either file (written by TensorFlow or another tool) pass.
Training checks sizes only; :func:`verify_shard_set` (``python -m data_prep.verify``) reads every
byte against the recorded CRC32C.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence

import crc32c

from geossl.errors import ConfigError, one_line_list

_SHARD = re.compile(r"^(?P<prefix>.+)-\d{5}-of-\d{5}\.tfrecord(\.gz)?$")


class IncompleteDatasetError(ConfigError):
    """A shard set that its manifest (or an interrupted writer's marker) says is not whole."""


class ManifestError(ConfigError):
    """A ``*.manifest.json`` that is not a readable manifest; the message names the file."""


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


def file_crc32c(path: str, chunk: int = 1 << 24, progress=None) -> int:
    """CRC32C of a file's bytes; ``progress(n)`` is called with each chunk's size."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            value = crc32c.crc32c(block, value)
            if progress is not None:
                progress(len(block))
    return value


def shard_entries(paths: Sequence[str], records: Sequence[int],
                  names: Sequence[str] | None = None) -> list[dict]:
    """The manifest's entry of each shard file (named ``names``, default the files' names)."""
    names = names or [os.path.basename(p) for p in paths]
    return [{"name": name, "records": int(n), "bytes": os.path.getsize(p),
             "crc32c": file_crc32c(p)} for name, p, n in zip(names, paths, records)]


def replace_set(folder: str, prefix: str, staged: Sequence[str], paths: Sequence[str],
                records: Sequence[int]) -> dict:
    """Makes the written ``staged`` shard files (and their ``.index``) the set ``paths``: CRC32Cs
    first, then marker, renames, manifest, the older set's other shards removed, marker removed.
    Only a stop during the renames leaves the set marked incomplete."""
    entries = shard_entries(staged, records, [os.path.basename(p) for p in paths])
    begin(folder, prefix)
    for source, target in zip(staged, paths):
        os.replace(source, target)
        if os.path.exists(source + ".index"):
            os.replace(source + ".index", target + ".index")
    return _complete(folder, prefix, entries)


def _complete(folder: str, prefix: str, shards: list[dict]) -> dict:
    manifest = {"prefix": prefix, "records": sum(s["records"] for s in shards), "shards": shards}
    tmp = manifest_path(folder, prefix) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, manifest_path(folder, prefix))
    keep = {s["name"] for s in shards}
    for path in shards_on_disk(folder, prefix):
        if os.path.basename(path) not in keep:  # the older set this run replaces
            for stale in (path, path + ".index"):
                if os.path.exists(stale):
                    os.remove(stale)
    os.remove(marker_path(folder, prefix))
    return manifest


def shards_on_disk(folder: str, prefix: str) -> list[str]:
    """The shard files of set ``prefix`` in ``folder`` (``prefix-NNNNN-of-NNNNN.tfrecord[.gz]``),
    not those of another set whose name starts with it (``train-2023`` beside ``train``)."""
    pattern = os.path.join(glob.escape(folder), f"{glob.escape(prefix)}-*-of-*.tfrecord*")
    return sorted(p for p in glob.glob(pattern)
                  if (m := _SHARD.match(os.path.basename(p))) and m.group("prefix") == prefix)


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
        listed = {s["name"]: s for s in read_manifest(manifest_path(folder, prefix))["shards"]}
        on_disk = {os.path.basename(p): p for p in shards_on_disk(folder, prefix)}
        problems = [f"missing {name} (listed with {s['records']} records)"
                    for name, s in listed.items() if name not in on_disk]
        problems += [f"{name}: {problem}" for name, s in listed.items() if name in on_disk
                     and (problem := _size_problem(on_disk[name], s["bytes"]))]
        problems += [f"extra {name} (not in the manifest)" for name in on_disk if name not in listed]
        if problems:
            raise IncompleteDatasetError(
                f"{folder}: the {prefix!r} shards do not match "
                f"{os.path.basename(manifest_path(folder, prefix))}: {one_line_list(problems)}")


def read_manifest(path: str) -> dict:
    """The manifest at ``path``; :class:`ManifestError` naming the file if it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not a shard manifest (unreadable JSON: {e}); write the "
                            f"set again") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: a directory, expected a shard manifest file") from None
    problem = _manifest_problem(data)
    if problem:
        raise ManifestError(f"{path}: not a shard manifest ({problem}); write the set again")
    return data


def _manifest_problem(data) -> str | None:
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    if not isinstance(data.get("prefix"), str):
        return f"expected a string 'prefix', found {data.get('prefix')!r:.60}"
    shards = data.get("shards")
    if not isinstance(shards, list):
        return f"expected a list 'shards', found {shards!r:.60}"
    for k, shard in enumerate(shards):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str)
                and all(isinstance(shard.get(key), int) for key in ("records", "bytes", "crc32c"))):
            return (f"shards[{k}]: expected {{name, records, bytes, crc32c}}, "
                    f"found {shard!r:.80}")
    return None


def _size_problem(path: str, listed_bytes: int) -> str | None:
    if os.path.isdir(path):
        return "a directory, expected a shard file"
    size = os.path.getsize(path)
    return None if size == listed_bytes else f"{size} bytes, the manifest says {listed_bytes}"


def verify_shard_set(path: str, *, workers: int = 8, progress=None) -> list[tuple[str, str]]:
    """``[(shard name, problem)]`` of the set whose manifest is ``path`` (empty: whole and
    intact): the writer's marker, listed shards missing, resized or with another CRC32C (read in
    ``workers`` threads; ``progress(n)`` gets the bytes read), unlisted shards of the prefix."""
    from concurrent.futures import ThreadPoolExecutor
    folder = os.path.dirname(os.path.abspath(path))
    manifest = read_manifest(path)
    prefix = manifest["prefix"]
    problems = []
    if os.path.exists(marker_path(folder, prefix)):
        problems.append((os.path.basename(marker_path(folder, prefix)),
                         "a data_prep run writing this set stopped: run it again"))
    listed = {s["name"]: s for s in manifest["shards"]}
    on_disk = {os.path.basename(p): p for p in shards_on_disk(folder, prefix)}
    to_read = []
    for name, shard in listed.items():
        if name not in on_disk:
            problems.append((name, f"missing (listed with {shard['records']} records)"))
        elif problem := _size_problem(on_disk[name], shard["bytes"]):
            problems.append((name, problem))
        else:
            to_read.append((name, shard))
    problems += [(name, "not in the manifest") for name in sorted(on_disk) if name not in listed]

    def check(item):
        name, shard = item
        found = file_crc32c(on_disk[name], progress=progress)
        if found != shard["crc32c"]:
            return name, f"CRC32C {found:#010x}, the manifest says {shard['crc32c']:#010x}"
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems += [p for p in pool.map(check, to_read) if p is not None]
    return problems


def find_manifests(target: str) -> list[str]:
    """Manifests named by ``target``: a folder (each ``*.manifest.json`` in it), a manifest file,
    a set's path prefix (``DIR/train``) or a glob of shards (their sets' manifests)."""
    if os.path.isdir(target):
        return sorted(glob.glob(os.path.join(glob.escape(target), "*.manifest.json")))
    if target.endswith(".manifest.json"):
        return [target] if os.path.exists(target) else []
    if os.path.exists(target + ".manifest.json"):
        return [target + ".manifest.json"]
    sets = {(os.path.dirname(os.path.abspath(f)), m.group("prefix")) for f in glob.glob(target)
            if (m := _SHARD.match(os.path.basename(f)))}
    paths = [manifest_path(folder, prefix) for folder, prefix in sets]
    return sorted(p for p in paths if os.path.exists(p))
