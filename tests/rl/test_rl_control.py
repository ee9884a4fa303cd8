"""KL controllers, SPO's baselines (per-prompt tracker and global Beta) and the PPO/SPO configs, with
hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from align_recipes.rl.baselines import GlobalBetaBaseline, PromptValueTracker, forgetting_factor
from align_recipes.rl.control import AdaptiveKLController, FixedKLController


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
    t = GlobalBetaBaseline(clip_lower=0.5)
    assert (t.alpha, t.beta) == (1.0, 1.0)  # N = 1 / (1 - 0.5) = 2, split evenly
    assert t.mean == 0.5 and t.baseline == 0.0  # 0.5 * 6 - 3
    t = GlobalBetaBaseline(clip_lower=0.75)
    assert (t.alpha, t.beta) == (2.0, 2.0)  # N = 4


def test_beta_tracker_updates_by_hand():
    t = GlobalBetaBaseline()  # clip 0.5 / 0.96, half-life 0.06, rho_const 0.9, reward scale 3
    assert t.normalize(3.0) == 1.0 and t.normalize(0.0) == 0.5 and t.normalize(-9.0) == 0.0
    # first update: constant rho 0.9; normalised rewards 1.0 and 0.5 -> mean 0.75
    assert t.update([3.0, 0.0], mean_logprob=-1.0) == 0.9
    assert t.alpha == pytest.approx(0.9 * 1 + 0.75) and t.beta == pytest.approx(0.9 * 1 + 0.25)
    assert t.baseline == pytest.approx(1.65 / 2.8 * 6 - 3)  # 0.5357
    # second: |-1.03 - -1.0| = 0.03 = half a half-life -> rho = 2 ** -0.5; reward -6 normalises to 0 (clipped)
    rho = t.update([-6.0], mean_logprob=-1.03)
    assert rho == pytest.approx(2**-0.5)
    assert t.alpha == pytest.approx(2**-0.5 * 1.65) and t.beta == pytest.approx(2**-0.5 * 1.15 + 1)
    # a big move forgets as fast as allowed (clip_lower); no move as slowly as allowed (clip_upper)
    assert t.update([0.0], mean_logprob=0.0) == 0.5
    assert t.update([0.0], mean_logprob=0.0) == 0.96


def test_beta_tracker_constant_mode_and_state():
    t = GlobalBetaBaseline(rho_mode="constant", rho_const=0.8, reward_scale=1.0)
    t.update([1.0], -1.0)
    assert t.update([1.0], -5.0) == 0.8
    copy = GlobalBetaBaseline(rho_mode="constant", rho_const=0.8, reward_scale=1.0)
    copy.load_state_dict(t.state_dict())
    assert (copy.alpha, copy.beta, copy.last_mean_logprob) == (t.alpha, t.beta, -5.0)
    with pytest.raises(ValueError, match="NaN"):
        t.update([math.nan], 0.0)
    with pytest.raises(ValueError):
        GlobalBetaBaseline(clip_lower=0.9, clip_upper=0.5)


def test_forgetting_factor():
    assert forgetting_factor(0.06, 0.06, 0.1, 0.99) == 0.5  # one half-life: half the evidence kept
    assert forgetting_factor(0.0, 0.06, 0.875, 0.96) == 0.96  # no move: as slowly as allowed
    assert forgetting_factor(1.0, 0.06, 0.875, 0.96) == 0.875  # a big move: as fast as allowed


def test_prompt_value_tracker_by_hand():
    t = PromptValueTracker(
        reward_scale=1.0
    )  # clip .875 / .96, half-life .06, rho_const .9; rewards [-1, 1] -> [0, 1]
    assert t.baselines([7, 8]) == [0.0, 0.0]  # prior Beta(.5, .5): mean .5 -> reward 0
    # first visits use rho_const: prompt 7 reward 1 (-> 1), prompt 8 reward -1 (-> 0)
    assert t.update([7, 8], [1.0, -1.0], [None, None], [([5, 6], [-0.1, -0.2]), ([4], [-0.3])]) == [0.9, 0.9]
    assert (t.alpha[7], t.beta[7]) == pytest.approx((0.9 * 0.5 + 1, 0.9 * 0.5))  # 1.45, .45
    assert (t.alpha[8], t.beta[8]) == pytest.approx((0.45, 1.45))
    assert t.baselines([7, 8]) == pytest.approx([1.45 / 1.9 * 2 - 1, 0.45 / 1.9 * 2 - 1])  # +.5263, -.5263
    assert t.stored_sample(7) == ([5, 6], [-0.1, -0.2]) and t.stored_sample(9) is None
    # prompt 7 again, reward 0 (-> .5), D = .006 = a tenth of the half-life: rho = 2 ** -.1 = .93303
    rho = t.update([7], [0.0], [0.006], [([1], [-0.5])])[0]
    assert rho == pytest.approx(2**-0.1)
    assert (t.alpha[7], t.beta[7]) == pytest.approx((rho * 1.45 + 0.5, rho * 0.45 + 0.5))
    assert t.stored_sample(7) == ([1], [-0.5])
    # D = 0 (the policy did not move) keeps evidence as long as allowed; a big D forgets as fast as allowed
    assert t.update([7, 8], [0.0, 0.0], [0.0, 1.0], [([1], [0.0]), ([1], [0.0])]) == [0.96, 0.875]
    # a prompt twice in one batch is updated twice, in order
    t.update([9, 9], [1.0, 1.0], [None, None], [([1], [0.0]), ([2], [0.0])])
    assert t.alpha[9] == pytest.approx(0.9 * (0.9 * 0.5 + 1) + 1) and t.stored_sample(9) == ([2], [0.0])
    restored = PromptValueTracker(reward_scale=1.0)
    restored.load_state_dict(json.loads(json.dumps(t.state_dict())))  # checkpoints store it as JSON
    assert (restored.alpha, restored.beta, restored.samples) == (t.alpha, t.beta, t.samples)


def test_prompt_value_tracker_constant_mode_and_errors():
    t = PromptValueTracker(rho_mode="constant", rho_const=0.8)
    t.update([1], [0.0], [None], [([1], [0.0])])
    assert t.update([1], [0.0], [5.0], [([1], [0.0])]) == [0.8]  # D ignored
    with pytest.raises(ValueError, match="NaN"):
        t.update([1], [math.nan], [None], [([1], [0.0])])
    with pytest.raises(ValueError, match="one reward, divergence and sample per key"):
        t.update([1, 2], [0.0], [None], [([1], [0.0])])


# ---------------------------------------------------------------------------------------- configs


def test_config_defaults_and_batch_sizes(tmp_path):
    from align_recipes.rl.config import PPOConfig, SPOConfig

    ppo = PPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_mini_batches=3,
    )
    assert ppo.rollout_batch_size == 24
    assert (ppo.kl_coef, ppo.gamma, ppo.lam, ppo.cliprange, ppo.vf_coef, ppo.num_ppo_epochs) == (
        0.05,
        1.0,
        0.95,
        0.2,
        0.1,
        4,
    )
    assert ppo.max_new_tokens == 53 and ppo.remove_unused_columns is False and ppo.logging_steps == 10
    assert ppo.bf16 is False  # never forced on a CPU
    spo = SPOConfig(output_dir=str(tmp_path))
    assert (
        spo.beta,
        spo.half_life,
        spo.clip_lower,
        spo.clip_upper,
        spo.reward_scale,
        spo.advantage_clip,
    ) == (0.02, 0.06, 0.875, 0.96, 3.0, 5.0)  # the SPO paper's forgetting bounds
    assert spo.baseline == "per_prompt" and ppo.model_init_kwargs is None
    assert spo.num_ppo_epochs == 1 and not hasattr(spo, "vf_coef")


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
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
        ("SPOConfig", {"baseline": "group"}, "baseline must be one of per_prompt, global"),
        ("PPOConfig", {"top_p": 0.9}, "top_p must be 1.0 (got 0.9): PPO/SPO need the log-probabilities"),
        ("SPOConfig", {"top_k": 20}, "top_k must be 0 (got 20)"),
        ("PPOConfig", {"vllm_importance_sampling_cap": 0.5}, "vllm_importance_sampling_cap must be >= 1"),
    ],
)
def test_config_rejects_impossible_values(tmp_path, cls, kwargs, message):
    from align_recipes.rl import config

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        getattr(config, cls)(output_dir=str(tmp_path), **kwargs)
