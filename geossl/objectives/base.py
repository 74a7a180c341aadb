"""The objective interface: what one pretraining method plugs into the shared trainer.

A method is one file in ``geossl/objectives/`` defining a subclass of :class:`Objective` registered
with :func:`register`. The trainer (``geossl.train``) owns optimisation, schedules, sharding, gradient
accumulation, the teacher update, checkpoints and metrics; the objective owns its networks, its
host-side view construction and its losses.

Life cycle, as the trainer drives it::

    obj = objectives.create(config)
    sample = obj.make_views(record, np_rng)            # host, per record (grain worker)
    variables = obj.init(rng, batch)                   # Variables(params, teacher, extra)
    variables = obj.with_backbone(variables, loaded)   # trainer: continual init (config.init)
    variables = obj.with_teacher(variables, loaded)    # trainer: frozen teacher (config.teacher)
    loss, aux = obj.loss(params, teacher, extra, batch, rng, step)   # inside the jitted step
    extra = obj.merge_extra(stacked_extras)            # trainer, with grad_accum_steps > 1
    teacher = ema(teacher, obj.teacher_source(params), momentum)     # trainer, if teacher_mode=="ema"

Objectives never read files: the trainer converts torch checkpoints (``geossl.convert``) and
hands them over as arrays through ``with_backbone`` / ``with_teacher``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from geossl.errors import ConfigError
from geossl.models.from_config import create_from_config

PyTree = Any

_REGISTRY: dict[str, type["Objective"]] = {}


@flax.struct.dataclass
class Variables:
    """Everything an objective keeps between steps.

    params:  trainable pytree (student networks and heads), updated by the optimiser.
    teacher: pytree or None. With ``teacher_mode == "ema"`` it has the structure of
             ``teacher_source(params)``; with ``"frozen"`` it is never updated.
    extra:   non-trainable state the loss updates itself (BatchNorm statistics, DINO centre).
    """

    params: PyTree
    teacher: PyTree = None
    extra: PyTree = flax.struct.field(default_factory=dict)


class Objective:
    """Base class of a pretraining method. Subclasses override the methods marked "override"."""

    #: "ema": teacher ← m·teacher + (1−m)·teacher_source(params) after each step (momentum from
    #: config.ema); "frozen": a network described by config.teacher, built and loaded by the
    #: trainer, never updated; "none": no teacher.
    teacher_mode: str = "none"

    def __init__(self, config):
        self.config = config

    @property
    def teacher_model(self):
        """The frozen teacher network of ``config.teacher.model`` (teacher_mode "frozen")."""
        model_cfg = self.config.teacher.model
        if not model_cfg.get("name"):
            raise ValueError("config.teacher.model.name: a frozen teacher needs a model name, "
                             "found none")
        return create_from_config(model_cfg)

    # ----- host side -------------------------------------------------------------------------
    def make_views(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Override. One ShardSource record → one training sample of fixed-shape numpy arrays."""
        raise NotImplementedError

    # ----- device side -----------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Variables:
        """Override. Builds the variables from a (small) batch of samples."""
        raise NotImplementedError

    def loss(self, params: PyTree, teacher: PyTree, extra: PyTree, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        """Override. Returns ``(loss, aux)``: loss a float32 scalar; aux a dict with
        ``"metrics"`` (name → scalar, the loss terms) and ``"extra"`` (the new extra state)."""
        raise NotImplementedError

    def teacher_source(self, params: PyTree) -> PyTree:
        """The part of the student the EMA teacher tracks (structure equal to the teacher)."""
        return params

    def merge_extra(self, extras: PyTree) -> PyTree:
        """The ``extra`` after one optimiser step from the micro-batches' (leaves stacked on axis
        0), each computed from the same starting ``extra``. Default: the mean of float leaves and
        the last of the others, exact for updates affine in a batch mean (an EMA of BatchNorm
        means or of a DINO centre), so ``extra`` advances once per step at any accumulation."""
        def merge(x):
            return jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.floating) else x[-1]
        return jax.tree_util.tree_map(merge, extras)

    def with_backbone(self, variables: Variables, backbone: dict) -> Variables:
        """Override. ``variables`` with the student backbone replaced by ``backbone``
        (``{"params", ["batch_stats"]}``, the structure ``backbone_variables`` returns)."""
        raise NotImplementedError(f"{type(self).__name__} does not support continual initialisation")

    def with_teacher(self, variables: Variables, teacher: dict) -> Variables:
        """``variables`` with the frozen teacher set to ``teacher`` (``{"params",
        ["batch_stats"]}`` of ``teacher_model``, loaded by the trainer)."""
        return variables.replace(teacher=teacher)

    # ----- export -----------------------------------------------------------------------------
    @property
    def backbone_name(self) -> str:
        """Architecture name of the exported backbone (a ``geossl.models`` name)."""
        return self.config.model.name

    def backbone_variables(self, variables: Variables) -> dict:
        """Override. The backbone as ``{"params": ..., ["batch_stats": ...]}`` for export / eval."""
        raise NotImplementedError


def ema_backbone_variables(variables: Variables, use_teacher: bool) -> dict:
    """``backbone_variables`` of an objective with an EMA teacher whose backbone may hold
    BatchNorm statistics in ``extra["batch_stats"]`` / ``extra["teacher_batch_stats"]``: the
    student's (or, ``use_teacher``, the teacher's) backbone as ``{"params", ["batch_stats"]}``."""
    params = variables.teacher if use_teacher else variables.params
    stats = variables.extra["teacher_batch_stats" if use_teacher else "batch_stats"]
    out = {"params": params["backbone"]}
    if stats.get("backbone"):
        out["batch_stats"] = stats["backbone"]
    return out


def dataclass_from_config(cls, section, **fixed):
    """``cls(**fixed, **fields)`` taking every other dataclass field of ``cls`` that ``section``
    (e.g. ``config.data``) sets; lists become tuples. A method's view settings from its config."""
    kw = dict(fixed)
    for field in dataclasses.fields(cls):
        if field.name not in fixed and field.name in section:
            value = section[field.name]
            kw[field.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return cls(**kw)


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator adding an objective to the registry under ``name``."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective {name!r} is registered twice: {_REGISTRY[name]} and {cls}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def create(config) -> Objective:
    """Instantiates ``config.objective.name`` (importing ``geossl.objectives.<name>`` if needed)."""
    name = config.objective.name
    if name not in _REGISTRY:
        import importlib

        try:
            importlib.import_module(f"geossl.objectives.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"geossl.objectives.{name}":
                raise
    if name not in _REGISTRY:
        raise ConfigError(f"config.objective.name: unknown objective {name!r}; expected one of "
                         f"{available()}")
    return _REGISTRY[name](config)


def available() -> list[str]:
    """Objective names: those registered plus the method modules of this package (importing one
    registers it)."""
    import pkgutil
    import geossl.objectives as package
    modules = {m.name for m in pkgutil.iter_modules(package.__path__)
               if m.name != "base" and not m.name.endswith("_views")}
    return sorted(set(_REGISTRY) | modules)
