"""Syncing a vLLM server from a policy sharded by FSDP2 (rl/vllm_sync.py `gathered_weights`, `sync_server_by_file`),
on a real 2-process gloo group, with TRL's client replaced by a recorder: every rank takes part in the gather,
rank 0 alone writes the weights and asks the server to reload, and what it wrote equals the unsharded model's
weights (full, and with LoRA merged out of place). In the same group, a launch's one local server (stand-ins
for `vllm serve`): rank 0 starts it, every rank reaches it, it stops with the block, and a server that fails on
rank 0 fails every rank. The real server and real runs: tests/lane_vllm."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import vllm_sync_workers  # noqa: E402


@pytest.mark.distributed
def test_on_a_real_2_process_gloo_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(
        vllm_sync_workers.run_rank,
        args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)),
        nprocs=2,
        join=True,
    )
    for kind in ("full", "lora"):
        main = json.loads((tmp_path / f"{kind}_0.json").read_text())
        other = json.loads((tmp_path / f"{kind}_1.json").read_text())
        assert main["posts"] == ["collective_rpc", "reset_prefix_cache"], kind
        assert other["posts"] == [], kind  # only rank 0 talks to the server
        assert main["names"] is True, kind  # every weight vLLM holds, the tied head once
        assert main["max_difference"] == 0.0, (kind, main["max_difference"])
        assert main["sharded_after"] and other["sharded_after"], kind
    # With LoRA the file holds base + delta: had the adapter been left out, q_proj would equal the base.
    assert json.loads((tmp_path / "lora_0.json").read_text())["merge_changes_q_proj"] is True
    assert json.loads((tmp_path / "full_0.json").read_text())["merge_changes_q_proj"] is False
    # One server for the launch, started by rank 0 and used by both ranks.
    servers = [json.loads((tmp_path / f"server_{rank}.json").read_text()) for rank in (0, 1)]
    assert servers[0]["url"] == servers[1]["url"] and servers[0]["url"].startswith("http://127.0.0.1:")
    assert [s["answers"] for s in servers] == [200, 200]
    assert [s["started_here"] for s in servers] == [True, False]
    assert servers[0]["stopped"] is True
    assert "exited with code 3" in servers[0]["failed"]
    assert servers[1]["failed"].startswith("rank 0 could not start the vLLM server: ServerFailed: ")


def test_colocated_vllm_stays_refused_under_fsdp_with_a_fix():
    """Server mode passes `_check_fsdp`; colocate is refused, naming server mode as the fix."""
    from types import SimpleNamespace

    from align_recipes.rl.base import OnlineRLTrainer

    plugin = SimpleNamespace(fsdp_version=2)
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)),
        value_model=None,
        ref_model=None,
        reward_funcs=[],
    )
    OnlineRLTrainer._check_fsdp(trainer, SimpleNamespace(use_vllm=True, vllm_mode="server"))
    OnlineRLTrainer._check_fsdp(trainer, SimpleNamespace(use_vllm=False, vllm_mode="colocate"))
    with pytest.raises(ValueError, match="colocated vLLM under FSDP.*set vllm_mode: server"):
        OnlineRLTrainer._check_fsdp(trainer, SimpleNamespace(use_vllm=True, vllm_mode="colocate"))
