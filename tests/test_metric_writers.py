"""A resumed run's logs read like an uninterrupted run's: `MetricWriter.resume`, checked with
json and with TensorBoard's own event reader; what a run shows on stdout, on a terminal and off
one, with its rate and ETA measured on a clock the test moves."""

import io
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clip_jax.runtime.logs import format_duration
from clip_jax.training.metric_writers import MetricWriter, Progress, format_value


def _tensorboard(workdir):
    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("loss")]


def test_resume_drops_replayed_steps_and_a_line_cut_short(tmp_path):
    first = MetricWriter(str(tmp_path), 6, 0, progress=False)
    for step in range(1, 6):
        first.write(step, {"loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write

    resumed = MetricWriter(str(tmp_path), 6, 0, progress=False)
    resumed.resume(3)  # the checkpoint was at step 3: steps 4.. are replayed
    for step in range(4, 7):
        resumed.write(step, {"loss": 10.0 * step})
    resumed.close()

    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert [(r["step"], r["loss"]) for r in records] == expected
    assert _tensorboard(tmp_path) == expected


def test_a_fresh_start_forgets_steps_logged_before_any_checkpoint(tmp_path):
    """Also when both writers open in one second of one process with event-file counters 9
    and 10 (TensorBoard's names then sorted the second file first, and its purge came before
    the step it should remove: a failure that depended on how many writers ran before)."""
    import itertools

    from clip_jax.training import metric_writers

    metric_writers._event_file_ids = itertools.count(9)  # the first file gets ...9
    first = MetricWriter(str(tmp_path), 4, 0, progress=False)
    first.write(1, {"loss": 1.0})
    first.close()
    again = MetricWriter(str(tmp_path), 4, 0, progress=False)
    again.resume(0)
    again.write(1, {"loss": 2.0})
    again.close()
    assert _tensorboard(tmp_path) == [(1, 2.0)]
    assert (tmp_path / "metrics.jsonl").read_text().count('"step"') == 1


def test_a_workdir_whose_name_is_not_utf8_gets_its_logs(tmp_path):
    """A folder name that is not UTF-8 (Python holds its bytes as surrogate escapes) failed
    in TensorFlow's gfile after the run's work; the events are TensorBoard's own reader's,
    read once the folder is renamed, and closing after a failed open raised AttributeError."""
    workdir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    first = MetricWriter(workdir, 3, 0, progress=False)
    for step in (1, 2, 3):
        first.write(step, {"loss": float(step)})
    first.close()
    resumed = MetricWriter(workdir, 3, 0, progress=False)
    resumed.resume(1)
    resumed.write(2, {"loss": 20.0})
    resumed.close()
    os.rename(workdir, tmp_path / "run")
    assert _tensorboard(tmp_path / "run") == [(1, 1.0), (2, 20.0)]

    (tmp_path / "file").write_text("")
    broken = MetricWriter(str(tmp_path / "file" / "run"), 3, 0, progress=False)
    with pytest.raises(NotADirectoryError):
        broken.write(1, {"loss": 1.0})
    broken.close()


class _Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_plain_lines_off_a_terminal_with_the_eta_of_this_process_after_a_resume(tmp_path):
    out, clock = io.StringIO(), _Clock()  # StringIO.isatty() is False, like a SLURM log
    writer = MetricWriter(str(tmp_path), 3500, stream=out, clock=clock)
    writer.resume(1000)  # the checkpoint holds 1000 steps; this process runs the rest
    clock.now += 60.0  # compiling: not training time
    writer.start()
    clock.now += 30.0  # steps 1001..1100: 0.3 s/step
    with writer.paused():  # an evaluation: not training time either
        clock.now += 100.0
    clock.now += 30.0  # steps 1101..1200
    writer.progress(1200, {"loss": 1.23449, "learning_rate": 0.0029,
                           "images_per_second": 812.4, "mfu": 0.4104, "grad_norm": 2.0})
    writer.close()
    # ETA: 2300 steps left x 60 s / 200 steps run here = 690 s (not 2300 x 60 / 1200 steps).
    assert out.getvalue().splitlines() == [
        "step 1200/3500  loss 1.234  lr 2.9e-3  img/s 812  mfu 41%  eta 11m30s"]


def test_a_terminal_gets_a_bar_that_starts_at_the_resumed_step(tmp_path):
    out, clock = io.StringIO(), _Clock()
    writer = MetricWriter(str(tmp_path), 50, stream=out, tty=True, clock=clock)
    writer.resume(40)
    writer.log("Compiling ...")
    writer.start()
    clock.now += 60.0  # the first step: its one-off costs stay out of the ETA
    writer.restart_clock(41)
    clock.now += 8.0
    writer.progress(45, {"loss": 2.0, "images_per_second": 10.0})
    writer.close()
    shown = out.getvalue()
    assert "Compiling ...\n" in shown and "\r" in shown
    bars = [part for part in shown.split("\r") if "/50" in part]
    assert bars and "40/50" in bars[0] and all(" 0/50" not in bar for bar in bars), bars
    # 4 steps in 8 s since the first: 5 left take 10 s; tqdm's own rate is not shown.
    assert "45/50" in bars[-1] and "loss=2" in bars[-1] and "eta=10s" in bars[-1], bars[-1]
    assert "step/s" not in shown and "s/step" not in shown


def test_the_bar_shows_wall_time_since_it_started_pauses_included(tmp_path):
    """Time spent evaluating is out of the rate and ETA, not out of the elapsed time: the
    bar's clock never runs backwards after an evaluation."""
    import re
    import time

    out = io.StringIO()
    writer = MetricWriter(str(tmp_path), 50, stream=out, tty=True)
    writer.start()
    writer.progress(1, {"loss": 2.0})
    with writer.paused():
        time.sleep(1.2)
    writer.progress(2, {"loss": 2.0})
    writer.close()
    elapsed = re.findall(r"\[(\d\d):(\d\d)", out.getvalue())
    assert elapsed and int(elapsed[-1][1]) >= 1, out.getvalue()


def test_a_terminal_without_a_width_gets_plain_lines():
    """A pty starts at 0 x 0 (as under `script` with no size): no bar, since it would print
    nothing; once the terminal has columns, the bar."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w")
    try:
        progress = Progress(10, stream)
        assert stream.isatty() and not progress.tty
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        assert progress.tty
    finally:
        stream.close()
        os.close(leader)


def test_nothing_is_written_before_the_first_record(tmp_path):
    writer = MetricWriter(str(tmp_path / "run"), 10, progress=False)
    assert not (tmp_path / "run").exists()
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text()) == {"step": 1, "loss": 1.0}


@pytest.mark.parametrize("seconds,shown", [(0.4, "0s"), (59.6, "1m00s"), (312, "5m12s"),
                                           (3599.4, "59m59s"), (11_220, "3h07m")])
def test_durations(seconds, shown):
    assert format_duration(seconds) == shown


def test_the_loss_keeps_four_significant_digits_with_trailing_zeros():
    """`4.000`, never a bare `4` that reads as an integer or a truncated line."""
    assert [format_value("loss", v) for v in (4.0004, 12.3449, 1234.4, 0.5)] == [
        "4.000", "12.34", "1234", "0.5000"]


def test_the_learning_rate_is_one_format_from_warmup_on():
    """Python's own `.1e` rendering, exponent unpadded; the warmup's first 0 is `0`."""
    values = (0.0, 1e-3, 2.94e-3, 5e-7, 0.1)
    assert [format_value("lr", v) for v in values] == ["0", "1.0e-3", "2.9e-3", "5.0e-7",
                                                       "1.0e-1"]
    assert [float(format_value("lr", v)) for v in values] == [float(f"{v:.1e}") for v in values]


def test_the_eta_leaves_out_the_first_step_once_the_clock_restarts(tmp_path):
    out, clock = io.StringIO(), _Clock()
    writer = MetricWriter(str(tmp_path), 10, stream=out, clock=clock)
    writer.resume(0)
    writer.start()
    clock.now += 10.0  # step 1: the first batch and the executable's first run
    rates = {"loss": 2.0, "images_per_second": 12.8, "mfu": 0.012}
    writer.progress(1, rates)  # no ETA from that step alone (it read 1m30s)
    writer.restart_clock(1)
    clock.now += 2.0  # steps 2 and 3: 1 s each
    writer.progress(3, {**rates, "images_per_second": 128.0, "mfu": 0.12})
    writer.close()
    # 7 steps left x 1 s (not 7 x 12 s / 3 steps = 28 s). The first step's rates are its
    # one-off costs too: a resume's first step alone showed 70 img/s of a steady 600 (trial B).
    first, last = out.getvalue().strip().splitlines()
    assert first == "step 1/10  loss 2.000  img/s ?  mfu ?  eta ?", first
    assert last == "step 3/10  loss 2.000  img/s 128  mfu 12%  eta 7s", last


def test_compilation_inside_a_pause_is_left_out_of_the_next_ones_price(tmp_path):
    """The first evaluation compiles (5.6 s of it, the next ones 0.4-0.6 s: the ETA read
    `<17s` 7.1 s from the end, trial B): its compile seconds do not price those to come."""
    out, clock, compiled = io.StringIO(), _Clock(), _Clock(0.0)
    writer = MetricWriter(str(tmp_path), 30, stream=out, clock=clock, compiling=compiled)
    writer.resume(0)
    writer.expect("eval", 10)
    writer.start()
    clock.now += 10.0  # steps 1-10 at 1 s
    writer.progress(10, {"loss": 2.0})
    with writer.paused("eval"):
        clock.now += 6.0
        compiled.now += 5.5  # of which compiling its functions
    clock.now += 1.0  # step 11
    writer.progress(11, {"loss": 2.0})
    writer.close()
    etas = [line.split("eta ")[-1] for line in out.getvalue().splitlines()]
    # Step 11: 19 steps at 1 s (the pause is not training time) + evaluations at 20 and 30
    # at 0.5 s each: 20 s, not 19 + 2 x 6 = 31 s.
    assert etas[1] == "<20s", etas


def test_compile_seconds_counts_what_jax_compiles():
    """`compile_seconds` grows by the compilation of a function never compiled before, by
    no more than the wall time of lowering and compiling it, and not on its second call."""
    import time

    import jax
    import numpy as np

    from clip_jax.training.metric_writers import compile_seconds

    before = compile_seconds()
    f = jax.jit(lambda x: np.float32(time.time() % 1) + x * 2)  # a constant no cache has seen
    t0 = time.perf_counter()
    f(np.ones(3, np.float32)).block_until_ready()
    wall = time.perf_counter() - t0
    during = compile_seconds() - before
    assert 0 < during <= wall
    f(np.ones(3, np.float32)).block_until_ready()
    assert compile_seconds() - before == during


def test_the_eta_counts_the_evaluations_and_saves_still_to_come(tmp_path):
    """The trial's run: 30 steps, an evaluation every 12 and at the end, a save every 10 and
    at the end; "eta 1s" was shown with 22.7 s of evaluation left. The ETA adds each kind's
    pauses still to come at its last duration, and reads '>' (a lower bound) while a kind
    has not been timed yet."""
    out, clock = io.StringIO(), _Clock()
    writer = MetricWriter(str(tmp_path), 30, stream=out, clock=clock)
    writer.resume(0)
    writer.expect("eval", 12)
    writer.expect("save", 10)
    writer.start()
    clock.now += 5.0  # steps 1-5 at 1 s
    writer.progress(5, {"loss": 2.0})
    clock.now += 5.0  # steps 6-10
    with writer.paused("save"):
        clock.now += 2.0
    clock.now += 2.0  # steps 11-12
    with writer.paused("eval"):
        clock.now += 10.0
    writer.progress(12, {"loss": 2.0})
    writer.close()
    lines = out.getvalue().splitlines()
    # Step 5: 25 steps left at 1 s, no pause timed yet: saves at 10, 20, 30 and evaluations
    # at 12, 24, 30 still to come.
    assert lines[0].endswith("eta >25s"), lines
    # Step 12 is shown before its own evaluation (as run_loop shows a step, then saves and
    # evaluates it): 18 steps + saves at 20, 30 (2 s each) + evaluations at 12, 24, 30 (10 s).
    # Each kind timed once, its first pause's one-off costs (compiling the evaluation,
    # setting the writer up) included: an upper bound (the trial's first evaluation took
    # 11.9 s, the next 2.3 s, and `eta 16s` was shown 5 s from the end).
    assert lines[1].endswith(f"eta <{18 + 2 * 2 + 3 * 10}s"), lines
    out = io.StringIO()
    writer = MetricWriter(str(tmp_path / "b"), 30, stream=out, clock=clock)
    writer.resume(0)
    writer.expect("eval", 12)
    writer.expect("save", 10)
    writer.start()
    for steps, shown, pause, seconds in ((10, 10, "save", 2.0), (2, 12, "eval", 10.0),
                                         (8, 20, "save", 0.5), (4, 24, "eval", 3.0),
                                         (1, 25, "", 0.0)):
        clock.now += steps  # 1 s a step
        writer.progress(shown, {"loss": 2.0})
        with writer.paused(pause):
            clock.now += seconds
    writer.close()
    etas = [line.split("eta ")[-1] for line in out.getvalue().splitlines()]
    # Step 20 (shown before its save): each kind timed once, at its first pause: 10 steps +
    # saves at 20, 30 (2 s) + evaluations at 24, 30 (10 s), an upper bound. Step 24: saves
    # timed twice (the last, 0.5 s, prices the one at 30), evaluations once: still '<'.
    # Step 25: both timed twice: exact, each at its last duration.
    assert etas[2:] == ["<" + format_duration(10 + 2 * 2 + 2 * 10),
                        "<" + format_duration(6 + 0.5 + 2 * 10),
                        format_duration(5 + 0.5 + 3)], etas
    shown = (1, 10, 11, 24, 29, 30, 31)
    for kind, every in (("eval", 12), ("save", 10), ("final", 0)):
        writer._display.expect(kind, every)
        assert [writer._display.pauses_left(kind, step) for step in shown] == [
            sum(1 for s in range(step, 31) if (every and s % every == 0) or s == 30)
            for step in shown], kind


def test_a_lower_bound_under_a_second_is_no_eta(tmp_path):
    """A 6-step run of fast steps whose final save has not been timed read `eta >0s` on
    every step: a bound that says nothing is shown as unknown (the last step as the untimed
    pauses left); an exact one as it is."""
    out, clock = io.StringIO(), _Clock()
    writer = MetricWriter(str(tmp_path), 6, stream=out, clock=clock)
    writer.resume(0)
    writer.expect("save", 0)
    writer.start()
    clock.now += 0.1
    writer.progress(1, {"loss": 2.0})
    writer.restart_clock(1)
    for step in range(2, 7):
        clock.now += 0.01
        writer.progress(step, {"loss": 2.0})
    with writer.paused("save"):
        clock.now += 0.5
    writer.close()
    # The last step, with nothing but the final save left, says so (it read `eta ?`).
    assert [line.split("eta ")[-1] for line in out.getvalue().splitlines()] == (
        ["?"] * 5 + ["0s + save"])
    writer = MetricWriter(str(tmp_path / "b"), 6, stream=out, clock=clock)
    writer.resume(0)
    writer.start()
    writer.restart_clock(0)
    clock.now += 0.05
    writer.progress(5, {"loss": 2.0})  # no pause expected: exact, under a second
    writer.close()
    assert out.getvalue().splitlines()[-1].endswith("eta 0s")


def test_the_last_steps_eta_counts_a_timed_evaluation_before_the_untimed_save(tmp_path):
    """The last step read `eta 0s + save` with an evaluation timed at 0.9 s still to run
    before the save (trial AP): the time known comes first, rounded as every ETA is."""
    out, clock = io.StringIO(), _Clock()
    writer = MetricWriter(str(tmp_path), 6, stream=out, clock=clock)
    writer.resume(0)
    writer.expect("eval", 3)
    writer.expect("save", 0)
    writer.start()
    writer.restart_clock(0)
    for step in range(1, 7):
        clock.now += 0.01
        writer.progress(step, {"loss": 2.0})
        if step == 3:
            with writer.paused("eval"):
                clock.now += 0.9
    writer.close()
    assert out.getvalue().splitlines()[-1].endswith("eta 1s + save")
