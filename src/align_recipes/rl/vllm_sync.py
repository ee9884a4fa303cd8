"""Pushing the policy's weights into a colocated vLLM engine, the same way on every backend vLLM runs on.

TRL 1.16 syncs by calling the vLLM model's ``load_weights`` directly. That only works where vLLM kept the
checkpoint-format parameters: its CPU backend repacks every linear weight for oneDNN after loading and drops
the original parameters (``'Parameter' object has no attribute 'weight_loader'``). vLLM's layerwise reload
(``model_runner.reload_weights``, vllm/model_executor/model_loader/reload) puts checkpoint-format parameters
back for the duration of the load, runs the backend's own post-load processing (the repacking) layer by
layer, and copies the result into the original storage. It is the same call on GPU, so there is one sync.

Under LoRA, TRL merges the adapter into the base weights, reads them and unmerges again. In bf16 that round
trip is lossy, and it runs at every sync: the frozen base (which is also the KL reference under LoRA) drifts.
`policy_weights` computes each merged weight out of place instead (base + delta, in float32, cast once), so
the trainer's base weights are never written.
"""

from __future__ import annotations

import types
from collections.abc import Iterator

import torch
from torch import nn

LORA_BASE = ".base_layer"


def _vllm_name(name: str) -> str:
    """A PEFT/checkpoint-wrapper parameter name as vLLM's checkpoint loader expects it."""
    name = name.removeprefix("base_model.model.").replace(LORA_BASE, "")
    return name.replace("_checkpoint_wrapped_module.", "").replace("modules_to_save.default.", "")


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def _delta(layer) -> torch.Tensor | None:
    """The active adapters' weight delta of one LoRA layer in float32, or None when none applies."""
    if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False):
        return None
    deltas = [layer.get_delta_weight(name).float() for name in layer.active_adapters if name in layer.lora_A]
    return sum(deltas) if deltas else None


@torch.no_grad()
def policy_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, tensor) for every weight vLLM holds: plain parameters as they are, LoRA-wrapped base
    weights merged out of place. Adapter tensors themselves are skipped (vLLM has no such parameters)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        for name, param in model.named_parameters():
            yield _vllm_name(name), param.detach()
        return
    layers = _lora_layers(model)
    for name, param in model.named_parameters():
        if "lora_" in name or "original_module" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        layer = layers.get(owner.removesuffix(LORA_BASE)) if owner.endswith(LORA_BASE) else None
        delta = _delta(layer) if layer is not None and leaf == "weight" else None
        if delta is None:
            yield _vllm_name(name), param.detach()
        else:
            yield _vllm_name(name), (param.float() + delta.reshape(param.shape)).to(param.dtype)


def _model_runner(llm):
    return llm.llm_engine.model_executor.driver_worker.model_runner


def reload_into(llm, model: nn.Module) -> None:
    """Load ``model``'s current weights into the colocated vLLM ``llm`` through the layerwise reload (module
    docstring) and drop cached prefixes computed with the old weights."""
    _model_runner(llm).reload_weights(weights_iterator=policy_weights(model), is_checkpoint_format=True)
    llm.reset_prefix_cache()


def sync_colocated(engine) -> None:
    """TRL `VLLMGeneration.sync_weights` for colocate mode through vLLM's layerwise reload (module docstring).
    Unsharded policies only: the FSDP path does not generate with vLLM (rl/base.py refuses it)."""
    if engine.enable_sleep_mode:
        engine.llm.wake_up(tags=["weights"])
        engine._llm_weights_sleeping = False
    reload_into(engine.llm, engine.model)


def move_model_colocated(trainer) -> None:
    """TRL online DPO's ``_move_model_to_vllm`` in colocate mode: it builds its own ``LLM`` (``trainer.llm``)
    and loads weights with the same direct ``load_weights`` that fails on the CPU build."""
    reload_into(trainer.llm, trainer.model)


def install(engine) -> None:
    """Replace a colocated TRL `VLLMGeneration`'s ``sync_weights`` with `sync_colocated` (server mode is left
    as TRL has it)."""
    if engine.mode == "colocate":
        engine.sync_weights = types.MethodType(sync_colocated, engine)


def install_online_dpo(trainer) -> None:
    """Replace a colocated TRL online DPO trainer's ``_move_model_to_vllm`` with `move_model_colocated`."""
    if getattr(trainer, "vllm_mode", None) == "colocate" and getattr(trainer, "llm", None) is not None:
        trainer._move_model_to_vllm = types.MethodType(move_model_colocated, trainer)
