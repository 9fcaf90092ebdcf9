"""notebooks/quickstart.ipynb runs top to bottom on the CPU (its tiny settings) with nbclient."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")  # the test extra (nbclient); without it this skips
NotebookClient = pytest.importorskip("nbclient").NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: "".join(o.get("text", "") for o in cell.get("outputs", []))
               for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "untrained:" in text and "trained:" in text
    assert "zero_shot/heldout" in text and "retrieval/heldout" in text
    assert "model.safetensors" in text and "transformers:" in text
    assert not any(o.get("output_type") == "error" for cell in notebook.cells
                   for o in cell.get("outputs", []))
