"""How a field of a recipe section or of a TRL config is described for validation.

`FieldInfo` is what the one checker (`plan.validate`) knows about a field: the YAML kinds it
accepts, its default, its choices and a help line. Our own sections are dataclasses whose fields
carry those facts in their metadata (`spec(...)`), read back with `fields_of`; TRL's configs are
described by a snapshot (`plan.trl_fields`). Stdlib only, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The kinds a recipe value can have, as YAML produces them.
KINDS = ("bool", "int", "float", "str", "list", "dict", "null")


@dataclass(frozen=True)
class FieldInfo:
    """What the validator needs to know about one field (of our sections or of a TRL config)."""

    name: str
    kinds: tuple[str, ...]  # accepted value kinds; "any" accepts everything
    default: Any = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    required: bool = False

    def accepts(self, value: Any) -> bool:
        if "any" in self.kinds:
            return True
        return kind_of(value) in self.kinds or (kind_of(value) == "int" and "float" in self.kinds)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    for kind, python_type in (("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, python_type):
            return kind
    return type(value).__name__


def spec(
    default: Any = dataclasses.MISSING, kinds: str = "str", help: str = "", choices=None, factory=None
) -> Any:
    """A dataclass field with the facts the checker needs in its metadata."""
    meta = {"kinds": kinds, "help": help, "choices": tuple(choices) if choices else None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def fields_of(cls) -> dict[str, FieldInfo]:
    """The FieldInfo table of a section dataclass (fields without `kinds` metadata are internal)."""
    table = {}
    for f in dataclasses.fields(cls):
        if "kinds" not in f.metadata:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (
            None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        )
        if dataclasses.is_dataclass(default):
            default = {}
        table[f.name] = FieldInfo(
            f.name,
            tuple(f.metadata["kinds"].split()),
            default,
            f.metadata["choices"],
            f.metadata["help"],
            required,
        )
    return table
