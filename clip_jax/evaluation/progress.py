"""Progress of a standalone evaluation (`clip-jax eval`, `--config.mode=eval`): each source's
images embedded so far, the rate and the time left, on stderr. An ImageNet-size evaluation
embeds for many minutes; it printed nothing until its results (trial CT). A terminal gets a
tqdm bar per source; a job's log one line every `LINE_SECONDS`, and one when the source is
done. The lines' rate leaves out the first batch (its compile: `logs.steady_rate`), so
they give none until a second batch has ended; the bar's rate is tqdm's own. A training run's
periodic evaluations show none: its own progress line covers them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

from clip_jax.runtime.logs import rate_and_left, steady_rate

LINE_SECONDS = 30.0  # between two lines in a log file


def progress_line(description: str, done: int, total: int, rate: float | None) -> str:
    """'eval: digits (test): 512/1797 images (88.1 img/s, 15s to go)'; without the rate
    while it is not known (None: `steady_rate`)."""
    return f"eval: {description}: {done}/{total} images{rate_and_left(done, total, rate, 'img')}"


def with_progress(batches: Iterable[Any], description: str, rows_per_batch: int, total: int,
                  stream: TextIO | None = None, tty: bool | None = None) -> Iterator[Any]:
    """`batches` as they come, reporting `min(batches so far x rows_per_batch, total)`
    images of `total` (the split's; the last batches' padding not counted) on `stream`
    (default stderr): a bar where `tty` (default `stream.isatty()`), else lines."""
    stream = stream or sys.stderr
    tty = stream.isatty() if tty is None else tty
    bar = tqdm(total=total, unit="img", desc=f"eval: {description}", file=stream,
               dynamic_ncols=True, disable=not tty)
    last = time.monotonic()
    done, first = 0, None
    try:
        for batch in batches:
            yield batch
            now, before = time.monotonic(), done
            done = min(done + rows_per_batch, total)
            first = first or (done, now)
            bar.update(done - before)
            if not tty and (now - last >= LINE_SECONDS or done == total):
                last = now
                print(progress_line(description, done, total, steady_rate(done, now, first)),
                      file=stream, flush=True)
    finally:
        bar.close()
