"""End-to-end: the tiny recipes train through the product and their metrics move the right way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_recipes.cli import main

pytestmark = pytest.mark.slow


def train(recipe: str, out: Path, *overrides: str) -> dict:
    rc = main(["train", f"recipes/tiny/{recipe}.yaml", f"train.output_dir={out}", "--profile", "cpu", *overrides])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, repo_cwd):
    out = tmp_path_factory.mktemp("runs") / "sft"
    return out, train("sft", out)


def test_sft_raises_held_out_exact_match(sft_run):
    _, summary = sft_run
    task = summary["task_metric"]
    assert task["name"] == "exact_match" and task["n"] >= 20
    assert task["before"] <= 0.1
    assert task["after"] >= task["before"] + 0.4, task
    assert summary["metrics_last"]["loss"] < summary["metrics_first"]["loss"]


def test_run_writes_every_output(sft_run):
    out, summary = sft_run
    for name in ("model.safetensors", "tokenizer.json", "recipe.resolved.yaml", "metrics.jsonl", "summary.json",
                 "manifest.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 3 and all("step" in r for r in records)
    assert summary["steps"] > 0 and summary["algorithm"] == "sft"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "cpu" and manifest["versions"]["trl"].startswith("1.16")
    assert "algorithm: sft" in (out / "recipe.resolved.yaml").read_text()


def test_existing_run_is_not_overwritten(sft_run, capsys):
    out, _ = sft_run
    before = (out / "summary.json").read_text()
    rc = main(["train", "recipes/tiny/sft.yaml", f"train.output_dir={out}", "--profile", "cpu"])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_reward_model_learns_to_rank(tmp_path, repo_cwd):
    summary = train("reward", tmp_path / "reward")
    task = summary["task_metric"]
    assert task["name"] == "preference_accuracy"
    assert task["after"] >= 0.8 and task["after"] > task["before"] + 0.2, task
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["accuracy"] >= first["accuracy"] and last["margin"] > first["margin"]


def test_dpo_moves_rewards_and_margins(tmp_path, repo_cwd):
    summary = train("dpo", tmp_path / "dpo")
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.1
    assert last["rewards/accuracies"] >= 0.9
    task = summary["task_metric"]
    assert task["after"] > task["before"] + 0.2, task
