"""Run metrics: a JSONL file and TensorBoard scalars, a plain-log progress line, summary tables.

`workdir/metrics.jsonl` holds one JSON object per `write`: `{"step": S, <name>: <value>, ...}`
with the metric names sorted. Numbers are written as JSON numbers (integers stay integers;
JAX and NumPy scalars become Python ints/floats/bools) and strings as strings. JSON has no
NaN or infinity, so those are written as the strings "NaN", "Infinity" and "-Infinity"
(the spellings `float()` and JavaScript's `Number()` read back; `read_metrics` does it).

A run that resumes from step S passes `start_step=S`: lines with step >= S are dropped from
the JSONL file, and TensorBoard is told to drop its events from step S on (`purge_step`),
so a resumed run leaves the same metrics behind as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, TextIO

import jax
import numpy as np

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Scalar = bool | int | float | str


def to_scalar(name: str, value: Any) -> Scalar:
    """A metric value as a Python bool, int, float or str; arrays must be 0-d."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        array = np.asarray(value)
        if array.ndim:
            raise ValueError(f"metric {name!r} must be a scalar; got shape {array.shape}")
        if array.dtype == np.bool_:
            return bool(array)
        if np.issubdtype(array.dtype, np.integer):
            return int(array)
        if np.issubdtype(array.dtype, np.str_):
            return str(array)
        return float(array)  # float16/32/64 and bfloat16
    raise TypeError(f"metric {name!r} has type {type(value).__name__}; expected a number, "
                    "a string, or a 0-d JAX/NumPy array")


def _json_value(value: Scalar) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Scalar]]:
    """The records of a metrics.jsonl file (or of `workdir/metrics.jsonl`), NaN/inf restored."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    records = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            records.append({k: _NON_FINITE.get(v, v) if isinstance(v, str) else v
                            for k, v in record.items()})
    return records


class MetricsWriter:
    """Appends metrics to `workdir/metrics.jsonl` and TensorBoard scalars under `workdir/tb`.

    Args:
      workdir: run directory (created if missing).
      start_step: the first step this run will write; earlier outputs from step
        `start_step` on are dropped (see the module docstring). 0 for a fresh run.
      enabled: write anything at all; default: only on JAX process 0, so that the processes
        of a multi-host run do not write the same files.
      tensorboard: also write TensorBoard event files.
    """

    def __init__(self, workdir: str | os.PathLike, *, start_step: int = 0,
                 enabled: bool | None = None, tensorboard: bool = True):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, "metrics.jsonl")
        self.tb_dir = os.path.join(self.workdir, "tb")
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tensorboard = tensorboard
        self._file: TextIO | None = None
        self._tb = None
        if self.enabled:
            os.makedirs(self.workdir, exist_ok=True)
            self.truncate_from(start_step)

    def truncate_from(self, step: int) -> None:
        """Drops every record with step >= `step`, from the JSONL file and from TensorBoard."""
        if not self.enabled:
            return
        step = int(step)
        self._close_outputs()
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = f.readlines()
            kept = []
            for number, line in enumerate(lines, 1):
                try:
                    line_step = json.loads(line)["step"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    if number == len(lines) and not line.endswith("\n"):
                        break  # the last write was cut short by a crash
                    raise ValueError(f"{self.path}:{number} is not a metrics record: {line!r}")
                if line_step < step:
                    kept.append(line)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        if self._tensorboard:
            from tensorboardX import SummaryWriter
            # purge_step makes TensorBoard discard older events at steps >= step. Event files
            # are named by the second they were opened in: the suffix keeps a writer reopened
            # within the same second from overwriting the previous file.
            self._tb = SummaryWriter(self.tb_dir, purge_step=step, flush_secs=30,
                                     filename_suffix=f".{time.time_ns()}")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record; values are numbers, strings or 0-d arrays (strings skip TB)."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricsWriter for {self.workdir} is closed")
        if "step" in metrics:
            raise ValueError("'step' is reserved for the step number; rename that metric")
        step = int(step)
        values = {name: to_scalar(name, metrics[name]) for name in sorted(metrics)}
        record = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if not isinstance(value, str):
                    self._tb.add_scalar(name, float(value), step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._close_outputs()

    def _close_outputs(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def format_value(value: Any) -> str:
    """A compact rendering of a metric value: 4 significant digits for floats."""
    value = to_scalar("value", value) if not isinstance(value, str) else value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_duration(seconds: float) -> str:
    """H:MM:SS (or M:SS under an hour)."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_step_time(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}ms/step" if seconds < 1 else f"{seconds:.2f}s/step"


class Progress:
    """A one-line progress report: steps, bar, time per step, ETA and a few metrics.

    `update(step, **shown)` takes the number of steps completed so far (so `total_steps`
    at the end) and prints when `step` is a multiple of `every` and at the last step.
    Step time is an exponential moving average over updates; the time before the first
    update (which includes compilation) is left out of it. With JAX's asynchronous dispatch
    the time between updates is only honest if the loop waits for the step, e.g. by
    fetching the shown metrics to the host.

    On a terminal the line is redrawn in place; on anything else (a log file, a pipe)
    each report is its own line.
    """

    def __init__(self, total_steps: int, start_step: int = 0, every: int = 1,
                 stream: TextIO | None = None, *, bar_width: int = 20, smoothing: float = 0.3,
                 clock: Callable[[], float] = time.monotonic):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {total_steps}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step must be in [0, {total_steps}]; got {start_step}")
        if every < 1:
            raise ValueError(f"every must be >= 1; got {every}")
        self.total_steps = total_steps
        self.every = every
        self.stream = sys.stderr if stream is None else stream
        self._bar_width = bar_width
        self._smoothing = smoothing
        self._clock = clock
        self._start_time = clock()
        self._last: tuple[int, float] | None = None  # (step, time) of the previous update
        self.step_time: float | None = None
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, step: int, **shown: Any) -> None:
        step = int(step)
        now = self._clock()
        if self._last is not None and step > self._last[0]:
            per_step = (now - self._last[1]) / (step - self._last[0])
            self.step_time = per_step if self.step_time is None else (
                self._smoothing * per_step + (1 - self._smoothing) * self.step_time)
        self._last = (step, now)
        if step % self.every and step != self.total_steps:
            return
        line = self.format_line(step, elapsed=now - self._start_time, **shown)
        if self._tty:
            end = "\n" if step >= self.total_steps else ""
            self.stream.write("\r" + line + "\x1b[K" + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def format_line(self, step: int, elapsed: float, **shown: Any) -> str:
        fraction = min(max(step / self.total_steps, 0.0), 1.0)
        filled = int(round(fraction * self._bar_width))
        width = len(str(self.total_steps))
        parts = [f"step {step:>{width}}/{self.total_steps} "
                 f"[{'#' * filled}{'.' * (self._bar_width - filled)}] {fraction:4.0%}",
                 f"elapsed {format_duration(elapsed)}"]
        if self.step_time is None:
            parts.append("ETA ?")
        else:
            eta = self.step_time * max(self.total_steps - step, 0)
            parts += [_format_step_time(self.step_time), f"ETA {format_duration(eta)}"]
        if shown:
            parts.append(" ".join(f"{k}={format_value(v)}" for k, v in shown.items()))
        return " | ".join(parts)


def summary_table(rows: Mapping[str, Any] | Iterable[tuple[str, Any]],
                  title: str | None = None) -> str:
    """An aligned two-column text table (names, then values), e.g. for the end of a run."""
    items = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
    cells = [(str(name), format_value(value)) for name, value in items]
    name_width = max((len(name) for name, _ in cells), default=0)
    lines = [f"{name.ljust(name_width)}  {value}" for name, value in cells]
    if title is not None:
        width = max([len(title), *(len(line) for line in lines)])
        lines = [title, "-" * width, *lines]
    return "\n".join(lines)
