"""A resumed run's logs read like an uninterrupted run's: `MetricWriter.resume`, checked with
json and with TensorBoard's own event reader."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from clip_jax.training.metric_writers import MetricWriter


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
    first = MetricWriter(str(tmp_path), 4, 0, progress=False)
    first.write(1, {"loss": 1.0})
    first.close()
    again = MetricWriter(str(tmp_path), 4, 0, progress=False)
    again.resume(0)
    again.write(1, {"loss": 2.0})
    again.close()
    assert _tensorboard(tmp_path) == [(1, 2.0)]
    assert (tmp_path / "metrics.jsonl").read_text().count('"step"') == 1
