"""Shared by the end-to-end files (tests/test_e2e_tiny*.py): train a tiny recipe through the CLI with the
test seed, and read what the run wrote. The seed comes from ALIGN_RECIPES_TEST_SEED (default 42); CI runs
those files a second time with another seed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from align_recipes.cli import main

SEED = int(os.environ.get("ALIGN_RECIPES_TEST_SEED", "42"))


def train(recipe: str, out: Path, *overrides: str) -> dict:
    rc = main(
        [
            "train",
            f"recipes/tiny/{recipe}.yaml",
            f"train.output_dir={out}",
            f"train.seed={SEED}",
            "--profile",
            "cpu",
            "--no-report",
            *overrides,
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == SEED
    return summary


def held_out(summary: dict) -> dict[str, dict]:
    """name -> {before, after, n, difference, interval, verdict, …}; every metric is measured on the 100
    held-out prompts."""
    metrics = {m["name"]: m for m in summary["task_metrics"]}
    assert all(m["n"] == 100 for m in metrics.values()), metrics
    return metrics


def verdict(summary: dict, name: str) -> str | None:
    """The held-out metric's paired verdict in a summary: "rose", "no significant change" or "fell" (None when
    the run recorded no interval). Tests assert verdicts, not raw thresholds: the verdict reads the 95% interval
    of the per-row difference (align_recipes.stats)."""
    metrics = {m["name"]: m for m in summary.get("task_metrics") or []}
    assert name in metrics, f"{name} not measured: {sorted(metrics)}"
    return metrics[name].get("verdict")


ROSE, FLAT, FELL = "rose", "no significant change", "fell"


def assert_rose(summary: dict, name: str) -> None:
    """The held-out metric's 95% interval lies above zero: claimed only where it did at every seed measured,
    with reproducible mode on and on an emulated other CPU (docs/benchmarks.md, "Verdicts per seed")."""
    assert verdict(summary, name) == ROSE, _metric(summary, name)


def assert_not_fell(summary: dict, name: str) -> None:
    """The held-out metric's 95% interval does not lie below zero."""
    assert verdict(summary, name) in (ROSE, FLAT), _metric(summary, name)


def _metric(summary: dict, name: str) -> dict:
    return {m["name"]: m for m in summary.get("task_metrics") or []}.get(name, {})


def logged(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def early_late(values: list[float]) -> tuple[float, float]:
    """Mean of the first two and of the last two logged values."""
    assert len(values) >= 4, values
    return sum(values[:2]) / 2, sum(values[-2:]) / 2


def from_sft(recipe: str, sft_run, tmp_path: Path, *overrides: str) -> dict:
    sft_dir, _ = sft_run
    return train(recipe, tmp_path / recipe, f"model.name_or_path={sft_dir}", *overrides)
