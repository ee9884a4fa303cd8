"""FSDP2 for the online RL trainers: what sharding changes in a loop that generates, scores and updates.

- **Policy and critic, each its own FSDP2 root with its own optimizer.** accelerate prepares one model
  per call under FSDP2, and generation needs the policy to be an FSDP module of its own (so its weights
  can be gathered without the critic's). Both optimizers get the same hyperparameters and schedule, and
  the gradients are clipped by their joint norm (`clip_grad_norm_`): AdamW is per parameter, so this is
  the same update as the single optimizer over both that one process or DDP uses.
- **Generation on whole weights.** transformers' ``generate`` runs many forwards of a length that differs
  between ranks; with sharded weights each forward would be a collective, so the ranks would have to stay
  in step token by token. `whole_weights` all-gathers every FSDP unit of the policy once, keeps it
  gathered through ``generate`` (no collective per token), and reshards afterwards. Every rank must enter
  it the same number of times (the rollout and `evaluate` do: equal prompt counts per rank).
- **Frozen models whole when small.** The reference and reward models take no gradients and no optimizer
  state, so the memory FSDP would save on them is their weights alone. Below `FROZEN_WHOLE_MAX_PARAMS`
  they stay whole on every rank, which keeps their forwards local (no collectives, so the prompt
  key/value caches, whose forward counts differ between ranks, keep working). A larger one is refused
  (`check_frozen_models`) rather than silently replicated: sharding frozen models for inference is not
  implemented yet.
- **Statistics over every rank.** Advantage whitening divides by the mean and standard deviation of the
  whole batch, not of one rank's share (`sum_over_ranks` feeds `core.masked_whiten`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

#: Frozen models (reference, reward models) up to this many parameters are kept whole on every rank under
#: FSDP: 1B parameters are 4 GB in float32 (2 GB in bf16) per rank, next to a sharded policy and critic.
FROZEN_WHOLE_MAX_PARAMS = 1_000_000_000


def fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_fsdp2(module: nn.Module | None) -> bool:
    return module is not None and bool(fsdp_modules(module))


def _reshards_after_forward(module) -> bool:
    """Whether an FSDP unit frees its gathered weights after each forward (the setting `whole_weights`
    restores; torch exposes a setter only)."""
    groups = module._get_fsdp_state()._fsdp_param_groups
    return any(group.post_forward_mesh_info is not None for group in groups)


@contextlib.contextmanager
def whole_weights(module: nn.Module):
    """Inside, every FSDP unit of `module` holds its whole weights and keeps them through forwards, so the
    module runs without collectives (``generate``, a no-grad forward one rank needs). A collective to enter
    and to leave: every rank must enter. Does nothing for a module FSDP does not manage."""
    units = fsdp_modules(module)
    if not units:
        yield
        return
    # The root settles its own setting (no resharding) at its first forward; settle it now, so that what is
    # restored below is the setting FSDP would use (generation comes before the first forward).
    units[0]._get_fsdp_state()._lazy_init()
    settings = [_reshards_after_forward(unit) for unit in units]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit, reshard in zip(units, settings):
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)


def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip by the joint norm of the gradients of every parameter given (sharded DTensors of any FSDP roots
    on one mesh, or plain tensors); returns the norm before clipping, the same on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def sum_over_ranks(accelerator) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function summing a tensor over the processes (for `core.masked_whiten`), or None in one process."""
    if accelerator.num_processes == 1:
        return None
    return lambda tensor: accelerator.reduce(tensor, "sum")


def check_frozen_models(models: dict[str, nn.Module | None]) -> None:
    """Refuse a frozen model too large to keep whole on every rank (see the module docstring)."""
    for name, model in models.items():
        if model is None:
            continue
        count = sum(p.numel() for p in model.parameters())
        if count > FROZEN_WHOLE_MAX_PARAMS:
            raise ValueError(
                f"the {name} has {count / 1e9:.1f}B parameters; under FSDP the RL trainers keep frozen models whole "
                f"on every rank, up to {FROZEN_WHOLE_MAX_PARAMS / 1e9:.0f}B parameters (sharding them for inference is "
                "not implemented): use a smaller one, train an adapter (the reference is then the policy without "
                "it), or launch with DDP (configs/accelerate/multi_gpu.yaml)"
            )
