"""The demo's code path on a small, quick run (the real demo is too slow for the suite), and
transformers' zero-shot pipeline on the export of the model it trained (HF_HUB_OFFLINE=1)."""

import json
import os
import pickle
import re
import subprocess
import sys
import types

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("transformers")  # the test extra; without it these tests skip
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from clip_jax import demo
from clip_jax.data import sources  # noqa: E402
from clip_jax.pretrained.factory import export_hf_from  # noqa: E402
from clip_jax.evaluation.zero_shot import ZeroShotClassifier  # noqa: E402
import clip_jax  # noqa: E402


def quick_config(data_dir):
    """The demo config with a tiny model and few steps: labels become meaningful (colours
    are learnt first) in well under a minute."""
    config = demo.demo_config()
    config.model.name = "test-vit"
    config.batch_size, config.total_steps, config.warmup_steps = 64, 120, 15
    config.optimizer.lr = 3e-3
    config.log_every_steps, config.checkpoint.every_steps = 20, 0
    config.eval.every_steps, config.eval.batch_size = 60, 48
    config.data.data_dir = str(data_dir)
    config.data.synthetic.update(num_train=1536, num_validation=96, num_test=96)
    return config


# The two runs, in a process that compiles as users' runs do (no QUICK_COMPILE: the demo's
# run is mostly computation, which XLA's unoptimised CPU code made 1.6x slower).
_RUNS = """
import pickle, sys
from test_demo import quick_config
from clip_jax import demo
config = quick_config(sys.argv[1])
report = demo.run(config, sys.argv[2])
print("-- again --", flush=True)
again = demo.run(config, sys.argv[2])
with open(sys.argv[3], "wb") as f:
    pickle.dump((report, again), f)
"""


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """`demo.run` of `quick_config`, then again in its finished workdir: (config, first
    report, second report, what the second printed)."""
    tfds_dir, out = tmp_path_factory.mktemp("tfds"), tmp_path_factory.mktemp("demo")
    tests = os.path.dirname(os.path.abspath(__file__))  # for `from test_demo import ...`
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _RUNS, str(tfds_dir), str(out / "workdir"),
                           str(out / "reports.pkl")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with open(out / "reports.pkl", "rb") as f:
        report, again = pickle.load(f)
    return quick_config(tfds_dir), report, again, done.stdout.partition("-- again --")[2]


@pytest.fixture(scope="module")
def demo_run(demo_runs):
    config, report, _, _ = demo_runs
    return config, report


@pytest.mark.slow
def test_demo_reports_scores_chance_and_pictures(demo_run):
    config, report = demo_run
    text = report.text(config)
    m = report.metrics
    assert report.num_classes == 48 and report.num_test == 96
    assert report.num_captions == 96 * 5 and report.trained_steps == 120
    assert f"top-1 {100 * m['zero_shot/heldout/top1']:5.1f} %   chance   2.1 %" in text
    assert f"text->image R@1 {100 * m['retrieval/heldout/t2i_r1']:5.1f} %   chance 1.0 %" in text
    assert demo._two_digits(100 / 2400) == "0.042"  # one decimal said 0.0 %
    assert re.search(r"wall time \d+ s: dataset \d+ s, training \d+ s, evaluation \d+ s", text)
    # Learnt something: colours come first, so the right class is usually among the top 5.
    assert m["zero_shot/heldout/top5"] > 3 * 5 / 48
    # Few-shot vs zero-shot and robustness on shifted test images (issue 14): the suite's
    # zero-shot equals the final evaluation's on the same images, every shift is reported.
    suite = report.suite
    assert suite["few_shot/heldout/zero_shot_top1"] == pytest.approx(m["zero_shot/heldout/top1"])
    assert suite["robustness/heldout/reference_top1"] == pytest.approx(m["zero_shot/heldout/top1"])
    assert {f"robustness/heldout/{s}_top1" for s in demo.SUITE_SHIFTS} <= set(suite)
    assert re.search(r"zero-shot (= a [\d.]+-shot probe|>= the 16-shot probe \(the most shots "
                     r"tried\)|<= the 1-shot probe \(the fewest shots tried\))", text)
    assert "effective robustness" in text
    for path, size in ((report.report_png, (1280, 1100)), (report.curves_png, (1100, 400)),
                       (report.suite_png, (1100, 420))):
        with Image.open(path) as image:
            assert image.format == "PNG" and abs(image.size[0] - size[0]) < 100
    records = [json.loads(line) for line in open(os.path.join(report.workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "zero_shot/heldout/top1" in r] == [60, 120]


@pytest.mark.slow
def test_demo_reuses_a_finished_workdir_and_says_so(demo_runs):
    config, report, again, printed = demo_runs
    assert "Reusing the finished run" in printed
    assert again.trained_steps == 0 and "reused a finished run" in again.text(config)
    assert again.metrics == report.metrics


@pytest.mark.slow
def test_demo_refuses_to_reuse_another_models_finished_run(demo_runs, monkeypatch, capsys):
    """A finished run of another config (here test-vit, batch 64) in --workdir was reused and
    reported as demo-vit's (trial BS); it is refused in one line, before the data build."""
    _, report, _, _ = demo_runs
    monkeypatch.setattr(sources, "prepare", None)  # must not get that far
    assert demo.main(["--workdir", report.workdir, "--steps", "100"]) == 2
    out, err = capsys.readouterr()
    assert re.fullmatch(r"error: The run in .* is finished \(checkpoint at step 120\) and "
                        r"trained another model than this config's \(.*\); give another "
                        r"--workdir to train this one.\n", err), err


def test_demo_refusing_another_batch_sizes_finished_run_names_its_own_flag(demo_runs,
                                                                          monkeypatch, capsys):
    """The same model's finished run at another batch size: the refusal said to raise
    config.total_steps, which the demo has no flag for; it names --steps."""
    config, report, _, _ = demo_runs
    changed = quick_config(config.data.data_dir)
    changed.batch_size = 32

    def other_batch(steps):
        changed.total_steps = steps
        return changed

    monkeypatch.setattr(demo, "demo_config", other_batch)
    monkeypatch.setattr(sources, "prepare", None)  # must not get that far
    assert demo.main(["--workdir", report.workdir, "--steps", "100"]) == 2
    err = capsys.readouterr().err
    assert "trained with batch_size 64, not config.batch_size=32; keep it (and raise --steps " \
           "to train further)" in err, err


@pytest.mark.parametrize("signum", [15, 2])
def test_a_demo_stopped_by_a_signal_says_how_to_resume_and_evaluates_nothing(
        demo_runs, monkeypatch, tmp_path, capsys, signum):
    """SIGTERM or the first Ctrl-C saved a step and the demo went on to evaluate that model
    and draw its pictures; "run the same command to resume" then started a new timestamped
    workdir. It stops with 128 + the signal and names its --workdir."""
    from clip_jax.training import checkpoints, train

    config, _, _, _ = demo_runs
    quick = quick_config(config.data.data_dir)
    monkeypatch.setattr(demo, "demo_config", lambda steps: quick)
    launches = []
    monkeypatch.setattr(train, "train", lambda config, workdir, launched=None: (
        launches.append(launched) or {"stop_signal": signum}))
    monkeypatch.setattr(checkpoints, "load_model", None)  # must not get that far
    workdir = str(tmp_path / "my run")
    assert demo.main(["--workdir", workdir, "--steps", "7"]) == 128 + signum
    # "after launch" is from this process's start, as for clip-jax train (trial CN)
    from clip_jax.runtime import launch

    assert launches and abs(launches[0] - launch.process_start_time()) < 1
    assert capsys.readouterr().err.endswith(
        f"The demo stopped before its last step; to resume, run it again with --workdir "
        f"'{workdir}' --steps 7.\n")


@pytest.mark.slow
def test_transformers_pipeline_picks_our_zero_shot_labels(demo_run, tmp_path):
    """The export of the demo's model in `pipeline("zero-shot-image-classification")` ranks
    the labels of held-out test images as our zero-shot does, with the same probabilities."""
    config, report = demo_run
    export_hf_from(report.workdir, tmp_path)
    builder = sources.prepare(config.data)
    test = builder.as_data_source("test")
    names = list(builder.info.features["label"].names)
    images = [Image.fromarray(test[i]["image"]) for i in range(6)]
    template = "a photo of a {}."
    ours = ZeroShotClassifier(*clip_jax.load(report.workdir)).probabilities(images, names,
                                                                          [template])
    classifier = transformers.pipeline("zero-shot-image-classification", model=str(tmp_path))
    right = 0
    for image, probs, i in zip(images, ours, range(6)):
        result = classifier(image, candidate_labels=names, hypothesis_template=template)
        assert result[0]["label"] == names[int(np.argmax(probs))]
        got = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([got[n] for n in names], probs, atol=1e-4)
        right += names[int(np.argmax(probs))].split()[0] == names[test[i]["label"]].split()[0]
    assert right >= 3  # meaningful labels: the colour is mostly right


def test_demo_refuses_a_bad_workdir_in_one_line_before_building(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(sources, "prepare", None)  # must not get that far
    assert demo.main(["--workdir", str(tmp_path / "file")]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: --workdir '{tmp_path / 'file'}' is a file; pass a directory (created " \
        "if missing).\n" and out == ""


def test_demo_steps_option_shortens_the_schedule_and_refuses_zero(monkeypatch, capsys):
    """`--steps N` (both entry points) trains N steps with the warmup at most a tenth of them;
    0 is one line on stderr, before any dataset is built."""
    from clip_jax import cli

    full = demo.demo_config()
    short = demo.demo_config(300)
    assert (short.total_steps, short.warmup_steps) == (300, 30)
    assert demo.demo_config(7).warmup_steps == 1
    assert demo.demo_config(50_000).warmup_steps == full.warmup_steps
    assert short.to_dict() | {"total_steps": 0, "warmup_steps": 0} == \
        full.to_dict() | {"total_steps": 0, "warmup_steps": 0}
    seen = []

    def run(config, workdir, launched=None):
        seen.append(config.total_steps)
        return types.SimpleNamespace(text=lambda config: "")

    monkeypatch.setattr(demo, "run", run)
    assert cli.main(["demo", "--steps", "12", "--workdir", "unused"]) == 0
    assert demo.main(["--steps", "5"]) == 0 and seen == [12, 5]
    monkeypatch.setattr(sources, "prepare", None)  # must not get that far
    assert demo.main(["--steps", "0"]) == 2
    assert capsys.readouterr().err == "error: --steps 0: train at least 1 step (the full demo: " \
        f"{full.total_steps}).\n"
