"""What a vLLM sync reads from a LoRA policy (rl/vllm_sync.policy_weights): merged weights equal
base + scale * B @ A computed by hand, and reading them never writes the frozen base, in bfloat16 too.
TRL's merge/unmerge round trip fails the same check (it is what the no-drift test guards against)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from align_recipes.rl.vllm_sync import policy_weights
from align_recipes.tiny import ensure_tiny_model

SYNCS = 100


def lora_policy(dtype=torch.bfloat16):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(), dtype=dtype)
    # init_lora_weights=False: B is random, so the adapter changes the weights (PEFT's default B = 0 would not)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(base, config)


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def changed(model, before) -> int:
    now = dict(model.named_parameters())
    return sum(int((now[n].detach() != w).sum()) for n, w in before.items())


def test_policy_weights_leave_the_base_bit_identical_after_100_syncs_in_bf16():
    model = lora_policy()
    before = base_weights(model)
    for _ in range(SYNCS):
        for _name, _tensor in policy_weights(model):
            pass
    assert changed(model, before) == 0


def test_merge_unmerge_round_trip_drifts_in_bf16():
    """The check above is not vacuous: the round trip TRL's sync does changes bf16 base weights."""
    model = lora_policy()
    before = base_weights(model)
    for _ in range(SYNCS):
        model.merge_adapter()
        model.unmerge_adapter()
    assert changed(model, before) > 0


def test_merged_weights_equal_base_plus_scaled_adapter_product():
    model = lora_policy(torch.float32)
    weights = dict(policy_weights(model))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer.weight + (8 / 4) * (b @ a)
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"], expected)
    # untouched layers pass through, adapter tensors are not sent, names are vLLM's (no PEFT prefixes)
    k_proj = model.base_model.model.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(weights["model.layers.0.self_attn.k_proj.weight"], k_proj)
    assert not any("lora_" in n or "base_layer" in n or n.startswith("base_model") for n in weights)
    plain = AutoModelForCausalLM.from_pretrained(ensure_tiny_model())
    assert set(weights) == {n for n, _ in plain.named_parameters()}
