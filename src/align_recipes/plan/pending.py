"""Inputs another recipe of the family writes: pending on a fresh clone, not wrong.

`recipes/qwen05b/ppo.yaml` reads `outputs/qwen05b/reward/merged`, which `reward.yaml` (the pipeline's reward
stage) writes. Before that has run, `validate` reports the input as pending, naming the stage and the command
that writes it, and exits 0; `train` refuses it with the same words (it cannot run without it). What writes
where is read from the family's files alone (no recipe is loaded): each recipe's output directory
(`train.output_dir`, else `outputs/<family>/<algorithm>`, as load_plan names it) and each pipeline stage's
(`<output_dir>/<stage name>`, as results/pipeline.py names it), or that directory merged: `<dir>/merged`
(what a pipeline's LoRA stage writes) or `<dir>-merged` (what `align-recipes merge DIR --out DIR-merged`
writes in the recipes' comments).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from align_recipes.errors import RecipeError
from align_recipes.plan.layers import read_chain
from align_recipes.plan.yamlio import load_yaml


@dataclass
class Pending:
    """One input an earlier step of the family writes: `key` reads `value`, which `how` says how to make."""

    key: str
    value: str
    how: str  # "stage 'reward' of recipes/tiny/pipeline.yaml (recipes/tiny/reward_near_miss.yaml) writes it"
    command: str  # what to run first

    @property
    def line(self) -> str:
        return f"{self.key}: '{self.value}' does not exist yet: {self.how}; run `{self.command}`"


def family_writer(key: str, value: str, recipe_path: Path) -> Pending | None:
    """How `value`, the local path `key` names, which does not exist, gets written by the family of
    `recipe_path` (the recipes and pipeline files in its folder); None when nothing there writes it."""
    if not isinstance(value, str) or not value or value.startswith("builtin:"):
        return None
    wanted = _absolute(value)
    folder = recipe_path.parent
    pipelines, recipes = _family_files(folder, recipe_path)
    for pipeline, stages in pipelines:
        own = [i for i, (_, recipe, _) in enumerate(stages) if recipe == recipe_path.resolve()]
        for index, (name, recipe, out) in enumerate(stages):
            if own and index >= own[0]:
                break  # only the stages before this recipe's own feed it
            merged = _merge_of(wanted, out)
            if merged is not None:
                label = _shown(pipeline)
                return Pending(
                    key,
                    value,
                    f"stage '{name}' of {label} ({_shown(recipe)}) writes it",
                    f"align-recipes pipeline {label}",
                )
    for recipe, out in recipes:
        merged = _merge_of(wanted, out)
        if merged is None:
            continue
        command = f"align-recipes train {_shown(recipe)}"
        if merged:
            command += f"`, then `align-recipes merge {_shown(out)} --out {value}"
        stage = next(
            (
                f"stage '{name}' of {_shown(pipeline)}"
                for pipeline, stages in pipelines
                for name, path, _ in stages
                if path == recipe
            ),
            None,
        )
        how = f"it is the {'merged model' if merged else 'output'} of {_shown(recipe)}" + (
            f" ({stage})" if stage else ""
        )
        return Pending(key, value, how, command)
    return None


def _merge_of(wanted: Path, out: Path) -> bool | None:
    """False when `wanted` is the output directory `out` itself, True when it is `out` merged, else None."""
    if wanted == out:
        return False
    if wanted in (out / "merged", out.with_name(out.name + "-merged")):
        return True
    return None


def _family_files(folder: Path, recipe_path: Path) -> tuple[list, list]:
    """([(pipeline file, [(stage name, recipe, output dir)])], [(recipe, output dir)]) of the other files in
    `folder`; files that cannot be read are skipped (they are checked when they are validated themselves)."""
    pipelines, recipes = [], []
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_") or path.resolve() == recipe_path.resolve():
            continue
        try:
            data = load_yaml(path)
        except RecipeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("stages"), list):
            pipelines.append((path.resolve(), _stages(path, data)))
            continue
        out = _output_dir(path)
        if out is not None:
            recipes.append((path.resolve(), out))
    return pipelines, recipes


def _stages(path: Path, data: dict) -> list[tuple[str, Path, Path]]:
    root = Path(data.get("output_dir") or Path("outputs") / path.resolve().parent.name / path.stem)
    stages = []
    for entry in data["stages"]:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry.get("recipe"):
            out = Path(entry.get("output_dir") or root / entry["name"])
            stages.append((entry["name"], (path.parent / str(entry["recipe"])).resolve(), _absolute(out)))
    return stages


def _output_dir(path: Path) -> Path | None:
    """Where `align-recipes train path` writes, from the file and its `extends` chain (the nearest wins)."""
    try:
        chain = read_chain(path)
    except RecipeError:
        return None
    algorithm, out = None, None
    for _, data in chain:  # parents first: later files win
        algorithm = data.get("algorithm", algorithm)
        train = data.get("train")
        if isinstance(train, dict) and train.get("output_dir"):
            out = train["output_dir"]
    if out is None and isinstance(algorithm, str):
        out = f"outputs/{path.resolve().parent.name}/{algorithm}"
    return _absolute(out) if isinstance(out, str) else None


def _absolute(value: str | Path) -> Path:
    """Output paths are relative to the current directory, as the run writes them."""
    path = Path(value).expanduser()
    return Path(path if path.is_absolute() else Path.cwd() / path).resolve()


def _shown(path: Path) -> str:
    """A path as the user types it: relative to the current directory where it lies below it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
