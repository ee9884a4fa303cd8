"""Rules a hardware profile file obeys (configs/profiles/*.yaml; docs/scaling.md describes the format).

Each function is one rule of the table in plan/rules.py: it reads the file as written (a FileContext) and
yields a Problem per mistake, keyed by where it is ("gpu.memory_gb", "rules[1].adapter"), so a profile with
three mistakes reports all three, each with its file:line, before plan/profiles.py builds the Profile."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from align_recipes.errors import did_you_mean
from align_recipes.plan.checking import FileContext, Problem

PROFILE_KEYS = {"description", "match", "gpu", "model", "train", "why", "rules", "vllm"}
GPU_KEYS = {"name", "memory_gb", "compute_capability", "count"}
RULE_KEYS = {
    "max_params",
    "min_memory_gb",
    "min_gpus",
    "adapter",
    "quantization",
    "micro_batch",
    "sharding",
    "model",
    "train",
    "why",
}
VLLM_KEYS = {"mode", "gpu_memory_utilization", "min_params", "why"}
ADAPTERS = ("full", "lora", "qlora")
SHARDING = ("ddp", "fsdp2", "zero2", "zero3")
NUMBERS = {"gpu": ("memory_gb", "compute_capability", "count"), "rule": ("max_params", "min_memory_gb")}
WHOLE_NUMBERS = {"gpu": ("count",), "rule": ("micro_batch", "min_gpus")}


def _sections(ctx: FileContext) -> Iterator[tuple[str, str, Any, set[str] | None]]:
    """(dotted key, how messages name it, value, its keys or None) of every mapping a profile may hold."""
    data = ctx.data if isinstance(ctx.data, dict) else {}
    yield "", "a profile", ctx.data, PROFILE_KEYS
    for key, where, keys in (
        ("gpu", "the profile's gpu", GPU_KEYS),
        ("vllm", "the profile's vllm section", VLLM_KEYS),
        ("model", "profile model", None),
        ("train", "profile train", None),
        ("why", "profile why", None),
    ):
        if data.get(key) is not None:
            yield key, where, data[key], keys
    rules = data.get("rules")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        yield f"rules[{index}]", f"rules[{index}]", rule, RULE_KEYS
        if isinstance(rule, dict):
            for key in ("model", "train"):
                if rule.get(key) is not None:
                    yield f"rules[{index}].{key}", f"rule {key}", rule[key], None


def _rules(ctx: FileContext) -> Iterator[tuple[str, dict]]:
    rules = ctx.data.get("rules") if isinstance(ctx.data, dict) else None
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict):
            yield f"rules[{index}]", rule


def profile_not_a_mapping(ctx: FileContext) -> Iterator[Problem]:
    """The file, or one of its sections, written as something other than `key: value` lines (rules: a list)."""
    for key, where, value, _ in _sections(ctx):
        if not isinstance(value, dict) and not (key == "" and value is None):
            if key == "":
                yield Problem("", "a profile must be a mapping", "see configs/profiles/t4.yaml")
            else:
                yield Problem(
                    key, f"{where} must be a mapping", f"write `{key.rsplit('.', 1)[-1]}:` then indented keys"
                )


def profile_unknown_key(ctx: FileContext) -> Iterator[Problem]:
    """A key the profile, its gpu, a size rule or its vllm section does not have."""
    for prefix, where, value, keys in _sections(ctx):
        if keys is None or not isinstance(value, dict):
            continue
        for key in sorted((k for k in value if k not in keys), key=str):
            yield Problem(
                f"{prefix}.{key}" if prefix else str(key),
                f"unknown key '{key}' in {where}",
                did_you_mean(str(key), keys),
            )


def profile_not_a_number(ctx: FileContext) -> Iterator[Problem]:
    """A size, memory or count that is not a number (YAML 1.1 reads 1.5e9 as text: that is a number here)."""
    places = []
    if isinstance(ctx.data, dict) and isinstance(ctx.data.get("gpu"), dict):
        places.append(("gpu", ctx.data["gpu"], "gpu"))
    places += [(prefix, rule, "rule") for prefix, rule in _rules(ctx)]
    for prefix, mapping, kind in places:
        for key in NUMBERS[kind] + WHOLE_NUMBERS[kind]:
            value = mapping.get(key)
            if value is None:
                continue
            whole = key in WHOLE_NUMBERS[kind]
            if not _is_number(value, whole):
                yield Problem(
                    f"{prefix}.{key}",
                    f"'{value}' is not {'a whole number' if whole else 'a number'}",
                    "write e.g. 2" if whole else "write e.g. 1.5e9 or 1500000000",
                )


def _is_number(value: Any, whole: bool) -> bool:
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number.is_integer() if whole else True


def profile_rule_adapter(ctx: FileContext) -> Iterator[Problem]:
    """A size rule's adapter that is not full, lora or qlora."""
    for prefix, rule in _rules(ctx):
        if rule.get("adapter") not in (None, *ADAPTERS):
            yield Problem(
                f"{prefix}.adapter",
                f"'{rule['adapter']}' is not full, lora or qlora",
                did_you_mean(str(rule["adapter"]), ADAPTERS),
            )


def profile_rule_sharding(ctx: FileContext) -> Iterator[Problem]:
    """A size rule's sharding engine that is not ddp, fsdp2, zero2 or zero3."""
    for prefix, rule in _rules(ctx):
        if rule.get("sharding") not in (None, *SHARDING):
            yield Problem(
                f"{prefix}.sharding",
                f"'{rule['sharding']}' is not ddp, fsdp2, zero2 or zero3",
                did_you_mean(str(rule["sharding"]), SHARDING),
            )
