"""Weight sync into a colocated vLLM engine, proved by log-probabilities: after optimizer steps and a sync,
vLLM's log-probability of each token it sampled equals the policy's training-forward log-probability of that
token; a skipped sync does not."""

from __future__ import annotations

import copy

import torch

# float32 on both sides (vllm_engine passes the policy's dtype: vLLM on CPU would otherwise sample in
# bfloat16). vLLM's CPU kernels sum in another order than transformers' eager forward; measured max
# |difference| on the tiny model: 1e-6 to 4e-6. A skipped sync after 3 steps: about 8 nats.
TOLERANCE = 1e-4
PROMPTS = ["1+2=", "hello", "3*3=", "the answer is"]


def sample(engine, tokenizer):
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    _, completions, logprobs, _ = engine.generate(prompts=prompts, images=None, num_generations=1)
    return prompts, completions, [[step[0] for step in row] for row in logprobs]


@torch.no_grad()
def policy_logprobs(model, prompt, completion) -> torch.Tensor:
    """log pi(token | prefix) of every completion token, from one plain forward (no trainer code)."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def max_gap(engine, tokenizer, model) -> float:
    prompts, completions, sampled = sample(engine, tokenizer)
    assert all(len(c) > 0 for c in completions)
    return max(
        (policy_logprobs(model, p, c) - torch.tensor(s)).abs().max().item()
        for p, c, s in zip(prompts, completions, sampled)
    )


def train_steps(model, k: int, lr: float = 0.05, seed: int = 0) -> None:
    """k Adam steps pushing up the likelihood of random text: the weights move far from the checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(k):
        ids = torch.randint(3, 200, (4, 16), generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_full_weights_sync_after_k_steps(colocated):
    engine, tokenizer = colocated
    model = copy.deepcopy(engine.model)
    engine.model = model
    train_steps(model, k=3)
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE
    train_steps(model, k=3, seed=1)  # no sync: vLLM still samples from the previous weights
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE


def test_lora_sync_after_k_steps(colocated):
    """The adapter is merged out of place into what vLLM receives; vLLM matches the adapted policy."""
    from peft import LoraConfig, get_peft_model

    engine, tokenizer = colocated
    base = copy.deepcopy(engine.model)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    engine.model = model
    train_steps(model, k=3)
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE
    train_steps(model, k=3, seed=1)
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE


def qlora_policy(tiny_dir):
    """The tiny model with 4-bit NF4 base weights (float32 compute, as the cpu profile loads QLoRA) and LoRA
    on every linear layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from align_recipes.run.models import keep_4bit_layout

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        tiny_dir, dtype=torch.float32, quantization_config=quant, device_map={"": "cpu"}
    )
    keep_4bit_layout(base)
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def test_qlora_sync_after_k_steps(colocated, tiny_dir):
    """vLLM holds the base unquantized (rl/vllm_engine.py); each sync sends the dequantized 4-bit base plus
    the LoRA delta, so vLLM samples from what the QLoRA policy computes. Measured: 5e-7 after a sync, 0.74
    nats after 3 more steps without one (and 0.1 before the first: the checkpoint is not its 4-bit copy)."""
    engine, tokenizer = colocated
    model = qlora_policy(tiny_dir)
    engine.model = model
    train_steps(model, k=3)
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE
    train_steps(model, k=3, seed=1)  # no sync
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE


def test_online_dpo_trainer_syncs_through_the_reload(colocated):
    """TRL's online DPO holds its own ``LLM`` and ``SamplingParams``: `adopt` routes its
    ``_move_model_to_vllm`` through the layerwise reload and gives vLLM the trainer's stop tokens."""
    from types import SimpleNamespace

    from vllm import SamplingParams

    from align_recipes.rl import vllm_engine

    engine, tokenizer = colocated
    model = copy.deepcopy(engine.model)
    trainer = SimpleNamespace(
        vllm_mode="colocate",
        llm=engine.llm,
        model=model,
        eos_token_ids=[7, 11],
        generation_config=SamplingParams(n=2, max_tokens=6),
        _move_model_to_vllm=None,  # TRL's own: load_weights, which fails on vLLM's CPU build
    )
    vllm_engine.adopt(trainer)
    assert trainer.generation_config.stop_token_ids == [7, 11]
    assert {7, 11} <= trainer.generation_config.all_stop_token_ids
    engine.model = model  # `sample` reads vLLM through the same LLM the trainer holds
    train_steps(model, k=3, seed=2)
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE
    trainer._move_model_to_vllm()
    assert max_gap(engine, tokenizer, model) < TOLERANCE
