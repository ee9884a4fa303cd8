"""A snapshot of every algorithm's Config dataclass: field names, accepted types, defaults and help.

Why a snapshot: importing any TRL config imports torch and transformers (about 5-7 s), and
`align-recipes validate` must answer in well under a second. So the fields are read once from the
installed classes by `python -m align_recipes.plan.trl_fields` and stored in `trl_fields.json` beside this
file; a test regenerates it and fails if TRL (or our own PPO/SPO configs) drifted from it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError
from align_recipes.fields import KINDS, FieldInfo

SCHEMA_PATH = Path(__file__).with_name("trl_fields.json")


@functools.lru_cache(maxsize=1)
def _snapshot() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def config_fields(config_name: str) -> dict[str, FieldInfo]:
    """Fields of a config class by its name (e.g. "DPOConfig"), from the snapshot."""
    configs = _snapshot()["configs"]
    if config_name not in configs:
        raise RecipeError(
            f"the field snapshot has no {config_name} (a registry entry was added or renamed "
            "without regenerating it)",
            fix="run: python -m align_recipes.plan.trl_fields",
        )
    raw = configs[config_name]
    return {
        name: FieldInfo(
            name,
            tuple(f["kinds"]),
            f.get("default"),
            tuple(f["choices"]) if f.get("choices") is not None else None,
            f.get("help", ""),
        )
        for name, f in raw.items()
    }


def snapshot_versions() -> dict[str, str]:
    return _snapshot()["versions"]


# --- generation (imports TRL; run by developers and by the drift test) -------------------------------


def _kinds_from_annotation(annotation: Any) -> tuple[tuple[str, ...], tuple | None]:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    text = text.replace("<class '", "").replace("'>", "")
    kinds: set[str] = set()
    choices = None
    unknown = False
    for token in re.findall(r"[A-Za-z_][\w.]*", text):
        base = token.rsplit(".", 1)[-1]
        if base in ("bool", "int", "float", "str"):
            kinds.add(base)
        elif base in ("list", "List", "tuple", "Sequence"):
            kinds.add("list")
        elif base in ("dict", "Dict", "Mapping"):
            kinds.add("dict")
        elif base in ("None", "NoneType", "Optional"):
            kinds.add("null")
        elif base == "Literal":
            kinds.add("bool")  # TRL uses Literal[False] only, beside str/None
        elif base not in ("typing", "Union", "Any", "str"):
            unknown = True
    if "Strategy" in text or "SchedulerType" in text or "OptimizerNames" in text or "DebugOption" in text:
        kinds.add("str")  # enums that TrainingArguments also accepts as their string values
    if not kinds - {"null"} and (unknown or not kinds):
        kinds.add("any")  # e.g. ParallelismConfig objects: not expressible in YAML, accepted as given
    return tuple(k for k in (*KINDS, "any") if k in kinds), choices


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def describe_config(cls: type) -> dict[str, dict]:
    fields = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        kinds, _ = _kinds_from_annotation(f.type)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        entry: dict[str, Any] = {"kinds": list(kinds), "default": _jsonable(default)}
        choices = f.metadata.get("choices")
        if choices is not None:
            entry["choices"] = [_jsonable(c) for c in choices]
        help_text = " ".join(str(f.metadata.get("help", "")).split())
        entry["help"] = help_text[:300]
        fields[f.name] = entry
    return fields


def generate() -> dict:
    """Read every registered config class from the installed packages."""
    import importlib.metadata as md

    from align_recipes.registry import ALGORITHMS, load_class

    configs = {a.config_name: describe_config(load_class(a.config)) for a in ALGORITHMS.values()}
    versions = {pkg: md.version(pkg) for pkg in ("trl", "transformers")}
    return {"versions": versions, "configs": configs}


def main() -> int:
    snapshot = generate()
    SCHEMA_PATH.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SCHEMA_PATH} ({len(snapshot['configs'])} configs, trl {snapshot['versions']['trl']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
