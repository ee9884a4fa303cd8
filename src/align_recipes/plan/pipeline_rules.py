"""Rules a pipeline file obeys (`align-recipes pipeline FILE`; results/pipeline.py runs it).

Each function is one rule of the table in plan/rules.py. It reads the file as written (a FileContext, whose
`extra` holds the command-line overrides and, for the gate rules, `algorithm_of(stage name)`) and yields a
Problem per mistake, keyed by where it is ("stages[1].recipe"), so every mistake is reported at once with
its file:line. A stage's recipe is validated by the recipe rules when the pipeline loads it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from align_recipes import registry
from align_recipes.errors import did_you_mean
from align_recipes.plan.checking import FileContext, Problem
from align_recipes.plan.layers import parse_override
from align_recipes.plan.sections import METRICS

TOP_KEYS = ("description", "output_dir", "profile", "stages")
STAGE_KEYS = ("name", "recipe", "overrides", "output_dir", "gate")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)(\.output_dir|\.model)?\}")
GATE_EXAMPLE = "gate: {preference_accuracy: 0.8}"


def _stages(ctx: FileContext) -> list:
    stages = ctx.data.get("stages") if isinstance(ctx.data, dict) else None
    return stages if isinstance(stages, list) else []


def named_stages(ctx: FileContext) -> Iterator[tuple[int, dict, str]]:
    """(index, entry, name) of each stage entry with a valid name not used before it."""
    seen = set()
    for index, entry in enumerate(_stages(ctx)):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and NAME.match(name) and name not in seen:
            seen.add(name)
            yield index, entry, name


def pipeline_without_stages(ctx: FileContext) -> Iterator[Problem]:
    """A pipeline file with no `stages:` list (or an empty one)."""
    if not _stages(ctx):
        yield Problem(
            "stages",
            "a pipeline needs a non-empty `stages:` list",
            "stages: [{name: sft, recipe: sft.yaml}, {name: dpo, recipe: dpo.yaml, "
            "overrides: {model.name_or_path: '{sft}'}}]",
        )


def pipeline_unknown_key(ctx: FileContext) -> Iterator[Problem]:
    """A key the pipeline file or one of its stages does not have."""
    for key in ctx.data if isinstance(ctx.data, dict) else ():
        if key not in TOP_KEYS:
            yield Problem(str(key), f"unknown key '{key}'", did_you_mean(str(key), TOP_KEYS))
    for index, entry in enumerate(_stages(ctx)):
        for key in entry if isinstance(entry, dict) else ():
            if key not in STAGE_KEYS:
                yield Problem(
                    f"stages[{index}].{key}", f"unknown key '{key}'", did_you_mean(str(key), STAGE_KEYS)
                )


def stage_not_a_mapping(ctx: FileContext) -> Iterator[Problem]:
    """A stage written as something other than {name, recipe, overrides}."""
    for index, entry in enumerate(_stages(ctx)):
        if not isinstance(entry, dict):
            yield Problem(
                f"stages[{index}]",
                "each stage is a mapping {name, recipe, overrides}",
                "write `- {name: sft, recipe: sft.yaml}`",
            )


def stage_name_invalid(ctx: FileContext) -> Iterator[Problem]:
    """A stage name that is not a word (placeholders and output folders are named after it)."""
    for index, entry in enumerate(_stages(ctx)):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(entry, dict) and not (isinstance(name, str) and NAME.match(name)):
            yield Problem(
                f"stages[{index}].name",
                f"stage name {name!r} must be a word (letters, digits, _ or -)",
                "e.g. name: sft",
            )


def stage_name_twice(ctx: FileContext) -> Iterator[Problem]:
    """Two stages with one name."""
    seen = set()
    for index, entry in enumerate(_stages(ctx)):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and NAME.match(name):
            if name in seen:
                yield Problem(
                    f"stages[{index}].name",
                    f"stage name '{name}' is used twice",
                    "give each stage its own name",
                )
            seen.add(name)


def stage_recipe_missing(ctx: FileContext) -> Iterator[Problem]:
    """A stage's recipe file that does not exist (relative to the pipeline file)."""
    for index, entry, name in named_stages(ctx):
        recipe = entry.get("recipe")
        recipe_path = ctx.path.parent / str(recipe or "")
        if not recipe or not recipe_path.is_file():
            yield Problem(
                f"stages[{index}].recipe",
                f"stage '{name}': recipe file '{recipe}' not found ({recipe_path})",
                "recipe paths are relative to the pipeline file",
            )


def stage_overrides_not_a_mapping(ctx: FileContext) -> Iterator[Problem]:
    """A stage's overrides written as something other than dotted keys and values."""
    for index, entry, _ in named_stages(ctx):
        if entry.get("overrides") is not None and not isinstance(entry["overrides"], dict):
            yield Problem(
                f"stages[{index}].overrides",
                "overrides must map dotted keys to values",
                "overrides: {model.name_or_path: '{sft}', train.learning_rate: 1.0e-5}",
            )


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def placeholders(value: Any) -> list[str]:
    """The stage names `{name}`, `{name.output_dir}` or `{name.model}` in an override value, in order."""
    return [match.group(1) for text in _texts(value) for match in PLACEHOLDER.finditer(text)]


def placeholder_not_earlier(ctx: FileContext) -> Iterator[Problem]:
    """A `{stage}` placeholder that names no earlier stage (a stage reads only what ran before it)."""
    earlier: list[str] = []
    for index, entry, name in named_stages(ctx):
        overrides = entry.get("overrides")
        for key, value in overrides.items() if isinstance(overrides, dict) else ():
            for used in placeholders(value):
                if used not in earlier:
                    yield Problem(
                        f"stages[{index}].overrides.{key}",
                        f"stage '{name}': '{{{used}}}' does not name an earlier stage",
                        f"earlier stages: {', '.join(earlier) or 'none'}",
                    )
                    break
        earlier.append(name)


def stage_of(text: str) -> str | None:
    """The stage a command-line override names (`dpo:train.beta=0.2` -> dpo), None for one meant for all."""
    return text.split(":", 1)[0] if ":" in text.split("=", 1)[0] else None


def override_stage_unknown(ctx: FileContext) -> Iterator[Problem]:
    """A command-line `STAGE:KEY=VALUE` naming a stage the pipeline does not have."""
    names = [name for _, _, name in named_stages(ctx)]
    for text in ctx.extra.get("overrides", ()):
        stage = stage_of(text)
        if stage is not None and stage not in names:
            yield Problem(
                "command line",
                f"override '{text}' names stage '{stage}', which the pipeline does not have",
                did_you_mean(stage, names),
            )


# --- gates ---------------------------------------------------------------------------------------------------


def gate_entries(ctx: FileContext) -> Iterator[tuple[str, list[str], str, Any, str]]:
    """(stage, the stages it reads from, metric, minimum, key) of every gate minimum, written in the file or
    on the command line (`STAGE:gate.METRIC=VALUE`, keyed "STAGE:gate.METRIC": no file, no line)."""
    by_name: dict[str, list[str]] = {}
    for index, entry, name in named_stages(ctx):
        overrides = entry.get("overrides")
        used = [
            u
            for value in (overrides.values() if isinstance(overrides, dict) else ())
            for u in placeholders(value)
        ]
        deps = by_name[name] = [d for d in dict.fromkeys(used) if d in by_name]
        gate = entry.get("gate")
        for metric, minimum in gate.items() if isinstance(gate, dict) else ():
            yield name, deps, str(metric), minimum, f"stages[{index}].gate.{metric}"
        for text in ctx.extra.get("overrides", ()):
            if text.startswith(f"{name}:gate."):
                parts, value = parse_override(text.split(":", 1)[1])
                yield name, deps, ".".join(parts[1:]), value, text.split("=", 1)[0]


def gate_not_a_mapping(ctx: FileContext) -> Iterator[Problem]:
    """A stage's gate written as something other than metric: minimum pairs."""
    for index, entry, name in named_stages(ctx):
        if entry.get("gate") is not None and not isinstance(entry["gate"], dict):
            yield Problem(
                f"stages[{index}].gate",
                f"stage '{name}': gate must map held-out metrics to minimums",
                GATE_EXAMPLE,
            )


def gate_metric_unknown(ctx: FileContext) -> Iterator[Problem]:
    """A gate on a metric align-recipes does not measure."""
    for stage, _, metric, _, key in gate_entries(ctx):
        if metric not in METRICS:
            yield Problem(
                key, f"stage '{stage}': unknown gate metric '{metric}'", did_you_mean(metric, METRICS)
            )


def minimum_is_valid(minimum: Any) -> bool:
    return not isinstance(minimum, bool) and isinstance(minimum, (int, float)) and 0 <= minimum <= 1


def gate_minimum_invalid(ctx: FileContext) -> Iterator[Problem]:
    """A gate minimum that is not a number from 0 to 1 (0 turns the gate off)."""
    for stage, _, metric, minimum, key in gate_entries(ctx):
        if metric in METRICS and not minimum_is_valid(minimum):
            yield Problem(
                key,
                f"stage '{stage}': gate minimum {minimum!r} must be a number from 0 to 1",
                f"e.g. {metric}: 0.8",
            )


def measured_by(metric: str, deps: list[str], algorithm_of) -> list[str]:
    """The stages among `deps` whose algorithm measures `metric` (a reward stage: preference_accuracy)."""
    return [
        d for d in deps if metric in getattr(registry.ALGORITHMS.get(algorithm_of(d) or ""), "metrics", ())
    ]


def gate_not_measured(ctx: FileContext) -> Iterator[Problem]:
    """A gate on a metric none of the stages the gated stage reads from measures."""
    algorithm_of = ctx.extra.get("algorithm_of", lambda name: None)
    for stage, deps, metric, minimum, key in gate_entries(ctx):
        if metric in METRICS and minimum_is_valid(minimum) and not measured_by(metric, deps, algorithm_of):
            yield Problem(
                key,
                f"stage '{stage}': gate on {metric}, but none of the stages it reads from "
                f"({', '.join(deps) or 'no earlier stage'}) measures it",
                f"gate the stage that reads the model to check, e.g. train.reward_model_path: '{{reward}}' "
                f"({metric} is measured by {registry.names_text(lambda a, m=metric: m in a.metrics)})",
            )
