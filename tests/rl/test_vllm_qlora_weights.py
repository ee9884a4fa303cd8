"""What a vLLM sync reads from a QLoRA policy (rl/vllm_sync.policy_weights): every 4-bit base weight comes out
dequantized, plus the LoRA delta where an adapter sits, in the policy's floating dtype. The hand value is the
trainer's own computation: a layer applied to the identity matrix returns its weight (transposed) plus bias,
whatever kernel bitsandbytes runs for it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from align_recipes.rl.vllm_engine import dtype_name, engine_arguments, holds_4bit  # noqa: E402
from align_recipes.rl.vllm_sync import policy_weights  # noqa: E402
from align_recipes.run.models import keep_4bit_layout  # noqa: E402
from align_recipes.tiny import ensure_tiny_model  # noqa: E402

R, ALPHA = 4, 8


@pytest.fixture(scope="module")
def qlora_policy():
    torch.manual_seed(0)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        ensure_tiny_model(), dtype=torch.float32, quantization_config=quant, device_map={"": "cpu"}
    )
    keep_4bit_layout(base)
    # init_lora_weights=False: B is random, so the adapter changes the weights (PEFT's default B = 0 would not)
    config = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["q_proj", "down_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    model.eval()
    return model


@torch.no_grad()
def weight_by_forward(layer) -> torch.Tensor:
    """W (out x in) of a linear layer from its own forward on the identity: layer(I) = W^T + bias."""
    eye = torch.eye(layer.in_features)
    out = layer(eye)
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
    return (out - bias).T


def test_qlora_weights_are_dequantized_base_plus_scaled_adapter(qlora_policy):
    model = qlora_policy
    weights = dict(policy_weights(model))
    attention = model.base_model.model.model.layers[0].self_attn
    q_proj = attention.q_proj
    a, b = q_proj.lora_A["default"].weight, q_proj.lora_B["default"].weight
    base = weight_by_forward(q_proj.base_layer)  # the 4-bit layer alone, as the trainer computes it
    expected = base + (ALPHA / R) * (b @ a)
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"], expected, atol=1e-5, rtol=0)
    # the whole QLoRA layer (base + adapter path) computes with the same matrix
    torch.testing.assert_close(weight_by_forward(q_proj), expected, atol=1e-5, rtol=0)
    # a 4-bit layer without an adapter: dequantized only
    torch.testing.assert_close(
        weights["model.layers.0.self_attn.k_proj.weight"],
        weight_by_forward(attention.k_proj),
        atol=1e-5,
        rtol=0,
    )


def test_qlora_weights_have_vllm_names_shapes_and_the_policy_dtype(qlora_policy):
    model = qlora_policy
    weights = dict(policy_weights(model))
    plain = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(), dtype=torch.float32)
    shapes = {n: tuple(p.shape) for n, p in plain.named_parameters()}
    assert {n: tuple(t.shape) for n, t in weights.items()} == shapes
    assert {t.dtype for t in weights.values()} == {torch.float32}  # no packed uint8 reaches vLLM
    assert dtype_name(model) == "float32"  # the engine's dtype is the floating one, not the packed uint8


def test_reading_qlora_weights_leaves_the_packed_base_untouched(qlora_policy):
    model = qlora_policy
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    for _ in range(20):
        for _pair in policy_weights(model):
            pass
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n].detach(), w) for n, w in before.items())


def test_engine_for_a_4bit_policy_is_asked_for_no_quantization(qlora_policy):
    """TRL asks vLLM for bitsandbytes when the policy holds 4-bit layers; we override it with none (vLLM
    receives dequantized weights at every sync)."""
    assert holds_4bit(qlora_policy)
    assert engine_arguments("float32", cpu=True, quantized=True)["quantization"] is None
    assert "quantization" not in engine_arguments("float32", cpu=True)
