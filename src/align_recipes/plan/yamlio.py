"""Safe YAML reading that remembers where each key was written.

PyYAML's safe loader already refuses python object tags, but it silently keeps the last of two
duplicate keys and forgets line numbers. This loader rejects duplicates and records the line of
every mapping key, so an error can point at `recipe.yaml:12`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from align_recipes.errors import RecipeError


class LineDict(dict):
    """A dict that also knows the 1-based line of each of its keys in the source file."""

    lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in result:
            raise RecipeError(
                f"duplicate key '{key}' (first at line {result.lines[key]})",
                fix="keep one of them: YAML would silently use only the last",
                line=line,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def plain(value: Any) -> Any:
    """LineDicts and tuples back to plain dicts and lists, which yaml.safe_dump can write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load_yaml(path: Path) -> Any:
    """Parse one YAML file safely; every failure is a RecipeError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("file not found", fix="check the path", file=path) from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise RecipeError(
            f"cannot read as a YAML text file ({exc.__class__.__name__})",
            fix="point at a .yaml recipe file",
            file=path,
        ) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except RecipeError as exc:
        exc.file = path
        raise
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise RecipeError(
            f"unsafe or unknown YAML tag: {exc.problem}",
            fix="recipes are plain data: remove the '!!python/...' style tag",
            file=path,
            line=line,
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(
            f"invalid YAML: {problem}",
            fix="fix the syntax at that line (indentation, quotes, colons)",
            file=path,
            line=mark.line + 1 if mark else None,
        ) from None
