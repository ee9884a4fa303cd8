"""Rules every section of a recipe obeys: a mapping, known keys, required keys present, values of the right
kind, one of the choices, inside the ranges. The facts come from the sections' fields (plan/sections.py, and
TRL's config fields for `train:`); plan/validate.py lists the sections, these rules check each one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from align_recipes.errors import did_you_mean
from align_recipes.fields import kind_of
from align_recipes.plan.checking import Problem, Section


def not_a_mapping(section: Section) -> Iterator[Problem]:
    """A section written as something other than `key: value` lines."""
    if not isinstance(section.data, dict):
        name = section.prefix.rstrip(".")
        yield Problem(
            name,
            f"must be a mapping, got {kind_of(section.data)} {section.data!r}"[:160],
            f"write `{name.rsplit('.', 1)[-1]}:` followed by indented `key: value` lines",
        )


def unknown_key(section: Section) -> Iterator[Problem]:
    """A key the section does not have (a typo, or a key of another section)."""
    for key in _mapping(section):
        if not isinstance(key, str) or key not in section.fields:
            yield Problem(
                f"{section.prefix}{key}",
                f"unknown key for {section.owner}",
                did_you_mean(str(key), section.fields),
            )


def required_key(section: Section) -> Iterator[Problem]:
    """A key the section cannot do without, missing or empty."""
    data = _mapping(section)
    if not isinstance(section.data, dict):
        return
    for key, info in section.fields.items():
        if info.required and data.get(key) in (None, ""):
            yield Problem(
                f"{section.prefix}{key}",
                f"required key missing in {section.owner}",
                f"add `{key}:` ({info.help})" if info.help else f"add `{key}:`",
            )


def wrong_type(section: Section) -> Iterator[Problem]:
    """A value of a kind the field does not take (text where a number goes, a list for a bool)."""
    for path, value, info in _known(section):
        if not info.accepts(value):
            expected = " or ".join(k for k in info.kinds if k != "null") + (
                " (or null)" if "null" in info.kinds else ""
            )
            yield Problem(
                path,
                f"expected {expected}, got {kind_of(value)} {value!r}"[:200],
                f"e.g. {path.rsplit('.', 1)[-1]}: {info.default!r}"
                if info.default not in (None, "", [], {})
                else "see docs/recipes.md",
            )


def not_a_choice(section: Section) -> Iterator[Problem]:
    """A name that is not one of the field's choices."""
    for path, value, info in _known(section):
        if (
            info.accepts(value)
            and info.choices
            and isinstance(value, (str, int, float, bool))
            and value not in info.choices
        ):
            yield Problem(
                path,
                f"'{value}' is not one of: {', '.join(map(str, info.choices))}",
                did_you_mean(str(value), map(str, info.choices)),
            )


def out_of_range(section: Section) -> Iterator[Problem]:
    """A number no run can use (a negative learning rate, a batch of 0), refused before TRL would."""
    data = _mapping(section)
    for key, (low, high, low_inclusive) in section.bounds.items():
        value = data.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        too_low = low is not None and (value < low if low_inclusive else value <= low)
        too_high = high is not None and value > high
        if too_low or too_high:
            rule = f"{'>=' if low_inclusive else '>'} {low}" if low is not None else ""
            if high is not None:
                rule = f"{rule} and <= {high}".strip(" and")
            yield Problem(f"{section.prefix}{key}", f"impossible value {value}", f"must be {rule}")


def coerce_numbers(section: Section) -> None:
    """Numeric strings such as "1e-5" (which YAML 1.1 reads as text) become numbers, in place."""
    data = _mapping(section)
    for key in data:
        info = section.fields.get(key) if isinstance(key, str) else None
        if info is not None:
            data[key] = _coerce_number(data[key], info.kinds)


def _coerce_number(value: Any, kinds: tuple[str, ...]) -> Any:
    if isinstance(value, str) and ("float" in kinds or "int" in kinds) and "str" not in kinds:
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if "int" in kinds and "float" not in kinds and number.is_integer() else number
    return value


def _mapping(section: Section) -> dict:
    return section.data if isinstance(section.data, dict) else {}


def _known(section: Section) -> Iterator[tuple[str, Any, Any]]:
    for key, value in _mapping(section).items():
        info = section.fields.get(key) if isinstance(key, str) else None
        if info is not None:
            yield f"{section.prefix}{key}", value, info
