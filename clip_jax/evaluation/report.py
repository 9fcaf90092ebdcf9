"""Evaluation results as people read them: a markdown table, JSON + CSV files, plots.

Results are in long format, one row per task and metric as CLIP_benchmark's result tables
(`dataset`, `model`, `task`, `metric`, `value`), plus the model's checkpoint step and compute
dtype, and where each number comes from: the data, split, number of images (and of unreadable
ones left out, and of the entries its reader skipped before reading images) and classes, and
the prompt templates (`Evaluation.provenance`; a robustness task's shifted-set rows name that
set, its means the sets averaged).
`write` puts `results.json`, `results.csv` and the plots in an output directory:
`few_shot_<task>.png` (k-shot probe accuracy with its spread over seeds and the zero-shot
line), `robustness_<task>.png` (in-distribution vs shifted accuracy with the baseline line,
logit axes) and `per_class_<task>.png` (zero-shot accuracy per class), saved by
`plot_fonts.save` (labels in characters Matplotlib's font lacks). A metric that does not
apply (None: top-5 among 5 classes or fewer) is `-` in the table, empty in the CSV and null in
the JSON.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clip_jax.evaluation import plot_fonts

COLUMNS = ("dataset", "model", "step", "dtype", "task", "metric", "value", "evaluator",
           "split", "images", "unreadable", "skipped", "classes", "templates", "trained_on")


def rows(metrics: Mapping[str, float | None], provenance: Mapping[str, Mapping[str, Any]],
         model: str, step: int | str = "", dtype: str = "") -> list[dict[str, Any]]:
    """One row per metric `<evaluator>/<task>/<metric...>`, with the metric's own provenance
    where it has one (a robustness task's shifted set), else the task's. `step`: the
    checkpoint's training step ("" for an import, whose step is unknown); `dtype`: the
    compute dtype the model ran in (a bfloat16 run scores other numbers than its float32
    export). A metric that does not apply keeps its row, value None: every task of a kind
    has the same rows, and the reader sees why one has no number."""
    out = []
    for key, value in metrics.items():
        evaluator, task, metric = key.split("/", 2)
        where = provenance.get(key) or provenance.get(f"{evaluator}/{task}", {})
        out.append({"dataset": where.get("data", task), "model": model, "step": step,
                    "dtype": dtype, "task": task, "metric": metric,
                    "value": None if value is None else float(value),
                    "evaluator": evaluator, "split": where.get("split", ""),
                    "images": where.get("images", ""), "unreadable": where.get("unreadable", ""),
                    "skipped": where.get("skipped", ""),
                    "classes": where.get("classes", ""), "templates": where.get("templates", ""),
                    "trained_on": where.get("trained_on", "")})
    return out


def number(value: float | None) -> str:
    """4 decimals (accuracies, recalls), or 3 significant digits for magnitudes 4 decimals
    would show as 0.0000 (a chosen L2 strength of 1e-6); below 1e-12 it is the rounding noise
    of a difference of equal numbers (an effective robustness of 0 read as -1.39e-17): 0.
    `-` for a metric that does not apply (None), which a 1.0000 would pass off as perfect."""
    if value is None:
        return "-"
    if abs(value) <= 1e-12:
        return f"{0.0:.4f}"
    return f"{value:.3g}" if abs(value) < 1e-3 else f"{value:.4f}"


def markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of `rows`: evaluator, task, metric, value, and the provenance."""
    head = ("evaluator", "task", "metric", "value", "data", "split", "images", "classes",
            "templates")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = (r["evaluator"], r["task"], r["metric"], number(r["value"]), r["dataset"],
                 r["split"], r["images"], r["classes"], r["templates"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write(out_dir: str, table: Sequence[Mapping[str, Any]],
          details: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """results.json, results.csv and the plots of `details` in `out_dir`; returns the paths.
    Plots an earlier report left there (`<kind>_*.png` of `PLOTS`) are removed first, so the
    folder never shows a plot of tasks this report does not hold."""
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.endswith(".png") and name.startswith(tuple(f"{kind}_" for kind in PLOTS)):
            os.remove(os.path.join(out_dir, name))
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.csv")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump({"results": list(table), "details": _jsonable(details)}, f, indent=1)
    with open(paths[1], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    for key, detail in details.items():
        kind, task = key.split("/", 1)
        path = os.path.join(out_dir, f"{kind}_{task.replace('/', '_')}.png")
        PLOTS[kind](detail, path, task)
        paths.append(path)
    return paths


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _figure(width: float = 5.5, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def plot_few_shot(detail: Mapping[str, Any], path: str, title: str, ax: Any = None) -> None:
    """Probe accuracy (mean +- std over seeds) against shots per class, log2 axis, with the
    zero-shot accuracy as a horizontal line and the matching k marked."""
    own = ax is None
    if own:
        plt, fig, ax = _figure()
    shots = np.asarray(detail["shots"])
    for name, label in (("linear_probe", "linear probe"),
                        ("zero_shot_init", "probe from zero-shot weights")):
        if name in detail:
            mean = np.asarray(detail[name]["mean"])
            std = np.asarray(detail[name]["std"])
            ax.plot(shots, mean, "o-", label=label)
            ax.fill_between(shots, mean - std, mean + std, alpha=0.2)
    ax.axhline(detail["zero_shot"], color="k", ls="--",
               label=f"zero-shot {100 * detail['zero_shot']:.1f} %")
    if detail.get("matching_bound", 1) == 0:
        ax.axvline(detail["matching_shots"], color="grey", ls=":",
                   label=f"zero-shot = {detail['matching_shots']:.1f}-shot")
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set(xlabel="labelled examples per class", ylabel="test accuracy", title=title)
    ax.legend(fontsize=8)
    if own:
        plot_fonts.save(plt, fig, path)


def plot_robustness(detail: Mapping[str, Any], path: str, title: str, ax: Any = None) -> None:
    """Shifted against in-distribution accuracy on logit axes: y = x, the baseline line and
    its pairs, and the evaluated model on each shifted set."""
    from clip_jax.evaluation import robustness

    own = ax is None
    if own:
        plt, fig, ax = _figure()
    grid = np.linspace(0.02, 0.98, 50)
    lg = robustness.logit
    ax.plot(lg(grid), lg(grid), color="k", lw=0.8, label="y = x (no drop)")
    ref = detail["reference"]
    for i, (name, acc) in enumerate(detail["shifted"].items()):
        color = f"C{i % 10}"
        line = detail["lines"].get(name)
        if line is not None:
            ax.plot(lg(grid), lg(robustness.predicted(line, grid)), color=color, ls="--", lw=0.8)
        for a, b in detail.get("baseline_points", {}).get(name, []):
            ax.plot(lg(a), lg(b), "x", color=color)
        ax.plot(lg(ref), lg(acc), "o", color=color, label=name)
    ticks = np.asarray([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    ax.set_xticks(lg(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(lg(ticks), [f"{t:g}" for t in ticks])
    ax.set(xlabel="in-distribution accuracy (logit axis)", ylabel="shifted accuracy",
           title=f"{title}: o model, x / -- baseline")
    ax.legend(fontsize=7)
    if own:
        plot_fonts.save(plt, fig, path)


def plot_per_class(detail: Mapping[str, Any], path: str, title: str) -> None:
    """Zero-shot top-1 accuracy per class, sorted, as horizontal bars (classes without test
    images, accuracy None, left out)."""
    shown = [(n, a) for n, a in zip(detail["class_names"], detail["accuracy"]) if a is not None]
    names, acc = [n for n, _ in shown], np.asarray([a for _, a in shown], float)
    order = np.argsort(acc)
    plt, fig, ax = _figure(6.0, max(3.0, 0.18 * len(names) + 1))
    ax.barh(np.arange(len(names)), acc[order])
    ax.set_yticks(np.arange(len(names)), [names[i] for i in order], fontsize=7)
    ax.set(xlabel="zero-shot top-1 accuracy", xlim=(0, 1), title=title)
    plot_fonts.save(plt, fig, path)


PLOTS = {"few_shot": plot_few_shot, "robustness": plot_robustness, "per_class": plot_per_class}
