"""An interval the user sets that its strategy makes the trainer ignore is refused, not dropped; one a recipe set
and the user then switched off on purpose is left alone. (The refusals through the CLI: test_bad_inputs.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from align_recipes.errors import RecipeErrors
from align_recipes.plan import load_plan

REPO = Path(__file__).resolve().parents[2]
TINY_DPO = REPO / "recipes" / "tiny" / "dpo.yaml"


def refused(overrides: list[str]) -> list[str]:
    with pytest.raises(RecipeErrors) as info:
        load_plan(TINY_DPO, overrides, profile="cpu")
    return [error.key for error in info.value.errors]


def test_save_steps_under_save_strategy_no_is_refused():
    # recipes/tiny/_base.yaml sets save_strategy: "no"; without the check no checkpoint is written
    assert refused(["train.save_steps=5"]) == ["train.save_steps"]


def test_intervals_under_another_strategy_are_refused():
    assert refused(["train.eval_steps=5"]) == ["train.eval_steps"]  # TRL's default eval_strategy: "no"
    assert refused(["train.logging_steps=3", "train.logging_strategy=epoch"]) == ["train.logging_steps"]
    assert refused(["train.save_steps=5", "train.save_strategy=epoch"]) == ["train.save_steps"]


def test_switching_the_strategy_on_makes_the_interval_count():
    plan = load_plan(TINY_DPO, ["train.save_steps=5", "train.save_strategy=steps"], profile="cpu")
    assert (plan.train["save_strategy"], plan.train["save_steps"]) == ("steps", 5)


def test_a_recipe_interval_switched_off_on_the_command_line_is_accepted():
    # _base.yaml sets logging_steps: 5; the user turning logging off means it, and is not refused for it
    plan = load_plan(TINY_DPO, ["train.logging_strategy='no'"], profile="cpu")
    assert (plan.train["logging_strategy"], plan.train["logging_steps"]) == ("no", 5)


def test_our_default_interval_is_not_the_users(tmp_path):
    # align-recipes' own logging_steps default (5) is no request: a recipe that logs per epoch is fine
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"algorithm: sft\nmodel: {{name_or_path: builtin:tiny-qwen2}}\n"
        f"data: {{train: {{path: {REPO}/recipes/tiny/data/sft.jsonl}}}}\n"
        "train: {logging_strategy: epoch}\n"
    )
    plan = load_plan(recipe, [], profile="cpu")
    assert plan.train["logging_strategy"] == "epoch" and plan.source("train.logging_steps") != "override"
