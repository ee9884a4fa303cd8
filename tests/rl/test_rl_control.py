"""KL controllers, SPO's baselines (per-prompt tracker and global Beta) and the PPO/SPO configs, with
hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from align_recipes.rl.baselines import (
    GlobalBetaBaseline,
    PromptValueTracker,
    forgetting_factor,
    rewards_range,
)
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
    t = PromptValueTracker(10, reward_scale=1.0)  # clip .875 / .96, half-life .06; rewards [-1, 1] -> [0, 1]
    assert t.baselines([7, 8]) == [0.0, 0.0]  # prior Beta(.5, .5): mean .5 -> the middle of [-1, 1]
    # first visits: no earlier sample, so D on the new sample is 0 and rho = clip_upper (the authors' code)
    assert t.update([7, 8], [1.0, -1.0], [None, None], [([5, 6], [-0.1, -0.2]), ([4], [-0.3])]) == [
        0.96,
        0.96,
    ]
    assert t.belief(7) == pytest.approx((0.96 * 0.5 + 1, 0.96 * 0.5))  # 1.48, .48
    assert t.belief(8) == pytest.approx((0.48, 1.48))
    assert t.baselines([7, 8]) == pytest.approx([1.48 / 1.96 * 2 - 1, 0.48 / 1.96 * 2 - 1])  # +.5102, -.5102
    assert t.stored_sample(7) == ([5, 6], pytest.approx([-0.1, -0.2])) and t.stored_sample(9) is None
    # prompt 7 again, reward 0 (-> .5), D = .006 = a tenth of the half-life: rho = 2 ** -.1 = .93303
    rho = t.update([7], [0.0], [0.006], [([1], [-0.5])])[0]
    assert rho == pytest.approx(2**-0.1)
    assert t.belief(7) == pytest.approx((rho * 1.48 + 0.5, rho * 0.48 + 0.5))
    assert t.stored_sample(7) == ([1], [-0.5])
    # D = 0 (the policy did not move) keeps evidence as long as allowed; a big D forgets as fast as allowed
    assert t.update([7, 8], [0.0, 0.0], [0.0, 1.0], [([1], [0.0]), ([1], [0.0])]) == [0.96, 0.875]
    # a prompt twice in one batch is updated twice, in order (the second with D from its pre-batch sample)
    t.update([9, 9], [1.0, 1.0], [None, 0.0], [([1], [0.0]), ([2], [0.0])])
    assert t.belief(9)[0] == pytest.approx(0.96 * (0.96 * 0.5 + 1) + 1) and t.stored_sample(9) == ([2], [0.0])


def test_binary_rewards_put_the_prior_at_half():
    """0/1 rewards on [0, 1]: the prior's baseline is 0.5 (the authors' r - p_hat with p_hat = 0.5), not 0."""
    t = PromptValueTracker(3, reward_range=(0.0, 1.0))
    assert t.baselines([0, 1, 2]) == [0.5, 0.5, 0.5]
    t.update([0], [1.0], [None], [([1], [0.0])])
    assert t.baselines([0]) == pytest.approx([1.48 / 1.96])  # (.96 * .5 + 1) / (.96 + 1)
    # the same rewards on the old symmetric [-1, 1] map: the prior sat at reward 0
    assert PromptValueTracker(3, reward_scale=1.0).baselines([0]) == [0.0]
    assert GlobalBetaBaseline(reward_range=(0.0, 1.0)).baseline == 0.5


def test_rewards_range_is_read_from_the_reward_functions():
    def binary(prompts, completions, **kw):
        return [1.0] * len(completions)

    def unknown(prompts, completions, **kw):
        return [0.0] * len(completions)

    binary.reward_range = (0.0, 1.0)
    assert rewards_range([binary], [1.0]) == (0.0, 1.0)
    assert rewards_range([binary, binary], [1.0, 0.5]) == (0.0, 1.5)
    assert rewards_range([binary], [-2.0]) == (-2.0, 0.0)  # a negative weight swaps the ends
    assert rewards_range([binary], [1.0], missing_eos_penalty=0.5) == (-0.5, 1.0)
    assert rewards_range([binary, unknown], [1.0, 1.0]) is None  # one undeclared function: unknown
    from align_recipes.rewards import build_reward_funcs
    from align_recipes.tiny.toytask import toy_reward

    assert toy_reward.reward_range == (0.0, 1.0)
    [exact], _ = build_reward_funcs([{"name": "exact_match"}])
    assert exact.reward_range == (0.0, 1.0)


def test_spo_config_picks_the_tracker_range(tmp_path):
    from align_recipes.rl.config import SPOConfig

    def config(**kw):
        return SPOConfig(output_dir=str(tmp_path), **kw)

    assert config().tracker_range((0.0, 1.0)) == (0.0, 1.0)  # declared by the reward functions
    assert config().tracker_range(None) == (-3.0, 3.0)  # a reward model: the old default
    assert config(reward_scale=2.0).tracker_range((0.0, 1.0)) == (-2.0, 2.0)  # set by the recipe: kept
    assert config(reward_range=[0, 10]).tracker_range((0.0, 1.0)) == (0.0, 10.0)


def test_offline_start_and_sampling_weights_by_hand():
    """The authors' offline start: N = 1 / (1 - .875) = 8; 6 of 8 samples right -> alpha = 8 * 6.5 / 9,
    beta = 8 * 2.5 / 9; the prioritised weight sqrt(p (1 - p)) + .05 with p = 6.5 / 9."""
    t = PromptValueTracker(4, reward_range=(0.0, 1.0))
    t.initialize([0, 3], [6.0, 8.0], k=8)
    assert t.belief(0) == pytest.approx((8 * 6.5 / 9, 8 * 2.5 / 9))
    assert t.belief(3) == pytest.approx((8 * 8.5 / 9, 8 * 0.5 / 9))
    assert t.belief(1) == (0.5, 0.5)  # not initialised: the prior
    p0, p3 = 6.5 / 9, 8.5 / 9
    assert t.sampling_weights().tolist() == pytest.approx(
        [math.sqrt(p0 * (1 - p0)) + 0.05, 0.5 + 0.05, 0.5 + 0.05, math.sqrt(p3 * (1 - p3)) + 0.05]
    )
    assert (
        t.rho(0, None) == 0.96
    )  # an offline start has no sample yet: the first visit is still a first visit


def test_prompt_value_tracker_shards_by_prompt_and_restores_from_any_layout(tmp_path):
    """Two processes: process 1 owns the odd prompts. Each writes its own safetensors file; one process (or two)
    reading both files gets back every belief and sample it owns."""
    from align_recipes.rl import tracker_io

    shards = [PromptValueTracker(5, reward_scale=1.0, num_shards=2, shard=r) for r in (0, 1)]
    assert shards[1].owns(3) and not shards[1].owns(2) and shards[0].alpha.shape == (3,)
    with pytest.raises(KeyError, match="prompt 2 belongs to shard 0"):
        shards[1].update([2], [0.0], [None], [([1], [0.0])])
    shards[0].update([0, 4], [1.0, -1.0], [None, None], [([3, 4, 5], [-0.5, -0.25, -0.125]), ([9], [-1.0])])
    shards[1].update([3], [0.0], [None], [([7, 8], [-2.0, -4.0])])
    for t in shards:
        tracker_io.save(t, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "spo_tracker-00000-of-00002.safetensors",
        "spo_tracker-00001-of-00002.safetensors",
    ]
    whole = PromptValueTracker(5, reward_scale=1.0)
    assert tracker_io.load(whole, tmp_path)
    assert whole.belief(0) == pytest.approx((0.96 * 0.5 + 1, 0.48)) and whole.belief(3) == (0.98, 0.98)
    assert whole.belief(4) == pytest.approx((0.48, 1.48)) and whole.belief(1) == (0.5, 0.5)
    assert whole.stored_sample(0) == ([3, 4, 5], [-0.5, -0.25, -0.125])
    assert whole.stored_sample(3) == ([7, 8], [-2.0, -4.0]) and whole.stored_sample(4) == ([9], [-1.0])
    odd = PromptValueTracker(5, reward_scale=1.0, num_shards=2, shard=1)
    tracker_io.load(odd, tmp_path)
    assert set(odd.samples) == {3} and odd.belief(3) == (0.98, 0.98)
    # a cut-short save (one file of two) is refused by name
    (tmp_path / "spo_tracker-00001-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="1 SPO tracker file.*incomplete"):
        tracker_io.load(PromptValueTracker(5), tmp_path)


def test_prompt_value_tracker_reads_the_old_json_state():
    """Checkpoints written before the tensors (rl_state.json held the tracker as JSON lists) still load."""
    old = {
        "alpha": {"2": 1.45, "0": 0.45},
        "beta": {"2": 0.45, "0": 1.45},
        "samples": {"2": [[5, 6], [-0.1, -0.2]]},
    }
    t = PromptValueTracker(4, reward_scale=1.0)
    t.load_json_state(json.loads(json.dumps(old)))
    assert t.belief(2) == (1.45, 0.45) and t.belief(0) == (0.45, 1.45) and t.belief(1) == (0.5, 0.5)
    assert t.stored_sample(2) == ([5, 6], pytest.approx([-0.1, -0.2]))


def test_prompt_value_tracker_constant_mode_and_errors():
    t = PromptValueTracker(2, rho_mode="constant", rho_const=0.8)
    assert t.update([1], [0.0], [None], [([1], [0.0])]) == [0.8]  # constant: the first visit too
    assert t.update([1], [0.0], [5.0], [([1], [0.0])]) == [0.8]  # D ignored
    with pytest.raises(ValueError, match="NaN"):
        t.update([1], [math.nan], [None], [([1], [0.0])])
    with pytest.raises(ValueError, match="one reward, divergence and sample per key"):
        t.update([1, 2], [0.0], [None], [([1], [0.0])])
    with pytest.raises(ValueError, match="high > low"):
        PromptValueTracker(2, reward_range=(1.0, 1.0))


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
    ) == (0.02, 0.06, 0.875, 0.96, None, 5.0)  # the SPO paper's forgetting bounds
    assert (spo.preset, spo.prioritized_sampling, spo.offline_init_samples, spo.cliprange_high) == (
        None,
        False,
        0,
        None,
    )
    paper = SPOConfig.from_preset("paper", output_dir=str(tmp_path), learning_rate=2e-6)
    assert (paper.beta, paper.cliprange, paper.cliprange_high, paper.prioritized_sampling) == (
        0.0,
        0.2,
        0.28,
        True,
    )
    assert (paper.offline_init_samples, paper.learning_rate, paper.preset) == (8, 2e-6, "paper")
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
        ("SPOConfig", {"reward_range": [1, 0]}, "reward_range must be [low, high] with high > low"),
        ("SPOConfig", {"preset": "book"}, "preset must be one of paper or null"),
        ("SPOConfig", {"baseline": "global", "prioritized_sampling": True}, "need baseline: per_prompt"),
        ("SPOConfig", {"cliprange_high": 0.0}, "cliprange_high must be > 0 or null"),
        ("PPOConfig", {"top_p": 0.9}, "top_p must be 1.0 (got 0.9): PPO/SPO need the log-probabilities"),
        ("SPOConfig", {"top_k": 20}, "top_k must be 0 (got 20)"),
        ("PPOConfig", {"vllm_importance_sampling_cap": 0.5}, "vllm_importance_sampling_cap must be >= 1"),
    ],
)
def test_config_rejects_impossible_values(tmp_path, cls, kwargs, message):
    from align_recipes.rl import config

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        getattr(config, cls)(output_dir=str(tmp_path), **kwargs)


def test_prioritised_sampling_draws_prompts_by_their_weight():
    """The SPO authors' weight sqrt(p (1 - p)) + .05: a prompt at p = .5 (weight .55) against one the tracker is
    sure of (p ~ 1: N (8 + .5) / 9 vs N .5 / 9, weight sqrt(8.5 * .5) / 9 + .05 = .279): drawn one at a time over
    4000 steps, the first is taken .55 / (.55 + .279) = .663 of the time. Each step's draw depends only on the
    seed and the step (a resumed run draws the same), and a batch never repeats a prompt it can avoid."""
    from types import SimpleNamespace

    from align_recipes.rl.rollout import PromptSampler
    from align_recipes.rl.spo_tracking import PerPromptTracking

    tracker = PromptValueTracker(2, reward_range=(0.0, 1.0))
    tracker.initialize([1], [8.0], k=8)
    fake = SimpleNamespace(
        args=SimpleNamespace(prioritized_sampling=True),
        tracker=tracker,
        accelerator=SimpleNamespace(num_processes=1, device="cpu"),
    )
    fake._sum_over_processes = lambda t: t
    one = PromptSampler(2, 1, seed=5)
    picks = [PerPromptTracking._step_indices(fake, one, step)[0] for step in range(4000)]
    w_sure = math.sqrt(8.5 * 0.5) / 9 + 0.05
    assert picks.count(0) / 4000 == pytest.approx(0.55 / (0.55 + w_sure), abs=0.025)
    assert PerPromptTracking._step_indices(fake, one, 17) == [picks[17]]
    assert sorted(PerPromptTracking._step_indices(fake, PromptSampler(2, 2, seed=5), 3)) == [0, 1]
    fake.args.prioritized_sampling = False
    assert PerPromptTracking._step_indices(fake, one, 3) == one.indices(3)
