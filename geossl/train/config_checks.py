"""Checks of the trainer's config fields, run before anything is built or compiled.

Each error names the config path, what was expected and what was found. Objectives check their own
``config.objective`` fields when they are created. A frozen teacher's checkpoint and the student's
``config.init`` source are checked here by their header (``pretrained.check_source``,
``check_checkpoint_file``), before the run writes anything.
"""

from __future__ import annotations

import numbers
import os

from geossl import objectives
from geossl.errors import ConfigError
from geossl.train import pretrained
from geossl.train.optim import OPTIMIZER_FIELDS

__all__ = ["ConfigError", "check_config"]


def _number(config, path: str):
    value = config
    for key in path.split("."):
        if key not in value:
            raise ConfigError(f"config.{path}: missing")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise ConfigError(f"config.{path}: expected a number, found {type(value).__name__} {value!r}")
    return value


def _at_least(config, path: str, low, *, integer: bool = False) -> None:
    value = _number(config, path)
    if integer and int(value) != value:
        raise ConfigError(f"config.{path}: expected a whole number, found {value!r}")
    if value < low:
        raise ConfigError(f"config.{path}: expected >= {low}, found {value!r}")


def _check_optimizer(config) -> None:
    """``config.optim.name`` known, its own fields numbers, no other optimiser's fields."""
    name = config.optim.get("name")
    if name not in OPTIMIZER_FIELDS:
        raise ConfigError(f"config.optim.name: expected one of {sorted(OPTIMIZER_FIELDS)}, "
                          f"found {name!r}")
    own = OPTIMIZER_FIELDS[name]
    others = sorted({f for fields in OPTIMIZER_FIELDS.values() for f in fields} - set(own))
    for field in others:
        if field in config.optim:
            raise ConfigError(
                f"config.optim.{field}: not a field of optim.name={name!r}, which takes "
                f"{list(own)} (a section for {name}: configs.common.optim({name!r}, ...); on the "
                f"command line --config.optim.name={name} switches the section)")
    for field in own:
        if field not in config.optim:
            raise ConfigError(f"config.optim.{field}: missing; optim.name={name!r} takes "
                              f"{list(own)}")
        _number(config, f"optim.{field}")


def _check_frozen_teacher(config) -> None:
    """``config.teacher.torch_checkpoint``, when set and the objective's teacher is frozen: its
    syntax, and for a path its header and recorded architecture (no weights are read)."""
    teacher = config.get("teacher")
    source = teacher.get("torch_checkpoint") if teacher else None
    if not source:
        return
    if objectives.create(config).teacher_spec.kind != "frozen":
        return
    pretrained.check_source(source, teacher.model, teacher.get("pretrain"))


def _check_init(config) -> None:
    """``config.init``: one source at most; a ``torch_checkpoint`` by its header, a ``workdir``
    that exists (no weights are read)."""
    init = config.get("init")
    if not init:
        return
    path, workdir = init.get("torch_checkpoint"), init.get("workdir")
    if path and workdir:
        raise ConfigError(f"config.init: set torch_checkpoint or workdir, not both (found "
                          f"{path!r} and {workdir!r})")
    if path:
        pretrained.check_checkpoint_file(
            path, "config.init.torch_checkpoint",
            f"a .safetensors or {'/'.join(pretrained.TORCH_SUFFIXES)} state dict for "
            f"config.model ({config.model.name!r})")
    elif workdir and not os.path.isdir(workdir):
        raise ConfigError(f"config.init.workdir: {workdir} is not a folder; expected a geossl "
                          f"workdir (training or backbone-only)")


def check_config(config) -> None:
    """Raises :class:`ConfigError` for the first field of the trainer's sections out of range, or
    for a frozen teacher's checkpoint that is missing, unreadable or of another architecture."""
    for path in ("total_steps", "global_batch", "checkpoint_every", "log_every",
                 "grad_accum_steps", "keep_checkpoints"):
        _at_least(config, path, 1, integer=True)
    if config.global_batch % config.grad_accum_steps:
        raise ConfigError(f"config.grad_accum_steps: expected a divisor of global_batch "
                          f"{config.global_batch}, found {config.grad_accum_steps}")
    for path in ("lr.base", "lr.final", "lr.warmup_init"):
        if path.split(".")[1] in config.lr:
            _at_least(config, path, 0.0)
    if "warmup_steps" in config.lr:
        _at_least(config, "lr.warmup_steps", 0, integer=True)
    wd = config.optim.weight_decay
    if isinstance(wd, numbers.Number):
        _at_least(config, "optim.weight_decay", 0.0)
    else:
        for key in ("base", "final", "start", "end"):
            if key in wd:
                _at_least(config, f"optim.weight_decay.{key}", 0.0)
    _at_least(config, "optim.clip_norm", 0.0)
    for field, low in (("num_workers", 0), ("worker_batch_size", 0), ("read_threads", 0),
                       ("prefetch_batches", 0)):
        if field in config.get("data", {}):
            _at_least(config, f"data.{field}", low, integer=True)
    _check_optimizer(config)
    for key in ("base", "final"):
        if key in config.ema:
            value = _number(config, f"ema.{key}")
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"config.ema.{key}: expected a momentum in [0, 1], found {value!r}")
    _check_frozen_teacher(config)
    _check_init(config)
