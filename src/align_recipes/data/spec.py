"""What a recipe's `data:` entry says (DataSpec), the error users see (DataError), and what a
conversion did (ConversionReport). Import-light: the stdlib only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError, did_you_mean
from ..fields import fields_of, spec
from ..paths import candidates, find_local, looks_like_hub_id
from ..registry import KINDS, LANGUAGE_MODELING, PREFERENCE, PROMPT_ONLY, UNPAIRED  # noqa: F401 - the kinds

SOURCES = ("auto", "local", "hf", "modelscope")
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_SPLIT = re.compile(r"^\s*([\w.-]*)\s*(\[.*\])?\s*$")
_SLICE = re.compile(r"^\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\]$|^\[\s*(\d+)\s*\]$")


class DataError(RecipeError):
    """A problem with a dataset that the user can fix. Rendered as one short message naming the
    file, the row or line, the columns and the fix (see align_recipes.errors.RecipeError)."""


@dataclass
class DataSpec:
    """One entry of a recipe's data section, e.g. `data.train`."""

    path: str = spec(kinds="str", help="local file/dir (jsonl, json, parquet, csv) or hub dataset id")
    split: str = spec("train", "str", "split, with optional slicing: train_prefs[:1000]")
    source: str = spec("auto", "str", "where path is loaded from", SOURCES)
    format: str = spec("auto", "str", "auto-detect, or force a format name (docs/data.md)")
    columns: dict[str, str] | None = spec(None, "dict null", "rename source columns: {target: source}")
    name: str | None = spec(None, "str null", "hub dataset config name")
    max_drop_fraction: float = spec(0.5, "float", "stop if more than this share of rows cannot be converted")
    drop_ties: bool = spec(False, "bool", "preference data with scores: drop pairs whose scores are equal")
    weight: float | int = spec(
        1.0,
        "float int",
        "in a mixture, the share of this source's converted rows to take "
        "(0 < weight <= 1, as in alignment-handbook) or a row count (a whole number > 1)",
    )
    section: str = "data.train"  # where the entry sits in the recipe; used in messages only

    @classmethod
    def from_dict(cls, entry: dict[str, Any], section: str = "data.train") -> DataSpec:
        """Build from a recipe mapping such as `{path: x.jsonl, split: "train[:100]"}`."""
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise DataError(
                f"expected a mapping with at least 'path', got {type(entry).__name__}",
                key=section,
                fix="write e.g. {path: data/train.jsonl}",
            )
        for key in entry:
            if key not in RECIPE_KEYS:
                raise DataError(
                    f"unknown key '{key}'", key=f"{section}.{key}", fix=did_you_mean(key, RECIPE_KEYS)
                )
        if not entry.get("path"):
            raise DataError(
                "missing 'path'",
                key=section,
                fix="give a local file/folder or a hub id, e.g. path: data/train.jsonl",
            )
        spec = cls(**entry, section=section)
        spec.check()
        return spec

    def check(self) -> None:
        if self.source not in SOURCES:
            raise DataError(
                f"source '{self.source}' is not one of {', '.join(SOURCES)}",
                key=f"{self.section}.source",
                fix=did_you_mean(self.source, SOURCES),
            )
        if self.columns is not None:
            if not isinstance(self.columns, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.columns.items()
            ):
                raise DataError(
                    "columns must map target names to source column names",
                    key=f"{self.section}.columns",
                    fix="e.g. columns: {prompt: question, chosen: good}",
                )
        if not isinstance(self.max_drop_fraction, (int, float)) or not 0 <= self.max_drop_fraction <= 1:
            raise DataError(
                f"max_drop_fraction is {self.max_drop_fraction}, must be between 0 and 1",
                key=f"{self.section}.max_drop_fraction",
            )
        split_parts(self.split, self.section)
        weight_problem = check_weight(self.weight)
        if weight_problem:
            raise DataError(
                weight_problem,
                key=f"{self.section}.weight",
                fix="a share of the rows, 0 < weight <= 1 (0.5 takes half), or a row count such as 1000",
            )

    @property
    def count(self) -> int | None:
        """The row count `weight` asks for, or None when it is a share of the rows."""
        return int(self.weight) if self.weight > 1 else None


def check_weight(weight) -> str | None:
    """Why a `weight:` value is impossible, or None: a share in (0, 1] or a whole row count above 1."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return f"weight must be a number, got {weight!r}"
    if 0 < weight <= 1 or (weight > 1 and float(weight).is_integer()):
        return None
    if weight > 1:
        return f"weight {weight} is more than 1: a share of the rows is at most 1, and a row count is a whole number"
    return f"weight {weight} takes no row"


def source_entries(value, section: str) -> list[tuple[str, object]]:
    """The sources of one split as written: a mapping is one source named `section` (data.train), a list
    names its items `section[i]` (data.train[1]), as errors, the manifest and summary.json call them."""
    if isinstance(value, (list, tuple)):
        return [(f"{section}[{index}]", entry) for index, entry in enumerate(value)]
    return [] if value is None else [(section, value)]


RECIPE_KEYS = tuple(fields_of(DataSpec))  # `section` is ours, not the recipe's


def split_parts(split: str, section: str = "data.train") -> tuple[str, str]:
    """'train_prefs[:1000]' -> ('train_prefs', '[:1000]'). Raises DataError on a malformed split."""
    match = _SPLIT.match(str(split))
    if not match or (match.group(2) and not _SLICE.match(match.group(2))):
        raise DataError(
            f"split '{split}' is not a split name with an optional slice",
            key=f"{section}.split",
            fix='write e.g. "train", "train[:1000]" or "train[10%:20%]"',
        )
    return match.group(1) or "train", match.group(2) or ""


def slice_start(slice_text: str) -> int:
    """First row a slice selects when that is known without the length; 0 otherwise."""
    match = _SLICE.match(slice_text) if slice_text else None
    if not match:
        return 0
    start = match.group(1) if match.group(3) is None else match.group(3)
    if start and not start.endswith("%") and not start.startswith("-"):
        return int(start)
    return 0


def slice_length(slice_text: str) -> int | None:
    """How many rows a slice selects when that is known without the length."""
    match = _SLICE.match(slice_text) if slice_text else None
    if not match:
        return None
    if match.group(3) is not None:
        return 1
    start, stop = match.group(1), match.group(2)
    if stop and not stop.endswith("%") and not stop.startswith("-"):
        if not start:
            return int(stop)
        if not start.endswith("%") and not start.startswith("-"):
            return max(0, int(stop) - int(start))
    return None


def sliced_count(total: int, slice_text: str) -> int | None:
    """Rows a split slice selects from `total` rows; None for percent slices (datasets rounds those)."""
    if not slice_text:
        return total
    match = _SLICE.match(slice_text)
    if not match or "%" in slice_text:
        return None
    if match.group(3) is not None:
        return 1 if int(match.group(3)) < total else 0
    start, stop = (int(g) if g else None for g in match.group(1, 2))
    return len(range(total)[start:stop])


def resolve_local(spec: DataSpec, base_dir: Path | str | None) -> tuple[Path | None, list[Path]]:
    """Where `spec.path` is on disk: absolute as given; relative to the recipe's folder first, then to the
    current directory (plans arrive with found paths already absolute). Returns (found or None, tried)."""
    return find_local(spec.path, base_dir, None), candidates(spec.path, base_dir, None)


def locate(spec: DataSpec, base_dir: Path | str | None) -> tuple[str, Any]:
    """('local', Path) | ('hf', id) | ('modelscope', id), following `source`."""
    spec.check()
    if spec.source == "hf":
        return "hf", spec.path
    if spec.source == "modelscope":
        found, _ = resolve_local(spec, base_dir)
        return "modelscope", str(found) if found is not None else spec.path
    found, tried = resolve_local(spec, base_dir)
    if found is not None:
        return "local", found
    looks_local = (
        Path(spec.path).suffix.lower() in DATA_SUFFIXES
        or spec.path.startswith((".", "/", "~"))
        or not looks_like_hub_id(spec.path)
    )
    if spec.source == "local" or looks_local:
        raise DataError(
            f"dataset file not found: {spec.path}",
            key=f"{spec.section}.path",
            fix="looked in "
            + " and ".join(str(p) for p in tried)
            + "; relative paths resolve against the file that names them, then the current directory",
        )
    return "hf", spec.path


def rows_text(rows: list[int], shown: int = 3) -> str:
    """'row 3' | 'rows 3, 7' | 'rows 3, 7, 9 and 11 more'."""
    if len(rows) == 1:
        return f"row {rows[0]}"
    if len(rows) <= shown:
        return "rows " + ", ".join(map(str, rows))
    return "rows " + ", ".join(map(str, rows[:shown])) + f" and {len(rows) - shown} more"


@dataclass
class ConversionReport:
    """What happened to one dataset: the format detected and the rows dropped, by reason.
    Row numbers count from 1 within the loaded split."""

    format: str
    rows_in: int
    rows_kept: int
    dropped: dict[str, list[int]] = field(default_factory=dict)
    section: str = "data.train"
    kind: str = ""
    source: str = ""
    rows_out: int | None = None  # rows after conversion (unpaired from pairs doubles them)

    @property
    def rows_dropped(self) -> int:
        return self.rows_in - self.rows_kept

    def reasons_text(self, shown: int = 3) -> str:
        return "; ".join(
            f"{reason}: {rows_text(rows, shown)}"
            for reason, rows in sorted(self.dropped.items(), key=lambda kv: -len(kv[1]))
        )

    def summary_line(self) -> str:
        line = f"{self.section}: detected {self.format}, kept {self.rows_kept}/{self.rows_in} rows"
        if self.rows_dropped:
            line += f", dropped {self.rows_dropped} ({self.reasons_text()})"
        if self.rows_out is not None and self.rows_out != self.rows_kept:
            line += f", {self.rows_out} {self.kind} rows"
        return line

    def details(self, limit: int = 20) -> list[str]:
        """One line per reason with up to `limit` row numbers, for the log."""
        return [
            f"{self.section}: dropped {len(rows)} row{'s' if len(rows) > 1 else ''} ({reason}): "
            f"{rows_text(rows, limit)}"
            for reason, rows in sorted(self.dropped.items(), key=lambda kv: -len(kv[1]))
        ]
