"""What a run leaves in its output directory, besides the model: the resolved recipe, the metrics
log, the summary and a reproducibility manifest. Only the main process writes."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError

RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def guard_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to write over another run's results unless told to (checked before any model loads)."""
    if not output_dir.exists() or overwrite or resume:
        return
    if not output_dir.is_dir():
        raise RecipeError(f"output_dir '{output_dir}' exists and is not a directory", key="train.output_dir",
                          fix="choose another train.output_dir")
    leftovers = [p.name for p in output_dir.iterdir() if p.name not in (RESOLVED_RECIPE, MANIFEST)]
    if leftovers:
        shown = ", ".join(sorted(leftovers)[:4]) + (" …" if len(leftovers) > 4 else "")
        raise RecipeError(f"output_dir '{output_dir}' already holds a run ({shown})", key="train.output_dir",
                          fix="pass --resume to continue it, --overwrite to replace it, "
                              f"or train.output_dir=… to write elsewhere")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def metrics_callback(output_dir: Path):
    """A TrainerCallback that appends every logged dict to metrics.jsonl, one JSON object per line."""
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, **{k: _clean(v) for k, v in logs.items()}}
            with open(output_dir / METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    return MetricsJsonl()


def read_metrics(output_dir: Path) -> list[dict]:
    path = output_dir / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_and_last(records: list[dict]) -> tuple[dict, dict]:
    """The first and last value of every numeric training metric (eval/summary rows excluded)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for record in records:
        if "train_runtime" in record:
            continue
        for key, value in record.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            first.setdefault(key, value)
            last[key] = value
    return first, last


def write_summary(output_dir: Path, payload: dict) -> Path:
    path = output_dir / SUMMARY
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def manifest(plan, command: list[str]) -> dict:
    """How to reproduce this run: recipe, command, versions, commit, hardware, profile, seed."""
    import importlib.metadata as md

    versions = {}
    for package in ("align-recipes", "trl", "transformers", "torch", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {
        "command": [_redact(arg) for arg in command],
        "recipe": str(plan.recipe_path),
        "profile": plan.profile.name,
        "profile_detected": plan.profile.detected,
        "seed": plan.train_args.get("seed", 42),
        "git_commit": _git_commit(plan.recipe_path.parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _redact(text: str) -> str:
    key = text.split("=", 1)[0].upper()
    if "=" in text and any(marker in key for marker in SECRET_MARKERS):
        return text.split("=", 1)[0] + "=***"
    return text


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
