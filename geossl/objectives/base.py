"""The objective interface: what one pretraining method plugs into the shared trainer.

A method is one file in ``geossl/objectives/`` defining a subclass of :class:`Objective` registered
with :func:`register`. The trainer (``geossl.train``) owns optimisation, schedules, sharding, gradient
accumulation, the teacher (built and updated from :attr:`Objective.teacher_spec`), checkpoints and
metrics; the objective owns its networks, its host-side view construction and its losses.

Life cycle, as the trainer drives it::

    obj = objectives.create(config)
    sample = obj.make_views(record, np_rng)            # host, per record (grain worker)
    variables = obj.init(rng, batch)                   # Variables(params, teacher=None, extra)
    variables = obj.with_backbone(variables, loaded)   # trainer: continual init (config.init)
    teacher = ...                                      # trainer, from obj.teacher_spec
    loss, aux = obj.loss(params, teacher, extra, batch, rng, step)   # inside the jitted step
    extra = obj.merge_extra(stacked_extras)            # trainer, with grad_accum_steps > 1

The standard parameter layout is ``params = {"backbone": ..., <heads>...}`` with BatchNorm
statistics in ``extra["batch_stats"]`` (same layout); the default ``with_backbone`` and
``backbone_variables`` serve it. A teacher is ``{"params", ["batch_stats"]}`` like a flax variable
dict. Objectives never read files: the trainer converts torch checkpoints (``geossl.convert``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from geossl import models
from geossl.errors import ConfigError
from geossl.models.from_config import create_from_config

PyTree = Any

_REGISTRY: dict[str, type["Objective"]] = {}

#: Sample key of the central wavelengths (C,) float32, µm, of a sample's bands (every row of a
#: batch carries the same: batches come from one band set at a time). ``wavelengths1`` /
#: ``wavelengths2``: per view, where the two views of a sample come from different sensors.
WAVELENGTHS = "wavelengths"


def wavelength_kwargs(wavelengths) -> dict:
    """The backbone keyword for ``wavelengths`` (C,): ``{"wavelengths": w}``, or ``{}`` for None
    (a fixed-band backbone)."""
    return {} if wavelengths is None else {"wavelengths": wavelengths}


def batch_wavelengths(batch: dict, view: int | None = None):
    """(C,) central wavelengths of ``batch``'s bands: ``wavelengths{view}`` when the batch has
    it, else ``wavelengths``; None when it carries neither. Rows are equal, so row 0 serves."""
    keys = ((f"{WAVELENGTHS}{view}",) if view is not None else ()) + (WAVELENGTHS,)
    for key in keys:
        if key in batch:
            return batch[key][0]
    return None
TEACHER_KINDS = ("none", "ema", "frozen")


@flax.struct.dataclass
class Variables:
    """Everything an objective keeps between steps.

    params:  trainable pytree (student networks and heads), updated by the optimiser.
    teacher: ``{"params", ["batch_stats"]}`` or None: an EMA teacher's params have the structure of
             ``teacher_source(params)``; a frozen one is ``config.teacher.model``'s, never updated.
    extra:   non-trainable state the loss updates itself (BatchNorm statistics, DINO centre).
    """

    params: PyTree
    teacher: PyTree = None
    extra: PyTree = flax.struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """An objective's teacher, as data; the trainer alone builds and updates it.

    kind: "none"; "ema" (params ← m·teacher + (1−m)·student after each step, m from
      ``config.ema``; it starts equal to the student); "frozen" (``config.teacher.model`` loaded
      from ``config.teacher.torch_checkpoint``, stored in that model's dtype, never updated).
    exclude: EMA: top-level parameter subtrees the teacher does not track (e.g. a predictor).
    batch_stats: EMA: the teacher keeps its own BatchNorm statistics (starting from
      ``extra["batch_stats"]`` less ``exclude``); the loss returns their update as
      ``aux["teacher_batch_stats"]`` (MoCo v3's key encoder runs BatchNorm in train mode).
    """

    kind: str = "none"
    exclude: tuple[str, ...] = ()
    batch_stats: bool = False

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"TeacherSpec.kind: expected one of {TEACHER_KINDS}, found {self.kind!r}")

    def select(self, tree: dict) -> dict:
        """``tree`` (params or batch statistics) less the excluded top-level subtrees."""
        return {k: v for k, v in tree.items() if k not in self.exclude}


class Objective:
    """Base class of a pretraining method. Subclasses override the methods marked "override"."""

    #: The teacher (class attribute, or set in ``__init__`` when the config chooses it).
    teacher_spec: TeacherSpec = TeacherSpec()

    #: ``make_views`` takes a record pairing two sensors of one location (``views.PAIRED_RECORD``:
    #: a cross-sensor positive, ``config.data.sets`` pair sets).
    cross_sensor_pairs: bool = False

    def __init__(self, config):
        self.config = config

    @property
    def fixed_bands(self) -> tuple[str, ...] | None:
        """The band list the objective's heads are built for (a pixel decoder predicting
        ``config.data.bands``), which every set of ``config.data.sets`` must then have; None:
        any bands train (with a wavelength-conditioned model)."""
        return None

    @property
    def teacher_model(self):
        """The frozen teacher network of ``config.teacher.model`` (teacher kind "frozen")."""
        model_cfg = self.config.teacher.model
        if not model_cfg.get("name"):
            raise ConfigError("config.teacher.model.name: a frozen teacher needs a model name, "
                              "found none")
        return create_from_config(model_cfg)

    def require_backbone(self, *capabilities: str, why: str, path: str = "config.model.name"):
        """Raises ConfigError unless the model of ``path`` has every family capability named
        (``models.Family`` fields, e.g. "keep_tokens"); ``why`` says what needs them."""
        name = self.config.model.name if path == "config.model.name" else self.config.teacher.model.name
        family = models.family(name)
        missing = [c for c in capabilities if not getattr(family, c)]
        if missing:
            raise ConfigError(f"{path}: {why} needs a backbone with {', '.join(capabilities)}, found "
                              f"{name!r} (a {family.name}, without {', '.join(missing)})")
        return family

    # ----- host side -------------------------------------------------------------------------
    def make_views(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Override. One ShardSource record → one training sample of fixed-shape numpy arrays."""
        raise NotImplementedError

    # ----- device side -----------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Variables:
        """Override. Builds the variables (teacher None: the trainer makes it) from a small batch."""
        raise NotImplementedError

    def loss(self, params: PyTree, teacher: PyTree, extra: PyTree, batch: dict[str, jax.Array],
             rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        """Override. Returns ``(loss, aux)``: loss a float32 scalar; aux a dict with
        ``"metrics"`` (name → scalar, the loss terms), ``"extra"`` (the new extra state) and, for a
        teacher with ``batch_stats``, ``"teacher_batch_stats"``."""
        raise NotImplementedError

    def teacher_source(self, params: PyTree) -> PyTree:
        """The part of the student the EMA teacher tracks (structure equal to teacher params)."""
        return self.teacher_spec.select(params)

    def merge_extra(self, extras: PyTree) -> PyTree:
        """The ``extra`` after one optimiser step from the micro-batches' (leaves stacked on axis
        0), each computed from the same starting ``extra``. Default: the mean of float leaves and
        the last of the others, exact for updates affine in a batch mean (an EMA of BatchNorm
        means or of a DINO centre), so ``extra`` advances once per step at any accumulation."""
        def merge(x):
            return jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.floating) else x[-1]
        return jax.tree_util.tree_map(merge, extras)

    def with_backbone(self, variables: Variables, backbone: dict) -> Variables:
        """``variables`` with the student backbone replaced by ``backbone`` (``{"params",
        ["batch_stats"]}``); an EMA teacher built afterwards starts from it too."""
        params = dict(variables.params, backbone=backbone["params"])
        extra = variables.extra
        if backbone.get("batch_stats"):
            extra = dict(extra, batch_stats=dict(extra["batch_stats"],
                                                 backbone=backbone["batch_stats"]))
        return variables.replace(params=params, extra=extra)

    # ----- band metadata ------------------------------------------------------------------------
    def backbone_kwargs(self, batch: dict, view: int | None = None, *,
                        teacher: bool = False) -> dict:
        """Keywords of a backbone call on ``batch``: ``{"wavelengths": (C,)}`` for a
        wavelength-conditioned family (DOFA: ``models.family(name).wavelengths``), ``{}`` for the
        others. The student's model is ``config.model``; ``teacher=True``: the frozen teacher's
        (``config.teacher.model``). ``view``: the view whose bands the call sees (see
        :func:`batch_wavelengths`)."""
        name = self.config.teacher.model.name if teacher else self.config.model.name
        if not models.family(name).wavelengths:
            return {}
        w = batch_wavelengths(batch, view)
        if w is None:
            raise ValueError(f"{name}: a wavelength-conditioned backbone needs the bands' central "
                             f"wavelengths; the batch has keys {sorted(batch)}, without "
                             f"{WAVELENGTHS!r} (the trainer adds it from the bands of each record)")
        return {"wavelengths": w}

    def init_kwargs(self, batch: dict, view: int | None = None) -> dict:
        """:meth:`backbone_kwargs` for ``init``, or ``{}`` when the batch carries no wavelengths
        (a wavelength-conditioned backbone initialises without them)."""
        if batch_wavelengths(batch, view) is None:
            return {}
        return self.backbone_kwargs(batch, view)

    # ----- export -----------------------------------------------------------------------------
    @property
    def backbone_name(self) -> str:
        """Architecture name of the exported backbone (a ``geossl.models`` name)."""
        return self.config.model.name

    def backbone_variables(self, variables: Variables) -> dict:
        """The backbone as ``{"params", ["batch_stats"]}`` for export / eval: the student's, or the
        EMA teacher's with ``config.export.teacher``."""
        if _export_teacher(self.config):
            source = variables.teacher
        else:
            source = {"params": variables.params, "batch_stats": variables.extra.get("batch_stats")}
        out = {"params": source["params"]["backbone"]}
        stats = (source.get("batch_stats") or {}).get("backbone")
        if stats:
            out["batch_stats"] = stats
        return out


def _export_teacher(config) -> bool:
    return bool(config.get("export", {}).get("teacher", False))


# ----- config fields --------------------------------------------------------------------------------
_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])$")


def check(ok: bool, path: str, expected: str, found) -> None:
    """Raises ``ConfigError("PATH: expected EXPECTED, found FOUND")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{path}: expected {expected}, found {found!r}")


def _inside(x: float, interval: str) -> bool:
    """x inside an interval written like "[0, 1)" or "(0, inf)"."""
    lo_b, lo, hi, hi_b = _INTERVAL.match(interval).groups()
    lo, hi = float(lo), float(hi)
    return (x > lo or (lo_b == "[" and x == lo)) and (x < hi or (hi_b == "]" and x == hi))


class Fields:
    """Checked reads of one config section: ``Fields(config.objective).number("mask_ratio",
    "[0, 1)")``; a bad value is one ConfigError line naming ``config.objective.mask_ratio``."""

    def __init__(self, section, path: str = "config.objective"):
        self.section, self.path = section, path

    def _get(self, name: str):
        if name not in self.section:
            raise ConfigError(f"{self.path}.{name}: expected a value, found the field missing")
        return self.section[name]

    def number(self, name: str, interval: str = "(-inf, inf)") -> float:
        """The field as a float inside ``interval`` ("[0, 1)", "(0, inf)", ...)."""
        value = self._get(name)
        try:
            x = float(value)
        except (TypeError, ValueError):
            x = math.nan
        check(not isinstance(value, bool) and _inside(x, interval), f"{self.path}.{name}",
              f"a number in {interval}", value)
        return x

    def integer(self, name: str, interval: str = "[0, inf)") -> int:
        """The field as an int inside ``interval``."""
        value = self._get(name)
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        check(ok and _inside(float(value), interval), f"{self.path}.{name}",
              f"an integer in {interval}", value)
        return int(value)

    def choice(self, name: str, options) -> str:
        """The field, one of ``options``."""
        value = self._get(name)
        check(value in tuple(options), f"{self.path}.{name}", f"one of {tuple(options)}", value)
        return value

    def flag(self, name: str) -> bool:
        value = self._get(name)
        check(isinstance(value, (bool, np.bool_)), f"{self.path}.{name}", "True or False", value)
        return bool(value)


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
    objective = _REGISTRY[name](config)
    if _export_teacher(config) and objective.teacher_spec.kind != "ema":
        raise ConfigError(f"config.export.teacher: exporting the teacher needs an EMA teacher; "
                          f"{name} has teacher kind {objective.teacher_spec.kind!r}")
    return objective


def available() -> list[str]:
    """Objective names: those registered plus the method modules of this package (importing one
    registers it)."""
    import pkgutil
    import geossl.objectives as package
    modules = {m.name for m in pkgutil.iter_modules(package.__path__)
               if m.name != "base" and not m.name.endswith("_views")}
    return sorted(set(_REGISTRY) | modules)
