"""The demo: a small CLIP learns from scratch on a CPU, end to end, in a few minutes.

`python -m clip_jax.demo [--workdir DIR]` builds the synthetic shapes dataset, trains a small
ViT CLIP on its image-caption pairs (configs/demo.py), evaluates zero-shot classification
(48-way, colour x shape) and retrieval on the held-out test split, and prints a report with the
chance level next to the scores. It then compares zero-shot with few-shot linear probes (1-16
labelled images per class) and measures robustness on synthetically shifted copies of test
images (`clip_jax.data.shifts`). The workdir gets `report.png` (test images with predicted and
true labels), `curves.png` (loss and accuracy curves) and `suite.png` (few-shot curve and
in-distribution vs shifted accuracy), besides the checkpoints and metrics.

By default every run trains afresh in a new `runs/demo/<timestamp>/`. Given an existing
`--workdir`, the trainer resumes it: a finished run is reused (said so, and not timed as
training) and evaluated again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from clip_jax.errors import ConfigError

DEFAULT_ROOT = os.path.join("runs", "demo")
GRID_ROWS, GRID_COLS = 5, 8


def demo_config(steps: int | None = None) -> ml_collections.ConfigDict:
    """clip_jax/configs/demo.py (also `configs/demo.py` in a checkout); `steps` shortens (or
    lengthens) the training, with the learning-rate warmup kept to at most a tenth of it, for
    a quick look at the whole path (a few hundred steps learn the colours, not the shapes).
    Raises ConfigError when `steps` < 1."""
    from clip_jax.configs import demo

    config = demo.get_config()
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps {steps}: train at least 1 step (the full demo: "
                              f"{config.total_steps}).")
        config.warmup_steps = min(config.warmup_steps, max(1, steps // 10))
        config.total_steps = steps
    return config


@dataclasses.dataclass
class Report:
    """What the demo measured; `seconds` per phase (build, train, eval, report)."""

    workdir: str
    metrics: dict[str, float]
    num_classes: int
    num_test: int
    num_captions: int
    steps: int
    trained_steps: int
    final_loss: float
    seconds: dict[str, float]
    report_png: str
    curves_png: str
    suite: dict[str, float] = dataclasses.field(default_factory=dict)
    suite_png: str = ""

    def text(self, config: ml_collections.ConfigDict) -> str:
        m = self.metrics
        chance = 1 / self.num_classes
        epochs = self.steps * config.batch_size / config.data.synthetic.num_train
        s = self.seconds
        training = (f"{self.trained_steps} steps in {s['train']:.0f} s" if self.trained_steps
                    else "reused a finished run (not retrained)")
        pct = lambda x: f"{100 * x:5.1f} %"  # noqa: E731
        return "\n".join([
            "",
            f"clip_jax demo: {config.model.name} CLIP trained from scratch on synthetic shapes",
            f"  data      {config.data.synthetic.num_train} training images "
            f"({config.data.synthetic.image_size} px), {self.num_classes} classes "
            "(colour x shape), 5 captions each",
            f"  training  {self.steps} steps x batch {config.batch_size} ({epochs:.1f} epochs): "
            f"{training}; final loss {self.final_loss:.3f}",
            f"  zero-shot classification of {self.num_test} held-out test images "
            f"({self.num_classes}-way):",
            f"      top-1 {pct(m['zero_shot/heldout/top1'])}   chance {pct(chance)}",
            f"      top-5 {pct(m['zero_shot/heldout/top5'])}   chance {pct(min(1, 5 * chance))}",
            f"      mean per-class recall {pct(m['zero_shot/heldout/mean_per_class_recall'])}",
            f"  retrieval among the same {self.num_test} images and their "
            f"{self.num_captions} captions:",
            f"      text->image R@1 {pct(m['retrieval/heldout/t2i_r1'])}   chance "
            f"{_two_digits(100 / self.num_test)} %   R@5 {pct(m['retrieval/heldout/t2i_r5'])}",
            f"      image->text R@1 {pct(m['retrieval/heldout/i2t_r1'])}   "
            f"R@5 {pct(m['retrieval/heldout/i2t_r5'])}",
            f"  wall time {sum(s.values()):.0f} s: dataset {s['build']:.0f} s, training "
            f"{s['train']:.0f} s, evaluation {s['eval']:.0f} s, report {s['report']:.0f} s, "
            f"few-shot + robustness {s.get('suite', 0):.0f} s",
            *self.suite_lines(pct),
            f"  pictures  {self.report_png}",
            f"            {self.curves_png}",
            f"            {self.suite_png}",
            "",
        ])


    def suite_lines(self, pct: Any) -> list[str]:
        m = self.suite
        if not m:
            return []
        shots = ", ".join(f"{k}: {pct(m[f'few_shot/heldout/{k}shot_top1']).strip()}"
                          for k in SUITE_SHOTS)
        match = m["few_shot/heldout/matching_shots"]
        matching = {-1: f"<= the {match:.0f}-shot probe (the fewest shots tried)",
                    0: f"= a {match:.1f}-shot probe",
                    1: f">= the {match:.0f}-shot probe (the most shots tried)"}[
                        int(m["few_shot/heldout/matching_bound"])]
        shifted = ", ".join(f"{s} {pct(m[f'robustness/heldout/{s}_top1']).strip()}"
                            for s in SUITE_SHIFTS)
        return [
            f"  few-shot  linear probes on <= {SUITE_TRAIN} training images (mean of "
            f"{SUITE_SEEDS} draws) vs zero-shot {pct(m['few_shot/heldout/zero_shot_top1']).strip()}"
            f" on <= {SUITE_TEST} test images:",
            f"      {shots} shots per class; zero-shot {matching}",
            f"  shifts    zero-shot top-1 {pct(m['robustness/heldout/reference_top1']).strip()} "
            f"-> {shifted}",
            f"      effective robustness vs a linear probe's logit drop: mean "
            f"{100 * m['robustness/heldout/mean_effective_robustness']:+.1f} points",
        ]


SUITE_SHOTS = (1, 2, 4, 8, 16)
SUITE_SEEDS = 3
SUITE_SHIFTS = ("greyscale", "hue_rotate", "blur", "noise", "occlusion", "downscale_upscale")
SUITE_TRAIN, SUITE_TEST = 2400, 480  # first images of the train / test splits (at most)
SUITE_L2 = "0.001,0.01,0.1"


def _suite_eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Few-shot probes on a slice of the training split and robustness on shifted test
    images: small slices keep the whole comparison to seconds."""
    from clip_jax.evaluation import evaluate

    suite = ml_collections.ConfigDict(config.to_dict())
    suite.eval.evaluators = "few_shot,robustness"
    synthetic = config.data.synthetic
    train = f"train[:{min(SUITE_TRAIN, synthetic.num_train)}]"
    test = f"test[:{min(SUITE_TEST, synthetic.num_test)}]"
    prompts = dict(templates=config.eval.zero_shot.heldout.templates)
    suite.eval.few_shot = {"heldout": evaluate.few_shot_task(
        train_split=train, test_split=test,
        shots=",".join(map(str, SUITE_SHOTS)), seeds=SUITE_SEEDS, l2=SUITE_L2, **prompts)}
    suite.eval.robustness = {"heldout": evaluate.robustness_task(
        split=test, train_split=train, shifts=",".join(SUITE_SHIFTS),
        baseline="linear_probe", **prompts)}
    return suite


def run_suite(config: ml_collections.ConfigDict, module: Any, variables: Any,
              path: str) -> dict[str, float]:
    """Few-shot vs zero-shot and robustness of the trained model; writes `path` (two panels)."""
    from clip_jax.evaluation import report as eval_report
    from clip_jax.evaluation import evaluate

    metrics, evaluation = evaluate.evaluate_model(_suite_eval_config(config), module, variables)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    eval_report.plot_few_shot(evaluation.details["few_shot/heldout"], "",
                              "Few-shot linear probes vs zero-shot", ax=left)
    eval_report.plot_robustness(evaluation.details["robustness/heldout"], "",
                                "Shifted test images", ax=right)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return metrics


class Stopped(Exception):
    """Training stopped by a signal (SIGTERM, Ctrl-C) with steps left, its step saved: the
    demo evaluates nothing then. `exit_code` is 128 + the signal."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def run(config: ml_collections.ConfigDict, workdir: str, launched: float | None = None
        ) -> Report:
    """Builds the data, trains (or resumes) in `workdir`, evaluates on the test split and
    writes the pictures. A bad config or workdir is a ConfigError before the dataset build;
    a training stopped by SIGTERM or Ctrl-C raises Stopped (it went on to evaluate the
    model of that step and draw its pictures). `launched` (`time.time()` seconds): when the
    command started, which the training log's "after launch" times count from (`clip-jax
    demo` passes its process's start; they counted from the training's start, the build
    and imports left out); None: the training's start."""
    from clip_jax.training import checkpoints
    from clip_jax.training import config_checks
    from clip_jax.evaluation import evaluate
    from clip_jax.data import sources
    from clip_jax.training import resume
    from clip_jax.training import train

    config_checks.check_run(config, workdir)
    saved = checkpoints.saved_model(workdir)
    done_before = saved.step if saved else 0
    if done_before >= config.total_steps:  # reused only if it is the demo's run
        resume.check_finished_run(config, workdir, done_before, saved, steps_field="--steps")
    seconds: dict[str, float] = {}
    t = time.time()
    builder = sources.prepare(config.data)
    seconds["build"] = time.time() - t

    t = time.time()
    if done_before >= config.total_steps:
        print(f"Reusing the finished run in {workdir} (step {done_before}); pass another "
              "--workdir (or none) to train from scratch.")
    else:
        if done_before:
            print(f"Resuming the run in {workdir} from step {done_before}.")
        stop_signal = train.train(config, workdir, launched).get("stop_signal")
        if stop_signal:
            raise Stopped(128 + int(stop_signal))
    seconds["train"] = time.time() - t

    t = time.time()
    module, variables = checkpoints.load_model(workdir)
    final = _final_eval_config(config)
    metrics, evaluation = evaluate.evaluate_model(final, module, variables)
    seconds["eval"] = time.time() - t

    t = time.time()
    test = builder.as_data_source("test")
    names = builder.info.features["label"].names
    predictions = evaluation.predictions["heldout"][:, 0]
    report_png = os.path.join(workdir, "report.png")
    curves_png = os.path.join(workdir, "curves.png")
    count = min(GRID_ROWS * GRID_COLS, len(test))
    plot_grid([test[i]["image"] for i in range(count)], [names[p] for p in predictions[:count]],
              [names[test[i]["label"]] for i in range(count)], report_png,
              title=f"Zero-shot on held-out test images: top-1 "
                    f"{100 * metrics['zero_shot/heldout/top1']:.1f} % over {len(test)} images "
                    f"(chance {100 / len(names):.1f} %)")
    records = read_metrics(workdir)
    plot_curves(records, curves_png, chance=1 / len(names))
    seconds["report"] = time.time() - t

    t = time.time()
    suite_png = os.path.join(workdir, "suite.png")
    suite = run_suite(config, module, variables, suite_png)
    seconds["suite"] = time.time() - t
    losses = [r["loss"] for r in records if "loss" in r]
    return Report(
        workdir=workdir, metrics=metrics, num_classes=len(names), num_test=len(test),
        num_captions=evaluation.sizes["retrieval/heldout"]["texts"],
        steps=config.total_steps, trained_steps=config.total_steps - min(done_before,
                                                                         config.total_steps),
        final_loss=losses[-1] if losses else math.nan, seconds=seconds,
        report_png=report_png, curves_png=curves_png, suite=suite, suite_png=suite_png)


def _final_eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training config evaluating zero-shot and retrieval on the test split."""
    final = ml_collections.ConfigDict(config.to_dict())
    final.eval.evaluators = "zero_shot,retrieval"
    final.eval.zero_shot.heldout.split = "test"
    final.eval.retrieval.heldout.split = "test"
    return final


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_grid(images: Sequence[np.ndarray], predicted: Sequence[str], true: Sequence[str],
              path: str, title: str) -> None:
    """Images with `predicted (true)` captions, green when right and red when wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(images) / GRID_COLS)
    fig, axes = plt.subplots(rows, GRID_COLS, figsize=(1.6 * GRID_COLS, 1.9 * rows + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, pred, label in zip(axes.flat, images, predicted, true):
        ax.imshow(image, interpolation="nearest")
        right = pred == label
        ax.set_title(pred if right else f"{pred}\n(true: {label})", fontsize=8,
                     color="green" if right else "red")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _two_digits(x: float) -> str:
    """`x` (> 0) to two significant digits, at least one decimal: a chance of 1 in 2,400 is
    0.042 %, not the 0.0 % one decimal gives."""
    return f"{x:.{max(1, 1 - math.floor(math.log10(x)))}f}"


def plot_curves(records: Sequence[dict[str, Any]], path: str, chance: float) -> None:
    """Training loss, in-batch retrieval accuracy and periodic zero-shot top-1 against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    zero_shot = [r for r in records if "zero_shot/heldout/top1" in r]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train])
    loss_ax.set(xlabel="step", ylabel="contrastive loss", title="Training loss")
    acc_ax.plot([r["step"] for r in train], [r["i2t_top1"] for r in train],
                label="in-batch image->text top-1 (train)")
    acc_ax.plot([r["step"] for r in train], [r["t2i_top1"] for r in train],
                label="in-batch text->image top-1 (train)")
    if zero_shot:
        acc_ax.plot([r["step"] for r in zero_shot], [r["zero_shot/heldout/top1"] for r in zero_shot],
                    marker="o", label="zero-shot top-1 (validation split)")
    acc_ax.axhline(chance, color="grey", linestyle=":", label="zero-shot chance")
    acc_ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="Accuracy")
    acc_ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, shared by `python -m clip_jax.demo` and `clip-jax demo`."""
    parser.add_argument("--workdir", type=os.path.expanduser,  # `--workdir=~/x`: unexpanded
                        help="run directory (default: a new "
                        f"{DEFAULT_ROOT}/<timestamp>); an existing one is resumed or reused")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: configs/demo.py's 3500; the whole run "
                             "took 7 min 20 s on 2 CPU cores, as the README measures); fewer, "
                             "e.g. 300, for a quick look at the whole path")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_jax.demo", description=__doc__.split(
        "\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Runs the demo for parsed `add_arguments` options; 2 on a ConfigError (one line)."""
    from clip_jax.runtime import launch

    start = launch.process_start_time() or time.time()
    workdir = args.workdir or os.path.join(DEFAULT_ROOT, time.strftime("%Y%m%d-%H%M%S"))
    try:
        config = demo_config(args.steps)
        report = run(config, workdir, start)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:  # "run the same command" would start a new timestamped workdir
        steps = f" --steps {args.steps}" if args.steps is not None else ""
        print(f"The demo stopped before its last step; to resume, run it again with "
              f"--workdir {shlex.quote(workdir)}{steps}.", file=sys.stderr)
        return stop.exit_code
    print(report.text(config))
    print(f"Total {time.time() - start:.0f} s from start (imports and compilation included).")
    return 0


if __name__ == "__main__":
    from clip_jax.runtime import logs
    from clip_jax.runtime.host_tuning import tune_process

    tune_process()
    logs.setup_console()
    sys.exit(logs.exit_status(main))
