"""Stopping a run cleanly: SIGTERM / SIGINT (or jax's preemption notice) → a checkpoint at the
next step boundary, then :class:`Stopped`, whose ``exit_code`` the CLI exits with.

Exit status: 128 + the signal's number, as a shell reports a process that signal killed (SIGTERM
143, SIGINT 130), so schedulers that requeue on "killed by SIGTERM" keep doing so; here the
checkpoint of the stop step is on disk and the same command resumes from it bit-exactly.

Multi-process runs (``jax.distributed``): jax's preemption service owns SIGTERM (its notifier
syncs every process onto one step, ``multihost_utils.reached_preemption_sync_point``), so the
trainer asks it after every step and forwards SIGINT to it as SIGTERM. Without that service a
process cannot stop alone (the others would wait for it in the next collective): the signals keep
their default action there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

#: The signals that request a stop at the next step boundary.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """128 + ``signum``: the status of a process killed by that signal (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(BaseException):
    """A stop signal arrived where no step boundary is near (start-up, data preparation): the
    program stops at once. A BaseException, like KeyboardInterrupt, so that ``except Exception``
    clean-ups are skipped and ``finally`` blocks run."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = int(signum)
        self.exit_code = exit_code(signum)


class Stopped(Exception):
    """Training stopped after a stop request at ``step``; ``checkpoint`` is the folder written for
    that step (None when no step ran since the last checkpoint, which then is the resume point)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = int(signum), int(step), checkpoint
        self.exit_code = exit_code(signum)
        if checkpoint:
            where = f"checkpoint {checkpoint} written; the same command resumes from it"
        elif step:
            where = "no step ran since the last checkpoint; the same command resumes from it"
        else:   # a fresh run stopped before its first step: there is no checkpoint
            where = "nothing was trained; the same command starts the run"
        super().__init__(f"stopped by {signal_name(signum)} after step {step}: {where} "
                         f"(exit status {self.exit_code})")


#: The signal :func:`raise_interrupted` last handled, until :func:`raise_if_interrupted` takes it.
_handled: int | None = None


def raise_interrupted(signum, frame) -> None:
    """A signal handler: raises :class:`Interrupted` in the main thread (and records the signal:
    raised inside a finaliser or a garbage-collector callback, which jax runs at start-up, the
    exception is printed and dropped by Python, and :func:`raise_if_interrupted` raises it again)."""
    global _handled
    del frame
    _handled = int(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raises :class:`Interrupted` for a signal :func:`raise_interrupted` handled since the last
    call (its own exception may have been dropped); the record is cleared either way."""
    global _handled
    signum, _handled = _handled, None
    if signum is not None:
        raise Interrupted(signum)


def install_interrupt_handlers(signums=STOP_SIGNALS) -> None:
    """Makes each of ``signums`` raise :class:`Interrupted` (CLIs, at start-up); SIGINT then no
    longer means a KeyboardInterrupt traceback. Main thread only (a no-op elsewhere)."""
    global _handled
    if threading.current_thread() is threading.main_thread():
        _handled = None
        for signum in signums:
            signal.signal(signum, raise_interrupted)
        if not isinstance(sys.unraisablehook, _QuietInterrupted):
            sys.unraisablehook = _QuietInterrupted(sys.unraisablehook)


class _QuietInterrupted:
    """``sys.unraisablehook`` that drops an :class:`Interrupted` silently (it is recorded and
    raised again by :func:`raise_if_interrupted`) and hands anything else to ``hook``."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, unraisable) -> None:
        if unraisable.exc_type is not Interrupted:
            self.hook(unraisable)


def _jax_preemption_sync():
    """``multihost_utils.reached_preemption_sync_point`` when jax.distributed runs with its
    preemption service (which then owns SIGTERM), else None."""
    try:
        from jax._src import distributed
        from jax.experimental import multihost_utils
    except ImportError:
        return None
    reached = getattr(multihost_utils, "reached_preemption_sync_point", None)
    state = getattr(distributed, "global_state", None)
    if (reached is None or getattr(state, "client", None) is None
            or getattr(state, "preemption_sync_manager", None) is None):
        return None
    return reached


class StopRequest:
    """A context manager around the training loop: while it is entered, the first SIGTERM or SIGINT
    is only recorded, and the loop asks :meth:`due` after every step. A second SIGINT raises
    KeyboardInterrupt (stop now, without a checkpoint); a repeated SIGTERM is ignored (schedulers
    may send it to every process of a job). Previous handlers are restored on exit. Outside the
    main thread signals cannot be caught: nothing is installed and :meth:`due` stays False."""

    def __init__(self, process_count: int = 1):
        self.signum: int | None = None
        self._reached_sync = _jax_preemption_sync()
        self._enabled = process_count == 1 or self._reached_sync is not None
        self._previous: dict[int, object] = {}

    @property
    def uses_jax_preemption(self) -> bool:
        return self._reached_sync is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            raise_if_interrupted()  # a start-up signal whose exception Python dropped
        if not self._enabled or threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            if signum == signal.SIGTERM and self.uses_jax_preemption:
                continue  # jax's notifier handles it (and must keep doing so)
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        del frame
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = int(signum)
        if self.uses_jax_preemption:  # every process must stop at the same step: ask jax to sync
            os.kill(os.getpid(), signal.SIGTERM)

    def due(self, step: int) -> bool:
        """True when the loop must checkpoint ``step`` and stop. With jax's preemption service this
        is its sync point (the same step on every process; it must be asked at every step)."""
        if self.uses_jax_preemption:
            if self._reached_sync(step):
                self.signum = self.signum or int(signal.SIGTERM)
                return True
            return False
        return self.signum is not None
