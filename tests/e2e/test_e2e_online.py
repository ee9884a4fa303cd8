"""End-to-end: the online tiny recipes (they sample from the policy while training) raise their sampled
reward and their held-out metrics, from the tiny SFT policy of the test seed (tests/e2e/test_e2e_offline.py has
the offline ones and the thresholds' story; docs/benchmarks.md the per-seed numbers).

Over seeds 42, 1, 2, 3, 4 and 7 every online recipe raised its sampled reward clearly. On the 100 held-out
prompts their gains (+0.00 to +0.13) are mostly within the noise of 100 rows, so the tests ask what holds at
every seed, on any CPU: the sampled reward rises, and no held-out metric falls (its paired 95% interval does not
lie below zero; align_recipes.stats). The docstrings give the measured ranges."""

from __future__ import annotations

import pytest
from e2e_helpers import SEED, assert_not_fell, early_late, from_sft, held_out, logged

pytestmark = pytest.mark.slow


def test_grpo_raises_sampled_and_held_out_reward(sft_run, tmp_path):
    summary = from_sft("grpo", sft_run, tmp_path)
    """Over seeds 42, 1-4, 7 (docs/benchmarks.md): sampled reward +0.08 to +0.26; held-out reward and exact
    match +0.02 to +0.11 at seeds 42, 1-4, unchanged at seed 7."""
    early, late = early_late(logged(tmp_path / "grpo", "reward"))
    assert late > early + 0.04, (early, late)
    held_out(summary)
    assert_not_fell(summary, "reward")
    assert_not_fell(summary, "exact_match")


def test_rloo_raises_reward_and_held_out_exact_match(sft_run, tmp_path):
    """TRL's RLOO with grpo.yaml's reward function. Over seeds 42, 1-4, 7 (docs/benchmarks.md): sampled
    reward +0.20 to +0.27, held-out reward +0.01 to +0.11, exact match +0.02 to +0.12 from the SFT start."""
    summary = from_sft("rloo", sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / "rloo", "reward"))
    assert late > early + 0.12, (early, late)
    held_out(summary)
    assert_not_fell(summary, "reward")
    assert_not_fell(summary, "exact_match")


def test_online_dpo_raises_the_judged_score_and_held_out_exact_match(sft_run, tmp_path):
    """TRL's online DPO, its pairs ranked by the toy task's rule reward. Over seeds 42, 1-4, 7
    (docs/benchmarks.md): judged score +0.15 to +0.22, held-out reward +0.02 to +0.09, exact match +0.02 to
    +0.10 from the SFT start."""
    summary = from_sft("online_dpo", sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / "online_dpo", "objective/scores"))
    assert late > early + 0.10, (early, late)
    held_out(summary)
    assert_not_fell(summary, "reward")
    assert_not_fell(summary, "exact_match")


@pytest.mark.parametrize("recipe", ["ppo", "spo"])
def test_ppo_and_spo_raise_reward_and_held_out_exact_match_with_bounded_kl(sft_run, tmp_path, recipe):
    """The sampled reward rises while KL to the reference stays bounded, and the held-out metrics do not fall.
    Over seeds 42, 1-4, 7 (docs/benchmarks.md), PPO: sampled +0.12 to +0.19, held-out reward +0.01 to +0.13,
    exact match +0.01 to +0.14, KL at most 0.96; SPO (global baseline): sampled +0.14 to +0.19, held-out reward
    and exact match +0.05 to +0.08 at seeds 42, 1-4 and -0.02 at seed 7, KL at most 0.85."""
    summary = from_sft(recipe, sft_run, tmp_path)
    early, late = early_late(logged(tmp_path / recipe, "reward"))
    assert late > early + 0.1, (early, late)
    assert max(logged(tmp_path / recipe, "kl")) < 2.0
    held_out(summary)
    assert_not_fell(summary, "reward")
    assert_not_fell(summary, "exact_match")
    if recipe == "ppo":  # a healthy run: the reward-hacking watch checked it throughout (test_e2e_hacking.py)
        assert len(summary["reward_watch"]["checks"]) == 12
        # The rule reward pays the right answer 1.0 and a wrong one at most 0.5: it ranks every wrong answer lower.
        rankings = [c["ranking"] for c in summary["reward_watch"]["checks"] if c["ranking"] is not None]
        assert summary["reward_watch"]["ranking_before"] == 1.0 and rankings and set(rankings) == {1.0}
        # No warning: measured for seeds 42, 1-4 from builtin:tiny-qwen2-sft, which is this SFT start at 42 only.
        assert SEED != 42 or "reward_hacking" not in summary, summary["reward_hacking"]
