"""The Colab notebooks run top to bottom on the CPU with their tiny settings
(CLIP_JAX_NOTEBOOK_TINY=1, nbclient), carry no committed outputs, and are linked with
"Open in Colab" badges from the README and their own first cell."""

import json
import os
import re
import resource
import time

import pytest

from training_runs import QUICK_COMPILE

nbformat = pytest.importorskip("nbformat")  # the test extra (nbclient); without it this skips
NotebookClient = pytest.importorskip("nbclient").NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
COLAB = "https://colab.research.google.com/github/"

# Text each notebook must print when it ran as intended (not merely without an error).
EXPECTED = {
    "quickstart.ipynb": ["untrained:", "trained:", "zero_shot/heldout", "retrieval/heldout",
                         "model.safetensors", "transformers:"],
    "zero_shot_and_retrieval.ipynb": ["skipped ", "broken.jpg", "Indexed 16 images",
                                      "zero-shot top-1 on 16 labelled images",
                                      # folders blue_square, ...: prompted as clip-jax eval
                                      # says them (trial CN)
                                      "labels: ['blue square', 'green triangle', 'red circle', "
                                      "'yellow star']"],
    "train_on_tpu.ipynb": ["zero-shot top-1 during training (step, value): [(6,",
                           "newest checkpoint step: 12", "'images_per_second': "],
    "finetune_and_export.ipynb": ["zero-shot top-1 before fine-tuning", "LiT, image tower locked",
                                  "model.safetensors", "open_clip_config.json",
                                  "transformers pipeline: same top label on 4/4",
                                  "open_clip: same top label on"],
}


def text_of(notebook):
    return "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for o in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes_with_tiny_settings(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_JAX_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT)  # configs/ (the notebooks run in a clone)
    monkeypatch.setenv("XLA_FLAGS", QUICK_COMPILE)  # one CPU device, as on a CPU runtime
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, reaped at shutdown
    print(f"{name}: {time.perf_counter() - start:.0f} s wall, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.0f} s CPU (kernel)")
    text = text_of(notebook)
    for expected in EXPECTED[name]:
        assert expected in text, (expected, text[-3000:])
    if name == "zero_shot_and_retrieval.ipynb":
        # Its own zero-shot score is clip-jax eval's on the same folder (class folders named
        # with '_': the notebook prompted "a photo of a blue_circle", trial CN).
        with open(tmp_path / "runs" / "notebook_eval" / "metrics.jsonl") as f:
            (record,) = [json.loads(line) for line in f]
        said = re.search(r"zero-shot top-1 on 16 labelled images: ([\d.]+)%", text).group(1)
        assert f"{100 * record['zero_shot/notebook_images/top1']:.1f}" == said, (record, said)


def notebook_names():
    return sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))


def test_notebooks_have_no_committed_outputs():
    for name in notebook_names():
        notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
                 and (cell.outputs or cell.execution_count is not None)]
        assert not dirty, f"{name}: cells {dirty} have outputs; clear them (figures the README " \
                          "shows live as PNG files in notebooks/figures)"


def test_every_notebook_has_a_colab_badge_in_readme_and_its_first_cell():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    bases = set(re.findall(re.escape(COLAB) + r"([^)\s]+?/blob/[^/]+/notebooks/)", readme))
    assert len(bases) == 1, bases  # one repository location for every badge
    (base,) = bases
    repository = "https://github.com/" + base.split("/blob/")[0]
    for name in notebook_names():
        link = f"{COLAB}{base}{name}"
        assert link in readme, f"README has no Colab badge for {name}"
        notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        assert link in notebook.cells[0].source, f"{name}'s first cell has no Colab badge"
        assert f'REPOSITORY = "{repository}"' in notebook.cells[1].source, name
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) <= 1, name
