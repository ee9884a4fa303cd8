"""The arguments our runs add to the vLLM engine that TRL builds.

TRL constructs vLLM's ``LLM`` itself (`VLLMGeneration`, online DPO) with a fixed argument list. On vLLM's CPU
build three of its defaults do not fit: ``dtype="auto"`` downcasts a float32 checkpoint to bfloat16 (the
sampler would then not be the float32 policy that trains), the KV cache is a share of the machine's whole
memory (``gpu_memory_utilization`` means host memory there), and the first batch is compiled with
torch.compile (a minute of start-up for the tiny model). `llm_arguments` adds ours while TRL builds the
engine; an argument both give takes our value.

Under QLoRA TRL asks vLLM for ``quantization="bitsandbytes"``, which vLLM 0.30 no longer lists ("Unknown
quantization method"). We ask for none: every sync pushes the dequantized base plus the LoRA delta
(rl/vllm_sync.py `policy_weights`), so vLLM must hold plain weights in the policy's floating dtype, and it
samples from exactly what the trainer computes with. vLLM then loads the base checkpoint unquantized (its
weights take the full-precision size in vLLM's memory).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Iterator, MutableMapping
from typing import Any

# Modules of TRL 1.16 that call vLLM's LLM(...) for the trainers we run.
LLM_CALLERS = ("trl.generation.vllm_generation", "trl.experimental.online_dpo.online_dpo_trainer")
# KV cache on CPU: enough for the tiny recipes' batches and a 0.5B model's rollouts, small beside training.
CPU_KV_CACHE_BYTES = 1 << 30


def on_cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build (its platform check reads the same thing)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_arguments(
    dtype: str | None, cpu: bool, max_num_seqs: int | None = None, quantized: bool = False
) -> dict[str, Any]:
    """Extra ``LLM`` arguments: the policy's dtype (vLLM must sample from the weights that train), and on
    CPU eager mode and a fixed KV cache; no quantization for a 4-bit policy (module docstring)."""
    extra: dict[str, Any] = {}
    if dtype:
        extra["dtype"] = dtype
    if quantized:
        extra["quantization"] = None
    if cpu:
        extra.update(enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    if max_num_seqs:
        extra["max_num_seqs"] = max_num_seqs
    return extra


@contextlib.contextmanager
def llm_arguments(**extra: Any) -> Iterator[None]:
    """While the block runs, every ``LLM(...)`` that TRL's modules make gets ``extra`` on top of TRL's own."""
    patched = []
    for name in LLM_CALLERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(module, "LLM", None)
        if original is None:
            continue

        def build(*args, _original=original, **kwargs):
            return _original(*args, **{**kwargs, **extra})

        module.LLM = build
        patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.LLM = original


def dtype_name(model) -> str | None:
    """'float32' / 'bfloat16' / … of a loaded model's floating-point weights (a QLoRA policy's packed 4-bit
    weights are uint8), None for a path or an empty model."""
    try:
        found = (p.dtype for p in model.parameters() if p.dtype.is_floating_point)
        return str(next(found)).removeprefix("torch.")
    except (AttributeError, StopIteration):
        return None


def holds_4bit(model) -> bool:
    """The policy holds bitsandbytes 4-bit weights (QLoRA)."""
    try:
        return any(getattr(p, "quant_state", None) is not None for p in model.parameters())
    except AttributeError:
        return False


def own_rendezvous_port(environ: MutableMapping[str, str] = os.environ) -> None:
    """Give a run that no launcher started a rendezvous port of its own. A colocated engine makes a
    one-process torch.distributed group at ``MASTER_PORT``; TRL picks 29500 when that port looks free, so two
    runs starting together on one machine both take it and the second fails (EADDRINUSE: seen with two
    colocated runs started at once). The OS hands out an unused port instead. A launcher's ``MASTER_PORT``
    (accelerate, torchrun) is left alone; ``0`` and ``auto`` mean "pick one", as TRL reads them."""
    if environ.get("MASTER_PORT", "").strip().lower() not in {"", "0", "auto"}:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        environ["MASTER_PORT"] = str(probe.getsockname()[1])


@contextlib.contextmanager
def for_policy(model, enabled: bool = True) -> Iterator[None]:
    """`llm_arguments` for an engine that samples from ``model`` (a no-op when vLLM is off), with a
    rendezvous port of its own (`own_rendezvous_port`). On the CPU build a server client also skips TRL's
    NCCL weight-transfer group (CUDA only): weights go by file there (rl/vllm_sync.py)."""
    if not enabled:
        yield
        return
    from align_recipes.rl import vllm_sync

    own_rendezvous_port()
    cpu = on_cpu_build()
    with contextlib.ExitStack() as stack:
        arguments = engine_arguments(dtype_name(model), cpu=cpu, quantized=holds_4bit(model))
        stack.enter_context(llm_arguments(**arguments))
        if cpu:
            stack.enter_context(vllm_sync.without_nccl_communicator())
        yield


def install_sync(engine) -> None:
    """A TRL `VLLMGeneration`'s weight sync that works on this backend: the layerwise reload when colocated
    (rl/vllm_sync.py), by file through the server's reload on the CPU build, and TRL's own NCCL sync to a
    server elsewhere."""
    from align_recipes.rl import vllm_sync

    vllm_sync.install(engine)
    if on_cpu_build():
        vllm_sync.install_server(engine)


def stop_token_ids(trainer) -> list[int]:
    """The EOS set the trainer's transformers path stops on: the tokenizer's EOS and the generation config's."""
    ids = getattr(trainer, "eos_token_ids", None)
    if ids:
        return list(ids)
    found = getattr(getattr(trainer.model, "generation_config", None), "eos_token_id", None)
    found = [found] if isinstance(found, int) else list(found or [])
    eos = getattr(trainer.processing_class, "eos_token_id", None)
    return ([eos] if eos is not None and eos not in found else []) + found


def adopt(trainer) -> None:
    """A TRL trainer's vLLM engine syncs through vLLM's layerwise reload (rl/vllm_sync.py) and stops on the
    trainer's EOS set (vLLM would otherwise stop on the checkpoint's generation config only). GRPO and RLOO
    hold a `VLLMGeneration`; online DPO holds its own ``LLM`` and ``SamplingParams``."""
    from align_recipes.rl import vllm_sync

    engine = getattr(trainer, "vllm_generation", None)
    if engine is not None:
        install_sync(engine)
        engine.generation_kwargs.setdefault("stop_token_ids", stop_token_ids(trainer))
        return
    if getattr(trainer, "llm", None) is not None or getattr(trainer, "vllm_client", None) is not None:
        vllm_sync.install_online_dpo(trainer)
        if on_cpu_build():
            vllm_sync.install_online_dpo_server(trainer)
        params = getattr(trainer, "generation_config", None)
        if params is not None and hasattr(params, "_all_stop_token_ids") and not params.stop_token_ids:
            ids = stop_token_ids(trainer)
            params.stop_token_ids = ids
            params._all_stop_token_ids.update(ids)  # what vLLM's scheduler reads; set once in __post_init__
        if getattr(trainer, "vllm_client", None) is not None:
            stop_server_on(trainer.vllm_client, stop_token_ids(trainer))


def stop_server_on(client, ids: list[int]) -> None:
    """A TRL `VLLMClient` whose ``generate`` and ``chat`` ask the server to stop on ``ids`` too. Online DPO in
    server mode sends only ``args.generation_kwargs`` (not its `SamplingParams`), so the server would stop on
    the checkpoint's generation config alone; stop ids the recipe's generation_kwargs give win."""
    for name in ("generate", "chat"):
        original = getattr(client, name, None)
        if original is None:
            continue

        def call(*args, _original=original, generation_kwargs=None, **kwargs):
            merged = {"stop_token_ids": list(ids), **(generation_kwargs or {})}
            return _original(*args, generation_kwargs=merged, **kwargs)

        setattr(client, name, call)
