"""Check a merged recipe: the one checker's recipe half. No torch.

It lists the recipe's sections (each mapping with its fields, plan/sections.py and TRL's config fields for
`train:`), runs the section rules on each, then the recipe rules, from the table in plan/rules.py, and
returns every problem they find (not only the first), so a user fixes a recipe in one round trip. Numeric
strings such as "1e-5" (which YAML 1.1 reads as text) are converted to numbers in place first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from align_recipes.errors import RecipeError
from align_recipes.plan import rules, sections, trl_fields
from align_recipes.plan.checking import RecipeContext, Section
from align_recipes.plan.data_rules import PEEK_ROWS, metric_problem
from align_recipes.plan.schema_rules import coerce_numbers
from align_recipes.registry import Algorithm

Locate = Callable[[str], "tuple[str | None, int | None]"]

__all__ = ["PEEK_ROWS", "metric_problem", "recipe_sections", "validate_recipe"]


def recipe_sections(recipe: dict, algorithm: Algorithm) -> list[Section]:
    """Every mapping of a recipe the section rules check, outermost first."""
    from align_recipes.data.spec import source_entries

    found = [Section("", recipe, sections.TOP_LEVEL, "a recipe")]
    model = recipe.get("model")
    found.append(Section("model.", model, sections.MODEL, "the model section"))
    if isinstance(model, dict) and "lora" in model:
        found.append(Section("model.lora.", model["lora"], sections.LORA, "model.lora", sections.LORA_RANGES))
    data = recipe.get("data")
    found.append(Section("data.", data, sections.DATA, "the data section"))
    if isinstance(data, dict) and data.get("audit") is not None:
        found.append(Section("data.audit.", data["audit"], sections.AUDIT, "data.audit"))
    for split in ("train", "eval"):
        value = data.get(split) if isinstance(data, dict) else None
        for name, entry in source_entries(value, f"data.{split}"):
            found.append(
                Section(f"{name}.", entry, sections.DATASET, "a dataset entry", sections.DATASET_RANGES)
            )
    evaluation = recipe.get("evaluate")
    if evaluation is not None:
        found.append(
            Section(
                "evaluate.", evaluation, sections.EVALUATE, "the evaluate section", sections.EVALUATE_RANGES
            )
        )
    if isinstance(evaluation, dict) and evaluation.get("harness") is not None:
        found.append(
            Section(
                "evaluate.harness.",
                evaluation["harness"],
                sections.HARNESS,
                "evaluate.harness",
                sections.HARNESS_RANGES,
            )
        )
    if isinstance(evaluation, dict) and isinstance(evaluation.get("data"), dict):
        found.append(
            Section(
                "evaluate.data.",
                evaluation["data"],
                sections.DATASET,
                "a dataset entry",
                sections.DATASET_RANGES,
            )
        )
    train_fields = trl_fields.config_fields(algorithm.config_name)
    found.append(
        Section("train.", recipe.get("train", {}), train_fields, algorithm.config_name, sections.TRAIN_RANGES)
    )
    return found


def validate_recipe(
    recipe: dict,
    algorithm: Algorithm,
    locate: Locate,
    base_dir: Path,
    rewards_dir: Path | None = None,
    recipe_path: Path | None = None,
    pending: list | None = None,
    rank: Callable[[str], int] | None = None,
) -> list[RecipeError]:
    """All problems in a fully merged recipe (model, data, rewards, evaluate, train). Relative references
    resolve against `base_dir` (the recipe's folder), reward modules against `rewards_dir` (the folder of
    the file that wrote `rewards:`) when given. With `recipe_path`, a model folder another recipe of the
    family writes is pending (plan.pending): appended to `pending` when a list is given, else an error.
    `rank(key)` orders the layers that set a key (plan.load); without it, unread intervals are not checked."""
    context = RecipeContext(
        recipe=recipe,
        algorithm=algorithm,
        base_dir=base_dir,
        rewards_dir=rewards_dir or base_dir,
        recipe_path=recipe_path,
        pending=pending,
        locate=locate,
        rank=rank,
    )
    context.sections = recipe_sections(recipe, algorithm)
    errors = []
    for section in context.sections:
        coerce_numbers(section)
        section.errors = context.errors
        errors += rules.run(rules.SECTION, section, locate)
    errors += rules.run(rules.RECIPE, context, locate)
    return errors
