"""Pretraining entry point: ``python main.py --config=configs/NAME.py[:variant] --workdir=DIR``.

Any config field can be overridden with ``--config.a.b=value``; ``--config.optim.name=sgd`` (or
lars, adamw) switches the optimiser, whose own fields then follow (``--config.optim.momentum=0.9``).
Resumes from DIR automatically; one run per DIR (DIR/run.lock).

Exit status: 0 done; 1 the workdir or data does not fit the run (nothing changed), a checkpoint
could not be written (its reason first, e.g. "No space left on device"), or another value, file
or record the run cannot use (one line; GEOSSL_TRACEBACK=1 shows its traceback); 2 a bad flag or
config value, or DIR in use by another run (nothing changed); 143 stopped by SIGTERM (or a
preemption notice), 130 by SIGINT (Ctrl-C): the step reached is checkpointed first, and the same
command resumes from it.
"""

import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from geossl.errors import run_command
from geossl.train import signals

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/softcon_vit_s.py:demo.")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and exports go (resumed from).")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", -1, "This process's index (multi-host runs).")
flags.DEFINE_bool("auto_distributed", True, "Initialise jax.distributed when a TPU pod / SLURM "
                  "/ MPI environment is detected.")
flags.DEFINE_bool("compilation_cache", True, "Keep compiled train steps on disk so that a second "
                  "or resumed run starts in seconds (--nocompilation_cache: off).")
flags.DEFINE_string("compilation_cache_dir", "", "Folder of the compilation cache (default "
                    "$GEOSSL_CACHE/jax or ~/.cache/geossl/jax).")
flags.DEFINE_bool("huge_pages", True, "Where the kernel gives transparent huge pages on request "
                  "(madvise mode), start again at once with glibc's huge-page tunable, so that "
                  "each CPU step's multi-GB XLA buffer faults in 2 MB pages (geossl/data/malloc.py; "
                  "ViT-S/14 step 5.5 -> 4.4 s on a 2-core host). --nohuge_pages: off.")
flags.DEFINE_bool("reuse_step_buffers", True, "One-device CPU runs: each step runs on the "
                  "calling thread, whose heap keeps what it frees, so the step's multi-GB XLA "
                  "buffer reuses its pages instead of faulting in fresh ones (geossl/parallel/"
                  "cpu_options.py; SoftCon ViT-S/14 step 0.83 -> 1.02 of PyTorch's speed on a "
                  "2-core host). --noreuse_step_buffers: off.")
flags.DEFINE_bool("keep_step_memory", False, "CPU steps: one malloc arena, no mapped blocks, no "
                  "trimming, so each step's XLA buffers reuse their pages (geossl/data/malloc.py; "
                  "ViT / Swin steps 4-18% faster on one CPU device, ResNet trainer steps slower).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


class _OptimizerSwitch(flags.ArgumentParser):
    """ml_collections' config-file parser, then ``configs.common.switch_optim_from_argv``: the
    config's optimiser section follows ``--config.optim.name`` before the overrides apply."""

    def __init__(self, config_file_parser):
        self.config_file_parser = config_file_parser

    def parse(self, argument):
        from configs.common import switch_optim_from_argv
        config = self.config_file_parser.parse(argument)
        argv = FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
        return switch_optim_from_argv(config, argv)

    def flag_type(self):
        return self.config_file_parser.flag_type()


FLAGS["config"].parser = _OptimizerSwitch(FLAGS["config"].parser)


def missing_config_field(argv) -> str | None:
    """For the first ``--config.a.b=v`` whose path the ``--config=FILE`` config lacks: the override,
    the missing field, a close name and the fields there are (one line); None otherwise."""
    import difflib
    spec = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    try:
        config = FLAGS["config"].parser.parse(spec) if spec else None
    except Exception:  # noqa: BLE001 (the file's own error is reported as it was)
        return None
    for arg in argv if config is not None else ():
        if not arg.startswith("--config."):
            continue
        node, where = config, "config"
        for name in arg[len("--config."):].split("=", 1)[0].split("."):
            if not hasattr(node, "keys"):
                return f"{arg}: {where} is a value ({node!r}), not a section with field {name!r}"
            if name not in node:
                fields = sorted(node.keys())
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                return f"{arg}: {where} has no field {name!r} ({hint}its fields: {', '.join(fields)})"
            node, where = node[name], f"{where}.{name}"
    return None


def parse_flags(argv):
    """absl's flag parsing; a bad flag or ``--config.*`` override is one line and exit status 2."""
    from geossl.errors import ConfigError, one_line
    try:
        return FLAGS(argv)
    except flags.Error as e:
        if isinstance(e.__context__, ConfigError):  # from the optimiser switch
            print(f"main.py: {e.__context__}", file=sys.stderr)
        elif str(e).startswith("flag --config="):  # the config file failed: its own error
            flag = str(e).split(": ", 1)[0][len("flag "):]
            cause = innermost(e)
            print(f"main.py: {flag}: {type(cause).__name__}: {one_line(cause)}", file=sys.stderr)
        else:
            print(f"main.py: {e} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"main.py: {missing_config_field(argv) or f'bad --config override: {one_line(e)}'}",
              file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the config file itself
        print(f"main.py: --config: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 (the config file's code: a SyntaxError, a NameError...)
        print(f"main.py: --config: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def innermost(error: BaseException) -> BaseException:
    """The first error of the chain that ``error`` ends (its causes and contexts followed)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def huge_pages_in_argv(argv) -> bool | None:
    """``--huge_pages`` from the command line alone (flag files included), read by absl's own parser
    before the config is parsed; None where absl refuses the value (the full parse reports it)."""
    alone = flags.FlagValues()
    flags.DEFINE_bool("huge_pages", FLAGS["huge_pages"].default, FLAGS["huge_pages"].help,
                      flag_values=alone)
    try:
        alone(list(argv), known_only=True)
    except flags.Error:
        return None
    return alone.huge_pages


def main(argv):
    del argv
    from geossl.data import malloc  # --huge_pages: the new start came before the flags' parse
    if FLAGS.keep_step_memory:  # before jax's CPU threads start (they keep their first arena)
        malloc.keep_step_memory()
    if FLAGS.reuse_step_buffers:  # read when jax creates its CPU client
        from geossl.parallel import cpu_options
        cpu_options.run_steps_on_calling_thread()
    if not FLAGS["verbosity"].present:  # third-party INFO lines (orbax, grain) only on request
        from geossl.train.metrics import quiet_third_party_info
        quiet_third_party_info(os.path.abspath(__file__))
    from geossl.parallel import multihost
    multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         auto=FLAGS.auto_distributed)
    import jax
    if FLAGS.reuse_step_buffers and jax.default_backend() == "cpu":  # a TPU / GPU host's main
        malloc.keep_main_heap()                  # thread frees host batches it should return
    if FLAGS.compilation_cache:
        from geossl.train import compile_cache
        if compile_cache.enable(FLAGS.compilation_cache_dir or None) is None:
            logging.info("compilation cache off: CPU runs over several devices do not support it")
    from geossl.eval import monitor, online
    from geossl.train import loop
    config = FLAGS.config
    from geossl.errors import ConfigError, DataConfigMismatchError
    from geossl.train.checkpoint import (CheckpointMismatchError, CheckpointWriteError,
                                         NoReadableCheckpointError)
    from geossl.train.metrics import NonFiniteLossError
    from geossl.train.workdir_lock import WorkdirInUseError
    try:
        hooks = [h for h in (online.make_online_probe(config), monitor.make_monitor(config)) if h]
        summary = loop.run(config, FLAGS.workdir, hooks=hooks)
    except (ConfigError, WorkdirInUseError) as e:  # nothing was built or written: one line
        print(f"main.py: {e}", file=sys.stderr)
        sys.exit(2)
    except signals.Stopped as e:  # the step reached is checkpointed
        print(f"main.py: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except CheckpointWriteError as e:  # the reason first; the earlier checkpoints are kept
        print(f"main.py: {e}", file=sys.stderr)
        sys.exit(1)
    except (CheckpointMismatchError, NoReadableCheckpointError, DataConfigMismatchError,
            NonFiniteLossError) as e:  # the workdir is untouched / its checkpoints kept
        print(f"main.py: {e}", file=sys.stderr)
        sys.exit(1)
    logging.info("done: %s", {k: v for k, v in summary.items() if k != "state"})
    import jax
    if jax.process_index() == 0:
        print(f"workdir:     {summary['workdir']}")
        print(f"checkpoints: {summary['workdir']}/checkpoints")
        print(f"metrics:     {summary['workdir']}/metrics.jsonl")
        if summary.get("export"):
            print(f"export:      {summary['export']}")


if __name__ == "__main__":
    if huge_pages_in_argv(sys.argv):  # glibc reads its tunables at start: a new start (same PID
        from geossl.data import malloc  # and argv) before the config's imports (jax: ~1 s)
        malloc.exec_with_huge_pages()
    signals.install_interrupt_handlers()  # until the trainer's own: stop at once, in one line
    try:
        # any other value, file or record the run cannot use: one line, exit 1 (run_command)
        app.run(lambda argv: run_command(lambda: main(argv), "main.py"), flags_parser=parse_flags)
    except (signals.Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"main.py: stopped by {signals.signal_name(signum)} before a step boundary; "
              f"nothing new was saved (the same command resumes from the last checkpoint)",
              file=sys.stderr)
        sys.exit(signals.exit_code(signum))
