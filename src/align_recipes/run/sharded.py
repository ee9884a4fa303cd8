"""What a sharded run (FSDP2 or DeepSpeed ZeRO-3) needs beyond what TRL and accelerate do for it.

- **FSDP2 on CPU processes.** accelerate only turns FSDP on for accelerators: with `use_cpu` it sets up
  plain gloo data parallelism and silently ignores the FSDP settings `accelerate launch` exported.
  PyTorch's `fully_shard` itself runs on CPU with gloo, so `adopt_fsdp_on_cpu` makes accelerate's
  (process-wide, shared) state say FSDP before the Trainer builds its Accelerator, and the Trainer then
  shards, saves and loads exactly as it does on GPUs. This is what lets the test suite exercise
  sharding without a GPU (configs/accelerate/cpu_fsdp2.yaml).
- **One plain model folder at the end.** Sharded checkpoints (SHARDED_STATE_DICT, one file per rank,
  fast to write and to resume) are the right format during training, but the final save must be an
  ordinary Hugging Face folder: `save_consolidated` switches FSDP to a full state dict for that one
  save. ZeRO-3 consolidates through `zero3_save_16bit_model` in its accelerate config.
- **The task metric, measured by rank 0 alone.** Sharded parameters need every rank in each forward
  pass. Before training only ZeRO-3 has split them (transformers loads them partitioned):
  `whole_on_every_rank` gathers them for the measurement. After training `measured_model` hands rank 0
  the consolidated folder it just wrote, so the metric is measured on exactly what the user gets.
- **What ran.** `describe` reads the engine from the Trainer (summary.json's `distributed`), so a run
  that silently fell back to DDP would show it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config exports ACCELERATE_USE_FSDP=true to every rank."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def adopt_fsdp_on_cpu(config) -> bool:
    """Make accelerate's shared state FSDP for a multi-process CPU run launched with an FSDP config.

    `config` is the run's TrainingArguments (they start the gloo process group). Must run before the
    Trainer builds its Accelerator, which then reuses this state. Returns whether it did anything."""
    if not (config.use_cpu and fsdp_requested() and int(os.environ.get("WORLD_SIZE", "1")) > 1):
        return False
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    # The state as the Trainer's Accelerator would create it: gloo data parallel on CPU.
    state = AcceleratorState(
        mixed_precision=config.mixed_precision,
        cpu=True,
        dynamo_plugin=TorchDynamoPlugin(),
        _from_accelerator=True,
    )
    if state.distributed_type == DistributedType.FSDP:
        return True
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"expected accelerate to set up CPU processes, found {state.distributed_type}")
    state.fsdp_plugin = (
        FullyShardedDataParallelPlugin()
    )  # reads the FSDP_* variables of the accelerate config
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


@contextlib.contextmanager
def whole_on_every_rank(model):
    """Inside, every parameter is whole on every rank, so rank 0 alone can run the model (the
    before-training metric). Only ZeRO-3 has split parameters before the Trainer wraps the model
    (transformers loads them partitioned); every rank must enter, since gathering is collective."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def parameter_count(model) -> int:
    """Parameters of the whole model: ZeRO-3 slices (each rank holds one) counted whole, 4-bit weights
    counted as the parameters they hold rather than their packed bytes (transformers' num_parameters)."""
    if any(hasattr(p, "ds_numel") for p in model.parameters()):
        return sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters())
    if hasattr(model, "num_parameters"):
        return model.num_parameters()
    return sum(p.numel() for p in model.parameters())


def is_sharded(trainer) -> bool:
    """Whether the trained parameters are split over the ranks (FSDP, or DeepSpeed ZeRO-3)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(
        getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3
    )


def describe(trainer) -> dict:
    """How the run was spread over processes, from what the Trainer actually built (for summary.json):
    engine "none" (one process), "ddp", "fsdp1"/"fsdp2", "zero1"/"zero2"/"zero3"."""
    processes = trainer.accelerator.num_processes
    if getattr(trainer, "is_deepspeed_enabled", False):
        engine = f"zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    elif getattr(trainer, "is_fsdp_enabled", False):
        engine = f"fsdp{trainer.accelerator.state.fsdp_plugin.fsdp_version}"
    else:
        engine = "ddp" if processes > 1 else "none"
    described = {"engine": engine, "processes": processes, "wrapper": type(trainer.model_wrapped).__name__}
    if engine == "fsdp2":
        # The evidence that FSDP2 split the weights: parameters that are DTensors sharded over the ranks
        # (4-bit QLoRA weights included, stored in the compute dtype).
        from torch.distributed.tensor import DTensor

        params = list(trainer.model_wrapped.parameters())
        described["sharded_parameters"] = f"{sum(isinstance(p, DTensor) for p in params)}/{len(params)}"
    return described


def save_consolidated(trainer, output_dir: Path) -> None:
    """Save the final model as one ordinary folder (every rank must call this: gathering is collective)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir))


def measured_model(trainer, output_dir: Path):
    """The model rank 0 measures after training: the trained one, or for a sharded run the folder just
    saved (sharded parameters would need every rank in each forward pass)."""
    if not is_sharded(trainer):
        return trainer.model
    from transformers.integrations import deepspeed as hf_deepspeed

    from align_recipes.run.saved import load_run

    # Under ZeRO-3, from_pretrained builds the model partitioned (zero.Init, a collective) while transformers
    # holds DeepSpeed's config; rank 0 is alone here, so it loads with that config set aside.
    held = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        model, _tokenizer, _info = load_run(output_dir, device=str(trainer.args.device))
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = held
    return model
