"""The layers a plan is merged from, and where every value came from.

A recipe file and its `extends` parents, command-line overrides, the hardware profile and our own
defaults are each a layer: a nested mapping with a label ("recipe:recipes/tiny/dpo.yaml",
"profile:t4", "override", "align-recipes"). `Provenance.merge` lays one over another and remembers,
for every leaf, the label of the layer that set it, which `show` prints and errors use to name the
file and line a user wrote. Relative paths are made absolute against the folder of the layer that
wrote them (see `align_recipes.paths`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from align_recipes.errors import RecipeError
from align_recipes.fields import kind_of
from align_recipes.paths import find_local
from align_recipes.plan.checking import locate_in
from align_recipes.plan.harness import is_task_file
from align_recipes.plan.yamlio import LineDict, load_yaml
from align_recipes.rewards import is_file_ref

DEFAULT = "default"  # TRL's own default (never stored: it is whatever the field says)
OURS = "align-recipes"
OVERRIDE = "override"
LEAF_MAPPINGS = ("columns",)  # mappings that replace as a whole instead of merging key by key

# Values that name files or folders to read. Relative ones resolve where they were written. A data split
# may be a list of sources (a mixture): each of their `path`s resolves the same way.
PATH_KEYS = (
    "model.name_or_path",
    "model.chat_template",
    "data.train.path",
    "data.eval.path",
    "evaluate.data.path",
    "train.reward_model_path",
    "train.value_model_path",
)
SOURCE_LISTS = ("data.train", "data.eval")
HARNESS_TASKS = "evaluate.harness.tasks"  # entries ending in .yaml/.yml are task files (plan/harness.py)
_INDEX = re.compile(r"\[\d+\]")


def recipe_label(path: Path) -> str:
    return f"recipe:{display(path)}"


def display(path: Path) -> str:
    """A path as the user would type it from here: relative to the current directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Provenance:
    """Which layer set each dotted key, and what each recipe file said (with line numbers)."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}  # "train.learning_rate" -> label
        self.files: dict[str, tuple[Path, Any]] = {}  # recipe label -> (path, its parsed YAML)

    def merge(self, base: dict, top: dict, label: str, prefix: str = "") -> None:
        """Deep-merge `top` into `base` in place; mappings merge key by key, anything else replaces."""
        for key, value in top.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in LEAF_MAPPINGS:
                self.merge(base[key], value, label, path + ".")
                continue
            for stale in [k for k in self.sources if k == path or k.startswith(path + ".")]:
                del self.sources[stale]
            base[key] = copy.deepcopy(value)
            self._mark(value, label, path)

    def merge_under(self, base: dict, bottom: dict, label: str, prefix: str = "") -> None:
        """Lay `bottom` under what `base` holds: its values fill only keys that no layer set, or that
        only our defaults set (the profile sits between our defaults and the recipe)."""
        for key, value in bottom.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in LEAF_MAPPINGS:
                self.merge_under(base[key], value, label, path + ".")
            elif key not in base or self.sources.get(path, OURS) == OURS:
                self.merge(base, {key: value}, label, prefix)

    def _mark(self, value: Any, label: str, path: str) -> None:
        if isinstance(value, dict) and value and path.rsplit(".", 1)[-1] not in LEAF_MAPPINGS:
            for key, sub in value.items():
                self._mark(sub, label, f"{path}.{key}")
        else:
            self.sources[path] = label

    def source(self, dotted: str) -> str | None:
        """The label of the layer that set `dotted` (or the nearest parent it was set through). A list item
        (`data.train[1].path`) was set with its list."""
        probe = _INDEX.sub("", dotted)
        while probe:
            if probe in self.sources:
                return self.sources[probe]
            probe = probe.rpartition(".")[0]
        return None

    def folder(self, dotted: str, default: Path | None = None) -> Path:
        """Where relative paths under `dotted` resolve: the writing file's folder, else `default` (the
        current directory when not given)."""
        label = self.source(dotted)
        if label in self.files:
            return self.files[label][0].parent
        return default if default is not None else Path.cwd()

    def locate(self, dotted: str) -> tuple[str | None, int | None]:
        """(file, line) where the user wrote `dotted`, for error messages."""
        label = self.source(dotted)
        if label is None:
            label = next(reversed(self.files), None)  # a required key is missing: blame the recipe itself
        if label == OVERRIDE:
            return "command line", None
        if label not in self.files:
            return None, None
        return label.split(":", 1)[1], locate_in(self.files[label][1], dotted)

    def where(self, dotted: str) -> str | None:
        """The file (or 'command line') that set `dotted`, for errors found after validation."""
        return self.locate(dotted)[0]


def line_of(data: Any, key: str) -> int | None:
    return data.lines.get(key) if isinstance(data, LineDict) else None


def read_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The recipe and its `extends` ancestors, parents first."""
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(p.name for p in (*seen, path))
        raise RecipeError(
            f"`extends` cycle: {cycle}", fix="remove one of the extends links", file=path, key="extends"
        )
    data = load_yaml(path)
    if data is None:
        raise RecipeError("the recipe is empty", fix="start from a recipe in recipes/tiny/", file=path)
    if not isinstance(data, dict):
        raise RecipeError(
            f"a recipe must be a mapping of sections, got a {kind_of(data)}",
            fix="write `algorithm: …`, `model: …`, `data: …`, `train: …` at the top level",
            file=path,
        )
    parents = data.get("extends") or []
    chain: list[tuple[Path, dict]] = []
    for parent in [parents] if isinstance(parents, str) else parents:
        parent_path = path.parent / str(parent)
        if not parent_path.is_file():
            raise RecipeError(
                f"extends '{parent}': file not found ({parent_path})",
                fix="paths in `extends` are relative to the recipe's folder",
                file=path,
                key="extends",
                line=line_of(data, "extends"),
            )
        chain.extend(read_chain(parent_path, (*seen, path)))
    chain.append((path, data))
    return chain


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-5` → (["train", "learning_rate"], 1e-05). Values are read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' is not KEY=VALUE", fix="write e.g. train.learning_rate=1e-5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(
            f"override key '{key}' is not a dotted path", fix="write e.g. train.learning_rate=1e-5"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def override_layer(text: str) -> dict:
    """`train.learning_rate=1e-5` → {"train": {"learning_rate": 1e-05}}."""
    parts, value = parse_override(text)
    for part in reversed(parts):
        value = {part: value}
    return value


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _put(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def resolve_paths(tree: dict, folder_of: Callable[[str], Path]) -> None:
    """Make every relative path in PATH_KEYS, the harness task files and the `rewards:` entries (file:function
    references and reward model folders) absolute where it exists: first against `folder_of(dotted key)` (the
    folder of the file that wrote it), then against the current directory. What exists nowhere stays as written."""
    for dotted in PATH_KEYS:
        value = _get(tree, dotted)
        found = resolve_path(value, folder_of(dotted))
        if found != value:
            _put(tree, dotted, found)
    for dotted in SOURCE_LISTS:
        sources = _get(tree, dotted)
        for index, entry in enumerate(sources if isinstance(sources, list) else []):
            if isinstance(entry, dict) and "path" in entry:
                entry["path"] = resolve_path(entry["path"], folder_of(f"{dotted}[{index}].path"))
    tasks = _get(tree, HARNESS_TASKS)
    if isinstance(tasks, list):
        folder = folder_of(HARNESS_TASKS)
        _put(tree, HARNESS_TASKS, [resolve_path(t, folder) if is_task_file(t) else t for t in tasks])
    if isinstance(tree.get("rewards"), list):
        folder = folder_of("rewards")
        tree["rewards"] = [resolve_reward_entry(entry, folder) for entry in tree["rewards"]]


def resolve_path(value: Any, folder: Path) -> Any:
    """`value` as an absolute path when it names an existing file or folder (against `folder`, then the
    current directory); otherwise unchanged (hub ids, builtin:…, outputs a later stage writes)."""
    if not isinstance(value, str) or not value or ":" in value.split("/")[0]:
        return value  # builtin:…, URLs and Windows drives are not ours to resolve
    found = find_local(value, folder, None)
    return str(found) if found is not None else value


def resolve_reward_entry(entry: Any, folder: Path) -> Any:
    """A `rewards:` entry with its file reference (`rewards.py:score`) or reward model folder resolved."""
    if not isinstance(entry, dict):
        return entry
    entry = dict(entry)
    if isinstance(entry.get("model"), str):
        entry["model"] = resolve_path(entry["model"], folder)
    ref = entry.get("function")
    if isinstance(ref, str):
        target, sep, attr = ref.rpartition(":")
        if sep and target and attr and is_file_ref(target):
            found = resolve_path(target, folder)
            if found != target and Path(found).is_file():
                entry["function"] = f"{found}:{attr}"
    return entry
