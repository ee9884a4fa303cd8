"""What the RL trainers keep in memory: the frozen reference in the compute dtype, and under LoRA a critic that is
a second adapter on the policy's base (no copy of the body), which still trains, checkpoints and recomputes
exactly."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from peft import LoraConfig  # noqa: E402
from rl_helpers import make_trainer, step_logs  # noqa: E402

from align_recipes.rl.config import PPOConfig, SPOConfig  # noqa: E402
from align_recipes.rl.shared_critic import CRITIC_ADAPTER, SharedBaseCritic  # noqa: E402
from align_recipes.rl.trainer import PPOTrainer, SPOTrainer  # noqa: E402
from align_recipes.rl.value import ValueHead  # noqa: E402

# tests/rl_helpers.build_tiny: hidden 32, MLP 64, 2 heads of 16, 1 KV head (16), 2 layers.
# LoRA r=4 on every linear of a layer: r x (in + out) = 4 x (q 64 + k 48 + v 48 + o 64 + gate 96 + up 96 + down 96)
LORA_PER_MODEL = 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96)
HEAD = 32 + 1


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def unique_numel(module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() counts a shared tensor once


def test_the_reference_is_kept_in_the_compute_dtype(tiny, tmp_path):
    t = make_trainer(
        SPOTrainer, SPOConfig, tiny, tmp_path / "bf16", bf16=True, use_cpu=True, beta=0.1, save_strategy="no"
    )
    assert {p.dtype for p in t.ref_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}  # the trained weights stay float32
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path / "fp32", save_strategy="no")
    assert {p.dtype for p in t.ref_model.parameters()} == {torch.float32}  # full precision: nothing to cast
    assert {p.dtype for p in t.value_model.parameters()} == {torch.float32}  # the full critic trains: float32
    assert isinstance(t.value_model, ValueHead) and not isinstance(t.value_model, SharedBaseCritic)


def test_the_lora_critic_is_a_second_adapter_on_the_policy_base(tiny, tmp_path):
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path, peft_config=lora(), save_strategy="no")
    critic, policy = t.value_model, t.model
    assert isinstance(critic, SharedBaseCritic) and set(policy.peft_config) == {"default", CRITIC_ADAPTER}
    base = policy.get_base_model()
    assert critic.backbone is base.model  # the same body, not a copy
    base_numel = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    # The policy and critic together: one base, two adapters, one head (a copied body would add base_numel again).
    assert unique_numel(t._actor_critic) == base_numel + 2 * LORA_PER_MODEL + HEAD
    own = critic.own_parameters()
    assert sum(p.numel() for p in own.values()) == LORA_PER_MODEL + HEAD
    assert all(p.requires_grad and p.dtype == torch.float32 for p in own.values())
    trainable = {id(p) for p in t._actor_critic.parameters() if p.requires_grad}
    assert len(trainable) == len(own) + sum(1 for n, p in policy.named_parameters() if ".default." in n)
    assert policy.active_adapters == ["default"]


def test_ppo_with_the_lora_critic_trains_and_saves_only_the_policy_adapter(tiny, tmp_path):
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path / "run", peft_config=lora(), save_steps=2)
    before = {n: p.detach().clone() for n, p in t._actor_critic.named_parameters()}
    t.train()
    after = dict(t._actor_critic.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(f".{CRITIC_ADAPTER}." in n for n in moved) and any(".default." in n for n in moved)
    assert any(n.endswith("head.weight") for n in moved)
    assert all("lora_" in n or "head." in n for n in moved)  # the shared base never moves
    logs = step_logs(t, 2)
    assert {"value_loss", "policy_loss"} <= set(logs)
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert not (ckpt / CRITIC_ADAPTER).exists()  # PEFT would write the second adapter to a subfolder
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    from safetensors.torch import load_file

    saved = load_file(ckpt / "value_model.safetensors")
    assert set(saved) == set(t.value_model.own_parameters())
    assert all(f".{CRITIC_ADAPTER}." in k or k.startswith("head.") for k in saved)


def test_activation_checkpointing_recomputes_the_critic_with_its_own_adapter(tiny, tmp_path):
    """Recomputed in the backward (after the critic's forward has switched back to the policy's adapter), a layer
    must apply the adapter that was active in its forward: the critic's gradients equal those without
    checkpointing."""
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path, peft_config=lora(), save_strategy="no")
    critic = t.value_model
    torch.manual_seed(0)
    with torch.no_grad():  # a head and adapters that are not zero, so every tensor gets a gradient
        for p in critic.own_parameters().values():
            p.normal_(0, 0.5)
        for name, p in t.model.named_parameters():
            if "lora_B.default" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[5, 9, 11, 14, 20, 3]])
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            critic.activation_checkpointing_enable()
        t._actor_critic.train()
        critic.zero_grad(set_to_none=True)
        critic(input_ids=ids).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in critic.own_parameters().items()})
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)
