"""How a plan spreads over processes, decided from text before anything is loaded (no torch import).

Two decisions:

- **the per-process batch.** A recipe's `per_device_train_batch_size x gradient_accumulation_steps` is
  the effective batch it was tuned at. Under `accelerate launch` with N processes every process adds
  its own micro-batches, so the plan divides: gradient accumulation by N when N divides it, else the
  per-process batch (micro-batch x accumulation) by N, keeping the largest micro-batch that divides it.
  When neither divides evenly, nothing changes and `show` says the effective batch grows N-fold.
  A micro-batch or accumulation given on the command line is the user's own split and is kept.
- **the sharding engine.** A profile rule may name one (`sharding: fsdp2` with `min_gpus: 8`: full
  fine-tuning of a model that needs several GPUs), and full fine-tuning that cannot fit one GPU but
  fits when split over the machine's GPUs gets FSDP2. `Launch` carries the engine, the process count
  and the command; when one process cannot hold the model (`required`), `train` without the launcher
  stops before loading, naming that command.
"""

from __future__ import annotations

from dataclasses import dataclass

from align_recipes.errors import RecipeError
from align_recipes.plan.hardware import sharding
from align_recipes.plan.model_size import human
from align_recipes.plan.sections import ModelSection

# engine -> the accelerate config that selects it (configs/accelerate/<name>.yaml)
ACCELERATE_CONFIG = {"ddp": "multi_gpu", "fsdp2": "fsdp2", "zero2": "zero2", "zero3": "zero3"}
ENGINES = tuple(ACCELERATE_CONFIG)
LAUNCH_SOURCE = "launch"
BATCH_KEY = "launch.effective_batch"  # the key `show` prints when the recipe's split is kept over N processes


@dataclass(frozen=True)
class Launch:
    """How the plan wants to be launched on this machine's GPUs."""

    engine: str  # one of ENGINES
    processes: int
    required: bool  # one process cannot hold the model: `train` without the launcher is refused
    why: str

    @property
    def command(self) -> str:
        return (
            f"accelerate launch --config_file configs/accelerate/{ACCELERATE_CONFIG[self.engine]}.yaml "
            f"--num_processes {self.processes} -m align_recipes train RECIPE"
        )


# --- the effective batch over N processes --------------------------------------------------------------


def split_batch(
    micro: int, accumulation: int, processes: int, keep_micro: bool = False
) -> tuple[int, int] | None:
    """(micro-batch, accumulation) per process whose product times `processes` is micro x accumulation;
    None when no such split exists (or only one that changes a micro-batch the user fixed)."""
    if processes <= 1:
        return micro, accumulation
    if accumulation % processes == 0:
        return micro, accumulation // processes
    per_process, rest = divmod(micro * accumulation, processes)
    if rest or keep_micro:
        return None
    new_micro = max(d for d in range(1, min(micro, per_process) + 1) if per_process % d == 0)
    return new_micro, per_process // new_micro


def keep_effective_batch(recipe: dict, sources: dict[str, str], fields: dict, processes: int) -> list:
    """Divide the recipe's per-process batch over `processes` (see the module docstring); returns the
    profile Changes that `show` prints, each with its reason."""
    from align_recipes.plan.profiles import Change

    if processes <= 1 or not {"per_device_train_batch_size", "gradient_accumulation_steps"} <= set(fields):
        return []
    train = recipe.setdefault("train", {})
    micro = train.get("per_device_train_batch_size", fields["per_device_train_batch_size"].default)
    accumulation = train.get("gradient_accumulation_steps", fields["gradient_accumulation_steps"].default)
    if not (isinstance(micro, int) and isinstance(accumulation, int)):
        return []
    effective = micro * accumulation
    by_user = {
        k
        for k in ("per_device_train_batch_size", "gradient_accumulation_steps")
        if sources.get(f"train.{k}") == "override"
    }
    fixed_split = [k for k in ("steps_per_generation", "generation_batch_size") if train.get(k)]
    label = f"{LAUNCH_SOURCE}:{processes} processes"
    grows = f"the effective batch is {micro}x{accumulation}x{processes} = {effective * processes}"

    def kept(why: str) -> list:
        sources[BATCH_KEY] = label
        return [Change(BATCH_KEY, effective * processes, f"not divided over the processes: {why}; {grows}")]

    if "gradient_accumulation_steps" in by_user:
        return kept("gradient_accumulation_steps is set on the command line")
    if fixed_split:
        return kept(f"{fixed_split[0]} is set by the recipe")
    split = split_batch(micro, accumulation, processes, keep_micro="per_device_train_batch_size" in by_user)
    if split is None:
        return kept(
            "per_device_train_batch_size is set on the command line"
            if "per_device_train_batch_size" in by_user
            else f"{effective} does not divide by {processes}"
        )
    new_micro, new_accumulation = split
    train["per_device_train_batch_size"], train["gradient_accumulation_steps"] = new_micro, new_accumulation
    moved = [
        f"{name} {old}→{new}"
        for name, old, new in (
            ("micro-batch", micro, new_micro),
            ("grad accumulation", accumulation, new_accumulation),
        )
        if old != new
    ]
    why = (
        f"{processes} processes: {', '.join(moved)} keeps effective batch {effective} "
        f"({new_micro}x{new_accumulation}x{processes})"
    )
    changes = []
    for key, old, new in (
        ("per_device_train_batch_size", micro, new_micro),
        ("gradient_accumulation_steps", accumulation, new_accumulation),
    ):
        if old != new:
            sources[f"train.{key}"] = label
            changes.append(Change(f"train.{key}", new, why))
    return changes


# --- the sharding engine ---------------------------------------------------------------------------------


def _per_gpu_gb(params: float, recipe: dict, algorithm, stage: str, world: int) -> float:
    from align_recipes.plan.feasibility import memory_estimate

    needed, _ = memory_estimate(
        params,
        ModelSection.from_dict(recipe.get("model")),
        recipe.get("train") or {},
        algorithm,
        stage=stage,
        world=world,
    )
    return needed


def choose_launch(profile, recipe: dict, algorithm, params: float | None) -> Launch | None:
    """The engine for this model on this profile's GPUs; None on CPU, on one GPU, or when the model's
    size is unknown. Under a launcher the plan describes what was launched instead."""
    gpu = profile.gpu
    stage, world = sharding()
    if gpu is None or (recipe.get("train") or {}).get("use_cpu"):
        return None
    if world > 1:
        engine = {"fsdp": "fsdp2", "": "ddp"}.get(stage, stage)
        return Launch(
            engine if engine in ENGINES else "ddp", world, False, f"launched with {world} processes"
        )
    if params is None or gpu.count < 2:
        return None
    return _engine_for(profile, recipe, algorithm, params)


def explain(launch: Launch, recipe: dict, algorithm) -> str:
    """The line `show` prints: why this engine, what each process's batch becomes, and the command."""
    if launch.why.startswith("launched"):
        return launch.why
    from align_recipes.plan.trl_fields import config_fields

    fields, train = config_fields(algorithm.config_name), recipe.get("train") or {}
    micro = train.get(
        "per_device_train_batch_size", getattr(fields.get("per_device_train_batch_size"), "default", 8)
    )
    accumulation = train.get(
        "gradient_accumulation_steps", getattr(fields.get("gradient_accumulation_steps"), "default", 1)
    )
    split = split_batch(micro, accumulation, launch.processes)
    batch = (
        f"each process then takes micro-batch {split[0]} x accumulation {split[1]}, keeping effective batch "
        f"{micro * accumulation}"
        if split
        else f"effective batch {micro}x{accumulation} does not split over {launch.processes}: it grows "
        f"{launch.processes}-fold"
    )
    return f"{launch.why}; {batch}; {launch.command}"


def _engine_for(profile, recipe: dict, algorithm, params: float) -> Launch | None:
    from align_recipes.plan.profiles import select_rule

    gpu = profile.gpu
    one = _per_gpu_gb(params, recipe, algorithm, "", 1)
    adapter = ModelSection.from_dict(recipe.get("model")).adapter
    rule = select_rule(profile, params)
    if (
        rule is not None
        and rule.sharding
        and adapter == (rule.adapter or adapter)
        and algorithm.runs_under({"fsdp2": "fsdp", "ddp": ""}.get(rule.sharding, rule.sharding))
    ):
        split = _per_gpu_gb(
            params, recipe, algorithm, "fsdp" if rule.sharding == "fsdp2" else rule.sharding, gpu.count
        )
        return Launch(
            rule.sharding,
            gpu.count,
            one > gpu.memory_gb,
            f"{human(params)} params, {adapter}: ~{one:.0f} GB in one process, ~{split:.0f} GB per GPU "
            f"with {rule.sharding} over {gpu.count} GPUs" + (f" ({rule.why})" if rule.why else ""),
        )
    if one > gpu.memory_gb:
        if not algorithm.runs_under("fsdp"):
            return None  # the fit check says what to change
        split = _per_gpu_gb(params, recipe, algorithm, "fsdp", gpu.count)
        if split <= gpu.memory_gb:
            return Launch(
                "fsdp2",
                gpu.count,
                True,
                f"{human(params)} params, {adapter}: ~{one:.0f} GB does not fit one {gpu.name} "
                f"({gpu.memory_gb:.0f} GB); FSDP2 over {gpu.count} GPUs needs ~{split:.0f} GB each",
            )
        return None  # the fit check reports it: nothing on this machine holds it
    return Launch(
        "ddp",
        gpu.count,
        False,
        f"~{one:.0f} GB fits one {gpu.name} ({gpu.memory_gb:.0f} GB): data parallel over {gpu.count} "
        f"GPUs, a full copy each (fastest while it fits)",
    )


def refuse_unlaunched(launch: Launch | None, recipe_path) -> None:
    """`train` in one process of a plan whose model only fits sharded: stop before loading anything."""
    if launch is None or not launch.required or sharding()[1] > 1:
        return
    raise RecipeError(
        f"the model does not fit one GPU: {launch.why}",
        key="model.name_or_path",
        file=recipe_path,
        fix=f"launch it sharded: {launch.command.replace('RECIPE', str(recipe_path))} "
        f"(with make: ACCELERATE={ACCELERATE_CONFIG[launch.engine]} "
        f"NUM_PROCESSES={launch.processes}); or use model.adapter: lora",
    )
