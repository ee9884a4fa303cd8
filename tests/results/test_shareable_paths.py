"""What a run publishes names no local folder: the model card, report.md and the manifest name the recipe and
data relative to the project, or by file name (redaction.share_paths)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from align_recipes.cli import main
from align_recipes.redaction import share_path, share_paths

REPO = Path(__file__).resolve().parents[2]
ABSOLUTE = re.compile(r"(?<![\w.~:/\-])/(?:tmp|home|root|work|Users|var)\b")


def test_share_path_is_relative_to_the_project_or_a_file_name():
    roots = ["/home/ann/proj"]
    assert share_path("/home/ann/proj/recipes/tiny/dpo.yaml", roots) == "recipes/tiny/dpo.yaml"
    assert share_path("/home/ann/proj", roots) == "."
    assert share_path("/tmp/x/out/run", roots) == "run"
    assert share_path("/home/ann/projects/a.jsonl", roots) == "a.jsonl"  # a sibling folder is not inside
    for kept in ("recipes/tiny/dpo.yaml", "Qwen/Qwen2-0.5B-Instruct", "builtin:tiny-qwen2"):
        assert share_path(kept, roots) == kept


def test_share_paths_rewrites_paths_inside_text_and_nothing_else():
    roots = ["/home/ann/proj"]
    text = (
        "align-recipes train /home/ann/proj/recipes/dpo.yaml train.output_dir=/tmp/out/run\n"
        "| data | `/home/ann/data/prefs.jsonl` |  see https://hf.co/org/name, a/b, 1/2 and rows / n"
    )
    assert share_paths(text, roots) == (
        "align-recipes train recipes/dpo.yaml train.output_dir=run\n"
        "| data | `prefs.jsonl` |  see https://hf.co/org/name, a/b, 1/2 and rows / n"
    )


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow
def test_a_run_from_a_recipe_elsewhere_publishes_no_local_path(tmp_path, monkeypatch):
    """A recipe in one temporary folder (no git repository: the project is the recipe's folder), the run
    folder in another, started from a third."""
    recipes, out = tmp_path / "recipes", tmp_path / "runs" / "dpo-run"
    recipes.mkdir()
    for name in ("_base.yaml", "dpo.yaml"):
        shutil.copy(REPO / "recipes" / "tiny" / name, recipes / name)
    shutil.copytree(REPO / "recipes" / "tiny" / "data", recipes / "data")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    argv = [
        "train",
        str(recipes / "dpo.yaml"),
        "model.name_or_path=builtin:tiny-qwen2",
        "train.max_steps=2",
        "evaluate.limit=8",
        f"train.output_dir={out}",
        "--profile",
        "cpu",
    ]
    assert main(argv) == 0
    card, report = (out / "README.md").read_text(), (out / "report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    for name, text in (("README.md", card), ("report.md", report), ("manifest.json", json.dumps(manifest))):
        assert str(tmp_path) not in text and not ABSOLUTE.search(text), f"{name}: {ABSOLUTE.search(text)}"
    assert not any(s.startswith("/") for s in strings(manifest))
    assert "the recipe `dpo.yaml`" in card and "| data (train) | `data/prefs.jsonl`" in card
    assert (
        "train dpo.yaml model.name_or_path=builtin:tiny-qwen2" in card and "train.output_dir=dpo-run" in card
    )
    assert "| recipe | dpo.yaml |" in report
    assert (
        manifest["recipe"] == "dpo.yaml" and manifest["data"]["data.train"]["resolved"] == "data/prefs.jsonl"
    )
    # the local files the run re-opens itself from keep the machine's paths
    assert json.loads((out / "summary.json").read_text())["recipe"] == str(recipes / "dpo.yaml")
