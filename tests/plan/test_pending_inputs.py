"""An input an earlier step of the recipe's family writes is pending on a fresh clone: `validate` lists it with
the stage and the command that writes it and exits 0; `train` refuses it with the same words (plan/pending.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes.errors import RecipeErrors
from align_recipes.plan import load_plan
from align_recipes.plan.pending import family_writer

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("tiny", "qwen05b", "qwen15b")
VALIDATE_ALL = """
import sys
from pathlib import Path
from align_recipes.cli import main
family = sys.argv[1]
files = sorted(str(p) for p in Path("recipes", family).glob("[!_]*.yaml"))  # as `make validate` globs
failed = [f for f in files if main(["validate", f]) != 0]
print("FAILED=" + ",".join(failed))
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_make_validate_passes_on_a_fresh_clone_offline(family, tmp_path):
    """`make validate RECIPE=<family>` on a fresh clone: no outputs/ yet, no network (hub data is read when a
    run starts). The recipes are copied to an empty folder so that nothing this checkout trained is seen."""
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", VALIDATE_ALL, family], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and "FAILED=\n" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()
    if family == "qwen05b":
        assert (
            "pending: train.reward_model_path: 'outputs/qwen05b/reward/merged' does not exist yet: it is the merged "
            "model of recipes/qwen05b/reward.yaml (stage 'reward' of recipes/qwen05b/pipeline.yaml); run "
            "`align-recipes train recipes/qwen05b/reward.yaml`, then "
            "`align-recipes merge outputs/qwen05b/reward --out outputs/qwen05b/reward/merged`"
        ) in proc.stdout
    if family == "qwen15b":
        assert (
            "pending: model.name_or_path: 'outputs/qwen15b/sft-merged' does not exist yet: it is the merged model "
            "of recipes/qwen15b/sft.yaml; run `align-recipes train recipes/qwen15b/sft.yaml`, then "
            "`align-recipes merge outputs/qwen15b/sft --out outputs/qwen15b/sft-merged`"
        ) in proc.stdout
    if family == "tiny":
        assert (
            "pending: train.reward_model_path: 'outputs/tiny/pipeline/reward' does not exist yet: stage 'reward' of "
            "recipes/tiny/pipeline.yaml (recipes/tiny/reward_near_miss.yaml) writes it; run "
            "`align-recipes pipeline recipes/tiny/pipeline.yaml`"
        ) in proc.stdout


def test_train_refuses_a_pending_input_with_the_command_that_writes_it(tmp_path, monkeypatch):
    shutil.copytree(REPO / "recipes" / "tiny", tmp_path / "recipes" / "tiny")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeErrors) as info:
        load_plan("recipes/tiny/ppo_rlhf.yaml", profile="cpu")
    (error,) = info.value.errors
    assert error.key == "train.reward_model_path" and error.line == 17
    assert error.fix == "run `align-recipes pipeline recipes/tiny/pipeline.yaml` first"
    plan = load_plan("recipes/tiny/ppo_rlhf.yaml", profile="cpu", allow_pending=True)  # what validate does
    assert [p.key for p in plan.pending] == ["train.reward_model_path"]
    # once the stage has written it, nothing is pending
    (tmp_path / "outputs" / "tiny" / "pipeline" / "reward").mkdir(parents=True)
    assert load_plan("recipes/tiny/ppo_rlhf.yaml", profile="cpu", allow_pending=True).pending == []


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_what_the_family_writes_and_what_it_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fam = tmp_path / "recipes" / "fam"
    write(fam, "_base.yaml", "model: {name_or_path: builtin:tiny-qwen2}\n")
    write(fam, "sft.yaml", "algorithm: sft\nextends: _base.yaml\n")
    write(fam, "rm.yaml", "algorithm: reward\nextends: _base.yaml\ntrain: {output_dir: elsewhere/rm}\n")
    write(fam, "dpo.yaml", "algorithm: dpo\n")
    write(
        fam,
        "flow.yaml",
        "output_dir: outputs/flow\nstages:\n  - {name: first, recipe: sft.yaml}\n"
        "  - {name: second, recipe: dpo.yaml}\n  - {name: third, recipe: rm.yaml}\n",
    )
    dpo = fam / "dpo.yaml"
    # a recipe's output folder (default outputs/<family>/<algorithm>, or train.output_dir), or it merged
    found = family_writer("model.name_or_path", "outputs/fam/sft", dpo)
    assert (found.how, found.command) == (
        "it is the output of recipes/fam/sft.yaml (stage 'first' of recipes/fam/flow.yaml)",
        "align-recipes train recipes/fam/sft.yaml",
    )
    assert family_writer("k", "elsewhere/rm/merged", dpo).command == (
        "align-recipes train recipes/fam/rm.yaml`, then `align-recipes merge elsewhere/rm --out elsewhere/rm/merged"
    )
    assert family_writer("k", "elsewhere/rm-merged", dpo).how.startswith("it is the merged model of")
    # a pipeline stage before this recipe's own stage
    assert family_writer("k", "outputs/flow/first/merged", dpo).how == (
        "stage 'first' of recipes/fam/flow.yaml (recipes/fam/sft.yaml) writes it"
    )
    # a later stage does not feed this one, a recipe does not feed itself, and nothing writes other paths
    assert family_writer("k", "outputs/flow/third", dpo) is None
    assert family_writer("k", "outputs/fam/dpo", dpo) is None
    assert family_writer("k", "outputs/fam/kto", dpo) is None
    assert family_writer("k", "builtin:tiny-qwen2", dpo) is None
