"""Weights from outside the run, converted by the trainer and handed to the objective as arrays.

Student (``config.init``): ``torch_checkpoint`` = a DINOv2 / DINO / torchvision / timm state dict
(.pth or .safetensors) converted by ``geossl.convert`` (position embeddings resampled to the
configured grid; the first layer re-initialised for the band count, or adapted:
``first_layer`` = "reinit" | "repeat"), or ``workdir`` = the backbone of another geossl run.
Frozen teacher (``config.teacher``): ``model`` (name and arguments) plus ``torch_checkpoint``: a
path, ``random:seed=N`` (a random network) or ``pretrained:METHOD`` (the teacher pretrained by
geossl with the run ``config.teacher.pretrain``); the last two are written once into
:func:`demo_teacher_dir` and imported like a real checkpoint. :func:`check_source` checks the
source before the run writes anything (a path by its header: missing, truncated, or a geossl
export of another architecture is one ConfigError).
"""

from __future__ import annotations

import hashlib
import json
import logging as py_logging
import os
import re
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from geossl import convert, models
from geossl.convert.lib.io import geossl_model
from geossl.errors import ConfigError, one_line_list
from geossl.models.from_config import COMPUTE_OPTIONS, architecture_kwargs, create_from_config
from geossl.train.checkpoint import load_backbone


def check_same_tree(name: str, loaded, current) -> None:
    """Raises if ``loaded`` and ``current`` differ in any path or shape (all listed at once)."""
    want = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(current)}
    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    problems = [f"{k}: expected {want.get(k)}, found {got.get(k)}"
                for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if problems:
        raise ValueError(f"{name} does not fit the configured network: {one_line_list(problems)}")


def load_student_backbone(config, current: dict) -> dict | None:
    """``{"params", ["batch_stats"]}`` for the student backbone from ``config.init``, or None when it
    asks for nothing. ``current``: the freshly initialised backbone (its first layer is kept for
    ``first_layer="reinit"``, except by a wavelength-conditioned family, whose generated first
    layer has no band order to redo; its tree is what the loaded one must match)."""
    init = config.init
    path, workdir = init.torch_checkpoint, init.workdir
    if path and workdir:
        raise ValueError("config.init: set torch_checkpoint or workdir, not both")
    if workdir:
        _, loaded = load_backbone(workdir)
        name = f"backbone of {workdir}"
    elif path:
        mode = init.first_layer
        loaded = convert.from_torch(convert.load_state_dict(path), config.model.name,
                                    first_layer=mode, rng=np.random.default_rng(config.seed),
                                    **architecture_kwargs(config.model))
        family = models.family(config.model.name)
        if mode == "reinit" and not family.wavelengths:  # DOFA's generator serves any bands: kept
            loaded = _take_first_layer(loaded, current["params"], family.first_layer)
        name = path
    else:
        return None
    loaded = jax.tree_util.tree_map(np.asarray, loaded)
    check_same_tree(name, loaded["params"], current["params"])
    if current.get("batch_stats"):
        check_same_tree(name, loaded.get("batch_stats", {}), current["batch_stats"])
    return loaded


def build_frozen_teacher(config, model, rng) -> dict:
    """The frozen teacher's ``{"params", ["batch_stats"]}``: ``model`` (``config.teacher.model``)
    initialised at its input size, then filled from ``config.teacher.torch_checkpoint`` (strict;
    without one the random initialisation stays, with a warning: tests and smoke runs)."""
    t = config.teacher
    size = int(t.model.img_size)
    x = jnp.zeros((1, size, size, int(t.model.in_chans)), jnp.float32)
    variables = jax.device_get(jax.jit(model.init)(rng, x))
    current = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    path = resolve_checkpoint(t.torch_checkpoint, t.model, t.get("pretrain"))
    if not path:
        logging.warning("config.teacher.torch_checkpoint is empty: the frozen teacher %s keeps its "
                        "random initialisation", t.model.name)
        return current
    loaded = convert.from_torch(convert.load_state_dict(path), t.model.name,
                                **architecture_kwargs(t.model))
    loaded = jax.tree_util.tree_map(np.asarray, loaded)
    check_same_tree(path, loaded["params"], current["params"])
    if current.get("batch_stats"):
        check_same_tree(path, loaded.get("batch_stats", {}), current["batch_stats"])
    return {k: loaded[k] for k in current}


def _take_first_layer(loaded: dict, params, path: tuple[str, ...]) -> dict:
    """``loaded`` with the params subtree at ``path`` (the family's ``first_layer``, e.g. ViT / Swin
    ``patch_embed/proj``, ResNet ``conv1``) taken from the freshly initialised ``params``."""
    def put(tree, fresh, keys):
        if not keys:
            return fresh
        if keys[0] not in tree or keys[0] not in fresh:
            raise ValueError(f"first layer {'/'.join(path)}: params have no {keys[0]!r}")
        return {**tree, keys[0]: put(tree[keys[0]], fresh[keys[0]], keys[1:])}
    return dict(loaded, params=put(dict(loaded["params"]), params, tuple(path)))


def write_random_teacher(model_cfg, directory: str, *, seed: int = 0, layout: str = "original") -> str:
    """A randomly initialised ``model_cfg`` network written once as a torch-layout safetensors
    checkpoint in ``directory`` in ``layout`` where the family has it (the original Microsoft
    layout for a Swin, like the ImageNet-22k weights GFM distils from; DINOv2's for a ViT;
    torchvision's for a ResNet, its only one); returns its path. The name holds a hash of the
    architecture and the seed, so an existing file is that very network and is reused. Demo runs
    and tests use it as ``config.teacher.torch_checkpoint``, imported like a real checkpoint."""
    arch = architecture_kwargs(model_cfg)
    digest = settings_hash({"name": model_cfg["name"], "seed": seed, "layout": layout, **arch})
    path = os.path.join(directory, f"random-{model_cfg['name']}-{digest}.safetensors")
    if os.path.isfile(path):
        return path
    os.makedirs(directory, exist_ok=True)
    size = int(model_cfg["img_size"])
    x = jnp.zeros((1, size, size, int(model_cfg["in_chans"])), jnp.float32)
    variables = jax.device_get(create_from_config(model_cfg).init(jax.random.PRNGKey(seed), x))
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    layout = layout if layout in convert.layouts(model_cfg["name"]) else None  # ResNets: one
    state_dict = convert.to_torch(variables, model_cfg["name"], layout=layout, **arch)
    partial = path.replace(".safetensors", f".partial-{os.getpid()}.safetensors")
    convert.save_state_dict(state_dict, partial, {"note": "random initialisation (demo teacher)"})
    os.replace(partial, path)  # atomic: a reader sees the whole file or none
    return path


def settings_hash(settings: dict) -> str:
    """The first 12 hex digits of the sha256 of ``settings`` as sorted JSON (tuples as lists):
    the part of a written teacher's name that changes with any of its settings."""
    key = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_pretrain(pretrain) -> None:
    """``config.teacher.pretrain`` is a run config with an ``objective.name`` and no ``model``."""
    if not pretrain:
        raise ConfigError("config.teacher.pretrain: expected the run config that pretrains the "
                          "teacher (see configs/gfm_swin_b.py demo_teacher_run), found none")
    if "model" in pretrain:
        raise ConfigError(f"config.teacher.pretrain.model: expected none (the run pretrains "
                          f"config.teacher.model), found {dict(pretrain.model)}")
    if not pretrain.get("objective", {}).get("name"):
        raise ConfigError("config.teacher.pretrain.objective.name: expected the pretraining "
                          "method, found none")


#: Run-config sections that do not change the trained weights and that the teacher's run does
#: not use (the monitor is a hook main.py adds): left out of a pretrained teacher's name.
UNHASHED = ("monitor",)


def teacher_pretraining_run(model_cfg, pretrain) -> ml_collections.ConfigDict:
    """The geossl run that pretrains a frozen teacher: ``pretrain`` (``config.teacher.pretrain``, a
    run config without ``model``) with ``model`` = ``model_cfg`` (``config.teacher.model``), the
    last step checkpointed, one metrics row, no probe and no export of its own (the caller exports
    in the teacher's layout). Those run settings leave the trained weights unchanged."""
    check_pretrain(pretrain)
    run = ml_collections.ConfigDict(pretrain.to_dict())
    run.model = ml_collections.ConfigDict(dict(model_cfg))
    steps = int(run.total_steps)
    run.checkpoint_every, run.log_every, run.async_checkpoints = steps, steps, False
    run.probe = ml_collections.ConfigDict(dict(every=0))
    run.export = ml_collections.ConfigDict(dict(torch=False, teacher=False))
    return run


def write_pretrained_teacher(model_cfg, pretrain, directory: str, *, layout: str = "original") -> str:
    """``model_cfg``'s network pretrained by geossl with the run ``pretrain`` (see
    :func:`teacher_pretraining_run`), its backbone written once as a safetensors checkpoint in
    ``directory`` in ``layout`` (as :func:`write_random_teacher`); returns its path. The name holds
    a hash of the whole run config (method, data, optimiser, steps, seed, architecture) and the
    layout, so an existing file is that very network and is reused. The run trains in the
    workdir ``directory/NAME.run`` (resumed if an earlier attempt stopped, removed after the
    export); the checkpoint appears whole, through a temporary name and ``os.replace``."""
    run = teacher_pretraining_run(model_cfg, pretrain)
    hashed = {k: v for k, v in run.to_dict().items() if k not in UNHASHED}
    name = (f"pretrained-{run.objective.name}-{model_cfg['name']}-"
            f"{settings_hash({'run': hashed, 'layout': layout})}")
    path = os.path.join(directory, f"{name}.safetensors")
    if os.path.isfile(path):
        return path
    if jax.process_count() > 1:
        raise ConfigError(f"config.teacher.torch_checkpoint: a teacher is pretrained in one "
                          f"process; found {jax.process_count()} (write {path} in a "
                          f"single-process run first, or give a checkpoint path)")
    workdir = os.path.join(directory, f"{name}.run")
    logging.info("pretraining the frozen teacher once (%s, %d steps) in %s", run.objective.name,
                 run.total_steps, workdir)
    start = time.perf_counter()
    variables, loss = pretrain_backbone(run, workdir)
    layout = layout if layout in convert.layouts(model_cfg["name"]) else None
    convert.export_backbone(variables, model_cfg["name"], architecture_kwargs(model_cfg), path, run,
                            layout=layout)
    shutil.rmtree(workdir, ignore_errors=True)
    logging.info("frozen teacher pretrained in %.0f s (final loss %.4g): %s",
                 time.perf_counter() - start, loss, path)
    return path


def pretrain_backbone(run, workdir: str) -> tuple[dict, float]:
    """Trains ``run`` in ``workdir`` (resuming it), its own log lines silenced; returns the
    backbone's ``{"params", ["batch_stats"]}`` at the last step and the last logged loss."""
    from geossl.train import loop  # here: loop imports this module
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level  # restored exactly (set_verbosity would pin NOTSET to a level)
    absl_logger.setLevel(py_logging.WARNING)
    try:
        summary = loop.run(run, workdir, progress_bar=False)
    except ConfigError as e:
        raise ConfigError(f"the teacher's pretraining run (config.teacher.pretrain): {e}") from e
    finally:
        absl_logger.setLevel(level)
    _, variables = load_backbone(workdir)
    return variables, float(summary["last_metrics"].get("loss", float("nan")))


RANDOM_PREFIX = "random:"
PRETRAINED_PREFIX = "pretrained:"


def demo_teacher_dir() -> str:
    """Where ``random:`` and ``pretrained:`` checkpoints are written: ``$GEOSSL_DEMO_TEACHERS`` or
    ``~/.cache/geossl/demo-teachers``."""
    return os.path.expanduser(os.environ.get("GEOSSL_DEMO_TEACHERS", "~/.cache/geossl/demo-teachers"))


def parse_source(source: str, pretrain=None) -> tuple[str, str | int]:
    """``config.teacher.torch_checkpoint`` read strictly, nothing written: ("path", source),
    ("random", N) for ``random:seed=N`` or ("pretrained", METHOD) for ``pretrained:METHOD``,
    which needs ``pretrain`` (``config.teacher.pretrain``: a run without ``model`` whose
    ``objective.name`` is METHOD). Anything else with those prefixes: one ConfigError."""
    expected = "a path, 'random:seed=N' or 'pretrained:METHOD'"
    if source.startswith(RANDOM_PREFIX):
        seed = re.fullmatch(r"seed=([0-9]+)", source[len(RANDOM_PREFIX):])
        if seed is None:
            raise ConfigError(f"config.teacher.torch_checkpoint: expected {expected}, found {source!r}")
        return "random", int(seed.group(1))
    if source.startswith(PRETRAINED_PREFIX):
        method = source[len(PRETRAINED_PREFIX):]
        if not re.fullmatch(r"[a-z0-9_]+", method):
            raise ConfigError(f"config.teacher.torch_checkpoint: expected {expected}, found {source!r}")
        check_pretrain(pretrain)
        if method != pretrain.objective.name:
            raise ConfigError(f"config.teacher.torch_checkpoint: expected 'pretrained:"
                              f"{pretrain.objective.name}' (the objective of config.teacher."
                              f"pretrain), found {source!r}")
        return "pretrained", method
    return "path", source


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SOURCE = "config.teacher.torch_checkpoint"


def check_source(source: str, model_cfg, pretrain=None) -> None:
    """``config.teacher.torch_checkpoint`` checked before anything is written, no weight loaded:
    ``random:seed=N`` / ``pretrained:METHOD`` by their syntax (:func:`parse_source`; they are
    written when the teacher is built); a path by its header: it exists, is a safetensors or
    torch file that opens (a truncated file does not), and a geossl export's metadata
    (``geossl.arch``) names the architecture of ``model_cfg`` (``config.teacher.model``). Raises
    one ConfigError naming the file and what failed."""
    kind, _ = parse_source(source, pretrain)
    if kind != "path":
        return
    expected = (f"a .safetensors or {'/'.join(TORCH_SUFFIXES)} checkpoint of config.teacher."
                f"model ({model_cfg['name']!r}), 'random:seed=N' or 'pretrained:METHOD'")
    metadata = check_checkpoint_file(source, SOURCE, expected)
    if metadata is not None:
        _check_exported_architecture(source, metadata, model_cfg)


def check_checkpoint_file(path: str, field: str, expected: str) -> dict | None:
    """The checkpoint file at ``path`` (the value of config ``field``) by its header, no weight
    read: it exists and is a safetensors file whose header reads (its metadata returned) or a
    torch file that opens (None returned); else one ConfigError naming the field, the file and
    what failed, ``expected`` saying what the field takes."""
    if not os.path.exists(path):
        raise ConfigError(f"{field}: {path} does not exist; expected {expected}")
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: {path} is not a file; expected {expected}")
    if path.endswith(".safetensors"):
        try:
            return convert.read_metadata(path)
        except convert.UnreadableFileError as e:  # names the file and what is wrong
            raise ConfigError(f"{field}: {e}") from None
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(f"{field}: {path}: unreadable safetensors header "
                              f"({type(e).__name__}: {e}); a truncated or partial file?") from None
    if path.endswith(TORCH_SUFFIXES):
        _check_torch_file(path, field)
        return None
    raise ConfigError(f"{field}: {path}: unknown file type; expected {expected}")


def _check_torch_file(path: str, field: str) -> None:
    """A torch checkpoint's container: a zip archive (torch.save's format) whose central directory
    reads and that holds a ``data.pkl``, or a legacy pickle (checked when it is loaded)."""
    import zipfile
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"\x80"):  # torch.save(_use_new_zipfile_serialization=False): a pickle
        return
    if magic != b"PK\x03\x04":
        raise ConfigError(f"{field}: {path}: not a torch checkpoint (expected a zip archive or a "
                          f"pickle, found the bytes {magic!r})")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"{field}: {path}: unreadable torch checkpoint ({type(e).__name__}: "
                          f"{e}); a truncated or partial file?") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise ConfigError(f"{field}: {path}: a zip archive without data.pkl, not a torch "
                          f"checkpoint (found {names[:5]})")


#: Model fields whose weights conversion adapts: position embeddings resampled to the grid of
#: ``img_size``, Swin bias tables to ``window_size`` (SimMIM's window 7 → 6).
ADAPTED_FIELDS = ("img_size", "window_size")


def _structure(name: str, kwargs: dict) -> dict:
    """The fields that fix the parameters of ``models.create(name, **kwargs)`` (its family's
    keywords less compute options and ADAPTED_FIELDS; ``kwargs`` the family ignores dropped, as
    ``create_from_config`` does), lists as tuples."""
    def frozen(v):
        return tuple(map(frozen, v)) if isinstance(v, (list, tuple)) else v
    family = models.family(name)
    module = models.create(name, **{k: v for k, v in kwargs.items() if k not in family.ignores})
    skip = set(COMPUTE_OPTIONS) | set(ADAPTED_FIELDS)
    return {k: frozen(getattr(module, k)) for k in sorted(family.kwargs - skip)}


def _check_exported_architecture(path: str, metadata: dict, model_cfg) -> None:
    """A geossl export (metadata ``format: geossl``) must build the layers of ``model_cfg``: the
    same family and the same structure fields (a name of the family with other arguments may
    build them too). Files without that metadata (timm, torchvision, Microsoft weights) are
    checked when they are converted."""
    try:
        exported = geossl_model(metadata, path)
    except ValueError as e:
        raise ConfigError(f"{SOURCE}: {e}") from None
    if exported is None:
        return
    arch, kwargs = exported
    want = model_cfg["name"]
    problem = f"{SOURCE}: {path} is a geossl export of {arch!r} (its metadata geossl.arch)"
    try:
        found = _structure(arch, kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{problem}, which geossl cannot build ({e}); config.teacher.model.name "
                          f"is {want!r}") from None
    if models.family(arch) is not models.family(want):
        raise ConfigError(f"{problem}, a {models.family(arch).name}; config.teacher.model.name is "
                          f"{want!r}, a {models.family(want).name}")
    expected = _structure(want, architecture_kwargs(model_cfg))
    differ = [f"{k}={found[k]} (config.teacher.model: {expected[k]})"
              for k in expected if found[k] != expected[k]]
    if differ and _parameter_shapes(arch, kwargs, model_cfg) != _parameter_shapes(
            want, architecture_kwargs(model_cfg), model_cfg):
        raise ConfigError(f"{problem} with other layers than config.teacher.model ({want!r}): "
                          + ", ".join(differ))


def _parameter_shapes(name: str, kwargs: dict, model_cfg) -> dict | None:
    """{variable path: shape} of ``name`` built with ``kwargs`` (ADAPTED_FIELDS taken from
    ``model_cfg``), traced abstractly (jax.eval_shape: nothing computed); None if it does not
    trace. Decides when structure fields differ that do not change a parameter (BatchNorm
    momentum, an init option)."""
    family = models.family(name)
    kw = {k: v for k, v in kwargs.items() if k not in family.ignores}
    kw.update({k: model_cfg[k] for k in ADAPTED_FIELDS if k in model_cfg and k in family.kwargs})
    try:
        module = models.create(name, **kw)
        size = int(model_cfg.get("img_size", 224))
        x = jax.ShapeDtypeStruct((1, size, size, int(getattr(module, "in_chans", 3))), jnp.float32)
        variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    except Exception:  # noqa: BLE001 - any model that does not build or trace
        return None
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}


def resolve_checkpoint(source: str, model_cfg, pretrain=None) -> str:
    """A checkpoint path from ``config.teacher.torch_checkpoint`` (:func:`parse_source`): a path
    as given; for ``random:seed=N`` the path of ``model_cfg``'s random network of seed N
    (:func:`write_random_teacher`); for ``pretrained:METHOD`` the path of ``model_cfg`` pretrained
    by the run ``pretrain`` (:func:`write_pretrained_teacher`). Both are written once, in
    :func:`demo_teacher_dir`."""
    kind, value = parse_source(source, pretrain)
    if kind == "random":
        return write_random_teacher(model_cfg, demo_teacher_dir(), seed=value)
    if kind == "pretrained":
        return write_pretrained_teacher(model_cfg, pretrain, demo_teacher_dir())
    return source
