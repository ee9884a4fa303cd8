"""The modules an online-RL run trains or reads, and how they are prepared.

Why float32 by default: transformers 5 loads a checkpoint in its stored dtype (`dtype="auto"`), so a bf16
checkpoint given by path would be fully fine-tuned *in* bf16, where an update of lr 3e-6 on a weight of
size ~1 is below bf16's resolution (8 bits of mantissa) and is mostly lost. Weights stay float32 unless
`model_init_kwargs` says otherwise; `bf16`/`fp16` choose the compute precision (autocast) only.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn


def init_kwargs(args) -> dict:
    """`from_pretrained` keyword arguments for models given as paths: ``model_init_kwargs`` with dtype float32
    unless it names one."""
    kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
    kwargs.setdefault("dtype", torch.float32)
    return kwargs


def load_causal_lm(model, args) -> nn.Module:
    """A causal LM as given (a module), or loaded from a path with `init_kwargs`."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(model), **init_kwargs(args))
    return model


def compute_dtype(args) -> torch.dtype | None:
    """The dtype mixed precision computes in (``bf16``/``fp16``), or None for full precision."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def frozen_in_compute_dtype(model: nn.Module, args) -> nn.Module:
    """A frozen model (the reference) with its float32 weights cast to the compute dtype. It never trains, so it
    needs no float32 master copy: autocast would cast each weight to that dtype for every matmul anyway, and the
    copy halves its memory (a 1.5B reference: 6 GB in float32, 3 GB in bf16). Quantized models are left alone."""
    dtype = compute_dtype(args)
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    quantized = any(
        getattr(p, "quant_state", None) is not None or p.dtype in (torch.uint8, torch.int8)
        for p in model.parameters()
    )
    if dtype is not None and floats == {torch.float32} and not quantized:
        model.to(dtype)
    return model


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: `nn.Dropout` modules and the attention dropout that attention layers apply
    functionally (``module.attention_dropout``, read only in training mode)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    config = getattr(model, "config", None)
    if config is not None and isinstance(getattr(config, "attention_dropout", None), float):
        config.attention_dropout = 0.0


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing without re-entrant autograd (works with frozen inputs, e.g. adapters)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextlib.contextmanager
def same_dropout_masks(seed: int | None, device: torch.device):
    """Within the block, random numbers (hence dropout masks) depend only on ``seed``; the global RNG state is
    restored afterwards. With dropout on, the rollout's pi_old pass and every update pass of one micro batch
    share a seed, so their ratio measures only the change of the weights (and starts at exactly 1).
    ``seed=None`` does nothing."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
