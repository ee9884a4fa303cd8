"""After the merge: cap the micro-batch at the profile's limit for the model's size, keeping the effective batch.

Runs once the recipe and the profile's layer are merged (`plan.load_plan`), because a recipe usually
sets its micro-batch for another GPU; a micro-batch given on the command line is kept.
"""

from __future__ import annotations

from typing import Any

from align_recipes.plan import trl_fields
from align_recipes.plan.model_size import human
from align_recipes.plan.profile_layer import server_gpus
from align_recipes.plan.profiles import Change, Profile, reason_context, select_rule

# The micro-batch caps in `rules:` are for sequences up to this length; longer ones scale them down.
MICRO_BATCH_REFERENCE_LENGTH = 1024


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
    cap, cap_note = rule.micro_batch, f"{human(params)} params on {reason_context(profile)['memory']}"
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
