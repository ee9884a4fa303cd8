"""End-to-end: every tiny recipe trains through the product and its held-out metrics move the right way.

SFT runs once per session from the untrained tiny model; every other algorithm starts from its output
(ORPO from the untrained model, as its recipe says), as the classic flow does. Every run takes its
seed from ALIGN_RECIPES_TEST_SEED (default 42), passed as `train.seed`; CI runs this file with a
second seed. Each threshold sits below the worst of five seeds measured on a 2-core CPU machine
(seeds 42, 1, 2, 3, 4; docs/benchmarks.md, "Held-out metrics over five seeds"), with margin, and
still proves that the metric moved: a seed, like another CPU's kernels, changes the SFT start and
every stage's data order and samples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from align_recipes.cli import main

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("ALIGN_RECIPES_TEST_SEED", "42"))


def train(recipe: str, out: Path, *overrides: str) -> dict:
    rc = main(["train", f"recipes/tiny/{recipe}.yaml", f"train.output_dir={out}", f"train.seed={SEED}",
               "--profile", "cpu", "--no-report", *overrides])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == SEED
    return summary


def held_out(summary: dict) -> dict[str, dict]:
    """name -> {before, after, n}; every metric is measured on the 100 held-out prompts."""
    metrics = {m["name"]: m for m in summary["task_metrics"]}
    assert all(m["n"] == 100 for m in metrics.values()), metrics
    return metrics


def logged(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def early_late(values: list[float]) -> tuple[float, float]:
    """Mean of the first two and of the last two logged values."""
    assert len(values) >= 4, values
    return sum(values[:2]) / 2, sum(values[-2:]) / 2


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, repo_cwd):
    out = tmp_path_factory.mktemp("runs") / "sft"
    return out, train("sft", out)


def from_sft(recipe: str, sft_run, tmp_path: Path, *overrides: str) -> dict:
    sft_dir, _ = sft_run
    return train(recipe, tmp_path / recipe, f"model.name_or_path={sft_dir}", *overrides)


def test_sft_raises_held_out_exact_match(sft_run):
    _, summary = sft_run
    task = held_out(summary)["exact_match"]
    assert task["before"] <= 0.05
    assert task["after"] >= 0.55, task
    assert summary["metrics_last"]["loss"] < summary["metrics_first"]["loss"]


def test_run_writes_every_output(sft_run):
    out, summary = sft_run
    for name in ("model.safetensors", "tokenizer.json", "recipe.resolved.yaml", "metrics.jsonl", "summary.json",
                 "manifest.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 10 and all("step" in r for r in records)
    assert summary["steps"] > 0 and summary["algorithm"] == "sft" and summary["status"] == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "cpu" and manifest["versions"]["trl"].startswith("1.16")
    assert "algorithm: sft" in (out / "recipe.resolved.yaml").read_text()


@pytest.mark.skipif(SEED != 42, reason="the builtin is built with seed 42")
def test_the_builtin_sft_policy_is_the_sft_recipe_at_seed_42(sft_run):
    """builtin:tiny-qwen2-sft (tiny/sft.py, plain TRL) has exactly the weights `train recipes/tiny/sft.yaml`
    gives: the later tiny recipes start where a user who ran the SFT recipe first would."""
    from safetensors.torch import load_file

    from align_recipes import tiny

    built = load_file(str(tiny.ensure_builtin(tiny.TINY_SFT_ID) / "model.safetensors"))
    trained = load_file(str(sft_run[0] / "model.safetensors"))
    assert built.keys() == trained.keys() and all(bool((built[k] == trained[k]).all()) for k in built)


def test_existing_run_is_not_overwritten(sft_run, capsys):
    out, _ = sft_run
    before = (out / "summary.json").read_text()
    rc = main(["train", "recipes/tiny/sft.yaml", f"train.output_dir={out}", "--profile", "cpu"])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_reward_model_learns_to_rank_held_out_pairs(sft_run, tmp_path):
    summary = from_sft("reward", sft_run, tmp_path)
    pairs = held_out(summary)["preference_accuracy"]
    assert pairs["after"] >= pairs["before"] + 0.10, pairs
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["margin"] > first["margin"] and last["accuracy"] > first["accuracy"]


def test_dpo_raises_held_out_implicit_reward_accuracy_and_keeps_exact_match(sft_run, tmp_path):
    summary = from_sft("dpo", sft_run, tmp_path)
    metrics = held_out(summary)
    pairs, task = metrics["implicit_reward_accuracy"], metrics["exact_match"]
    assert pairs["before"] == 0.5  # the policy is its own reference: every margin is 0
    assert pairs["after"] >= 0.70, pairs
    assert task["after"] >= task["before"] - 0.03, task  # the SFT term keeps the task
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.05


def test_orpo_learns_the_task_and_the_preference_from_scratch(tmp_path, repo_cwd):
    summary = train("orpo", tmp_path / "orpo")  # ORPO replaces SFT: it starts from the untrained model
    metrics = held_out(summary)
    pairs, task = metrics["preference_accuracy"], metrics["exact_match"]
    assert pairs["after"] >= pairs["before"] + 0.2 and pairs["after"] >= 0.85, pairs
    assert task["after"] >= task["before"] + 0.25, task
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["logps/chosen"] - last["logps/rejected"] > first["logps/chosen"] - first["logps/rejected"] + 0.5


@pytest.mark.parametrize("overrides", [(), ("train.loss_type=simpo", "train.beta=2.0")], ids=["cpo", "cpo-simpo"])
def test_cpo_and_its_simpo_loss_raise_held_out_exact_match(sft_run, tmp_path, overrides):
    """CPO (no reference model) and SimPO's loss in the same trainer, both with the behaviour-cloning
    term (cpo_alpha 1.0). Measured over seeds 42 and 1-5 (docs/recipes.md): exact match rises by
    0.07 to 0.16 (CPO) and 0.06 to 0.10 (CPO-SimPO) from the SFT start."""
    summary = from_sft("cpo", sft_run, tmp_path, *overrides)
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["rewards/margins"] > first["rewards/margins"] and last["rewards/accuracies"] >= 0.95, (first, last)
    assert last["nll_loss"] < first["nll_loss"]
    task = held_out(summary)["exact_match"]
    assert task["after"] >= task["before"] + 0.04, task


def test_kto_raises_held_out_implicit_reward_accuracy(sft_run, tmp_path):
    summary = from_sft("kto", sft_run, tmp_path)
    metrics = held_out(summary)
    pairs = metrics["implicit_reward_accuracy"]
    assert pairs["before"] == 0.5 and pairs["after"] >= 0.60, pairs
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.05, (first, last)
    assert metrics["exact_match"]["after"] >= 0.5, metrics["exact_match"]


def test_grpo_raises_sampled_and_held_out_reward(sft_run, tmp_path):
    summary = from_sft("grpo", sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / "grpo", "reward"))
    assert late > early + 0.03, (early, late)
    metrics = held_out(summary)
    assert metrics["reward"]["after"] >= metrics["reward"]["before"] - 0.02, metrics["reward"]
    assert metrics["exact_match"]["after"] >= 0.5, metrics["exact_match"]


def test_rloo_raises_reward_and_held_out_exact_match(sft_run, tmp_path):
    """TRL's RLOO with grpo.yaml's reward function. Measured over seeds 42 and 1-5 (docs/recipes.md):
    held-out exact match rises by RLOO_RISE from the SFT start."""
    summary = from_sft("rloo", sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / "rloo", "reward"))
    assert late > early + 0.08, (early, late)
    metrics = held_out(summary)
    assert metrics["reward"]["after"] >= metrics["reward"]["before"] + 0.02, metrics["reward"]
    task = metrics["exact_match"]
    assert task["after"] >= task["before"] + 0.03, task


def test_online_dpo_raises_the_judged_score_and_held_out_exact_match(sft_run, tmp_path):
    """TRL's online DPO, its pairs ranked by the toy task's rule reward. Measured over seeds 42 and 1-5
    (docs/recipes.md): held-out exact match rises by ODPO_RISE from the SFT start."""
    summary = from_sft("online_dpo", sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / "online_dpo", "objective/scores"))
    assert late > early + 0.08, (early, late)
    metrics = held_out(summary)
    assert metrics["reward"]["after"] >= metrics["reward"]["before"] + 0.02, metrics["reward"]
    task = metrics["exact_match"]
    assert task["after"] >= task["before"] + 0.03, task


@pytest.mark.parametrize("recipe", ["ppo", "spo"])
def test_ppo_and_spo_raise_reward_and_held_out_exact_match_with_bounded_kl(sft_run, tmp_path, recipe):
    """Sampled reward, held-out greedy reward and exact match all rise while KL to the reference stays
    bounded."""
    summary = from_sft(recipe, sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / recipe, "reward"))
    assert late > early + 0.1, (early, late)
    assert max(logged(tmp_path / recipe, "kl")) < 2.0
    metrics = held_out(summary)
    assert metrics["reward"]["after"] >= metrics["reward"]["before"] + 0.02, metrics["reward"]
    task = metrics["exact_match"]
    assert task["after"] >= task["before"] + 0.02, task
    if recipe == "ppo":  # a healthy run: the reward-hacking watch checked it and saw nothing (test_e2e_hacking.py)
        assert len(summary["reward_watch"]["checks"]) == 12 and "reward_hacking" not in summary
