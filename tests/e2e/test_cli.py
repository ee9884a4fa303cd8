"""The CLI as users meet it: exit codes, one-screen errors without tracebacks, validate without torch.

Speed is not asserted here (a busy machine makes any limit flaky); bench/overhead.py measures validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes.cli import main
from align_recipes.registry import ALGORITHMS

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "align_recipes", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_validate_real_recipe_offline_without_torch():
    code = (
        "import sys;"
        "from align_recipes.cli import main; rc = main(['validate', 'recipes/qwen05b/dpo.yaml']);"
        "print(rc, 'torch' in sys.modules, 'datasets' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    rc, torch_loaded, datasets_loaded = out.strip().splitlines()[-1].split()
    assert (rc, torch_loaded, datasets_loaded) == ("0", "False", "False")


def test_typo_in_train_section_exit_2_no_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"algorithm: dpo\nmodel: {{name_or_path: builtin:tiny-qwen2}}\n"
        f"data: {{train: {{path: {REPO}/recipes/tiny/data/prefs.jsonl}}}}\n"
        "train:\n  beta: 0.1\n  learnig_rate: 1e-5\n"
    )
    result = run_cli("validate", str(recipe), cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "learning_rate" in result.stderr and "r.yaml" in result.stderr
    assert len(result.stderr.splitlines()) <= 25


def test_train_with_bad_recipe_creates_no_output_dir(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "recipes/tiny/dpo.yaml", f"train.output_dir={out}", "train.beta=-1"])
    assert rc == 2 and not out.exists()


def test_show_lists_sources(capsys):
    assert main(["show", "recipes/tiny/dpo.yaml", "--profile", "cpu", "train.beta=0.3"]) == 0
    text = capsys.readouterr().out
    assert "train.beta" in text and "<- override" in text
    assert "<- profile:cpu" in text and "<- recipe:recipes/tiny/" in text
    assert "more fields at TRL's defaults" in text


def test_list_names_every_algorithm_and_family(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ALGORITHMS:
        assert f"  {name} " in text
    assert "tiny" in text and "qwen05b" in text and "t4" in text
    assert "held-out metrics: implicit_reward_accuracy, exact_match" in text  # dpo's, from the registry


def test_every_shipped_recipe_validates(capsys):
    """Recipes of a later stage whose reward model an earlier stage writes (the ppo stages) validate inside their
    pipeline; on their own they name the missing folder (exit 2) until that stage has run."""
    recipes = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if not p.name.startswith("_"))
    assert len(recipes) >= 6
    waiting = {}
    for path in recipes:
        rc = main(["validate", str(path)])
        if rc != 0:
            waiting[str(path)] = capsys.readouterr().err
    for path, error in waiting.items():
        assert "train.reward_model_path: model folder 'outputs/" in error and "not found" in error, (
            path,
            error,
        )
    assert set(waiting) <= {str(REPO / "recipes" / f / "ppo.yaml") for f in ("qwen05b", "qwen15b")} | {
        str(REPO / "recipes" / "tiny" / "ppo_rlhf.yaml")
    }, waiting


def test_schema_snapshot_matches_installed_trl():
    """Fails when TRL (or our own PPO/SPO configs) change fields: run `python -m align_recipes.plan.trl_fields`."""
    from align_recipes.plan import trl_fields as schema

    assert schema.generate() == json.loads(schema.SCHEMA_PATH.read_text())


@pytest.mark.parametrize("argv", [["frobnicate"], ["train"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_list_names_and_the_makefile_targets_come_from_the_registry(capsys):
    assert main(["list", "--names"]) == 0
    assert capsys.readouterr().out.split() == list(ALGORITHMS)
    help_text = subprocess.run(
        ["make", "-s", "help"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "algos: " + " ".join(ALGORITHMS) in help_text
