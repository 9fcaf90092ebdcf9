"""A standalone evaluation's progress (`clip_jax.evaluation.progress`): it printed nothing
until its results, however long it embedded (trial CT)."""

import io

import pytest

from clip_jax.evaluation import progress


def test_a_log_gets_lines_with_the_images_done_capped_at_the_split(monkeypatch):
    """Lines as batches are embedded (every `LINE_SECONDS`; 0 here: each batch), the count
    never past the split's images (the last batch's padding), the last line without time
    left; the batches pass through unchanged."""
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    log = io.StringIO()
    batches = list(progress.with_progress(iter(range(4)), "digits (test)", 64, 200, log,
                                          tty=False))
    assert batches == [0, 1, 2, 3]
    lines = log.getvalue().splitlines()
    assert [line.split(" images")[0] for line in lines] == [
        f"eval: digits (test): {n}/200" for n in (64, 128, 192, 200)]
    assert lines[0] == "eval: digits (test): 64/200 images"  # no rate before a 2nd batch
    assert "to go" in lines[1] and "to go" not in lines[-1]
    assert "\r" not in log.getvalue()


def test_a_log_gets_a_line_per_interval_and_at_the_end(monkeypatch):
    monkeypatch.setattr(progress, "LINE_SECONDS", 3600.0)
    log = io.StringIO()
    list(progress.with_progress(range(10), "x", 8, 80, log, tty=False))
    assert log.getvalue().splitlines() == [
        line for line in log.getvalue().splitlines() if line.startswith("eval: x: 80/80 images")]
    assert len(log.getvalue().splitlines()) == 1


@pytest.mark.parametrize("done,total,rate,left", [(512, 1797, 88.1, ", 15s to go"),
                                                  (1797, 1797, 90.0, "")])
def test_the_line_says_the_rate_and_the_time_left(done, total, rate, left):
    assert progress.progress_line("digits (test)", done, total, rate) == (
        f"eval: digits (test): {done}/{total} images ({rate:.1f} img/s{left})")
    assert progress.progress_line("d", done, total, None) == f"eval: d: {done}/{total} images"


def test_a_terminal_gets_a_bar():
    screen = io.StringIO()
    list(progress.with_progress(range(3), "x", 5, 12, screen, tty=True))
    assert "eval: x" in screen.getvalue() and "12/12" in screen.getvalue()
