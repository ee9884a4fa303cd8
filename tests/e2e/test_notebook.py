"""The Colab quick-start notebook runs headless: its parameter cell is replaced so that it trains the
tiny DPO recipe on CPU for a few steps, then every cell executes (train, chat, plot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "quickstart_t4.ipynb"


def parameter_cell(notebook):
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def test_notebook_is_clean_and_defaults_to_the_t4():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    source = parameter_cell(notebook).source
    assert 'RECIPE = "recipes/qwen05b/dpo.yaml"' in source and 'PROFILE = "t4"' in source
    assert "OVERRIDES = []" in source
    # The first run is capped (about 15 minutes on a T4); the full recipe is one edit away (MAX_STEPS = None).
    [cap] = [line for line in source.splitlines() if line.startswith("MAX_STEPS = ")]
    steps = int(cap.split("=")[1].split("#")[0])
    assert 50 <= steps <= 200 and "None" in cap and "min" in cap
    assert notebook.cells.index(parameter_cell(notebook)) <= 1, "parameters come first"
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "stored without outputs"
    )


@pytest.mark.slow
def test_notebook_trains_chats_and_plots_the_tiny_recipe_on_cpu(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("ALIGN_RECIPES_NVIDIA_SMI", "")  # the kernel inherits it: no GPU, whatever the host
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    output_dir = tmp_path / "run"
    overrides = [
        f"train.output_dir={output_dir}",
        "train.logging_steps=2",
        "evaluate.limit=16",
        "model.name_or_path=builtin:tiny-qwen2",
    ]  # skips building the tiny SFT policy (30 s)
    parameter_cell(notebook).source = "\n".join(
        [
            'RECIPE = "recipes/tiny/dpo.yaml"',
            'PROFILE = "cpu"',
            "MAX_STEPS = 6",
            f"OVERRIDES = {overrides!r}",
            'PROMPT = "18+7="',
            "INSTALL = False",
            'REPO_URL = ""',
        ]
    )
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()

    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["profile"] == "cpu"
    assert (output_dir / "model.safetensors").is_file()
    assert (output_dir / "metrics.png").stat().st_size > 1000

    def outputs_of(marker: str) -> list:
        [cell] = [c for c in notebook.cells if c.cell_type == "code" and marker in c.source]
        return cell.outputs

    trained = "".join(o.get("text", "") for o in outputs_of("summary = train("))
    assert (
        "implicit_reward_accuracy: 0.500 before" in trained and "exact_match: " in trained
    )  # summary's task_metrics
    plot = outputs_of("plt.subplots")
    assert any("image/png" in o.get("data", {}) for o in plot), "the plot cell drew a figure"
    assert any("plotted loss" in o.get("text", "") for o in plot)
    chat = "".join(o.get("text", "") for o in outputs_of("def chat("))
    assert "user: 18+7=" in chat and "assistant:" in chat
    shown = "".join(o.get("text", "") for o in outputs_of("print_plan(plan)"))
    assert "what profile 'cpu' changed" in shown
    assert "capped at 6 steps" in shown
