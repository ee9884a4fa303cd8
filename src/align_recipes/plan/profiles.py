"""Hardware profiles: named YAML layers (configs/profiles/*.yaml) between TRL's defaults and the recipe.

A profile is a partial recipe (`model:` and `train:` keys, each with a reason in `why:`), the GPU it
describes (`gpu:`), size rules (`rules:`, keyed by the model's parameter count: adapter,
quantization, micro-batch cap, extra keys) and a vLLM policy (`vllm:`) for the algorithms that
generate. `auto` picks one from what `nvidia-smi` reports (name, memory, compute capability, count),
without importing torch; `--profile NAME` forces one. docs/scaling.md describes the format.

Everything here is decided from text: the facts about the machine come from `hardware` and the
model's size from `model_size`, neither of which imports torch, so `validate` and `show` stay fast.

This module reads profiles and picks one; what a profile then does to a recipe lives beside it. The
public functions, in the order `plan.load_plan` calls them:
  profiles.resolve(name)                           the Profile (auto: detected)
  profile_layer.layer_for(profile, algorithm, …)   the profile's layer under the recipe, a reason per value
  micro_batch.adjust_batch(profile, recipe, …)     after the merge: cap the micro-batch, keep the effective batch
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
from align_recipes.plan import rules
from align_recipes.plan.checking import FileContext, locate_in
from align_recipes.plan.hardware import GPU, detect_gpus
from align_recipes.plan.yamlio import load_yaml

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


# --- what a profile says for one model ---------------------------------------------------------------


def reason_context(profile: Profile) -> dict[str, str]:
    """The words a profile's reasons are written with: {gpu} {arch} {memory} {count}."""
    gpu = profile.gpu
    if gpu is None:
        return {"gpu": "CPU", "arch": "CPU", "memory": "host memory", "count": "0"}
    return {"gpu": gpu.name, "arch": gpu.arch, "memory": f"{gpu.memory_gb:.0f} GB", "count": str(gpu.count)}


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
