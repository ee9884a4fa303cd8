"""What a rule reads and what it returns (plan/rules.py holds the table of rules and runs it).

A rule is a small function: it reads one of the contexts below and yields a `Problem` (key, message,
fix) for each thing wrong, or a ready `RecipeError` when the problem lies in another file (a dataset's
row, a task file). The checker in plan/rules.py places each problem (file, line) and names its rule.
Kept apart from rules.py so the modules that define rules need not import the table that lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from align_recipes.errors import RecipeError
from align_recipes.fields import FieldInfo


class Problem(NamedTuple):
    """One thing a rule found wrong. `subject` is the input a waiting rule found missing (a path an earlier
    pipeline stage writes), so a pipeline can tell "not there yet" from "wrong" without reading messages."""

    key: str
    message: str
    fix: str = ""
    subject: str | None = None


@dataclass
class Section:
    """One mapping of a recipe checked against its fields: `prefix` is its dotted key with a trailing dot
    ("model.lora."), `owner` how messages name it ("model.lora"), `bounds` its (low, high, inclusive) ranges."""

    prefix: str
    data: Any
    fields: dict[str, FieldInfo]
    owner: str
    bounds: dict = field(default_factory=dict)
    errors: list[RecipeError] = field(default_factory=list)  # the recipe's errors so far


@dataclass
class RecipeContext:
    """A fully merged recipe, and what earlier rules found out about it (peeked rows, errors so far)."""

    recipe: dict
    algorithm: Any  # registry.Algorithm
    base_dir: Path
    rewards_dir: Path
    recipe_path: Path | None = None
    pending: list | None = None  # None: an input an earlier step writes is an error (train), else listed here
    sections: list[Section] = field(default_factory=list)
    peeked: dict = field(default_factory=dict)  # "data.train" -> (rows, DataSpec), for the sources that read
    held_out: dict = field(default_factory=dict)  # {"evaluate.data": (rows, DataSpec)} when reward scores it
    errors: list[RecipeError] = field(default_factory=list)  # found so far
    locate: Any = None  # dotted key -> (file, line): which layer wrote it (plan.layers.Provenance.locate)
    rank: Any = None  # dotted key -> how specific the layer that set it is (plan.load._layer_rank)
    memo: dict = field(default_factory=dict)  # what several rules compute once (reward specs, family writers)

    def section(self, name: str) -> dict:
        """A top-level section as a mapping ({} when absent or not a mapping: other rules report that)."""
        value = self.recipe.get(name)
        return value if isinstance(value, dict) else {}

    def has_errors(self, *prefixes: str) -> bool:
        """Whether a rule already refused a key under one of `prefixes` (all keys when none are given)."""
        return any(not prefixes or any(str(e.key or "").startswith(p) for p in prefixes) for e in self.errors)


@dataclass
class FeasibilityContext:
    """A validated recipe on a hardware profile: what must hold before anything is loaded."""

    gpu: Any  # hardware.GPU, or None on CPU (or with train.use_cpu)
    model: Any  # sections.ModelSection
    train: dict  # the recipe's train section as merged
    algorithm: Any  # registry.Algorithm
    params: float | None  # the model's estimated size; None: unknown
    defaults: dict[str, Any]  # TRL's defaults of the algorithm's config (plan/trl_fields.json)
    errors: list[RecipeError] = field(default_factory=list)

    def value(self, key: str) -> Any:
        """A train value as the run will see it: the recipe's, else TRL's default."""
        return self.train.get(key, self.defaults.get(key))

    @property
    def where(self) -> str:
        return f"{self.gpu.name} ({self.gpu.arch})" if self.gpu else "CPU"


@dataclass
class FileContext:
    """A profile or pipeline file as read (a LineDict: it knows the line of each key) and its path."""

    data: Any
    path: Path
    name: str = ""
    errors: list[RecipeError] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # what a file's rules read besides it (command-line overrides)

    def has_errors(self, key: str) -> bool:
        """Whether a rule already refused `key` or a key inside it."""
        return any(e.key == key or str(e.key or "").startswith(key + ".") for e in self.errors)


def line_of(data: Any, key: Any) -> int | None:
    """The line a LineDict says `key` was written on (None for other values)."""
    return getattr(data, "lines", {}).get(key)


def locate_in(data: Any, dotted: str) -> int | None:
    """The line of `dotted` ("rules[1].adapter", "stages[0].name") in a file read by plan.yamlio: the line of
    the deepest key found on the way (a missing key points at its section)."""
    node, line = data, None
    for part in dotted.split("."):
        key, *indexes = part.replace("]", "").split("[")
        if not isinstance(node, dict) or key not in node:
            break
        line = line_of(node, key) or line
        node = node[key]
        for index in indexes:
            if not isinstance(node, list) or not index.isdigit() or int(index) >= len(node):
                return line
            node = node[int(index)]
            if isinstance(node, dict) and node:
                line = min(line_of(node, k) or line or 0 for k in node) or line
    return line
