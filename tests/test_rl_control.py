"""KL controllers, SPO's Beta baseline tracker and the PPO/SPO configs, with hand-computed values."""

from __future__ import annotations

import math

import pytest

from align_recipes.rl.control import AdaptiveKLController, BetaBaselineTracker, FixedKLController


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 64) == 0.05
    ctl.load_state_dict({"value": 0.2})
    assert ctl.value == 0.2


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9 is 50% over target; the error is clipped to +20%: 0.1 * (1 + 0.2 * 100 / 10000)
    assert ctl.update(9.0, 100) == pytest.approx(0.1 * 1.002)
    # KL 5.4 is 10% under: 0.1002 * (1 - 0.1 * 1000 / 10000)
    assert ctl.update(5.4, 1000) == pytest.approx(0.1002 * 0.99)
    restored = AdaptiveKLController(0.5, 6.0, 10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=1)


def test_beta_tracker_prior_from_clip_lower():
    t = BetaBaselineTracker(clip_lower=0.5)
    assert (t.alpha, t.beta) == (1.0, 1.0)      # N = 1 / (1 - 0.5) = 2, split evenly
    assert t.mean == 0.5 and t.baseline == 0.0  # 0.5 * 6 - 3
    t = BetaBaselineTracker(clip_lower=0.75)
    assert (t.alpha, t.beta) == (2.0, 2.0)      # N = 4


def test_beta_tracker_updates_by_hand():
    t = BetaBaselineTracker()  # clip 0.5 / 0.96, half-life 0.06, rho_const 0.9, reward scale 3
    assert t.normalize(3.0) == 1.0 and t.normalize(0.0) == 0.5 and t.normalize(-9.0) == 0.0
    # first update: constant rho 0.9; normalised rewards 1.0 and 0.5 -> mean 0.75
    assert t.update([3.0, 0.0], mean_logprob=-1.0) == 0.9
    assert t.alpha == pytest.approx(0.9 * 1 + 0.75) and t.beta == pytest.approx(0.9 * 1 + 0.25)
    assert t.baseline == pytest.approx(1.65 / 2.8 * 6 - 3)          # 0.5357
    # second: |-1.03 - -1.0| = 0.03 = half a half-life -> rho = 2 ** -0.5; reward -6 normalises to 0 (clipped)
    rho = t.update([-6.0], mean_logprob=-1.03)
    assert rho == pytest.approx(2 ** -0.5)
    assert t.alpha == pytest.approx(2 ** -0.5 * 1.65) and t.beta == pytest.approx(2 ** -0.5 * 1.15 + 1)
    # a big move forgets as fast as allowed (clip_lower); no move as slowly as allowed (clip_upper)
    assert t.update([0.0], mean_logprob=0.0) == 0.5
    assert t.update([0.0], mean_logprob=0.0) == 0.96


def test_beta_tracker_constant_mode_and_state():
    t = BetaBaselineTracker(rho_mode="constant", rho_const=0.8, reward_scale=1.0)
    t.update([1.0], -1.0)
    assert t.update([1.0], -5.0) == 0.8
    copy = BetaBaselineTracker(rho_mode="constant", rho_const=0.8, reward_scale=1.0)
    copy.load_state_dict(t.state_dict())
    assert (copy.alpha, copy.beta, copy.last_mean_logprob) == (t.alpha, t.beta, -5.0)
    with pytest.raises(ValueError, match="NaN"):
        t.update([math.nan], 0.0)
    with pytest.raises(ValueError):
        BetaBaselineTracker(clip_lower=0.9, clip_upper=0.5)


# ---------------------------------------------------------------------------------------- configs

def test_config_defaults_and_batch_sizes(tmp_path):
    from align_recipes.rl.config import PPOConfig, SPOConfig

    ppo = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                    num_mini_batches=3)
    assert ppo.rollout_batch_size == 24
    assert (ppo.kl_coef, ppo.gamma, ppo.lam, ppo.cliprange, ppo.vf_coef, ppo.num_ppo_epochs) == \
        (0.05, 1.0, 0.95, 0.2, 0.1, 4)
    assert ppo.max_new_tokens == 53 and ppo.remove_unused_columns is False and ppo.logging_steps == 10
    assert ppo.bf16 is False  # never forced on a CPU
    spo = SPOConfig(output_dir=str(tmp_path))
    assert (spo.beta, spo.half_life, spo.clip_lower, spo.clip_upper, spo.reward_scale, spo.advantage_clip) == \
        (0.02, 0.06, 0.5, 0.96, 3.0, 5.0)
    assert spo.num_ppo_epochs == 1 and not hasattr(spo, "vf_coef")


@pytest.mark.parametrize("cls, kwargs, message", [
    ("PPOConfig", {"cliprange": -0.1}, "cliprange must be > 0"),
    ("PPOConfig", {"lam": 1.5}, "lam must be in [0, 1]"),
    ("PPOConfig", {"gamma": 0.0}, "gamma must be in (0, 1]"),
    ("PPOConfig", {"kl_estimator": "k9"}, "kl_estimator must be one of k1, k2, k3"),
    ("PPOConfig", {"adaptive_kl": True, "kl_coef": 0.0}, "adaptive_kl needs kl_coef > 0"),
    ("PPOConfig", {"temperature": 0.0}, "temperature must be > 0"),
    ("PPOConfig", {"missing_eos_penalty": -1.0}, "it is subtracted"),
    ("PPOConfig", {"vllm_mode": "remote"}, "vllm_mode must be one of colocate, server"),
    ("SPOConfig", {"clip_lower": 0.97}, "clip_lower <= clip_upper"),
    ("SPOConfig", {"half_life": 0.0}, "half_life must be > 0"),
    ("SPOConfig", {"reward_scale": -3.0}, "reward_scale must be > 0"),
])
def test_config_rejects_impossible_values(tmp_path, cls, kwargs, message):
    from align_recipes.rl import config

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        getattr(config, cls)(output_dir=str(tmp_path), **kwargs)
