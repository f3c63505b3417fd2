"""`examples/notebooks/ple_quickstart.ipynb` runs end to end (install line commented, parameters through the
environment) on a tiny local model: it trains, draws the PLE curves and prints the evaluation table."""

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
    # The install line is there for Colab, commented out for local runs.
    install = [line for source in sources for line in source.splitlines() if "pip install" in line]
    assert install and all(line.lstrip().startswith("#") for line in install)
    # Committed without outputs, so the diff stays readable.
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


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
    # tau decayed over the run: 3 steps, one PLE iteration per step.
    assert "tau: 0.200 -> 0.162" in text
    # The evaluation table compares the trained adapter with the initial model.
    assert "reward/vader_sentiment" in text and "win_rate/vader_sentiment" in text and "perplexity" in text
    assert (output_dir / "adapter_config.json").exists()
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == 8
