"""Checkpoints: orbax CheckpointManager with the train state, the data position and a meta record.

Layout of a workdir::

    config.json              the run's config
    run.lock                 while a run uses the workdir (train/workdir_lock.py)
    metrics.jsonl            one object per step (process 0)
    checkpoints/<step>/{state,data,meta}   state less a frozen teacher (rebuilt from config.teacher
                                           on resume; meta holds its fingerprint); data: the global
                                           stream position {"position", "global_batch"}

The state restores onto the shardings of the mesh of the resuming run and the data position is
global (geossl.data.pipeline), so a checkpoint written on N devices or processes resumes on M.
    export/                  PyTorch exports of the backbone
    backbone/ + config.json  instead of checkpoints/: a backbone imported from PyTorch
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import re
import shutil
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from geossl.data import bands as bands_lib
from geossl.errors import one_line_list
from geossl.parallel.sharding import path_str


class CheckpointMismatchError(ValueError):
    """The checkpoint in the workdir does not fit the configured run."""


class NoReadableCheckpointError(RuntimeError):
    """Every checkpoint of the workdir failed to restore."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message starts with the root cause's reason (e.g.
    "No space left on device")."""


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__`` / ``__context__`` chain."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        error = inner
        seen.add(id(error))
    return error


def _first_line(error: BaseException) -> str:
    """The first line of the root cause (orbax wraps tensorstore's error, which names the file)."""
    error = _root_cause(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _os_reason(error: BaseException) -> str | None:
    """The operating system's reason behind ``error`` ("No space left on device"): an OSError's
    strerror, or tensorstore's ``[os_error_code='28']`` spelled out."""
    root = _root_cause(error)
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    code = re.search(r"os_error_code='(\d+)'", str(root))
    return os.strerror(int(code.group(1))) if code else None


def write_failure(directory: str, error: BaseException) -> CheckpointWriteError:
    """One line: the reason first, then where and the root cause's first line."""
    reason = _os_reason(error)
    return CheckpointWriteError(f"{reason + ': ' if reason else ''}checkpoint {directory} was not "
                                f"written ({_first_line(error)})")


def shape_summary(tree) -> dict[str, list[int]]:
    """{"params/blocks_0/attn/qkv/kernel": [384, 1152], ...} of a pytree of arrays/structs."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(p): list(getattr(x, "shape", ())) for p, x in flat}


def fingerprint(tree) -> str:
    """sha256 over a pytree's paths, dtypes, shapes and bytes: names a frozen teacher's weights in
    a checkpoint's meta without storing them."""
    import hashlib
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{path_str(path)}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def make_meta(config, state) -> dict:
    return {"model": config.model.name, "objective": config.objective.name,
            "inputs": input_meta(config.data),
            "params": shape_summary(state.params), "opt_state": shape_summary(state.opt_state)}


def input_meta(data) -> dict:
    """What the weights learnt to read: the input bands in order, their normalisation and any
    wavelength overrides (``config.data``); a resume that changes them is refused."""
    return {"bands": [str(b) for b in data.bands], "norm": str(data.norm),
            "wavelengths": {str(k): float(v) for k, v in dict(data.get("wavelengths", {})).items()}}


def check_meta(saved: dict, expected: dict, directory: str) -> None:
    """Raises CheckpointMismatchError naming every difference between two meta records."""
    problems = []
    for key in ("model", "objective"):
        if saved.get(key) != expected[key]:
            problems.append(f"{key}: checkpoint has {saved.get(key)!r}, config asks {expected[key]!r}")
    saved_inputs = saved.get("inputs")  # absent from checkpoints of geossl before session 25
    for name, value in (expected.get("inputs", {}).items() if saved_inputs else ()):
        if saved_inputs.get(name) != value:
            problems.append(f"config.data.{name}: checkpoint has {saved_inputs.get(name)!r}, "
                            f"config asks {value!r}")
    if "teacher" in expected and saved.get("teacher") != expected["teacher"]:
        problems.append(f"frozen teacher: the run started with weights {saved.get('teacher')}, "
                        f"config.teacher now gives {expected['teacher']}")
    for group, what in (("params", "parameter"), ("opt_state", "optimiser state")):
        got, want = saved.get(group, {}), expected[group]
        for name in sorted(set(got) | set(want)):
            if name not in got:
                problems.append(f"{what} {name} {want[name]} is missing from the checkpoint")
            elif name not in want:
                problems.append(f"checkpoint {what} {name} {got[name]} is not in the configured run")
            elif list(got[name]) != list(want[name]):
                problems.append(f"{what} {name}: checkpoint shape {got[name]}, configured {want[name]}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint in {directory} does not match the config: {one_line_list(problems)}")


def data_position(record: dict | None, step: int, global_batch: int) -> int:
    """Global stream rows consumed at ``step``: the checkpoint's ``data`` record, or step × global
    batch for a checkpoint without one (written by a run whose every step took one global batch,
    e.g. one holding a grain iterator state instead)."""
    if record is None:
        return int(step) * int(global_batch)
    return int(record["position"])


class Checkpointer:
    """Saves/restores (state, data position, meta) at a step; async, keeps the last ``keep``."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._in_flight: int | None = None  # the step whose asynchronous write may still run
        _drop_background_save_errors()
        _silence_abandoned_reads()  # a failed save's writes call back into its closed event loop
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data: dict | None, meta: dict) -> None:
        """Starts writing ``step`` (asynchronously unless ``async_save=False``); ``data``: the
        stream position record ({"position", "global_batch"}) or None. A failed write (this
        one's, or the previous one's still in flight) raises CheckpointWriteError."""
        args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data is not None:
            args["data"] = ocp.args.JsonSave(data)
        with self._write_errors(step):
            self.manager.save(step, args=ocp.args.Composite(**args), force=True)
        self._in_flight = step

    def restore(self, step: int, abstract_state, expected_meta: dict):
        """``(state, data)``: the state restored onto ``abstract_state``'s shardings
        (ShapeDtypeStructs with .sharding, those of the resuming run's mesh) and the data position
        record (None when the checkpoint has none)."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        check_meta(meta, expected_meta, os.path.join(self.directory, str(step)))
        state = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
        return state, self._data_record(step)

    def _data_record(self, step: int) -> dict | None:
        if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
            return None
        try:
            record = self.manager.restore(step, args=ocp.args.Composite(
                data=ocp.args.JsonRestore()))["data"]
        except Exception as e:  # noqa: BLE001 - a grain iterator state of an earlier version,
            from absl import logging   # or a damaged record: said, the position then guessed
            logging.warning(
                "%s: the data position record is unreadable (%s); the input stream continues at "
                "step × global_batch, as for a checkpoint written without one",
                os.path.join(self.directory, str(step), "data"), " ".join(str(e).split())[:200])
            return None
        return record if isinstance(record, dict) and "position" in record else None

    def restore_latest_readable(self, abstract_state, expected_meta: dict):
        """``(step, state, data)`` from the newest checkpoint that restores, or
        ``(None, None, None)`` when there is none. A newer unreadable one is moved aside to ``<step>.unreadable`` (never
        deleted: the run will write that step again) with one warning naming it and what is wrong;
        a checkpoint of another run (CheckpointMismatchError) stops at once; when none restores,
        NoReadableCheckpointError lists each step's error and nothing is moved."""
        from absl import logging
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, data = self.restore(step, abstract_state, expected_meta)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # orbax / tensorstore / grain raise many kinds
                _silence_abandoned_reads()
                failures.append((step, _first_line(e)))
                continue
            for bad, why in failures:
                aside = self._move_aside(bad)
                logging.warning("checkpoint %s/%d is unreadable (%s); moved to %s, resuming from "
                                "step %d", self.directory, bad, why, aside, step)
            if failures:
                self.manager.reload()
            return step, state, data
        if failures:
            failures = [f"step {s}: {why}" for s, why in failures]
            raise NoReadableCheckpointError(
                f"no readable checkpoint in {self.directory}: {one_line_list(failures)}")
        return None, None, None

    def _move_aside(self, step: int) -> str:
        """Renames checkpoints/<step> to a free ``<step>.unreadable[.N]`` (process 0); returns it."""
        source = os.path.join(self.directory, str(step))
        target, n = source + ".unreadable", 1
        while os.path.exists(target):
            target, n = f"{source}.unreadable.{n}", n + 1
        if jax.process_index() == 0:
            os.rename(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"geossl:checkpoint:aside:{step}")
        return target

    def remove_unfinished_writes(self) -> list[str]:
        """Deletes the temporary folders of checkpoint writes that never finished (orbax's
        ``<step>.orbax-checkpoint-tmp-*``, left by a run killed while writing: a partial copy of
        the state each) and returns their names. Only the run holding the workdir's lock calls it,
        once its resume is accepted: a reader's Checkpointer could otherwise race a live write."""
        names = sorted(ocp.path.step.tmp_checkpoints(self.directory))
        if jax.process_index() == 0:
            for name in names:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        if names and jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("geossl:checkpoint:unfinished")
        return names

    def restore_raw(self, step: int | None = None) -> dict:
        """The saved state as nested dicts of numpy arrays (no target needed)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        item = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return jax.tree_util.tree_map(np.asarray, item["state"])

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        """Turns orbax's errors into one CheckpointWriteError naming the step being written (the
        one in flight when a background write failed) and silences the leftovers of the
        abandoned writes."""
        try:
            yield
        except Exception as e:  # orbax / tensorstore / grain raise many kinds
            _silence_abandoned_reads()
            failed = self._in_flight if self._in_flight is not None else step
            self._in_flight = None
            raise write_failure(os.path.join(self.directory, str(failed)), e) from e

    def wait(self) -> None:
        with self._write_errors(None):
            self.manager.wait_until_finished()
        self._in_flight = None

    def close(self) -> None:
        self.wait()
        self.manager.close()


# ----- config files ---------------------------------------------------------------------------
def write_config(workdir: str, config) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a geossl workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


# ----- backbones --------------------------------------------------------------------------------
#: Input bands a backbone-only workdir records by default, by its number of input channels.
DEFAULT_BANDS = {13: bands_lib.S2_L1C, 12: bands_lib.S2_L2A, 2: bands_lib.S1, 3: bands_lib.S2_RGB}


def save_backbone(variables: dict, arch: str, directory: str, *, bands=None,
                  norm: str | None = None, **model_kwargs) -> None:
    """Writes a backbone-only workdir (``backbone/`` orbax pytree + ``config.json``). ``bands``:
    the model's input bands in order (default: ``DEFAULT_BANDS`` of ``in_chans`` when listed),
    recorded as ``config.data.bands`` so that probes select and zero-fill bands by name;
    ``norm``: their normalisation, recorded as ``config.data.norm``."""
    config = ml_collections.ConfigDict({"model": {"name": arch, **model_kwargs},
                                        "objective": {"name": "backbone"}})
    bands = bands or DEFAULT_BANDS.get(model_kwargs.get("in_chans"))
    data = {}
    if bands:
        if "in_chans" in model_kwargs and len(bands) != model_kwargs["in_chans"]:
            raise ValueError(f"save_backbone: {len(bands)} bands {list(bands)} for a model with "
                             f"in_chans={model_kwargs['in_chans']}")
        data["bands"] = [str(b) for b in bands]
    if norm:
        data["norm"] = norm
    if data:
        config.data = data
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.path.abspath(directory), "backbone")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, jax.tree_util.tree_map(np.asarray, variables), force=True)
    write_config(directory, config)


def load_backbone(workdir: str, step: int | None = None) -> tuple[str, dict]:
    """``(arch, variables)`` of the backbone in a training or backbone-only workdir."""
    config = load_config(workdir)
    path = os.path.join(os.path.abspath(workdir), "backbone")
    if os.path.isdir(path):
        with ocp.StandardCheckpointer() as ckpt:
            variables = jax.tree_util.tree_map(np.asarray, ckpt.restore(path))
        return config.model.name, variables
    from geossl import objectives
    raw = Checkpointer(workdir, async_save=False).restore_raw(step)
    objective = objectives.create(config)
    variables = objectives.Variables(params=raw["params"], teacher=raw.get("teacher"),
                                     extra=raw.get("extra", {}))
    return objective.backbone_name, objective.backbone_variables(variables)


def load_encoder(workdir: str, step: int | None = None):
    """``(model, variables, config)``: a ready-to-apply backbone from a workdir."""
    from geossl.models.from_config import create_from_config
    arch, variables = load_backbone(workdir, step)
    config = load_config(workdir)
    model_cfg = dict(config.model)
    model_cfg["name"] = arch
    return create_from_config(model_cfg), variables, config


class _AbandonedReads(py_logging.Filter):
    """Drops asyncio's "... exception was never retrieved" records (futures of abandoned reads)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


def _abandoned_read_noise(exc_value, obj=None) -> bool:
    """True for what the reads of a failed orbax restore (or the writes of a failed save) raise
    after they were given up: tensorstore callbacks into the closed event loop, and the abandoned
    read / write coroutines."""
    if isinstance(exc_value, RuntimeError) and "Event loop is closed" in str(exc_value):
        return True
    text = repr(obj)
    return "_read_array_index_and_device_put" in text or "async_serialize" in text


#: orbax's ERROR lines (each with a traceback) from its background save threads; the same error is
#: raised again in the main thread at the next save or wait, which reports it in one line.
_BACKGROUND_SAVE_ERRORS = ("_SignalingThread.run() raised an exception",
                           "Commit operations or the Commit callback in background save thread",
                           "Save Finalize thread")


class _BackgroundSaveErrors(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno < py_logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return not any(s in record.getMessage() for s in _BACKGROUND_SAVE_ERRORS)


def _drop_background_save_errors() -> None:
    """Installs :class:`_BackgroundSaveErrors` once on absl's logger (orbax logs through it)."""
    absl_logger = py_logging.getLogger("absl")
    if not any(isinstance(f, _BackgroundSaveErrors) for f in absl_logger.filters):
        absl_logger.addFilter(_BackgroundSaveErrors())


def _silence_abandoned_reads() -> None:
    """Installs, once per process, filters for the leftovers of failed restores only (a missing
    file otherwise buries its one-line cause under hundreds of traceback lines); every other
    unraisable exception, uncaught exception and asyncio record passes unchanged."""
    if getattr(sys.unraisablehook, "_geossl", False):
        return
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def on_unraisable(info):
        if not _abandoned_read_noise(info.exc_value, info.object):
            unraisable(info)

    def on_exception(kind, value, tb):
        if not _abandoned_read_noise(value):
            excepthook(kind, value, tb)

    on_unraisable._geossl = True
    sys.unraisablehook, sys.excepthook = on_unraisable, on_exception
    py_logging.getLogger("asyncio").addFilter(_AbandonedReads())
