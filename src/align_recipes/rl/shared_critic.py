"""PPO's critic under LoRA: a second adapter on the policy's own base model, plus a value head.

Why: with an adapter the base weights never train, so a deep copy of the body (what a full fine-tune's critic
is) only duplicates frozen weights: a second 1.5B body for a 1.5B policy. Here the policy's PEFT model gets a
second LoRA adapter, ``critic``; the critic's forward runs the same base layers with that adapter active instead
of the policy's (`adapter_active`), and a float32 `ValueHead` head reads the last hidden states. Only the critic
adapter and the head are its own parameters; its checkpoint file holds just those (``value_model.safetensors``).

Two details keep it exact:
- switching adapters changes only which adapter each LoRA layer applies, never ``requires_grad`` (PEFT's
  ``set_adapter`` would freeze the other adapter), so one optimizer trains both adapters;
- with activation checkpointing, a layer is recomputed during the backward, when another adapter may be active:
  the checkpoint's ``context_fn`` re-activates, for the recomputation, the adapter that was active in its forward.
The policy's saves hold only its own adapter (`policy_adapter_only`): a checkpoint or final model folder looks
as it does with a separate critic, and transformers' resume path never calls ``set_adapter``.
FSDP shards the policy and the critic as two roots, which cannot share modules: there the critic stays a copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os

import torch
from torch import nn

from align_recipes.rl.value import ValueHead, backbone_of

CRITIC_ADAPTER = "critic"


def _switchable(model: nn.Module) -> list[nn.Module]:
    """PEFT's per-layer adapter holders (LoRA layers, modules_to_save wrappers): each reads ``_active_adapter``."""
    return [m for m in model.modules() if hasattr(m, "_active_adapter")]


def active_adapters_of(model: nn.Module) -> str | list[str] | None:
    layers = _switchable(model)
    return copy.copy(layers[0]._active_adapter) if layers else None


@contextlib.contextmanager
def adapter_active(model: nn.Module, name: str | list[str] | None):
    """Inside, every PEFT layer of ``model`` applies adapter ``name`` (a layer without it applies none); the
    previous choice is restored after. ``requires_grad`` is left alone."""
    layers = _switchable(model) if name is not None else []
    saved = [m._active_adapter for m in layers]
    for m in layers:
        m._active_adapter = name
    try:
        yield
    finally:
        for m, previous in zip(layers, saved):
            m._active_adapter = previous


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """PEFT's ``disable_adapter`` (the reference is the policy without its adapter), keeping every parameter's
    ``requires_grad``: on leaving, PEFT re-enables through ``set_adapter``, which would freeze the critic's adapter."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _recompute_with_forward_adapter(model: nn.Module):
    """A checkpoint ``context_fn``: nothing in the forward; the forward's adapter during the recomputation."""
    return contextlib.nullcontext(), adapter_active(model, active_adapters_of(model))


def fsdp_requested(args) -> bool:
    """Whether this launch shards with FSDP (known before the Trainer and its accelerator exist)."""
    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in (
        "1",
        "true",
    )


class SharedBaseCritic(ValueHead):
    """A value head on the policy's own body, run with the ``critic`` adapter (see the module docstring)."""

    shares_policy_base = True

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> torch.Tensor:
        with adapter_active(self.backbone, CRITIC_ADAPTER):
            return super().forward(input_ids, attention_mask, position_ids, **kwargs)

    def own_parameters(self) -> dict[str, nn.Parameter]:
        """The critic adapter's tensors and the head (the body and the policy's adapter belong to the policy)."""
        return {
            name: p
            for name, p in self.named_parameters()
            if name.startswith("head.") or f".{CRITIC_ADAPTER}." in name
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.own_parameters().items()}

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """Checkpointing for the shared body (the policy's layers too), recomputing with the forward's adapter."""
        model = self.backbone
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        ctx = functools.partial(_recompute_with_forward_adapter, model)
        options = {"use_reentrant": False, "context_fn": ctx}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def critic_on_policy_base(policy: nn.Module, peft_config) -> SharedBaseCritic:
    """Add the ``critic`` LoRA adapter (the policy's settings, no modules_to_save) to a PEFT ``policy`` and
    return the critic reading its body; the policy's own adapter stays the active one."""
    critic_config = copy.deepcopy(peft_config)
    critic_config.modules_to_save = None
    policy.add_adapter(CRITIC_ADAPTER, critic_config)
    critic = SharedBaseCritic(backbone_of(policy), policy.get_base_model().config.hidden_size)
    for p in critic.own_parameters().values():
        p.requires_grad_(True)  # add_adapter leaves a non-active adapter frozen
    return critic


@contextlib.contextmanager
def policy_adapter_only(model: nn.Module):
    """Inside, ``model.save_pretrained`` (a PEFT policy sharing its base with the critic) writes only the policy's
    adapter(s), not the critic's (which PEFT would put in a ``critic/`` subfolder)."""
    names = [n for n in getattr(model, "peft_config", {}) if n != CRITIC_ADAPTER]
    if CRITIC_ADAPTER not in getattr(model, "peft_config", {}):
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, selected_adapters=names)
    try:
        yield
    finally:
        del model.save_pretrained
