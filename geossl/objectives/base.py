"""The objective interface: what one pretraining method plugs into the shared trainer.

A method is one file in ``geossl/objectives/`` defining a subclass of :class:`Objective` registered
with :func:`register`. The trainer (``geossl.train``) owns optimisation, schedules, sharding, gradient
accumulation, the teacher update, checkpoints and metrics; the objective owns its networks, its
host-side view construction and its losses.

Life cycle, as the trainer drives it::

    obj = objectives.create(config)
    sample = obj.make_views(record, np_rng)            # host, per record (grain worker)
    variables = obj.init(rng, batch)                   # Variables(params, teacher, extra)
    variables = obj.load_pretrained(variables)         # continual pretraining (config.init)
    loss, aux = obj.loss(params, teacher, extra, batch, rng, step)   # inside the jitted step
    teacher = ema(teacher, obj.teacher_source(params), momentum)     # trainer, if teacher_mode=="ema"
"""

from __future__ import annotations

import flax.struct
from typing import Any, Callable

import jax
import numpy as np

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
    #: config.teacher); "frozen": the teacher is never updated; "none": no teacher.
    teacher_mode: str = "none"

    def __init__(self, config):
        self.config = config

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

    def load_pretrained(self, variables: Variables) -> Variables:
        """Continual pretraining: fill the student from ``config.init`` (default: unchanged)."""
        return variables

    # ----- export -----------------------------------------------------------------------------
    @property
    def backbone_name(self) -> str:
        """Architecture name of the exported backbone (a ``geossl.models`` name)."""
        return self.config.model.name

    def backbone_variables(self, variables: Variables) -> dict:
        """Override. The backbone as ``{"params": ..., ["batch_stats": ...]}`` for export / eval."""
        raise NotImplementedError


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
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](config)
