"""PPOTrainer / SPOTrainer smoke tests on the built-in tiny model: a few steps, checkpoints, exact resume,
adapters, a reward model as reward and critic, and the errors users meet first."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from align_recipes.rl.config import PPOConfig, SPOConfig  # noqa: E402
from align_recipes.rl.trainer import PPOTrainer, SPOTrainer  # noqa: E402
from align_recipes.tiny import ensure_tiny_model  # noqa: E402

LOGGED = {"reward", "kl", "entropy", "response_length", "eos_rate", "policy_loss", "clipfrac", "approx_kl",
          "loss", "grad_norm", "learning_rate", "kl_coef"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An even smaller Qwen2 than the built-in one (32 wide), with the built-in byte-level tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path = tmp_path_factory.mktemp("tiny32")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def digits(prompts, completions, answer, **kwargs):
    """Reward: share of digits in the completion, +1 when it starts with the answer."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) + float(t.strip().startswith(a))
            for t, a in zip(texts, answer)]


def dataset(conversational=True, n=12):
    rows = []
    for i in range(n):
        a, b = i % 4, i // 4
        prompt = [{"role": "user", "content": f"{a}+{b}="}] if conversational else f"{a}+{b}="
        rows.append({"prompt": prompt, "answer": str(a + b)})
    return Dataset.from_list(rows)


def args_for(cls, out, **overrides):
    base = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                num_mini_batches=1, num_ppo_epochs=2, max_new_tokens=3, learning_rate=1e-3, logging_steps=1,
                save_strategy="steps", save_steps=1, report_to="none", disable_tqdm=True, seed=3)
    base.update(overrides)
    return cls(**base)


def trainer(cls, cfg, tiny, out, **kw):
    extra = {k: kw.pop(k) for k in ("peft_config", "reward_funcs", "train_dataset", "eval_dataset") if k in kw}
    return cls(model=AutoModelForCausalLM.from_pretrained(tiny), args=args_for(cfg, out, **kw),
               train_dataset=extra.pop("train_dataset", dataset()), processing_class=AutoTokenizer.from_pretrained(tiny),
               reward_funcs=extra.pop("reward_funcs", [digits]), **extra)


def step_logs(t, step):
    return next(h for h in t.state.log_history if h.get("step") == step and "reward" in h)


def assert_same_continuation(first, resumed, step):
    assert step_logs(first, step) == step_logs(resumed, step)
    a, b = dict(first.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_trains_checkpoints_and_resumes_exactly(tiny, tmp_path):
    first = trainer(PPOTrainer, PPOConfig, tiny, tmp_path, adaptive_kl=True, kl_coef=0.1, missing_eos_penalty=0.5)
    result = first.train()
    assert result.global_step == 2
    logs = step_logs(first, 1)
    assert LOGGED | {"value_loss", "vf_clipfrac", "non_score_reward", "rewards/digits"} <= set(logs)
    assert logs["kl"] == 0.0  # the first rollout comes from the reference policy itself
    assert step_logs(first, 2)["kl_coef"] != 0.1  # adaptive
    ckpt = tmp_path / "checkpoint-1"
    for name in ("model.safetensors", "value_model.safetensors", "rl_state.json", "optimizer.pt", "scheduler.pt",
                 "rng_state.pth", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "rl_state.json").read_text())["algorithm"] == "ppo"

    resumed = trainer(PPOTrainer, PPOConfig, tiny, tmp_path, adaptive_kl=True, kl_coef=0.1, missing_eos_penalty=0.5)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert_same_continuation(first, resumed, 2)
    assert torch.equal(first.value_model.head.weight, resumed.value_model.head.weight)

    first.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "value_model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert torch.equal(reloaded.model.norm.weight, first.model.model.norm.weight)


def test_spo_with_lora_plain_prompts_resumes_exactly(tiny, tmp_path):
    from peft import LoraConfig

    def make():
        return trainer(SPOTrainer, SPOConfig, tiny, tmp_path, train_dataset=dataset(conversational=False),
                       peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
                       num_mini_batches=2, reward_scale=2.0)

    first = make()
    assert first.ref_model is None  # the reference is the policy with its adapter disabled
    first.train()
    logs = step_logs(first, 2)
    assert LOGGED | {"baseline", "rho", "kl_loss"} <= set(logs) and "value_loss" not in logs
    assert 0.5 <= logs["rho"] <= 0.96  # the forgetting factor follows the policy's change, within the clip
    assert step_logs(first, 1)["baseline"] == 0.0 and step_logs(first, 1)["rho"] == pytest.approx(0.9)  # prior, rho_const
    assert (tmp_path / "checkpoint-1" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "checkpoint-1" / "rl_state.json").read_text())["algorithm"] == "spo"
    resumed = make()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert_same_continuation(first, resumed, 2)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint is the end (checkpoint-2): nothing to do
    assert resumed.state.global_step == 2


def test_ppo_with_reward_model_critic_and_lora(tiny, tmp_path):
    from peft import LoraConfig

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    rm.config.pad_token_id = AutoTokenizer.from_pretrained(tiny).pad_token_id
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(rm_dir)
    t = trainer(PPOTrainer, PPOConfig, tiny, tmp_path / "run", reward_funcs=[str(rm_dir)], max_steps=1,
                save_strategy="no", peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
                eval_strategy="steps", eval_steps=1, eval_dataset=dataset(n=3), reward_model_path=str(rm_dir))
    assert len(t.reward_funcs) == 1  # reward_model_path names the model already given: it scores once
    assert torch.equal(t.value_model.head.weight.detach(), rm.score.weight.float())  # critic starts from the RM
    assert any("lora" in n for n, p in t.value_model.named_parameters() if p.requires_grad)
    t.train()
    assert "rewards/reward_model_rm" in step_logs(t, 1)
    assert any("eval_reward" in h for h in t.state.log_history)


def test_constructor_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="no 'prompt' column"):
        trainer(PPOTrainer, PPOConfig, tiny, tmp_path, train_dataset=Dataset.from_list([{"question": "x"}]))
    with pytest.raises(ValueError, match="no reward"):
        trainer(SPOTrainer, SPOConfig, tiny, tmp_path, reward_funcs=None)
    with pytest.raises(ValueError, match="2 reward weights for 1 reward functions"):
        trainer(SPOTrainer, SPOConfig, tiny, tmp_path, reward_weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="needs a PPOConfig"):
        PPOTrainer(model=tiny, args=args_for(SPOConfig, tmp_path), train_dataset=dataset(), reward_funcs=[digits])
    with pytest.raises(ValueError, match="SPO has no critic"):
        SPOTrainer(model=tiny, args=args_for(SPOConfig, tmp_path), train_dataset=dataset(), reward_funcs=[digits],
                   value_model=tiny)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="use_vllm is true but vLLM is not installed"):
            trainer(SPOTrainer, SPOConfig, tiny, tmp_path, use_vllm=True)
    assert not os.path.exists(tmp_path / "checkpoint-1")
