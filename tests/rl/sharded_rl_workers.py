"""What each rank of tests/rl/test_sharded_rl.py's 2-process gloo group runs. A module of its own, importing only
torch and two small modules of ours, because spawned processes import the module their function lives in."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from align_recipes.rl import core, sharding


def two_shards() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two ranks' advantages: different widths (each pads to its own longest completion), different counts."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, generator=generator) * 2 + 1
    b = torch.randn(4, 2, generator=generator) - 3
    mask_a = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    mask_b = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.float32)
    return [(a, mask_a), (b, mask_b)]


def whiten(rank: int, out_dir: Path) -> None:
    import torch.distributed as dist

    def every_rank(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    values, mask = two_shards()[rank]
    torch.save(core.masked_whiten(values, mask, sum_over_ranks=every_rank), out_dir / f"whitened_{rank}.pt")


def gather(rank: int, out_dir: Path) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)  # the same whole weights on both ranks before sharding
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    whole = [p.detach().clone() for p in model.parameters()]
    fully_shard(model[0])
    fully_shard(model)
    report = {"sharded_before": all(isinstance(p, DTensor) for p in model.parameters())}
    x = torch.full((1, 4), float(rank + 1))
    with sharding.whole_weights(model):
        report["whole_inside"] = all(
            not isinstance(p, DTensor) and torch.equal(p, w) for p, w in zip(model.parameters(), whole)
        )
        for _ in range(rank + 1):  # a different number of forwards per rank: none may be a collective
            y = model(x)
        report["still_whole_after_forward"] = not any(isinstance(p, DTensor) for p in model.parameters())
    report["sharded_after"] = all(isinstance(p, DTensor) for p in model.parameters())
    hidden = torch.nn.functional.linear(x, whole[0], whole[1])
    report["output_ok"] = torch.allclose(y, torch.nn.functional.linear(hidden, whole[2], whole[3]))
    report["reshards_restored"] = [
        sharding._reshards_after_forward(model[0]),
        sharding._reshards_after_forward(model),
    ]
    (out_dir / f"gathered_{rank}.json").write_text(json.dumps(report))


def run_rank(rank: int, world: int, init: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        whiten(rank, Path(out_dir))
        gather(rank, Path(out_dir))
    finally:
        dist.destroy_process_group()
