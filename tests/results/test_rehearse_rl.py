"""`align-recipes rehearse` of the shipped qwen05b recipes that sample while training (grpo, ppo) at their real
shape with QLoRA on CPU, offline. A file of its own so that the test workers share the rehearsals
(tests/results/test_rehearse.py has the others and the pieces)."""

from __future__ import annotations

import pytest
from rehearse_helpers import PAIRS, QWEN05, offline, rehearse_recipe


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    offline(monkeypatch)


@pytest.mark.slow
@pytest.mark.real_shape
def test_grpo_rehearses_with_qlora(tmp_path):
    result, screen, records = rehearse_recipe(tmp_path, QWEN05 / "grpo.yaml", caps=PAIRS)
    assert result.algorithm == "grpo" and result.adapter == "qlora"


@pytest.mark.slow
@pytest.mark.real_shape
def test_ppo_rehearses_with_qlora_and_a_stand_in_reward_model(tmp_path):
    """qwen05b/ppo.yaml starts from the SFT stage and scores with the reward stage, neither written yet: both are
    stood in for; the critic starts from the reward model."""
    result, screen, records = rehearse_recipe(tmp_path, QWEN05 / "ppo.yaml")
    assert "STAND-IN reward model" in screen and "does not exist yet" in screen
    assert any("value_loss" in r for r in records)


@pytest.mark.slow
@pytest.mark.real_shape
def test_ppo_rehearses_with_qlora_and_rule_rewards(tmp_path):
    """Rule rewards: the critic is a copy of the 4-bit policy backbone with its own adapter."""
    result, screen, records = rehearse_recipe(
        tmp_path,
        QWEN05 / "ppo.yaml",
        "train.reward_model_path=null",
        "rewards=[{name: length_penalty, max_length: 40}]",
        steps=2,
    )
    assert "STAND-IN reward model" not in screen
    assert any("rewards/length_penalty" in r and "value_loss" in r for r in records)
