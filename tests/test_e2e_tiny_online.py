"""End-to-end: the online tiny recipes (they sample from the policy while training) raise their sampled
reward and their held-out metrics, from the tiny SFT policy of the test seed (tests/test_e2e_tiny.py has
the offline ones and the thresholds' story; docs/benchmarks.md the per-seed numbers)."""

from __future__ import annotations

import pytest
from e2e_helpers import SEED, early_late, from_sft, held_out, logged

pytestmark = pytest.mark.slow


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
    if recipe == "ppo":  # a healthy run: the reward-hacking watch checked it throughout (test_e2e_hacking.py)
        assert len(summary["reward_watch"]["checks"]) == 12
        # No warning: measured for seeds 42, 1-4 from builtin:tiny-qwen2-sft, which is this SFT start at 42 only.
        assert SEED != 42 or "reward_hacking" not in summary, summary["reward_hacking"]
