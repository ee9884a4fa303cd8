"""PPOTrainer / SPOTrainer on a tiny model: a few steps, checkpoints, resume against an uninterrupted run,
adapters, a reward model as reward and critic, the per-prompt SPO tracker against hand-computed values, and
the errors users meet first."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from rl_helpers import answer_over_ten, args_for, dataset, digits, make_trainer, step_logs  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,  # noqa: E402
)

from align_recipes.rl.config import PPOConfig, SPOConfig  # noqa: E402
from align_recipes.rl.trainer import PPOTrainer, SPOTrainer  # noqa: E402

LOGGED = {
    "reward",
    "kl",
    "entropy",
    "response_length",
    "eos_rate",
    "policy_loss",
    "clipfrac",
    "approx_kl",
    "loss",
    "grad_norm",
    "learning_rate",
    "kl_coef",
}


class StopAfter(TrainerCallback):
    """Stops training after a given step, as a crash or Ctrl-C would (the checkpoint of that step is written)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def assert_resume_matches_uninterrupted(make, tmp_path, step: int = 2):
    """An uninterrupted run that writes no checkpoint is the reference; a run stopped after step 1 and resumed
    from its checkpoint by a fresh trainer must log the same step and end with the same weights."""
    reference = make(tmp_path / "reference", save_strategy="no")
    reference.train()
    stopped = make(tmp_path / "run", callbacks=[StopAfter(1)])
    stopped.train()
    assert stopped.state.global_step == 1 and not (tmp_path / "run" / "checkpoint-2").exists()
    resumed = make(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert step_logs(resumed, step) == step_logs(reference, step)
    a, b = dict(reference.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    return reference, resumed


def test_ppo_trains_checkpoints_and_resumes_like_an_uninterrupted_run(tiny, tmp_path):
    def make(out, **kw):
        return make_trainer(
            PPOTrainer, PPOConfig, tiny, out, adaptive_kl=True, kl_coef=0.1, missing_eos_penalty=0.5, **kw
        )

    reference, resumed = assert_resume_matches_uninterrupted(make, tmp_path)
    assert torch.equal(reference.value_model.head.weight, resumed.value_model.head.weight)
    logs = step_logs(reference, 1)
    assert LOGGED | {"value_loss", "vf_clipfrac", "non_score_reward", "rewards/digits"} <= set(logs)
    assert abs(logs["kl"]) < 1e-5  # the first rollout comes from the reference policy itself
    # Adaptive KL (target 6, horizon 10000) after step 1 measured KL ~0 on 4 completions: the error
    # KL / 6 - 1 = -1 is clipped to -0.2, so kl_coef = 0.1 * (1 - 0.2 * 4 / 10000).
    assert step_logs(reference, 2)["kl_coef"] == pytest.approx(0.1 * (1 - 0.2 * 4 / 10000), rel=1e-7)
    ckpt = tmp_path / "run" / "checkpoint-1"
    for name in (
        "model.safetensors",
        "value_model.safetensors",
        "rl_state.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    ):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "rl_state.json").read_text())["algorithm"] == "ppo"

    reference.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "value_model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert torch.equal(reloaded.model.norm.weight, reference.model.model.norm.weight)


def test_ppo_with_lora_and_its_critic_adapter_resumes_like_an_uninterrupted_run(tiny, tmp_path):
    """Under LoRA the critic is a second adapter on the policy's base (rl/shared_critic.py): its tensors come back
    from value_model.safetensors and both adapters keep training after the resume."""
    from peft import LoraConfig

    def make(out, **kw):
        return make_trainer(
            PPOTrainer,
            PPOConfig,
            tiny,
            out,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
            **kw,
        )

    reference, resumed = assert_resume_matches_uninterrupted(make, tmp_path)
    a, b = reference.value_model.own_parameters(), resumed.value_model.own_parameters()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.requires_grad for p in b.values())


def test_spo_global_baseline_with_lora_plain_prompts_resumes_like_an_uninterrupted_run(tiny, tmp_path):
    from peft import LoraConfig

    def make(out, **kw):
        return make_trainer(
            SPOTrainer,
            SPOConfig,
            tiny,
            out,
            train_dataset=dataset(conversational=False),
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
            num_mini_batches=2,
            reward_scale=2.0,
            baseline="global",
            **kw,
        )

    reference, resumed = assert_resume_matches_uninterrupted(make, tmp_path)
    assert reference.ref_model is None  # the reference is the policy with its adapter disabled
    first, second = step_logs(reference, 1), step_logs(reference, 2)
    assert LOGGED | {"baseline", "rho", "kl_loss"} <= set(second) and "value_loss" not in second
    # The global Beta belief by hand from the logged batch rewards (digits() is in [0, 2]; scale 2 maps r to
    # (r + 2) / 4, no clipping): prior alpha = beta = 0.5 / (1 - 0.875) = 4; first update with rho_const 0.9.
    assert first["baseline"] == 0.0 and first["rho"] == pytest.approx(0.9)
    r1, r2, rho2 = (first["reward"] + 2) / 4, (second["reward"] + 2) / 4, second["rho"]
    alpha1, beta1 = 0.9 * 4 + r1, 0.9 * 4 + (1 - r1)
    assert second["baseline"] == pytest.approx(alpha1 / (alpha1 + beta1) * 4 - 2, abs=1e-6)
    assert 0.875 <= rho2 <= 0.96
    assert (resumed.tracker.alpha, resumed.tracker.beta) == pytest.approx(
        (rho2 * alpha1 + r2, rho2 * beta1 + (1 - r2)), abs=1e-6
    )
    assert (tmp_path / "run" / "checkpoint-1" / "adapter_model.safetensors").is_file()
    state = json.loads((tmp_path / "run" / "checkpoint-1" / "rl_state.json").read_text())
    assert (state["algorithm"], state["baseline"]) == ("spo", "global")
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint is the end (checkpoint-2): nothing to do
    assert resumed.state.global_step == 2


def test_spo_per_prompt_tracker_with_a_frozen_policy_matches_hand_values(tiny, tmp_path):
    """4 prompts, 4 per step, learning rate 0: every prompt is seen at steps 1 and 2 (sampler epochs), the policy
    never moves, so D = 0 and the second visit forgets as slowly as allowed (rho = clip_upper = 0.96); first visits
    take 0.96 too (the authors measure D on the new sample itself). MiniMind's global rho compared different
    prompts' mean log-probs and hit clip_lower 42% of the time with a frozen policy."""
    t = make_trainer(
        SPOTrainer,
        SPOConfig,
        tiny,
        tmp_path,
        train_dataset=dataset(n=4),
        learning_rate=0.0,
        reward_funcs=[answer_over_ten],
        reward_scale=1.0,
        save_strategy="no",
        max_steps=2,
    )
    t.train()
    first, second = step_logs(t, 1), step_logs(t, 2)
    assert first["rho"] == pytest.approx(0.96) and first["divergence"] == 0.0  # first visits: no D
    assert second["rho"] == pytest.approx(0.96)
    assert second["divergence"] < 1e-5  # the stored sample re-scored under the same weights
    answers = [0, 1, 2, 3]  # prompts i = 0..3 are "i+0=": rewards .0, .1, .2, .3 map to (r + 1) / 2
    for key, a in enumerate(answers):
        r = (a / 10 + 1) / 2
        alpha1, beta1 = 0.96 * 0.5 + r, 0.96 * 0.5 + (1 - r)
        assert t.tracker.belief(key) == pytest.approx((0.96 * alpha1 + r, 0.96 * beta1 + (1 - r)))
    # step 1's baselines are the prior (reward 0 on [-1, 1]); step 2's the beliefs after one visit, in reward units
    assert first["baseline"] == 0.0
    expected = [(0.96 * 0.5 + (a / 10 + 1) / 2) / 1.96 * 2 - 1 for a in answers]
    assert second["baseline"] == pytest.approx(sum(expected) / 4, abs=1e-6)


def binary_answer(prompts, completions, answer, **kwargs):
    """1 when the completion starts with the answer, else 0; declared 0/1 so SPO's tracker maps [0, 1]."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(t.strip().startswith(a)) for t, a in zip(texts, answer)]


binary_answer.reward_range = (0.0, 1.0)


def test_spo_paper_preset_resumes_like_an_uninterrupted_run(tiny, tmp_path):
    """`preset: paper`: offline start (2 samples per prompt here), prioritised sampling, clip 0.2 / 0.28, no KL.
    A run stopped after step 1 and resumed from its checkpoint (tracker in safetensors) draws the same prompts and
    ends with the same weights; the checkpoint holds no JSON copy of the tracker."""

    def make(out, **kw):
        values = dict(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            max_new_tokens=4,
            temperature=1.0,
            logging_steps=1,
            save_steps=1,
            report_to="none",
            disable_tqdm=True,
            seed=7,
            use_cpu=True,
            offline_init_samples=2,
        )
        return SPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny),
            args=SPOConfig.from_preset("paper", **{**values, **kw}),
            train_dataset=dataset(n=6),
            processing_class=AutoTokenizer.from_pretrained(tiny),
            reward_funcs=[binary_answer],
        )

    reference = make(tmp_path / "reference", save_strategy="no")
    reference.train()
    assert reference.ref_model is None  # beta 0: no reference model
    assert (reference.tracker.reward_low, reference.tracker.reward_high) == (0.0, 1.0)  # declared 0/1
    stopped = make(tmp_path / "run")
    stopped.add_callback(StopAfter(1))
    stopped.train()
    ckpt = tmp_path / "run" / "checkpoint-1"
    assert (ckpt / "spo_tracker-00000-of-00001.safetensors").is_file()
    state = json.loads((ckpt / "rl_state.json").read_text())
    assert state["baseline"] == "per_prompt" and "tracker" not in state
    resumed = make(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert step_logs(resumed, 2) == step_logs(reference, 2)
    a, b = dict(reference.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(reference.tracker.alpha, resumed.tracker.alpha)
    # the offline start moved the beliefs off the prior before step 1 (6 prompts x 2 samples, 0/1 rewards: every
    # alpha is N (s + .5) / 3 with s in {0, 1, 2}, then decayed by the prompts sampled since)
    fresh = make(tmp_path / "fresh")
    fresh._offline_init()
    n_init = 1 / (1 - 0.875)
    for key in range(6):
        alpha, beta = fresh.tracker.belief(key)
        s = round(alpha * 3 / n_init - 0.5)
        assert s in (0, 1, 2) and (alpha, beta) == pytest.approx(
            (n_init * (s + 0.5) / 3, n_init * (2 - s + 0.5) / 3)
        )


def test_spo_resumes_a_checkpoint_with_the_tracker_in_json(tiny, tmp_path):
    """A checkpoint written before the tracker moved to safetensors (rl_state.json held it as JSON lists) still
    resumes exactly: rewrite checkpoint-1 into the old layout and compare with an uninterrupted run."""

    def make(out, **kw):
        return make_trainer(SPOTrainer, SPOConfig, tiny, out, reward_funcs=[answer_over_ten], **kw)

    reference = make(tmp_path / "reference", save_strategy="no")
    reference.train()
    stopped = make(tmp_path / "run", callbacks=[StopAfter(1)])
    stopped.train()
    ckpt = tmp_path / "run" / "checkpoint-1"
    tracker = stopped.tracker
    keys = tracker.owned_keys().tolist()
    old = {
        "alpha": {str(k): float(tracker.alpha[k]) for k in keys},
        "beta": {str(k): float(tracker.beta[k]) for k in keys},
        "samples": {str(k): list(tracker.stored_sample(k)) for k in tracker.samples},
    }
    (ckpt / "spo_tracker-00000-of-00001.safetensors").unlink()
    (ckpt / "rl_state.json").write_text(
        json.dumps({"algorithm": "spo", "baseline": "per_prompt", "tracker": old}, indent=2)
    )
    resumed = make(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert step_logs(resumed, 2) == step_logs(reference, 2)
    # and a checkpoint with neither is refused by name
    (ckpt / "rl_state.json").write_text(json.dumps({"algorithm": "spo", "baseline": "per_prompt"}))
    with pytest.raises(ValueError, match="has no SPO tracker"):
        make(tmp_path / "run").train(resume_from_checkpoint=str(ckpt))


def test_ppo_with_reward_model_critic_and_lora(tiny, tmp_path):
    from peft import LoraConfig

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    rm.config.pad_token_id = AutoTokenizer.from_pretrained(tiny).pad_token_id
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(rm_dir)
    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        tiny,
        tmp_path / "run",
        reward_funcs=[str(rm_dir)],
        max_steps=1,
        save_strategy="no",
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
        eval_strategy="steps",
        eval_steps=1,
        eval_dataset=dataset(n=3),
        reward_model_path=str(rm_dir),
    )
    assert len(t.reward_funcs) == 1  # reward_model_path names the model already given: it scores once
    assert torch.equal(
        t.value_model.head.weight.detach(), rm.score.weight.float()
    )  # critic starts from the RM
    assert any("lora" in n for n, p in t.value_model.named_parameters() if p.requires_grad)
    t.train()
    assert "rewards/reward_model_rm" in step_logs(t, 1)
    assert any("eval_reward" in h for h in t.state.log_history)


def test_constructor_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="no 'prompt' column"):
        make_trainer(
            PPOTrainer, PPOConfig, tiny, tmp_path, train_dataset=Dataset.from_list([{"question": "x"}])
        )
    with pytest.raises(ValueError, match="no reward"):
        make_trainer(SPOTrainer, SPOConfig, tiny, tmp_path, reward_funcs=None)
    with pytest.raises(ValueError, match="2 reward weights for 1 reward functions"):
        make_trainer(SPOTrainer, SPOConfig, tiny, tmp_path, reward_weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="needs a PPOConfig"):
        PPOTrainer(
            model=tiny, args=args_for(SPOConfig, tmp_path), train_dataset=dataset(), reward_funcs=[digits]
        )
    with pytest.raises(ValueError, match="SPO has no critic"):
        SPOTrainer(
            model=tiny,
            args=args_for(SPOConfig, tmp_path),
            train_dataset=dataset(),
            reward_funcs=[digits],
            value_model=tiny,
        )
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="use_vllm is true but vLLM is not installed"):
            make_trainer(SPOTrainer, SPOConfig, tiny, tmp_path, use_vllm=True)
    assert not os.path.exists(tmp_path / "checkpoint-1")
