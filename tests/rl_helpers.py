"""Shared pieces of the PPO/SPO tests: an even smaller Qwen2 than the built-in one, toy prompts, a reward, and
naive reference computations (one unpadded sequence at a time, no trainer code) to compare the trainers with."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from align_recipes.tiny import ensure_tiny_model


def build_tiny(path, seed: int = 0, **config_overrides) -> str:
    """A 32-wide, 2-layer Qwen2 with the built-in byte-level tokenizer, saved to ``path``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def digits(prompts, completions, answer, **kwargs):
    """Reward: share of digits in the completion, +1 when it starts with the answer."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [
        sum(ch.isdigit() for ch in t) / max(len(t), 1) + float(t.strip().startswith(a))
        for t, a in zip(texts, answer)
    ]


def answer_over_ten(prompts, completions, answer, **kwargs):
    """A reward that depends on the prompt only (its answer / 10), so the per-prompt beliefs are hand-computable."""
    return [int(a) / 10 for a in answer]


def dataset(conversational=True, n=12):
    rows = []
    for i in range(n):
        a, b = i % 4, i // 4
        prompt = [{"role": "user", "content": f"{a}+{b}="}] if conversational else f"{a}+{b}="
        rows.append({"prompt": prompt, "answer": str(a + b)})
    return Dataset.from_list(rows)


def args_for(cls, out, **overrides):
    base = dict(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_mini_batches=1,
        num_ppo_epochs=2,
        max_new_tokens=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=3,
    )
    base.update(overrides)
    return cls(**base)


def make_trainer(cls, cfg, tiny, out, **kw):
    extra = {
        k: kw.pop(k)
        for k in ("peft_config", "reward_funcs", "train_dataset", "eval_dataset", "callbacks", "ref_model")
        if k in kw
    }
    return cls(
        model=AutoModelForCausalLM.from_pretrained(tiny),
        args=args_for(cfg, out, **kw),
        train_dataset=extra.pop("train_dataset", dataset()),
        processing_class=AutoTokenizer.from_pretrained(tiny),
        reward_funcs=extra.pop("reward_funcs", [digits]),
        **extra,
    )


def step_logs(t, step):
    return next(h for h in t.state.log_history if h.get("step") == step and "reward" in h)


# ------------------------------------------------------------------------------------- naive references


def chat_prompt_ids(tokenizer, prompt) -> list[int]:
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)


@torch.no_grad()
def naive_token_logprobs(
    model, prompt_ids: list[int], completion: list[int], temperature: float
) -> list[float]:
    """log p(completion[t] | prompt, completion[:t]) at ``temperature``, one unpadded sequence, one full forward."""
    ids = torch.tensor([prompt_ids + completion])
    logits = model(input_ids=ids).logits[0].float() / temperature
    logp = logits.log_softmax(-1)
    return [logp[len(prompt_ids) - 1 + t, tok].item() for t, tok in enumerate(completion)]


@torch.no_grad()
def naive_token_entropy(
    model, prompt_ids: list[int], completion: list[int], temperature: float
) -> list[float]:
    ids = torch.tensor([prompt_ids + completion])
    logp = (model(input_ids=ids).logits[0].float() / temperature).log_softmax(-1)
    return [
        -(logp[len(prompt_ids) - 1 + t].exp() * logp[len(prompt_ids) - 1 + t]).sum().item()
        for t in range(len(completion))
    ]


class ScriptedEngine:
    """A stand-in for TRL's `VLLMGeneration` (same `generate`/`sync_weights` interface, same return layout) that
    answers prompt i (by its position in ``prompt_order``) with ``scripts[i]`` and reports log-probs computed by
    its own model, a perturbed copy of the policy (a sampler that is not exactly pi_old, as vLLM's kernels are
    not). It records the order of calls."""

    def __init__(self, model, scripts: dict[tuple, list[int]], temperature: float):
        self.model, self.scripts, self.temperature = model, scripts, temperature
        self.events: list[str] = []

    def sync_weights(self):
        self.events.append("sync")

    def generate(self, prompts, images, num_generations):
        assert images is None and num_generations == 1
        self.events.append("generate")
        completions = [list(self.scripts[tuple(p)]) for p in prompts]
        logprobs = [
            [[lp] for lp in naive_token_logprobs(self.model, list(p), c, self.temperature)]
            for p, c in zip(prompts, completions)
        ]
        return prompts, completions, logprobs, [[[t] for t in c] for c in completions]
