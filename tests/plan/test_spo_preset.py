"""`train.preset: paper` for SPO: the paper's values laid under the recipe's own (which win), each value's source
named, and a misspelt preset reported with the fix, before any model loads."""

from __future__ import annotations

import textwrap

import pytest

from align_recipes.errors import RecipeErrors
from align_recipes.plan import load_plan


def write(tmp_path, train: str):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    recipe = tmp_path / "spo.yaml"
    recipe.write_text(
        textwrap.dedent(
            """\
            algorithm: spo
            model: {name_or_path: builtin:tiny-qwen2-sft}
            data:
              train: {path: prompts.jsonl}
            rewards:
              - {function: "align_recipes.tiny.toytask:toy_reward"}
            train:
            """
        )
        + textwrap.indent(textwrap.dedent(train), "  ")
    )
    return recipe


def test_the_paper_preset_fills_what_the_recipe_leaves_out(tmp_path):
    plan = load_plan(write(tmp_path, "preset: paper\ncliprange_high: 0.3\n"), profile="cpu")
    got = {k: (plan.train[k], plan.source(f"train.{k}")) for k in ("beta", "cliprange", "cliprange_high")}
    assert got == {
        "beta": (0.0, "preset:paper"),  # the authors run without a KL term
        "cliprange": (0.2, "preset:paper"),
        "cliprange_high": (0.3, f"recipe:{tmp_path / 'spo.yaml'}"),  # the recipe's own value wins
    }
    assert (plan.train["prioritized_sampling"], plan.train["offline_init_samples"]) == (True, 8)
    assert plan.train["baseline"] == "per_prompt"


def test_a_misspelt_preset_is_refused_with_the_fix(tmp_path):
    with pytest.raises(RecipeErrors) as info:
        load_plan(write(tmp_path, "preset: papr\n"), profile="cpu")
    text = str(info.value)
    assert "train.preset" in text and "'papr' is not one of: paper" in text and "did you mean 'paper'" in text


def test_without_a_preset_nothing_changes(tmp_path):
    plan = load_plan(write(tmp_path, "learning_rate: 1.0e-5\n"), profile="cpu")
    assert "beta" not in plan.train and "prioritized_sampling" not in plan.train
