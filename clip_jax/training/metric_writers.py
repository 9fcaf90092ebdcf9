"""Where training metrics go: `metrics.jsonl`, TensorBoard event files and a progress line.

Only process 0 writes; every other process gets a writer that does nothing. A resumed run
replays the steps after its checkpoint; `resume(step)` makes its logs read like an
uninterrupted run's: records after `step` are dropped from metrics.jsonl, and TensorBoard gets
a `SessionLog.START` event at `step + 1`, on which TensorBoard's readers discard the earlier
events at or after that step (what `torch.utils.tensorboard.SummaryWriter(purge_step=...)`
writes).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.proto.event_pb2 import SessionLog
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm import tqdm


class MetricWriter:
    """Appends scalars to `<workdir>/metrics.jsonl` and TensorBoard, shows a tqdm bar."""

    def __init__(self, workdir: str, total_steps: int, start_step: int, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self._events = self._jsonl = self._bar = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self._path, "a")
        self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))
        if progress:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             smoothing=0.1)

    def resume(self, step: int) -> None:
        """Forgets every record after `step` (the restored checkpoint's; 0 for a fresh start).

        metrics.jsonl is rewritten atomically without them (and without a line cut short by a
        kill); TensorBoard is told to purge them.
        """
        if not self.enabled:
            return
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
        self._events.flush()
        if self._bar is not None:
            self._bar.n = self._bar.last_print_n = self._bar.initial = step
            self._bar.refresh()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in metrics.items() if isinstance(v, (int, float))]
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                               summary=summary_pb2.Summary(value=values)))
        self._events.flush()

    def progress(self, step: int, **postfix: Any) -> None:
        """Moves the bar to `step` and shows `postfix` (loss, img/s, ...); ETA comes from tqdm."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=True)

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        (self._bar.write if self._bar is not None else print)(message)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._events.close()
        self._jsonl.close()


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


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
