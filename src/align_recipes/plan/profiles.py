"""Hardware profiles: named YAML layers (configs/profiles/*.yaml) between TRL's defaults and the recipe.

A profile is a partial recipe (`model:` and `train:` keys, each with a reason in `why:`), the GPU it
describes (`gpu:`), size rules (`rules:`, keyed by the model's parameter count: adapter,
quantization, micro-batch cap, extra keys) and a vLLM policy (`vllm:`) for the algorithms that
generate. `auto` picks one from what `nvidia-smi` reports (name, memory, compute capability, count),
without importing torch; `--profile NAME` forces one. docs/scaling.md describes the format.

Everything here is decided from text: the facts about the machine come from `hardware` and the
model's size from `model_size`, neither of which imports torch, so `validate` and `show` stay fast.

The public functions, in the order `plan.load_plan` calls them:
  resolve(name)                                    the Profile (auto: detected)
  layer_for(profile, algorithm, wish, params)      the profile's layer under the recipe, a reason per value
  adjust_batch(profile, recipe, …, params)         after the merge: cap the micro-batch, keep the effective batch
  feasibility.check_compatible(profile, recipe, …) impossible combinations, each a RecipeError with its fix
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError, RecipeErrors, did_you_mean
from align_recipes.plan import rules, trl_fields
from align_recipes.plan.checking import FileContext, locate_in
from align_recipes.plan.hardware import (
    GPU,
    detect_gpus,
    flash_attention_status,
    package_version,
    vllm_cpu_build,
    vllm_status,
)
from align_recipes.plan.model_size import human
from align_recipes.plan.sections import ADAPTER_WORDS, quantization_for
from align_recipes.plan.yamlio import load_yaml

# The micro-batch caps in `rules:` are for sequences up to this length; longer ones scale them down.
MICRO_BATCH_REFERENCE_LENGTH = 1024


# --- data ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One size rule: applies to models up to `max_params` (and GPUs with at least `min_memory_gb`)."""

    max_params: float | None = None  # None: no upper bound (the last rule)
    min_memory_gb: float | None = None
    adapter: str | None = None
    quantization: str | None = None
    micro_batch: int | None = None
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    why: str = ""
    lower: float | None = None  # the previous rule's bound, for the reason text
    min_gpus: int | None = None  # only with at least this many GPUs (a rule for sharded full fine-tuning)
    sharding: str | None = None  # ddp | fsdp2 | zero2 | zero3: how to launch it (scaling.choose_launch)


@dataclass
class Profile:
    name: str
    path: Path | None
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    detected: str = ""  # for `auto`: what was detected and why this profile
    gpu: GPU | None = None  # None: CPU only
    match: tuple[str, ...] = ()  # lower-case substrings of nvidia-smi names that pick this profile
    why: dict[str, str] = field(default_factory=dict)  # "model.dtype" -> reason (with {gpu} {arch} {memory})
    rules: tuple[Rule, ...] = ()
    vllm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Change:
    key: str
    value: Any
    why: str


# --- reading profiles --------------------------------------------------------------------------------

# The profiles shipped with the package: a link to the repository's configs/profiles, which wheels
# (pip install without -e) copy into the package, so an installed align-recipes has them too.
PACKAGED_PROFILES = Path(__file__).parents[1] / "assets" / "profiles"


def profile_dirs() -> list[Path]:
    """Where profiles are looked up, first match wins: $ALIGN_RECIPES_PROFILES, the shipped profiles,
    then ./configs/profiles (a project's own profiles next to its recipes)."""
    dirs = []
    if os.environ.get("ALIGN_RECIPES_PROFILES"):
        dirs.append(Path(os.environ["ALIGN_RECIPES_PROFILES"]))
    dirs.append(PACKAGED_PROFILES)
    dirs.append(Path.cwd() / "configs" / "profiles")
    return [d for d in dict.fromkeys(d.resolve() for d in dirs) if d.is_dir()]


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


@functools.cache
def _read_path(name: str, path: Path) -> Profile:
    """A profile file as a Profile; every mistake in it reported at once (plan/profile_rules.py), with file:line."""
    data = load_yaml(path)
    context = FileContext(data if data is not None else {}, path, name)
    errors = rules.run(rules.PROFILE, context, lambda key: (path, locate_in(data, key)))
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    data = context.data
    raw_gpu = data.get("gpu")
    gpu = None
    if raw_gpu:
        gpu = GPU(
            name=str(raw_gpu.get("name", name.upper())),
            memory_gb=float(raw_gpu.get("memory_gb", 16)),  # YAML 1.1 reads 1.5e9 as a string
            compute_capability=float(raw_gpu.get("compute_capability", 8.0)),
            count=int(float(raw_gpu.get("count", 1))),
        )
    built, lower = [], None
    for raw in data.get("rules") or []:
        rule = Rule(
            max_params=_number(raw.get("max_params")),
            min_memory_gb=_number(raw.get("min_memory_gb")),
            adapter=raw.get("adapter"),
            quantization=raw.get("quantization"),
            micro_batch=int(float(raw["micro_batch"])) if raw.get("micro_batch") else None,
            model=dict(raw.get("model") or {}),
            train=dict(raw.get("train") or {}),
            why=str(raw.get("why") or ""),
            lower=lower,
            min_gpus=int(float(raw["min_gpus"])) if raw.get("min_gpus") else None,
            sharding=raw.get("sharding"),
        )
        built.append(rule)
        if rule.min_memory_gb is None and rule.min_gpus is None:
            lower = rule.max_params
    return Profile(
        name=name,
        path=path,
        description=str(data.get("description") or ""),
        model=dict(data.get("model") or {}),
        train=dict(data.get("train") or {}),
        gpu=gpu,
        match=tuple(str(m).lower() for m in data.get("match") or ()),
        why={str(k): str(v) for k, v in (data.get("why") or {}).items()},
        rules=tuple(built),
        vllm=dict(data.get("vllm") or {}),
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _read(name: str) -> Profile:
    paths = available()
    if name not in paths:
        raise RecipeError(
            f"unknown profile '{name}'",
            key="profile",
            fix=did_you_mean(name, [*paths, "auto"]) + f" (profiles: {', '.join(['auto', *paths])})",
        )
    return _read_path(name, paths[name])


def choose_profile(gpus: list[GPU], candidates: dict[str, Profile] | None = None) -> tuple[str, str]:
    """The profile name for the detected GPUs, and a one-line reason."""
    if not gpus:
        return "cpu", "no NVIDIA GPU found (nvidia-smi absent, silent or CUDA_VISIBLE_DEVICES empty)"
    first = gpus[0]
    seen = f"{len(gpus)}x {first.name} ({first.memory_gb:.0f} GB, {first.arch})"
    if candidates is None:
        candidates = {}
        for name in available():
            try:
                candidates[name] = _read(name)
            except (RecipeError, RecipeErrors):
                continue
    gpu_profiles = {n: p for n, p in candidates.items() if p.gpu is not None}
    lowered = first.name.lower()
    # Longest needle first: "a100" must not be taken for "a10", "l40" not for "l4".
    needles = sorted(((m, n) for n, p in gpu_profiles.items() for m in p.match), key=lambda mn: -len(mn[0]))
    for needle, name in needles:
        if re.search(rf"(?<![a-z0-9]){re.escape(needle)}(?![0-9])", lowered):
            return name, seen
    # Unknown card: the largest profile this GPU can honour (its capability and memory at least the profile's).
    fitting = [
        (p.gpu.memory_gb, p.gpu.compute_capability, n)
        for n, p in gpu_profiles.items()
        if p.gpu.compute_capability <= first.compute_capability and p.gpu.memory_gb <= first.memory_gb * 1.05
    ]
    if first.compute_capability < 8.0:  # no bf16: only an fp16 profile will do
        fitting = [f for f in fitting if f[1] < 8.0] or fitting
    if fitting:
        return max(fitting)[2], seen + ", matched by memory and compute capability"
    smallest = min(gpu_profiles.items(), key=lambda np: np[1].gpu.memory_gb, default=(None, None))[0]
    return (smallest or "cpu"), seen + ", smaller than every profile: using the smallest"


def resolve(name: str, smi_output: str | None = None) -> Profile:
    """A profile by name, or `auto`: detected. A detected GPU replaces the profile's nominal one
    (real memory, compute capability and count); a forced GPU profile keeps its nominal GPU but
    takes the GPU count from the machine when the machine's GPUs are of that profile's kind."""
    if name != "auto":
        profile = _read(name)
        if profile.gpu is None:
            return profile
        gpus = detect_gpus(smi_output)
        if gpus and choose_profile(gpus)[0] == name:
            return replace(profile, gpu=replace(profile.gpu, count=len(gpus)))
        return profile
    gpus = detect_gpus(smi_output)
    picked, why = choose_profile(gpus)
    profile = _read(picked)
    gpu = None
    if gpus and profile.gpu is not None:
        first = gpus[0]
        gpu = GPU(
            name=first.name,
            memory_gb=first.memory_gb or profile.gpu.memory_gb,
            compute_capability=first.compute_capability,
            count=len(gpus),
        )
    return replace(profile, detected=why, gpu=gpu)


# --- the profile as a layer ------------------------------------------------------------------------------


def _context(profile: Profile) -> dict[str, str]:
    gpu = profile.gpu
    if gpu is None:
        return {"gpu": "CPU", "arch": "CPU", "memory": "host memory", "count": "0"}
    return {"gpu": gpu.name, "arch": gpu.arch, "memory": f"{gpu.memory_gb:.0f} GB", "count": str(gpu.count)}


def _fmt(text: str, context: dict[str, str]) -> str:
    try:
        return text.format(**context)
    except (KeyError, IndexError, ValueError):
        return text


def select_rule(profile: Profile, params: float | None) -> Rule | None:
    """The first rule whose max_params covers the model and whose min_memory_gb the GPU has."""
    if params is None:
        return None
    memory = profile.gpu.memory_gb if profile.gpu else math.inf
    count = profile.gpu.count if profile.gpu else 0
    for rule in profile.rules:
        if rule.min_memory_gb is not None and memory < rule.min_memory_gb:
            continue
        if rule.min_gpus is not None and count < rule.min_gpus:
            continue
        if rule.max_params is None or params <= rule.max_params:
            return rule
    return None


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
    extra = f" ({_fmt(rule.why, _context(profile))})" if rule.why else ""
    return f"{size} on {memory}: {what}{extra}"


def layer_for(
    profile: Profile, algorithm, model_wish: dict, params: float | None
) -> tuple[dict, list[Change]]:
    """The profile's values as a recipe layer (below the recipe), and every value it sets with a reason.

    `params` is the model's estimated size (None: unknown, size rules skipped). `model_wish` is the
    recipe's own model section (after overrides): the profile keeps its choices consistent with what
    the recipe already decided (an explicit `adapter: lora` gets no 4-bit quantization from a QLoRA
    rule; `adapter: full` gets fp32 master weights under fp16 autocast)."""
    context = _context(profile)
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
    context = _context(profile)
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


# --- after the merge: micro-batch ------------------------------------------------------------------------


def adjust_batch(
    profile: Profile, recipe: dict, sources: dict[str, str], algorithm, params: float | None
) -> list[Change]:
    """Cap the micro-batch at the profile's limit for this model size while KEEPING the recipe's effective
    batch (per_device_train_batch_size x gradient_accumulation_steps). Runs after the merge, because the
    recipe usually sets the micro-batch for another GPU; a micro-batch given on the command line is kept."""
    fields = trl_fields.config_fields(algorithm.config_name)
    if "per_device_train_batch_size" not in fields or "gradient_accumulation_steps" not in fields:
        return []
    rule = select_rule(profile, params)
    train = recipe.setdefault("train", {})

    def current(key: str) -> Any:
        return train.get(key, fields[key].default)

    label = f"profile:{profile.name}"
    if rule is None or not rule.micro_batch:
        return _keep_batch_beside_vllm_server(profile, train, sources, current, params, label)
    cap, cap_note = rule.micro_batch, f"{human(params)} params on {_context(profile)['memory']}"
    length = current("max_length") if "max_length" in fields else None
    if isinstance(length, int) and length > MICRO_BATCH_REFERENCE_LENGTH:
        cap = max(1, cap * MICRO_BATCH_REFERENCE_LENGTH // length)
        cap_note += f", max_length {length}"
    changes: list[Change] = []
    micro, accumulation = current("per_device_train_batch_size"), current("gradient_accumulation_steps")
    if not (isinstance(micro, int) and isinstance(accumulation, int)) or micro <= cap:
        pass
    elif sources.get("train.per_device_train_batch_size") == "override":
        changes.append(
            Change(
                "train.per_device_train_batch_size",
                micro,
                f"kept {micro}: set on the command line (the profile would cap it at {cap} for {cap_note})",
            )
        )
    elif train.get("steps_per_generation"):
        changes.append(
            Change(
                "train.per_device_train_batch_size",
                micro,
                f"kept {micro}: steps_per_generation is set, so the split is the recipe's "
                f"(the profile would cap it at {cap} for {cap_note})",
            )
        )
    else:
        effective = micro * accumulation
        # GRPO: an explicit generation_batch_size must stay a multiple of the micro-batch.
        generation = (
            train.get("generation_batch_size") if isinstance(train.get("generation_batch_size"), int) else 0
        )
        new_micro = max(d for d in range(1, cap + 1) if effective % d == 0 and generation % d == 0)
        new_accumulation = effective // new_micro
        train["per_device_train_batch_size"], train["gradient_accumulation_steps"] = (
            new_micro,
            new_accumulation,
        )
        sources["train.per_device_train_batch_size"] = sources["train.gradient_accumulation_steps"] = label
        why = (
            f"micro-batch {micro}→{new_micro}, grad accumulation {accumulation}→{new_accumulation} "
            f"keeps effective batch {effective} ({cap_note}: at most {cap} per step)"
        )
        changes += [
            Change("train.per_device_train_batch_size", new_micro, why),
            Change("train.gradient_accumulation_steps", new_accumulation, why),
        ]
    changes += _keep_batch_beside_vllm_server(profile, train, sources, current, params, label)
    # Online algorithms evaluate whole groups of num_generations completions: their eval batch is left alone.
    evaluation = (
        current("per_device_eval_batch_size")
        if "per_device_eval_batch_size" in fields and not getattr(algorithm, "generates", False)
        else None
    )
    if (
        isinstance(evaluation, int)
        and evaluation > cap
        and sources.get("train.per_device_eval_batch_size") != "override"
    ):
        train["per_device_eval_batch_size"] = cap
        sources["train.per_device_eval_batch_size"] = label
        changes.append(
            Change(
                "train.per_device_eval_batch_size",
                cap,
                f"eval micro-batch {evaluation}→{cap} ({cap_note}: at most {cap} per step)",
            )
        )
    return changes


def _keep_batch_beside_vllm_server(
    profile: Profile, train: dict, sources: dict[str, str], current, params, label: str
) -> list[Change]:
    """When this profile put generation on a vLLM server, training runs on the other GPUs, one process each. The
    recipe's effective batch (written for one process) is then split over the processes at launch (plan.scaling
    divides it by the launcher's world size) instead of growing N-fold: say how many processes to launch so that
    it divides (GRPO's 32 on 7 training GPUs: 4 processes)."""
    gpu = profile.gpu
    if not (
        train.get("use_vllm")
        and train.get("vllm_mode") == "server"
        and gpu is not None
        and gpu.count >= 2
        and sources.get("train.vllm_mode", "").startswith("profile:")
    ):
        return []
    micro, accumulation = current("per_device_train_batch_size"), current("gradient_accumulation_steps")
    if not (isinstance(micro, int) and isinstance(accumulation, int)) or train.get("steps_per_generation"):
        return []
    effective, training = micro * accumulation, gpu.count - server_gpus(profile, params)
    processes = max(d for d in range(1, training + 1) if effective % d == 0)
    launch = (
        f"launch {processes} training processes (--num_processes {processes})"
        if processes == training
        else f"launch {processes} training processes, not {training} (--num_processes {processes}: "
        f"{effective} is not divisible by {training})"
    )
    return [
        Change(
            "train.vllm_mode",
            "server",
            f"vLLM server mode: {launch}; each process then trains "
            f"{effective // processes} of the effective batch {effective}, which stays the recipe's",
        )
    ]
