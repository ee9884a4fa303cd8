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

A vLLM server is synced by TRL over NCCL, which needs CUDA. On vLLM's CPU build the weights are written as
one safetensors file into a folder on shared memory instead, and the server reloads them with the same
layerwise reload (``reload_weights(weights_path=…)``), reached through its dev-mode ``/collective_rpc``.

Under FSDP2 every rank holds a shard, so a sync to a server is a collective: every rank takes part in gathering
the whole weights (`gathered_weights`), rank 0 alone writes them and asks the server to reload, and every rank
waits for that before it samples again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

LORA_BASE = ".base_layer"
WEIGHTS_FILE = "model.safetensors"
# What vLLM's checkpoint loader reads besides the weights when it reloads from a folder.
CONFIG_FILES = ("config.json", "generation_config.json")


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


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights: what vLLM holds (rl/vllm_engine.dtype_name)."""
    found = (p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    return next(found, torch.float32)


def _dequantized(param: torch.Tensor) -> torch.Tensor | None:
    """A bitsandbytes 4-bit weight (QLoRA's packed ``Params4bit``) as the float32 matrix its layer computes
    with (bitsandbytes' ``matmul_4bit`` dequantizes the same way), or None for a plain tensor."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return None
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(param.data, state).float()


@torch.no_grad()
def policy_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, tensor) for every weight vLLM holds: plain parameters as they are, LoRA-wrapped base
    weights merged out of place. Under QLoRA the 4-bit base weights are dequantized first (vLLM holds them
    unquantized, in the policy's floating dtype: rl/vllm_engine.py). Adapter tensors themselves are skipped
    (vLLM has no such parameters)."""
    from peft import PeftModel

    dtype, peft = _float_dtype(model), isinstance(model, PeftModel)
    layers = _lora_layers(model) if peft else {}
    for name, param in model.named_parameters():
        if peft and ("lora_" in name or "original_module" in name):
            continue
        owner, _, leaf = name.rpartition(".")
        layer = layers.get(owner.removesuffix(LORA_BASE)) if owner.endswith(LORA_BASE) else None
        delta = _delta(layer) if layer is not None and leaf == "weight" else None
        full = _dequantized(param)
        if delta is None and full is None:
            yield _vllm_name(name), param.detach()
        elif full is None:
            yield _vllm_name(name), (param.float() + delta.reshape(param.shape)).to(param.dtype)
        else:
            yield _vllm_name(name), (full if delta is None else full + delta.reshape(full.shape)).to(dtype)


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


# --- server mode on vLLM's CPU build ------------------------------------------------------------------


def _weights_folder(config_source: str | None) -> str:
    """A folder on shared memory (tmpfs: the file never reaches a disk) with the model's config beside the
    weights; removed when the process exits."""
    import atexit
    import shutil

    root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="align-recipes-vllm-", dir=root)
    atexit.register(shutil.rmtree, folder, True)
    for name in CONFIG_FILES:
        source = Path(config_source or "") / name
        if source.is_file():
            shutil.copy(source, Path(folder) / name)
    return folder


def push_weights(session, base_url: str, model, folder: str, timeout: float = 600.0) -> None:
    """Write ``model``'s weights (vLLM's names, LoRA merged out of place) to ``folder`` and have the server
    reload them in place, then drop its cached prefixes."""
    tensors = {name: tensor.contiguous() for name, tensor in policy_weights(model)}
    reload_from_file(session, base_url, tensors, folder, timeout)


def gathered_weights(model: nn.Module, main: bool) -> dict[str, torch.Tensor] | None:
    """The whole policy under vLLM's names (LoRA merged out of place) in the main process, None in the others.

    Under FSDP2 a collective that every rank must enter. Full weights: torch's full state dict with CPU offload
    (one parameter gathered at a time, kept by rank 0 on the CPU, so no rank holds the whole model on its
    device). With an adapter the merge needs a layer's base and adapter weights together: the policy is
    gathered whole for the moment of the copy (rl/sharding.py `whole_weights`, as generation on whole weights
    does), and rank 0 copies the merged weights to the CPU."""
    from align_recipes.rl import sharding

    if not sharding.is_fsdp2(model):
        return {name: tensor.contiguous() for name, tensor in policy_weights(model)} if main else None
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with sharding.whole_weights(model):
            if not main:
                return None
            return {name: tensor.to("cpu", copy=True).contiguous() for name, tensor in policy_weights(model)}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not main:
        return None
    # Parameters only, each once: a tied head is one parameter (vLLM ties it itself; safetensors refuses
    # two names for one tensor), and buffers are not weights vLLM loads.
    names = {_vllm_name(name) for name, _ in model.named_parameters()}
    return {_vllm_name(name): t.contiguous() for name, t in state.items() if _vllm_name(name) in names}


def reload_from_file(session, base_url: str, tensors: dict, folder: str, timeout: float = 600.0) -> None:
    """Write ``tensors`` as the folder's one safetensors file and have the server at ``base_url`` reload its
    weights from it in place, then drop its cached prefixes."""
    from safetensors.torch import save_file

    save_file(tensors, str(Path(folder) / WEIGHTS_FILE))
    body = {
        "method": "reload_weights",
        "kwargs": {"weights_path": folder, "is_checkpoint_format": True},
        "timeout": timeout,
    }
    response = session.post(f"{base_url}/collective_rpc", json=body, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(
            f"the vLLM server at {base_url} refused the weight reload ({response.status_code}: "
            f"{response.text[:300]}); it must run with VLLM_SERVER_DEV_MODE=1 (as `trl vllm-serve` sets)"
        )
    session.post(f"{base_url}/reset_prefix_cache", timeout=timeout).raise_for_status()


def model_source(model) -> str | None:
    base = getattr(model, "get_base_model", lambda: model)()
    return getattr(base, "name_or_path", None) or getattr(
        getattr(base, "config", None), "_name_or_path", None
    )


def _sync_by_file(holder, model) -> None:
    """Every rank: gather (a collective under FSDP2); the main process writes and has the server reload; all
    wait for it, so that no rank samples from the old weights. ``holder`` has the accelerator and, in the main
    process, TRL's ``vllm_client``."""
    accelerator = holder.accelerator
    weights = gathered_weights(model, accelerator.is_main_process)
    if weights is not None:
        client = holder.vllm_client
        if getattr(holder, "_weights_folder", None) is None:
            holder._weights_folder = _weights_folder(model_source(model))
        reload_from_file(client.session, client.base_url, weights, holder._weights_folder)
    accelerator.wait_for_everyone()


def sync_server_by_file(engine) -> None:
    """TRL `VLLMGeneration.sync_weights` for server mode on vLLM's CPU build (module docstring)."""
    _sync_by_file(engine, engine.model)


def move_model_by_file(trainer) -> None:
    """TRL online DPO's ``_move_model_to_vllm`` in server mode on vLLM's CPU build."""
    _sync_by_file(trainer, trainer.model)


@contextlib.contextmanager
def without_nccl_communicator() -> Iterator[None]:
    """While TRL builds its server client: no NCCL weight-transfer group (CUDA only); weights go by file.
    Online DPO first asks ``torch.accelerator.current_accelerator().type`` for the group's device, which is
    None on a CPU-only machine: it reads "cpu" meanwhile (the group it is for is skipped)."""
    import torch
    from trl.generation.vllm_client import VLLMClient

    original = VLLMClient.init_communicator
    VLLMClient.init_communicator = lambda self, device=0: None
    accelerator = getattr(torch, "accelerator", None)
    current = getattr(accelerator, "current_accelerator", None)
    if current is not None and current() is None:
        accelerator.current_accelerator = lambda *args, **kwargs: torch.device("cpu")
    try:
        yield
    finally:
        VLLMClient.init_communicator = original
        if current is not None:
            accelerator.current_accelerator = current


def install_server(engine) -> None:
    """A TRL `VLLMGeneration` in server mode syncs by file (`sync_server_by_file`)."""
    if engine.mode == "server":
        engine.sync_weights = types.MethodType(sync_server_by_file, engine)


def install_online_dpo_server(trainer) -> None:
    """A TRL online DPO trainer in server mode syncs by file (`move_model_by_file`)."""
    if getattr(trainer, "vllm_mode", None) == "server":
        trainer._move_model_to_vllm = types.MethodType(move_model_by_file, trainer)
