"""Recipe YAML → a validated Plan, with the source of every value. Never imports torch.

Merge order, lowest first: TRL config defaults < our defaults < hardware profile < the recipe's
`extends` chain (parents first) < the recipe < command-line overrides (`train.learning_rate=1e-5`).
Every leaf value remembers which of those it came from, for `align-recipes show`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_recipes import compat, profiles, scaling, schema, sections
from align_recipes.hardware import sharding
from align_recipes.errors import RecipeError, RecipeErrors, did_you_mean
from align_recipes.registry import ALGORITHMS, Algorithm
from align_recipes.validate import validate_recipe
from align_recipes.yamlio import LineDict, load_yaml, plain

DEFAULT_SOURCE = "default"
OURS_SOURCE = "align-recipes"
OVERRIDE_SOURCE = "override"


@dataclass
class Plan:
    """Everything a run needs, resolved, before anything heavy is loaded."""

    recipe_path: Path
    algorithm: Algorithm
    recipe: dict[str, Any]  # resolved sections: model, data, rewards, evaluate, train (set fields only)
    sources: dict[str, str]  # "train.learning_rate" -> "recipe:recipes/tiny/dpo.yaml" | "profile:cpu" | …
    profile: profiles.Profile
    profile_changes: list[profiles.Change] = field(default_factory=list)
    launch: scaling.Launch | None = None  # how to spread it over this machine's GPUs (None: one process will do)

    @property
    def base_dir(self) -> Path:
        return self.recipe_path.parent

    @property
    def train_args(self) -> dict[str, Any]:
        return self.recipe["train"]

    @property
    def output_dir(self) -> Path:
        return Path(self.train_args["output_dir"])

    def effective_config(self) -> dict[str, tuple[Any, str]]:
        """Every field of the TRL config: (value, source)."""
        result = {}
        for name, info in schema.config_fields(self.algorithm.config_name).items():
            if name in self.train_args:
                result[name] = (self.train_args[name], self.sources.get(f"train.{name}", OURS_SOURCE))
            else:
                result[name] = (info.default, DEFAULT_SOURCE)
        return result


# --- merging with provenance ------------------------------------------------------------------------

def _merge(base: dict, top: dict, sources: dict[str, str], label: str, prefix: str = "") -> None:
    """Deep-merge `top` into `base` in place; mappings merge, everything else replaces."""
    for key, value in top.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "columns":
            _merge(base[key], value, sources, label, path + ".")
        else:
            if key in base:
                for stale in [k for k in sources if k.startswith(path + ".")]:
                    del sources[stale]
            base[key] = copy.deepcopy(value)
            _mark(value, sources, label, path)


def _mark(value: Any, sources: dict[str, str], label: str, path: str) -> None:
    if isinstance(value, dict) and value and not path.endswith("columns"):
        for key, sub in value.items():
            _mark(sub, sources, label, f"{path}.{key}")
    else:
        sources[path] = label


def _read_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The recipe and its `extends` ancestors, parents first."""
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(p.name for p in (*seen, path))
        raise RecipeError(f"`extends` cycle: {cycle}", fix="remove one of the extends links", file=path, key="extends")
    data = load_yaml(path)
    if data is None:
        raise RecipeError("the recipe is empty", fix="start from a recipe in recipes/tiny/", file=path)
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of sections, got a {schema.kind_of(data)}",
                          fix="write `algorithm: …`, `model: …`, `data: …`, `train: …` at the top level", file=path)
    parents = data.get("extends") or []
    chain: list[tuple[Path, dict]] = []
    for parent in [parents] if isinstance(parents, str) else parents:
        parent_path = path.parent / str(parent)
        if not parent_path.is_file():
            raise RecipeError(f"extends '{parent}': file not found ({parent_path})",
                              fix="paths in `extends` are relative to the recipe's folder", file=path,
                              key="extends", line=_line(data, "extends"))
        chain.extend(_read_chain(parent_path, (*seen, path)))
    chain.append((path, data))
    return chain


def _line(data: Any, key: str) -> int | None:
    return getattr(data, "lines", {}).get(key) if isinstance(data, LineDict) else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-5` → (["train", "learning_rate"], 1e-05). Values are read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' is not KEY=VALUE", fix="write e.g. train.learning_rate=1e-5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override key '{key}' is not a dotted path", fix="write e.g. train.learning_rate=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _nest(parts: list[str], value: Any) -> dict:
    for part in reversed(parts):
        value = {part: value}
    return value


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _family(recipe_path: Path) -> str:
    return recipe_path.parent.name or "recipes"


# --- the public entry point ---------------------------------------------------------------------------

def load_plan(recipe_path: str | Path, overrides: list[str] = (), profile: str | None = None) -> Plan:
    """Read, merge and validate a recipe. Raises RecipeError(s); loads no model and no torch."""
    recipe_path = Path(recipe_path)
    if not recipe_path.exists() and recipe_path.suffix == "" and (Path("recipes") / recipe_path).is_dir():
        raise RecipeError(f"'{recipe_path}' is a recipe family, not a recipe file",
                          fix=f"name one file, e.g. recipes/{recipe_path}/dpo.yaml", file=recipe_path)
    chain = _read_chain(recipe_path)
    recipe_layer: dict[str, Any] = {}
    sources: dict[str, str] = {}
    files: dict[str, Any] = {}
    for path, data in chain:
        label = f"recipe:{_display(path)}"
        files[label] = data
        _merge(recipe_layer, {k: v for k, v in data.items() if k != "extends"}, sources, label)

    override_layer: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text)
        _merge(override_layer, _nest(parts, value), {}, OVERRIDE_SOURCE)

    algorithm_name = override_layer.get("algorithm", recipe_layer.get("algorithm"))
    if algorithm_name not in ALGORITHMS:
        where = _locator(files, sources)("algorithm")
        raise RecipeError(f"unknown algorithm '{algorithm_name}'" if algorithm_name else "no `algorithm:` given",
                          fix=did_you_mean(str(algorithm_name), ALGORITHMS) if algorithm_name
                          else f"add `algorithm:` with one of {', '.join(ALGORITHMS)}",
                          file=where[0] or recipe_path, line=where[1], key="algorithm")
    algorithm = ALGORITHMS[algorithm_name]

    # Lowest layers first: our defaults, then the profile, then recipe and overrides on top.
    family = _family(recipe_path.resolve())
    resolved: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    resolved_sources: dict[str, str] = {}
    ours = {"train": {"output_dir": f"outputs/{family}/{algorithm.name}", "report_to": "none", "logging_steps": 5}}
    _merge(resolved, ours, resolved_sources, OURS_SOURCE)

    profile_name = profile or override_layer.get("profile") or recipe_layer.get("profile") or "auto"
    chosen = profiles.resolve(str(profile_name))
    model_wish = {**_as_dict(recipe_layer.get("model")), **_as_dict(override_layer.get("model"))}
    profile_layer, changes = profiles.layer_for(chosen, algorithm, model_wish, base_dir=recipe_path.parent)
    fields = schema.config_fields(algorithm.config_name)
    profile_layer["train"] = {k: v for k, v in profile_layer.get("train", {}).items() if k in fields}
    changes = [c for c in changes if not c.key.startswith("train.") or c.key[6:] in fields]
    _merge(resolved, profile_layer, resolved_sources, f"profile:{chosen.name}")

    for layer, layer_sources in ((recipe_layer, sources), (override_layer, None)):
        written: dict[str, str] = {}
        _merge(resolved, layer, written, "")
        for stale in [k for k in resolved_sources if any(k.startswith(w + ".") for w in written)]:
            del resolved_sources[stale]
        resolved_sources.update({k: layer_sources.get(k, "recipe") if layer_sources else OVERRIDE_SOURCE
                                 for k in written})

    errors = validate_recipe(resolved, algorithm, _locator(files, resolved_sources), base_dir=recipe_path.parent)
    if not errors:
        changes += profiles.adjust_batch(chosen, resolved, resolved_sources, algorithm, base_dir=recipe_path.parent)
        changes += scaling.keep_effective_batch(resolved, resolved_sources, fields, sharding()[1])
        errors = compat.check_compatible(chosen, resolved, algorithm, file=recipe_path)
    if errors:
        raise RecipeErrors(errors)
    launch = scaling.choose_launch(chosen, resolved, algorithm, base_dir=recipe_path.parent)
    if launch is not None:
        resolved_sources["launch"] = f"profile:{chosen.name}"
        changes.append(profiles.Change("launch", f"{launch.engine} x {launch.processes}",
                                       scaling.explain(launch, resolved, algorithm)))
    return Plan(recipe_path=recipe_path, algorithm=algorithm, recipe=resolved, sources=resolved_sources,
                profile=chosen, profile_changes=changes, launch=launch)


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _locator(files: dict[str, Any], sources: dict[str, str]):
    """Map a dotted key to (file, line) where the user wrote it, for error messages."""

    def locate(dotted: str) -> tuple[str | None, int | None]:
        label, probe = None, dotted
        while probe and label is None:
            label = sources.get(probe)
            probe = probe.rpartition(".")[0]
        if label is None:
            label = next(reversed(files), None)  # required key missing: blame the recipe itself
        if label == OVERRIDE_SOURCE:
            return "command line", None
        if not label or not label.startswith("recipe:"):
            return None, None
        node, line = files[label], None
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            line = _line(node, part) or line
            node = node[part]
        return label.split(":", 1)[1], line

    return locate


def resolved_yaml(plan: Plan) -> str:
    """The fully resolved recipe, as written to `recipe.resolved.yaml` in every output dir."""
    body = {"algorithm": plan.algorithm.name, "profile": plan.profile.name, **plan.recipe}
    return yaml.safe_dump(plain(body), sort_keys=False, allow_unicode=True)



__all__ = ["Plan", "load_plan", "parse_override", "resolved_yaml", "sections"]
