"""Syncing a vLLM server from a policy sharded by FSDP2 (rl/vllm_sync.py `gathered_weights`, `sync_server_by_file`),
on a real 2-process gloo group, with TRL's client replaced by a recorder: every rank takes part in the gather,
rank 0 alone writes the weights and asks the server to reload, and what it wrote equals the unsharded model's
weights (full, and with LoRA merged out of place). The real server and real runs: tests/lane_vllm."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import vllm_sync_workers  # noqa: E402


def test_sharded_policy_synced_by_rank_0_with_the_whole_weights(tmp_path):
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
