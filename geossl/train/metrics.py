"""Per-step metrics: process-0 JSONL, absl log lines with throughput/ETA, TensorBoard events
(``events``)."""

from __future__ import annotations

import json
import logging as pylogging
import math
import os

import jax
from absl import logging

from geossl.train import events


class OwnInfoOnly(pylogging.Filter):
    """Passes warnings and errors, and INFO lines only from geossl itself (orbax, grain and absl
    INFO chatter is dropped): the CLIs' default; ``--verbosity=0`` given explicitly keeps all."""

    def __init__(self, package_dir: str, files: tuple[str, ...] = ()):
        super().__init__()
        self.package_dir = os.path.abspath(package_dir) + os.sep
        self.files = {os.path.abspath(f) for f in files}

    def filter(self, record: pylogging.LogRecord) -> bool:
        path = os.path.abspath(record.pathname)
        return (record.levelno >= pylogging.WARNING or path.startswith(self.package_dir)
                or path in self.files)


def quiet_third_party_info(*files: str) -> OwnInfoOnly:
    """Installs :class:`OwnInfoOnly` on absl's handler for geossl's package folder plus the given
    script ``files`` (e.g. main.py); returns the filter."""
    own = OwnInfoOnly(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), files)
    logging.get_absl_handler().python_handler.addFilter(own)  # ABSLHandler.handle skips its own filters
    return own


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


def check_finite(step: int, metrics: dict) -> None:
    """Raises NonFiniteLossError naming the step and the first non-finite loss term (the total,
    then the terms, then the other metrics such as grad_norm)."""
    order = sorted(metrics, key=lambda k: (k != "loss", not k.startswith("loss"), k))
    for name in order:
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite {name}={value} at step {step}; stopping (the last checkpoint is kept)")


def in_notebook() -> bool:
    """True inside a Jupyter / Colab kernel (where a progress bar replaces scrolling lines)."""
    import sys
    if "google.colab" in sys.modules:
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class ProgressBar:
    """A tqdm bar of the run's steps on stdout (the cell output in a notebook), showing the loss
    and wall-clock img/s of the last logged step."""

    def __init__(self, total_steps: int):
        import sys
        from tqdm import tqdm
        self.bar = tqdm(total=total_steps, desc="training", unit="step", file=sys.stdout,
                        dynamic_ncols=True, mininterval=0.5)

    def update(self, row: dict) -> None:
        self.bar.set_postfix({"loss": f"{row.get('loss', float('nan')):.4g}",
                              "img/s": f"{row.get('images_per_s', 0.0):.1f}"}, refresh=False)
        self.bar.update(row["step"] - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class MetricsWriter:
    """Appends one JSON object per step to ``workdir/metrics.jsonl`` and its numbers as scalars
    to an event file in ``workdir/tensorboard`` (process 0 only); with ``progress_bar`` a tqdm bar
    follows the logged steps as well."""

    def __init__(self, workdir: str, total_steps: int, progress_bar: bool = False):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self._bar = ProgressBar(total_steps) if progress_bar and self.enabled else None
        self._events_dir = os.path.join(workdir, "tensorboard")
        self._events = None   # an events.EventWriter, opened with the first rows
        self._first_step = 0
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines of steps > ``step`` (they are recomputed), atomically; the
        TensorBoard events of those steps are superseded by this run's."""
        self._first_step = step + 1
        if not self.enabled or not os.path.exists(self.path):
            return
        lines, torn, dropped = [], [], False
        with open(self.path) as f:
            for number, line in enumerate(f, 1):
                try:
                    row = json.loads(line) if line.strip() else None
                except ValueError:   # a row cut short (a full disk, a lost machine): dropped
                    torn.append(number)
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    lines.append(line if line.endswith("\n") else line + "\n")
                elif isinstance(row, dict):
                    dropped = True
        if torn:
            logging.warning("%s: dropped %d unreadable line(s) (line %s)", self.path, len(torn),
                            ", ".join(map(str, torn[:5])))
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, self.path)
        if dropped and self._events is None:   # TensorBoard drops them too, rows or not
            self._events = events.EventWriter(self._events_dir, self._first_step)
            self._events.flush()

    def write(self, rows: list[dict]) -> None:
        if not self.enabled or not rows:
            return
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._events is None:
            self._events = events.EventWriter(self._events_dir, self._first_step)
        for row in rows:
            self._events.scalars(row["step"], {k: v for k, v in row.items()
                                               if k != "step" and isinstance(v, (int, float))})
        self._events.flush()

    def log(self, row: dict, elapsed_s: float, steps_done: int) -> None:
        """absl line with loss, wall-clock images/s and ETA (``elapsed_s`` over ``steps_done``
        steps of this run, compilation excluded)."""
        rate = steps_done / max(elapsed_s, 1e-9)
        eta = (self.total_steps - row["step"]) / max(rate, 1e-9)
        terms = " ".join(f"{k}={row[k]:.4g}" for k in sorted(row) if k.startswith("loss"))
        if self._bar is not None:
            self._bar.update(row)
        logging.info("step %d/%d %s | %.1f img/s | data wait %.1f%% | ETA %s", row["step"],
                     self.total_steps, terms, row.get("images_per_s", 0.0),
                     100 * row.get("data_wait_frac", 0.0), _hms(eta))

    def close(self):
        if self._bar is not None:
            self._bar.close()
        if self._events is not None:
            self._events.close()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
