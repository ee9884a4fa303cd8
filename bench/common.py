"""What the bench scripts share: reading a run's held-out metric and writing a results file."""

from __future__ import annotations

import json
from pathlib import Path


def metric(summary: dict, name: str) -> dict:
    """One held-out metric of a run's summary.json: {name, before, after, n}."""
    return next(m for m in summary["task_metrics"] if m["name"] == name)


def write_json(path: Path, result: dict, indent: int = 2, sort_keys: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, sort_keys=sort_keys) + "\n")
