"""The shared training loop: ``run(config, workdir)`` for every objective."""

from __future__ import annotations

import collections
import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from geossl import convert, models, objectives
from geossl.data import ShardSource, band_sets
from geossl.data import bands as bands_lib
from geossl.data.files import resolve_files
from geossl.data.pipeline import make_train_iterator
from geossl.errors import ConfigError, DataConfigMismatchError
from geossl.models.from_config import architecture_kwargs
from geossl.parallel import mesh as mesh_lib
from geossl.parallel import multihost
from geossl.parallel.sharding import tree_shardings
from geossl.train import checkpoint as ckpt_lib
from geossl.train import metrics as metrics_lib
from geossl.train import pretrained, signals, workdir_lock
from geossl.train import teacher as teacher_lib
from geossl.train.config_checks import check_config
from geossl.train.optim import make_optimizer
from geossl.train.step import make_state, make_train_step


# ----- data ---------------------------------------------------------------------------------------
def data_sets(config, objective) -> tuple[list, dict]:
    """(sets, sources): ``config.data.sets`` (one set of ``data.train`` without them,
    ``geossl.data.band_sets``) checked against the model and objective, and the records of each
    set with bands (set name → ShardSource)."""
    sets = band_sets.from_config(config)
    band_sets.check_for_model(sets, config.model.name, _takes_wavelengths(config),
                              objective.fixed_bands, objective.cross_sensor_pairs,
                              config.objective.name)
    sources = {s.name: ShardSource(resolve_files(s.train, s.bands)) for s in sets if not s.pair}
    return sets, sources


def _takes_wavelengths(config) -> bool:
    """The student or the frozen teacher is wavelength-conditioned: samples carry wavelengths."""
    names = [config.model.name, config.get("teacher", {}).get("model", {}).get("name", "")]
    return any(models.family(n).wavelengths for n in names if n)


def wavelength_table(config) -> dict[str, float]:
    """``config.data.wavelengths`` (band → µm over ``bands.WAVELENGTHS``), checked."""
    return bands_lib.check_wavelength_table(config.data.get("wavelengths", None))


def set_views(config, objective, band_set):
    """The view function of one plain set: ``objective.make_views`` with the set's bands and,
    for a wavelength-conditioned model, their wavelengths in each sample."""
    return band_sets.BandSetViews(objective.make_views, band_set.bands, _takes_wavelengths(config),
                                  table=wavelength_table(config))


def make_data_iterator(config, objective, process_index: int, process_count: int, *,
                       sets=None, sources=None, start_position: int = 0):
    """This process's batches of ``objective.make_views`` samples, the global stream starting
    after ``start_position`` consumed rows: one set's, or the mixed stream of several."""
    if sets is None:
        sets, sources = data_sets(config, objective)
    kw = dict(process_index=process_index, process_count=process_count,
              start_position=start_position)
    if not band_sets.is_mixed(sets):
        return make_train_iterator(config, set_views(config, objective, sets[0]),
                                   source=sources[sets[0].name], **kw)
    stream = band_sets.mixed_stream(sets, sources, objective.make_views, seed=int(config.seed),
                                    global_batch=int(config.global_batch),
                                    wavelengths=_takes_wavelengths(config),
                                    tune_malloc=bool(config.data.tune_malloc),
                                    table=wavelength_table(config))
    return make_train_iterator(config, None, stream=stream, **kw)


def example_batch(view_fn, source, size: int = 2) -> dict:
    """A tiny host batch (from record 0) used only for shapes at init. A record that does not
    fit the config fails here, before anything is built or written: DataConfigMismatchError."""
    try:
        sample = view_fn(source[0], np.random.default_rng(0))
    except ConfigError:
        raise
    except (ValueError, KeyError) as e:
        raise DataConfigMismatchError(
            f"the first training record does not fit the config: {e}") from e
    return {k: np.stack([v] * size) for k, v in sample.items()}


#: Steps dispatched ahead of the one the host waits for: enough to keep the device busy while
#: the host prepares the next batch, few enough that a stop request (SIGTERM, a preemption
#: notice) is checkpointed within this many steps, whatever ``log_every`` (the audit saw 17
#: steps, 6 s, with log_every 1000).
STEPS_IN_FLIGHT = 2


def _resume_position(config, sets, data, start: int) -> int:
    """The global stream position of a restored step; a mixed stream resumes only with the
    global batch that wrote it (its set draws are per global batch), another stream with a
    warning; a step past ``config.total_steps`` is refused."""
    if start > int(config.total_steps):
        raise ConfigError(f"config.total_steps: the workdir's checkpoint is at step {start}, past "
                          f"{config.total_steps}; pass --config.total_steps={start} (or more) to "
                          f"resume, or another workdir")
    position = ckpt_lib.data_position(data, start, config.global_batch)
    written = (data or {}).get("global_batch", config.global_batch)
    if int(written) != int(config.global_batch):
        if band_sets.is_mixed(sets):
            raise ConfigError(f"config.global_batch: a mixed-sensor stream (config.data.sets) "
                              f"resumes with the global batch that wrote it, {written}; found "
                              f"{config.global_batch}")
        logging.warning("config.global_batch %s, the checkpoint's was %s: the stream continues at "
                        "global sample %d, steps (and the schedules over them) count batches of "
                        "%s from step %d", config.global_batch, written, position,
                        config.global_batch, start)
    planned = (data or {}).get("total_steps")   # absent from checkpoints before session 25
    if planned is not None and int(planned) != int(config.total_steps):
        logging.warning("config.total_steps %s, the run's was %s: the schedules over the run (lr, "
                        "weight decay, EMA momentum, teacher temperature) follow %s steps from "
                        "step %d on; steps 1..%d followed %s", config.total_steps, planned,
                        config.total_steps, start + 1, start, planned)
    return position


# ----- trainer ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Trainer:
    """The compiled-to-be pieces of a run: abstract sharded state, step and initialiser."""

    objective: objectives.Objective
    abstract_state: object        # TrainState of ShapeDtypeStructs carrying their shardings
    shardings: object             # TrainState of NamedShardings
    meta: dict                    # what a checkpoint must match
    train_step: object            # jitted step(state, batch) -> (state, metrics)
    init_state: object            # (teacher=None) -> sharded initial TrainState (continual init
                                  # applied; a frozen teacher built here unless handed in)
    frozen_teacher: object        # () -> host pytree of the frozen teacher, or None without one

    @property
    def has_frozen_teacher(self) -> bool:
        return self.objective.teacher_spec.kind == "frozen"

    def saved_part(self, state):
        """What a checkpoint holds: the state less a frozen teacher, which is rebuilt from
        ``config.teacher`` on resume (its fingerprint in the checkpoint's meta)."""
        return state.replace(teacher=None) if self.has_frozen_teacher else state

    def place_teacher(self, state, teacher):
        """``state`` with the host ``teacher`` put on the teacher's shardings."""
        return state.replace(teacher=jax.device_put(teacher, self.shardings.teacher))


def build_trainer(config, objective, mesh, batch0) -> Trainer:
    """Optimiser, sharding rules and the jitted step for ``objective`` on ``mesh``.
    ``batch0``: a small host batch of samples, used for shapes only."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    abstract_vars = jax.eval_shape(lambda r: objective.init(r, batch0), init_rng)
    frozen = objective.teacher_spec.kind == "frozen"
    if frozen:
        abstract_vars = abstract_vars.replace(teacher=teacher_lib.frozen_shapes(config, objective))
    tx, lr_fn = make_optimizer(config, abstract_vars.params)

    def build(variables):
        return make_state(objective, tx, variables, state_rng)

    abstract_state = jax.eval_shape(build, abstract_vars)
    shardings = tree_shardings(abstract_state, [tuple(r) for r in config.sharding_rules], mesh)
    abstract_state = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, shardings)

    def frozen_teacher():
        if not frozen:
            return None
        return teacher_lib.build_frozen(config, objective, jax.random.fold_in(init_rng, 1))

    def init_state(teacher=None):
        variables = jax.device_get(jax.jit(objective.init)(init_rng, batch0))
        loaded = pretrained.load_student_backbone(config, objective.backbone_variables(variables))
        if loaded is not None:
            variables = objective.with_backbone(variables, loaded)
        if frozen:
            teacher = frozen_teacher() if teacher is None else teacher
            variables = variables.replace(teacher=teacher)
        return jax.jit(build, out_shardings=shardings)(variables)

    return Trainer(objective, abstract_state, shardings, ckpt_lib.make_meta(config, abstract_state),
                   make_train_step(objective, tx, lr_fn, config, mesh, shardings), init_state,
                   frozen_teacher)


# ----- run --------------------------------------------------------------------------------------
def run(config, workdir: str, devices=None, *, hooks=(), progress_bar: bool | None = None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) on all (or the
    given) devices. Returns a summary: workdir, final_step, last_metrics, export, state.

    hooks: evaluators the CLI hands in (e.g. ``geossl.eval.online.make_online_probe``), each with
    an int ``every`` and ``hook(step, backbone) -> dict[str, float]``, called after every
    ``every``-th step with the student backbone (``objective.backbone_variables``); its metrics
    join that step's row of metrics.jsonl.

    progress_bar: a tqdm bar of the steps on stdout, updated every ``log_every`` steps (default:
    on inside a Jupyter / Colab kernel, off elsewhere).

    One run per workdir (``train/workdir_lock.py``): a workdir in use raises WorkdirInUseError
    before it changes. SIGTERM / SIGINT (and jax's preemption notice) checkpoint the next step and
    raise ``signals.Stopped`` (its ``exit_code`` is 128 + the signal number)."""
    workdir = os.path.abspath(workdir)
    check_config(config)
    with workdir_lock.hold(workdir), signals.StopRequest(jax.process_count()) as stop:
        return _run(config, workdir, devices, hooks, progress_bar, stop)


def _run(config, workdir: str, devices, hooks, progress_bar, stop) -> dict:
    if os.path.isdir(os.path.join(workdir, "backbone")):
        raise ckpt_lib.CheckpointMismatchError(
            f"{workdir}: a backbone-only workdir (backbone/, from `geossl.convert import`), whose "
            f"backbone the probes and exports would keep reading: train in another workdir, "
            f"starting from this one with --config.init.workdir={workdir}")
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    if config.global_batch % mesh_lib.batch_divisor(mesh):
        raise ValueError(f"global_batch {config.global_batch} is not divisible by data×fsdp = "
                         f"{mesh_lib.batch_divisor(mesh)} devices")
    objective = objectives.create(config)
    logging.info("%s on %s: %d steps of %d samples on %d devices (mesh %s) → %s",
                 config.objective.name, config.model.name, config.total_steps, config.global_batch,
                 mesh.size, dict(mesh.shape), workdir)
    sets, sources = data_sets(config, objective)
    first = next(s for s in sets if not s.pair)
    trainer = build_trainer(config, objective, mesh,
                            example_batch(set_views(config, objective, first), sources[first.name]))
    abstract_state, meta = trainer.abstract_state, trainer.meta

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                         async_save=config.async_checkpoints)
    teacher = trainer.frozen_teacher()  # rebuilt from its source, never read from checkpoints
    if teacher is not None:
        meta = dict(meta, teacher=ckpt_lib.fingerprint(teacher))
    start, state, data = checkpointer.restore_latest_readable(trainer.saved_part(abstract_state),
                                                              meta)
    position = 0
    if start is not None:
        # Elastic: the state lands on this run's mesh and the stream continues at its global
        # position, whatever the device or process count that wrote the checkpoint.
        position = _resume_position(config, sets, data, start)
        logging.info("resumed from %s/%d (global sample %d)", checkpointer.directory, start,
                     position)
        if teacher is not None:
            state = trainer.place_teacher(state, teacher)
    else:
        start = 0
        state = trainer.init_state(teacher)
    data_iter = make_data_iterator(config, objective, jax.process_index(), jax.process_count(),
                                   sets=sets, sources=sources, start_position=position)
    # Only now, with the run checked against the workdir, may the workdir change.
    ckpt_lib.write_config(workdir, config)
    unfinished = checkpointer.remove_unfinished_writes()
    if unfinished:
        logging.warning("removed %d unfinished checkpoint write(s) in %s (a run stopped while "
                        "writing them): %s", len(unfinished), checkpointer.directory,
                        ", ".join(unfinished))
    if progress_bar is None:
        progress_bar = metrics_lib.in_notebook()
    writer = metrics_lib.MetricsWriter(workdir, config.total_steps, progress_bar)
    writer.truncate_after(start)  # rows of an earlier attempt past the restored step are redone
    def save(step, state):
        consumed = position + (step - start) * config.global_batch
        checkpointer.save(step, trainer.saved_part(state),
                          {"position": consumed, "global_batch": int(config.global_batch),
                           "total_steps": int(config.total_steps)}, meta)

    try:
        summary = _loop(config, state, start, trainer.train_step, data_iter, mesh, save,
                        checkpointer, writer, _backbone_hooks(objective, hooks), stop)
    except BaseException as error:   # a stop request, a non-finite loss, a bad record, a second
        try:                          # Ctrl-C: the checkpoint write under way finishes, not lost
            checkpointer.close()
        except Exception as e:  # noqa: BLE001 (a stop reports its write; an error, its own)
            if isinstance(error, signals.Stopped):
                raise
            logging.warning("while stopping on an error, the last checkpoint write failed: %s", e)
        writer.close()
        if hasattr(data_iter, "close"):  # grain worker processes and their shared memory
            data_iter.close()
        raise
    summary["export"] = _export(config, objective, checkpointer, workdir)
    if jax.process_count() > 1:  # nobody leaves while process 0 still exports
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("geossl:run:end")
    checkpointer.close()
    writer.close()
    summary["workdir"] = workdir
    return summary


def _backbone_hooks(objective, hooks):
    """``[(every, hook(step, state) -> dict)]``: each hook fed the student backbone of the state."""
    def bind(hook):
        def call(step, state):
            variables = objectives.Variables(params=state.params, teacher=state.teacher,
                                             extra=state.extra)
            return hook(step, objective.backbone_variables(variables))
        return int(hook.every), call
    return [bind(h) for h in hooks if int(h.every) > 0]


def _loop(config, state, start, train_step, data_iter, mesh, save, checkpointer, writer,
          hooks=(), stop=None) -> dict:
    """Steps ``start + 1 .. total``. ``stop`` (signals.StopRequest) is asked after every step: when
    due, that step is checkpointed (unless just done) and signals.Stopped raised."""
    total, every = int(config.total_steps), int(config.checkpoint_every)
    log_every = max(1, int(config.log_every))
    pending: list[tuple[int, dict, float]] = []
    evaluated: dict[int, dict] = {}
    last_row = None
    window_start = None  # wall clock after the previous fetch: rates are wall-clock, compile excluded
    steady_steps, steady_s = 0, 0.0  # for the ETA
    compile_s = None  # seconds the step's compilations took since the last row (cache hits: less)
    window_compile_s = 0.0  # compilation inside the current window, left out of its rate
    steps = CompiledSteps(train_step)
    in_flight: collections.deque = collections.deque()  # metrics of the steps not yet waited for

    def flush():
        nonlocal last_row, window_start, steady_steps, steady_s, compile_s, window_compile_s
        if not pending:
            return
        rows = []
        fetched = jax.device_get([m for _, m, _ in pending])  # waits for the window's steps
        now = time.perf_counter()
        window = now - window_start - window_compile_s
        per_step, window_compile_s = window / len(pending), 0.0
        steady_steps, steady_s = steady_steps + len(pending), steady_s + window
        for (step, _, wait), values in zip(pending, fetched):
            row = {"step": step, **{k: float(v) for k, v in values.items()}}
            row.update(step_time_s=per_step, data_wait_s=wait,
                       data_wait_frac=wait / max(per_step, 1e-9),
                       images_per_s=config.global_batch / max(per_step, 1e-9))
            metrics_lib.check_finite(step, row)
            row.update(evaluated.pop(step, {}))
            if compile_s is not None:  # the first row after a compilation (the run's first)
                row["compile_s"], compile_s = compile_s, None
            rows.append(row)
        writer.write(rows)
        last_row = rows[-1]
        writer.log(last_row, steady_s, steady_steps)
        pending.clear()
        window_start = time.perf_counter()

    if stop is not None and start < total and stop.due(start):  # asked while starting up
        raise signals.Stopped(stop.signum, start, None)
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        local = next(data_iter)
        wait = time.perf_counter() - t0
        batch = multihost.global_batch(local, mesh)
        executable, seconds = steps.get(state, batch)
        if seconds:  # compiled ahead of time for this batch signature, timed apart from the rate
            compile_s = (compile_s or 0.0) + seconds
            window_compile_s += seconds if window_start is not None else 0.0
        if window_start is None:
            window_start = time.perf_counter()
        state, metrics = executable(state, batch)
        pending.append((step, metrics, wait))
        in_flight.append(metrics)
        if len(in_flight) > STEPS_IN_FLIGHT:  # a stop request then waits for at most this many
            jax.block_until_ready(in_flight.popleft())
        for hook_every, hook in hooks:
            if step % hook_every == 0:
                result = hook(step, state)
                evaluated.setdefault(step, {}).update(result)
                logging.info("step %d evaluation: %s", step, result)
        if step % log_every == 0 or step % every == 0 or step == total:
            flush()  # raises on a non-finite loss before anything is saved
        saved = step % every == 0 or step == total
        if saved:
            save(step, state)
        if stop is not None and step < total and stop.due(step):
            if not saved:
                flush()
                save(step, state)
            checkpointer.wait()
            raise signals.Stopped(stop.signum, step,
                                  os.path.join(checkpointer.directory, str(step)))
    flush()
    checkpointer.wait()
    return {"final_step": total, "last_metrics": last_row, "state": state}


class CompiledSteps:
    """The jitted train step compiled ahead of time once per batch signature (the shapes and
    dtypes of the batch's arrays): one executable for a run on one band set; one per distinct
    band count (and pairing) for mixed sensors (``config.data.sets``), each reused."""

    def __init__(self, jitted):
        self.jitted, self.executables = jitted, {}

    def get(self, state, batch):
        """(executable for ``batch``, seconds spent compiling it now, or None when cached)."""
        key = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))
        if key in self.executables:
            return self.executables[key], None
        logging.info("compiling the train step%s…", f" for batch signature {len(self.executables) + 1}"
                     if self.executables else "")
        t0 = time.perf_counter()
        lowered = self.jitted.lower(state, batch)
        trace_s = time.perf_counter() - t0
        self.executables[key] = lowered.compile()  # a hit of the persistent cache: loaded, not built
        seconds = time.perf_counter() - t0
        logging.info("compiled the train step in %.1f s (%.1f s of it tracing)", seconds, trace_s)
        return self.executables[key], seconds


def _export(config, objective, checkpointer, workdir) -> str | None:
    """Writes the backbone as a PyTorch state dict (safetensors) into workdir/export."""
    if not config.export.torch:
        return None
    raw = checkpointer.restore_raw()  # collective: every process takes part
    if jax.process_index() != 0:
        return None
    variables = objective.backbone_variables(
        objectives.Variables(params=raw["params"], teacher=raw.get("teacher"), extra=raw.get("extra", {})))
    path = os.path.join(workdir, "export", f"{objective.backbone_name}.safetensors")
    convert.export_backbone(variables, objective.backbone_name, architecture_kwargs(config.model),
                            path, config)
    return path
