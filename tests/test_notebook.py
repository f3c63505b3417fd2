"""`examples/notebooks/ple_quickstart.ipynb` runs end to end (parameters through the environment) on a tiny local
model: it trains, draws the PLE curves with `ple_trl.plotting` and prints the evaluation table; its install cell
installs the checkout it sits in, or an uploaded wheel, when ple_trl is missing."""

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("vaderSentiment")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebooks" / "ple_quickstart.ipynb"


def test_notebook_structure():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    sources = [cell.source for cell in notebook.cells]
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and 'os.environ.get("PLE_NOTEBOOK_MODEL"' in parameters[0].source
    # No placeholder links: the notebook is opened from a checkout or uploaded to Colab.
    assert not [source for source in sources if "<org>" in source or "colab.research.google.com/github" in source]
    # The curves come from ple_trl.plotting, not from a shell command or hand-written matplotlib.
    assert any("plot_curves(OUTPUT_DIR)" in source and "trainer.save_state()" in source for source in sources)
    assert not any("!ple-trl" in source or "matplotlib.pyplot" in source for source in sources)
    # Committed without outputs, so the diff stays readable.
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def install_cell():
    cells = [cell for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]
    assert 'find_spec("ple_trl") is None' in cells[0].source  # the first code cell, before any ple_trl import
    return cells[0].source


@pytest.mark.parametrize("where", ["checkout", "wheel", "elsewhere"])
def test_install_cell_installs_what_is_there(where, tmp_path, monkeypatch):
    """Where ple_trl is missing, the first cell installs the checkout the notebook sits in (editable), else a wheel
    uploaded next to it (Colab), else `ple-trl[demo]` from the index; where it is installed, nothing."""
    import importlib.util
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(subprocess, "check_call", calls.append)
    exec(install_cell(), {})  # this environment has ple_trl: nothing to install
    assert calls == []

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "ple_trl" else real_find_spec(name, *args)
    )
    if where == "checkout":
        monkeypatch.chdir(NOTEBOOK.parent)
        expected = ["-e", f"{NOTEBOOK.resolve().parents[2]}[demo]"]
    else:
        monkeypatch.chdir(tmp_path)
        expected = ["ple-trl[demo]"]
        if where == "wheel":
            wheel = tmp_path / "ple_trl-0.1.0-py3-none-any.whl"
            wheel.write_bytes(b"")
            expected = [f"{wheel.resolve()}[demo]"]
    exec(install_cell(), {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", *expected]]


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch, tiny_model_path):
    output_dir = tmp_path / "run"
    for name, value in {
        "PLE_NOTEBOOK_MODEL": tiny_model_path,
        "PLE_NOTEBOOK_OUTPUT_DIR": str(output_dir),
        "PLE_NOTEBOOK_MAX_STEPS": "3",
        "PLE_NOTEBOOK_MAX_COMPLETION_LENGTH": "6",
        "PLE_NOTEBOOK_NUM_EVAL_PROMPTS": "4",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert any("image/png" in output.get("data", {}) for output in outputs)  # the curves were drawn
    assert (output_dir / "trainer_state.json").exists()  # so `ple-trl plot OUTPUT_DIR` works on this run too
    # tau decayed over the run: 3 steps, one PLE iteration per step.
    assert "tau: 0.200 -> 0.162" in text
    # The evaluation table compares the trained adapter with the initial model.
    assert "reward/vader_sentiment" in text and "win_rate/vader_sentiment" in text and "perplexity" in text
    assert (output_dir / "adapter_config.json").exists()
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == 8
