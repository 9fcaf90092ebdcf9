"""Where training metrics go: `metrics.jsonl`, TensorBoard event files and stdout.

Only process 0 writes; every other process gets a writer that does nothing. A resumed run
replays the steps after its checkpoint; `resume(step)` makes its logs read like an
uninterrupted run's: records after `step` are dropped from metrics.jsonl, and TensorBoard gets
a `SessionLog.START` event at `step + 1`, on which TensorBoard's readers discard the earlier
events at or after that step (what `torch.utils.tensorboard.SummaryWriter(purge_step=...)`
writes).

On stdout a run shows a tqdm bar when stdout is a terminal (the same fields, our ETA in
place of tqdm's own), and otherwise (SLURM, nohup, a
pipe, TPU VM logs) one plain line per log interval,
`step 1200/3500  loss 1.234  lr 2.9e-3  img/s 812  mfu 41%  eta 5m12s`, which reads well in a
log file where a carriage-return bar becomes one long line.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import socket
import struct
import sys
import time
from typing import Any, Callable, Iterator, Mapping, TextIO

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.proto.event_pb2 import SessionLog
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tqdm import tqdm

from clip_jax.runtime.logs import format_duration


_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class Progress:
    """Training progress and notes on `stream` (default stdout).

    The rate counts only the steps run in this process since `start(step)`, without the time
    spent inside `paused(kind)` (an evaluation, a checkpoint save): after a resume the display
    starts at the restored step, not skewed by the steps the checkpoint already holds or by
    compilation. The ETA is (steps left) x (seconds per step measured here) plus, for each
    kind of pause announced with `expect(kind, every_steps)`, the pauses still to come (at
    every multiple of `every_steps` and at the last step) x the last one's duration. Before a
    kind's first pause its cost is unknown and the ETA reads `>` (a lower bound); after the
    first alone it reads `<` (an upper bound: the first save sets its writer up, the first
    evaluation lists or builds its data, costs the later ones do not have); `~` when both
    hold. The compilation inside a pause (`compiling`'s count; the first evaluation compiles
    its functions, minutes on a pod) is left out of the price of those to come. The bounds
    are the pauses' only: the steps left are priced at the mean rate so far, which early in
    a run is often still rising, so an early `>` can exceed the time the run takes.

    `tty` (default: `stream.isatty()`) picks a tqdm bar (True) or plain lines (False);
    `clock` (seconds, default `time.monotonic`) is what the rate is measured with, and
    `compiling` (default `compile_seconds`) the seconds this process has spent compiling.
    """

    def __init__(self, total_steps: int, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 compiling: Callable[[], float] | None = None):
        self.total_steps = total_steps
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._compiling = compiling or compile_seconds
        self._bar: tqdm | None = None
        self._start_step = 0
        self._started = self._paused = 0.0
        self._first_step_timed = False  # the clock runs from start(), one-off costs included
        self._every: dict[str, int] = {}  # kind of pause -> its period in steps (0: last only)
        self._last_pause: dict[str, float] = {}  # kind -> the last one's seconds
        self._pause_count: collections.Counter[str] = collections.Counter()  # kind -> timed

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # looked up late: pytest's capsys swaps sys.stdout

    @property
    def tty(self) -> bool:
        """A bar needs a terminal with a width: a pty that reports 0 columns (`script` without
        a size, some CI runners) gets plain lines, where a bar would show nothing at all."""
        if self._tty is not None:
            return self._tty
        if not self.stream.isatty():
            return False
        try:
            return os.get_terminal_size(self.stream.fileno()).columns > 0
        except (OSError, ValueError):
            return False

    def start(self, step: int) -> None:
        """Training starts (or resumes) at `step`: the clock for rate and ETA starts now, and
        the step after it, which carries the one-off costs, shows no ETA (`restart` from the
        next step on)."""
        self.restart(step)
        self._first_step_timed = True
        if self.tty:
            # tqdm's own rate and remaining time would count the run's first step (compilation
            # aside, its first batch and executable run): the bar shows ours in the postfix.
            self._bar = tqdm(total=self.total_steps, initial=step, unit="step", file=self.stream,
                             dynamic_ncols=True, bar_format=_BAR_FORMAT)

    def restart(self, step: int) -> None:
        """Rate and ETA count from `step` and now on (the bar, if any, stays as it is)."""
        self._start_step, self._started, self._paused = step, self._clock(), 0.0
        self._first_step_timed = False

    def expect(self, kind: str, every_steps: int) -> None:
        """Pauses of `kind` come after every step that is a multiple of `every_steps` (0:
        none but the last) and after the last step, each after that step is shown: the ETA
        counts those still to come."""
        self._every[kind] = every_steps

    @contextlib.contextmanager
    def paused(self, kind: str = "") -> Iterator[None]:
        """Time inside this block (an evaluation, a checkpoint wait) is not training time; for
        an expected `kind` its duration prices that kind's remaining pauses in the ETA."""
        t0, compiled = self._clock(), self._compiling()
        try:
            yield
        finally:
            seconds = self._clock() - t0
            self._paused += seconds
            if kind:
                self._last_pause[kind] = max(0.0, seconds - (self._compiling() - compiled))
                self._pause_count[kind] += 1

    def pauses_left(self, kind: str, step: int) -> int:
        """How many pauses of `kind` are still to come when step `step` is shown (`expect`):
        those at `step` itself too, since a step is shown before its own save or
        evaluation."""
        every, total = self._every[kind], self.total_steps
        if step > total:
            return 0
        periodic = total // every - (step - 1) // every if every > 0 else 0
        return periodic + (every <= 0 or total % every != 0)

    def eta_seconds(self, step: int) -> tuple[float, str] | None:
        """Seconds to the end of the run at this process's mean training rate plus the pauses
        still to come, and how sure: "" exact, ">" a lower bound (some kind of pause not yet
        timed), "<" an upper bound (some kind timed once only, its first pause's one-off
        costs included), "~" both; None before a step, and on the first step of a run or
        resume alone (its time is mostly the first batch and the executable's first run: a
        run of 300 0.06 s steps showed `eta >1m15s` there)."""
        ran = step - self._start_step
        seconds = self._clock() - self._started - self._paused
        if ran <= 0 or seconds <= 0 or (ran == 1 and self._first_step_timed):
            return None
        eta, lower, upper = (self.total_steps - step) * seconds / ran, False, False
        for kind in self._every:
            left = self.pauses_left(kind, step)
            lower |= bool(left) and self._pause_count[kind] == 0
            upper |= bool(left) and self._pause_count[kind] == 1
            eta += left * self._last_pause.get(kind, 0.0)
        return eta, {(False, False): "", (True, False): ">", (False, True): "<",
                     (True, True): "~"}[lower, upper]

    def eta_text(self, step: int) -> str:
        """`eta_seconds` as shown: `5m12s`, with its bound (`>5m12s`, `<5m12s`, `~5m12s`), `?`
        (none, or a lower bound under a second: `>0s` says nothing), and on the last step,
        where pauses not yet timed are left, what they are after the time known (`0s + save`:
        the final save, whose time is unknown; `1s + save` with a timed final evaluation of
        0.9 s to run first)."""
        eta = self.eta_seconds(step)
        if eta is None:
            return "?"
        seconds, bound = eta
        if bound in ("", "<"):  # an upper bound under a second: done, as good as exact
            return (bound if seconds >= 1 else "") + format_duration(seconds)
        if seconds >= 1:
            return bound + format_duration(seconds)
        untimed = [kind for kind in self._every
                   if not self._pause_count[kind] and self.pauses_left(kind, step)]
        if step < self.total_steps:
            return "?"
        return " + ".join([format_duration(seconds), *untimed])

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        """Shows step `step` with its loss, learning rate, images/s and MFU (those present);
        `?` for the rates of the first step of a run or resume shown alone, whose time is
        mostly one-off costs (a resume's showed 70 img/s of a steady 600)."""
        first = self._first_step_timed and step == self._start_step + 1
        fields = {name: "?" if first and name in _RATES else format_value(name, metrics[key])
                  for key, name in _SHOWN.items() if key in metrics}
        fields["eta"] = self.eta_text(step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix({k.replace("/", "_"): v for k, v in fields.items()},
                                  refresh=True)
            return
        parts = [f"step {step}/{self.total_steps}", *(f"{k} {v}" for k, v in fields.items())]
        print("  ".join(parts), file=self.stream, flush=True)

    def note(self, message: str) -> None:
        """One line for the user (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# metrics key -> the short name a progress line shows it under
_SHOWN = {"loss": "loss", "learning_rate": "lr", "images_per_second": "img/s", "mfu": "mfu"}
_RATES = ("img/s", "mfu")

# jax.monitoring's duration events for getting an executable: XLA's compile, or reading one
# from the persistent compilation cache (never nested in each other, unlike tracing's).
_COMPILE_EVENTS = frozenset({"/jax/core/compile/backend_compile_duration",
                             "/jax/compilation_cache/cache_retrieval_time_sec"})


class _CompileTime:
    """The running total behind `compile_seconds`: one listener per process."""

    seconds = 0.0
    listening = False

    @classmethod
    def record(cls, event: str, duration: float, **_: Any) -> None:
        if event in _COMPILE_EVENTS:
            cls.seconds += duration


def compile_seconds() -> float:
    """Seconds this process has spent compiling executables (or reading them from the
    persistent cache) since it was first asked, from `jax.monitoring`'s events: a difference
    of two calls is the compilation between them."""
    if not _CompileTime.listening:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(_CompileTime.record)
        _CompileTime.listening = True
    return _CompileTime.seconds


def format_value(name: str, value: float) -> str:
    """A progress-line value: loss 4 significant digits, trailing zeros kept (`4.000`, not
    `4`), lr `2.9e-3`, img/s whole numbers (3 digits below 100), mfu a percentage."""
    if name == "lr":  # a zero rate (lr=0, a fully decayed end) as "0", not "0.000"
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}" if value else "0"
    if name == "img/s":
        return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
    if name == "mfu":
        return f"{value * 100:.2g}%"
    return f"{value:#.4g}".rstrip(".")


def _wait_for_a_later_second(events_dir: str) -> None:
    """Returns once the clock is past the second of every event file in `events_dir`.

    TensorBoard reads a run's event files in name order, and a resumed run's purge of replayed
    steps only works on events read before it. Names start with the creating second; a file
    made in the same second (a second writer in the same process, as a notebook that trains
    again) differs only by an unpadded counter, so `...9` could sort after `...10` and the
    replayed steps would come back. Waiting (at most a second) keeps names in time order.
    """
    if not os.path.isdir(events_dir):
        return
    seconds = [int(name.split(".")[3]) for name in os.listdir(events_dir)
               if name.startswith("events.out.tfevents.") and name.split(".")[3].isdigit()]
    if seconds and max(seconds) >= int(time.time()):
        time.sleep(max(seconds) + 1 - time.time())


_event_file_ids = itertools.count()  # the last part of an event file's name, per process


class EventFile:
    """A TensorBoard event file in the folder `logdir`, written with Python's own `open`.

    TensorBoard's `EventFileWriter` opens files through TensorFlow's gfile, which encodes the
    path as UTF-8 and so fails (UnicodeEncodeError) on a folder whose name is not UTF-8 (bytes
    Python holds as surrogate escapes), after a run's work is done; here the name goes to the
    OS as Python got it. The file is TensorBoard's: `events.out.tfevents.<second>.<host>.<pid>.
    <n>`, TFRecord framing (length, masked CRC-32C of the length, data, masked CRC-32C of the
    data, little-endian), a `file_version` event first. Each `add_event` is written through
    to the OS at once: no writer thread, nothing lost at exit.
    """

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_event_file_ids)}")
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        data = event.SerializeToString()
        length = struct.pack("<Q", len(data))
        self._file.write(b"".join([length, struct.pack("<I", masked_crc32c(length)), data,
                                   struct.pack("<I", masked_crc32c(data))]))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricWriter:
    """Appends scalars to `<workdir>/metrics.jsonl` and TensorBoard; shows progress on stdout.

    Nothing is written to `workdir` before the first `resume` or `write`. With `progress`,
    `start(step)` begins the display and `progress(step, metrics)` updates it; `stream`,
    `tty`, `clock` and `compiling` go to `Progress`.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 compiling: Callable[[], float] | None = None):
        self.enabled = enabled
        self.workdir = workdir
        self.start_step = start_step
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._events = self._jsonl = None
        self._display = (Progress(total_steps, stream, tty, clock, compiling)
                         if enabled and progress else None)

    def _open(self) -> None:
        if self._jsonl is None:
            os.makedirs(self.workdir, exist_ok=True)
            self._jsonl = open(self._path, "a")
            events = os.path.join(self.workdir, "tensorboard")
            _wait_for_a_later_second(events)
            self._events = EventFile(events)

    def resume(self, step: int) -> None:
        """Forgets every record after `step` (the restored checkpoint's; 0 for a fresh start)
        and makes `step` the start of the progress display.

        metrics.jsonl is rewritten atomically without them (and without a line cut short by a
        kill); TensorBoard is told to purge them.
        """
        self.start_step = step
        if not self.enabled:
            return
        self._open()
        self._jsonl.close()
        with open(self._path) as f:
            kept = [line for line in f if _step_of(line) is not None and _step_of(line) <= step]
        partial = f"{self._path}.partial"
        with open(partial, "w") as f:
            f.writelines(kept)
        os.replace(partial, self._path)
        self._jsonl = open(self._path, "a")
        self._events.add_event(event_pb2.Event(
            wall_time=time.time(), step=step + 1,
            session_log=event_pb2.SessionLog(status=SessionLog.START)))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._open()
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in metrics.items() if isinstance(v, (int, float))]
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                               summary=summary_pb2.Summary(value=values)))

    def start(self) -> None:
        """The first step is about to run: rate and ETA are measured from now on."""
        if self._display is not None:
            self._display.start(self.start_step)

    def restart_clock(self, step: int) -> None:
        """Step `step` is done and its time is not to count: the first step of a run carries
        one-off costs (its first batch, the executable's first run) that would skew the ETA."""
        if self._display is not None:
            self._display.restart(step)

    def progress(self, step: int, metrics: Mapping[str, float]) -> None:
        """Shows `step` with the loss, learning rate, img/s, MFU in `metrics` and the ETA."""
        if self._display is not None:
            self._display.update(step, metrics)

    def expect(self, kind: str, every_steps: int) -> None:
        """Pauses of `kind` to come (`Progress.expect`), counted in the ETA."""
        if self._display is not None:
            self._display.expect(kind, every_steps)

    def paused(self, kind: str = "") -> contextlib.AbstractContextManager[None]:
        """A block (evaluation, checkpoint save) whose time the rate leaves out; the ETA prices
        the remaining pauses of an expected `kind` with it."""
        return (self._display.paused(kind) if self._display is not None
                else contextlib.nullcontext())

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._display is not None:
            self._display.note(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._display is not None:
            self._display.close()
        for file in (self._events, self._jsonl):  # either may be missing: _open failed
            if file is not None:
                file.close()


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line cut short or not a record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, type(None))) else float(value)
