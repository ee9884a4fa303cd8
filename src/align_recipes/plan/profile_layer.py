"""The profile as a recipe layer: the values a hardware profile sets under the recipe, each with a reason.

`layer_for` turns the profile's own `model:`/`train:` keys, the size rule for this model (adapter,
quantization, extra keys), the precision full fine-tuning needs, the attention kernel, Liger kernels and
the vLLM policy into one layer that `plan.load_plan` merges below the recipe (docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

from align_recipes.plan.hardware import (
    flash_attention_status,
    package_version,
    vllm_cpu_build,
    vllm_status,
)
from align_recipes.plan.model_size import human
from align_recipes.plan.profiles import Change, Profile, Rule, reason_context, select_rule
from align_recipes.plan.sections import ADAPTER_WORDS, quantization_for


def _fmt(text: str, context: dict[str, str]) -> str:
    try:
        return text.format(**context)
    except (KeyError, IndexError, ValueError):
        return text


def _rule_reason(profile: Profile, rule: Rule, params: float, what: str) -> str:
    memory = f"{profile.gpu.memory_gb:.0f} GB" if profile.gpu else "CPU"
    if rule.min_gpus and profile.gpu:
        memory = f"{profile.gpu.count}x {memory}"
    if rule.lower is not None and params > rule.lower:
        size = f"{human(params)} params > {human(rule.lower)}"
    elif rule.max_params is not None:
        size = f"{human(params)} params ≤ {human(rule.max_params)}"
    else:
        size = f"{human(params)} params"
    extra = f" ({_fmt(rule.why, reason_context(profile))})" if rule.why else ""
    return f"{size} on {memory}: {what}{extra}"


def layer_for(
    profile: Profile, algorithm, model_wish: dict, params: float | None
) -> tuple[dict, list[Change]]:
    """The profile's values as a recipe layer (below the recipe), and every value it sets with a reason.

    `params` is the model's estimated size (None: unknown, size rules skipped). `model_wish` is the
    recipe's own model section (after overrides): the profile keeps its choices consistent with what
    the recipe already decided (an explicit `adapter: lora` gets no 4-bit quantization from a QLoRA
    rule; `adapter: full` gets fp32 master weights under fp16 autocast)."""
    context = reason_context(profile)
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    reasons: dict[str, str] = {}

    def put(key: str, value: Any, why: str) -> None:
        section, _, name = key.partition(".")
        (model if section == "model" else train)[name] = value
        reasons[key] = why

    default_why = f"profile {profile.name}" + (f" (auto: {profile.detected})" if profile.detected else "")
    for section, values in (("model", profile.model), ("train", profile.train)):
        for key, value in values.items():
            put(f"{section}.{key}", value, _fmt(profile.why.get(f"{section}.{key}", default_why), context))

    # Size rules: adapter, quantization and the rule's own keys.
    rule = select_rule(profile, params)
    wished_adapter = model_wish.get("adapter")
    if rule is not None:
        if rule.adapter:
            put(
                "model.adapter",
                rule.adapter,
                _rule_reason(profile, rule, params, ADAPTER_WORDS[rule.adapter]),
            )
        quantization = rule.quantization or quantization_for(rule.adapter)
        # An adapter the recipe chose itself gets no quantization from a rule meant for another adapter.
        if quantization and wished_adapter in (None, rule.adapter) and "quantization" not in model_wish:
            put(
                "model.quantization",
                quantization,
                _rule_reason(
                    profile,
                    rule,
                    params,
                    f"{quantization} base weights for {ADAPTER_WORDS[rule.adapter]}"
                    if rule.adapter
                    else f"{quantization} base weights",
                ),
            )
        for section, values in (("model", rule.model), ("train", rule.train)):
            for key, value in values.items():
                put(f"{section}.{key}", value, _rule_reason(profile, rule, params, f"{key} {value}"))
    final_adapter = wished_adapter or model.get("adapter") or "full"

    # Full fine-tuning keeps fp32 master weights; half-precision weights are for frozen bases.
    dtype = model.get("dtype")
    if final_adapter == "full" and dtype in ("float16", "bfloat16") and "dtype" not in model_wish:
        mixed = "fp16" if dtype == "float16" else "bf16"
        put(
            "model.dtype",
            "float32",
            f"full fine-tuning keeps fp32 master weights under {mixed} autocast"
            + (
                " (fp16 gradients cannot be unscaled)"
                if mixed == "fp16"
                else " (bf16 weights would round away small AdamW updates)"
            ),
        )

    # Attention kernel: FlashAttention only where it runs and is installed.
    attention = model.get("attn_implementation")
    if attention and attention.startswith("flash_attention"):
        ok, status = flash_attention_status(attention, profile.gpu)
        if ok:
            reasons["model.attn_implementation"] += f"; {status}"
        else:
            put("model.attn_implementation", "sdpa", f"{status}: PyTorch sdpa instead")

    # Liger kernels on GPUs, for the trainers that support them.
    if profile.gpu is not None and getattr(algorithm, "liger", False):
        put("train.use_liger_kernel", *_liger_choice())

    # Generation with vLLM for online algorithms.
    if getattr(algorithm, "generates", False):
        for key, value, why in _vllm_choice(profile, model_wish, params):
            put(key, value, why)

    changes = [
        Change(key, (model if key.startswith("model.") else train)[key.partition(".")[2]], why)
        for key, why in reasons.items()
    ]
    return {"model": model, "train": train}, changes


def _liger_choice() -> tuple[bool, str]:
    version = package_version("liger-kernel")
    if version:
        return True, (
            f"liger-kernel {version}: Triton kernels for RMSNorm, RoPE and SwiGLU cut activation memory "
            "and time (TRL already computes the LM head's loss in chunks)"
        )
    return False, (
        "liger-kernel is not installed: `pip install 'align-recipes[liger]'` for Triton kernels that cut "
        "activation memory (off without it)"
    )


def server_gpus(profile: Profile, params: float | None) -> int:
    """GPUs a dedicated vLLM server takes (its tensor-parallel size): enough for the bf16 weights, at most half."""
    gpu, tp = profile.gpu, 1
    if params is not None:
        while tp * 2 <= max(1, gpu.count // 2) and params * 2 / 1e9 > 0.6 * gpu.memory_gb * tp:
            tp *= 2
    return tp


def _vllm_choice(profile: Profile, model_wish: dict, params: float | None) -> list[tuple[str, Any, str]]:
    policy = profile.vllm or {}
    context = reason_context(profile)
    mode = str(policy.get("mode", "off"))
    off = lambda why: [("train.use_vllm", False, why)]  # noqa: E731
    if profile.gpu is None or mode == "off":
        if profile.gpu is None and vllm_cpu_build():
            # vLLM's CPU build runs here, but loading it costs more than it saves on the models CPUs train.
            return off("vLLM's CPU build is installed but off on CPU unless asked (train.use_vllm=true)")
        return off(_fmt(policy.get("why") or "vLLM needs a CUDA GPU: generation uses transformers", context))
    usable, status = vllm_status()
    if not usable:
        return off(f"{status}: generation uses transformers' generate")
    min_params = float(policy.get("min_params") or 0)
    if params is not None and params < min_params:
        return off(
            f"{human(params)} params < {human(min_params)}: transformers' generate is fast enough, "
            "vLLM start-up would dominate"
        )
    if model_wish.get("quantization") == "8bit":
        return off("8-bit bitsandbytes weights cannot be synced into vLLM: generation uses transformers")
    gpu = profile.gpu
    if gpu.count >= 2:
        tp = server_gpus(profile, params)
        name = model_wish.get("name_or_path", "MODEL")
        serve = ",".join(str(i) for i in range(tp))
        rest = ",".join(str(i) for i in range(tp, gpu.count))
        command = (
            f"CUDA_VISIBLE_DEVICES={serve} trl vllm-serve --model {name} --tensor-parallel-size {tp}; "
            f"then CUDA_VISIBLE_DEVICES={rest} accelerate launch --config_file configs/accelerate/multi_gpu.yaml "
            f"--num_processes {gpu.count - tp} -m align_recipes train RECIPE"
        )
        why = (
            f"{gpu.count} GPUs: vLLM server on {tp} GPU(s), training on {gpu.count - tp}; "
            f"start the server first: {command}"
        )
        return [
            ("train.use_vllm", True, f"{status}; {why}"),
            (
                "train.vllm_mode",
                "server",
                f"{gpu.count} GPUs: a dedicated generation server "
                "(colocate instead: train.vllm_mode=colocate)",
            ),
        ]
    utilization = float(policy.get("gpu_memory_utilization", 0.3))
    return [
        ("train.use_vllm", True, f"{status}; generation is most of RL time, vLLM speeds it up"),
        ("train.vllm_mode", "colocate", f"one {gpu.name}: vLLM shares the GPU with training"),
        (
            "train.vllm_gpu_memory_utilization",
            utilization,
            f"vLLM takes {utilization:.0%} of {gpu.memory_gb:.0f} GB, training keeps the rest",
        ),
    ]
