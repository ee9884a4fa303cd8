"""Our RL trainers (PPO, SPO in align_recipes.rl) under FSDP2 on CPU processes (configs/accelerate/cpu_fsdp2.yaml).

Fast: advantage whitening with the statistics of every rank (against a naive computation on the concatenated
data, by hand and over a real 2-process gloo group), FSDP2 weights gathered for generation and resharded after,
the frozen-model rule, and the plan accepting FSDP2 but refusing DeepSpeed for PPO/SPO.

Slow: a 2-process PPO run that saves a sharded checkpoint (policy and critic, each with its optimizer) and one
consolidated model folder, resumed from that checkpoint to the same losses and bitwise the same weights, and
a 2-process SPO run. The held-out comparison with one process over seeds is in docs/scaling.md (too long for
the suite: 60 steps per run).
"""

from __future__ import annotations

import json
import shutil

import pytest
from launch_helpers import (
    assert_plain_model_folder,
    assert_sharded_once,
    launch,
    launched_with,
    losses,
    summary_of,
)

from align_recipes.cli import main

torch = pytest.importorskip("torch")

import sharded_rl_workers  # noqa: E402

from align_recipes.rl import core, sharding  # noqa: E402

RTOL = 1e-5  # resumed against uninterrupted (bitwise equal here; slack for other BLAS builds)


@pytest.fixture(autouse=True)
def _not_launched(monkeypatch):
    for name in (
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_USE_FSDP",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE",
        "FSDP_VERSION",
    ):
        monkeypatch.delenv(name, raising=False)


# --- global whitening (fast) ------------------------------------------------------------------------------


def naive_whiten(
    shards: list[tuple[torch.Tensor, torch.Tensor]], shift_mean: bool = True
) -> list[torch.Tensor]:
    """Whitening written out on the concatenated masked-in values of every shard (unbiased variance)."""
    values = [v for x, m in shards for v, keep in zip(x.flatten().tolist(), m.flatten().tolist()) if keep]
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1) + 1e-8) ** 0.5
    out = []
    for x, m in shards:
        white = (x - mean) / std + (0 if shift_mean else mean)
        out.append(white * m)
    return out


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_over_ranks_equals_whitening_the_concatenated_batch(shift_mean):
    shards = sharded_rl_workers.two_shards()
    # What the all-reduce returns on every rank: the sum of both ranks' (count, sum, sum of squares).
    moments = []
    core.masked_whiten(*shards[0], sum_over_ranks=lambda t: moments.append(t) or t)
    core.masked_whiten(*shards[1], sum_over_ranks=lambda t: moments.append(t) or t)
    total = moments[0] + moments[1]
    got = [core.masked_whiten(x, m, shift_mean=shift_mean, sum_over_ranks=lambda t: total) for x, m in shards]
    for mine, expected in zip(got, naive_whiten(shards, shift_mean)):
        assert torch.allclose(mine, expected, atol=1e-5), (mine, expected)
    # Each rank's own statistics (what DDP did before) give something else.
    local = core.masked_whiten(*shards[1], shift_mean=shift_mean)
    assert not torch.allclose(local, got[1], atol=1e-2)


@pytest.mark.distributed
def test_on_a_real_2_process_gloo_group(tmp_path):
    """One spawn (process start-up is most of the cost) for two checks, each rank writing what it saw
    (tests/rl/sharded_rl_workers.py): whitening with an all-reduce equals the naive whitening of the concatenated
    data, and `sharding.whole_weights` gathers FSDP2 units for forwards whose count differs between ranks (as
    generate's do), then reshards them with their settings restored."""
    import torch.multiprocessing as mp

    mp.spawn(
        sharded_rl_workers.run_rank,
        args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)),
        nprocs=2,
        join=True,
    )
    expected = naive_whiten(sharded_rl_workers.two_shards())
    for rank in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"whitened_{rank}.pt"), expected[rank], atol=1e-5)
        report = json.loads((tmp_path / f"gathered_{rank}.json").read_text())
        assert report == {
            "sharded_before": True,
            "whole_inside": True,
            "still_whole_after_forward": True,
            "sharded_after": True,
            "output_ok": True,
            "reshards_restored": [True, False],
        }, report  # a layer reshards, the root does not


# --- frozen models and the plan (fast) ---------------------------------------------------------------------


def test_frozen_models_over_the_threshold_are_refused_with_the_rule(monkeypatch):
    reference = torch.nn.Linear(10, 10)  # 110 parameters
    monkeypatch.setattr(sharding, "FROZEN_WHOLE_MAX_PARAMS", 110)
    sharding.check_frozen_models({"reference model": reference, "reward model": None})  # at the limit: whole
    monkeypatch.setattr(sharding, "FROZEN_WHOLE_MAX_PARAMS", 109)
    with pytest.raises(ValueError, match="reference model has .*keep frozen models whole on every rank"):
        sharding.check_frozen_models({"reference model": reference})


@pytest.mark.parametrize("algorithm", ["ppo", "spo"])
def test_plans_accept_fsdp2_and_refuse_deepspeed_for_our_rl_trainers(monkeypatch, capsys, algorithm):
    """Measured: FSDP2 trains PPO/SPO (below); under ZeRO-2 the loop trains but cannot save (no engine)."""
    command = [
        "validate",
        f"recipes/tiny/{algorithm}.yaml",
        "--profile",
        "cpu",
        "model.name_or_path=builtin:tiny-qwen2",
    ]
    launched_with(monkeypatch, ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    assert main(command) == 0, capsys.readouterr().err
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    launched_with(monkeypatch, ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "does not run under zero2" in err and "cpu_fsdp2.yaml" in err


# --- two-process runs (slow) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sft() -> str:
    from align_recipes import tiny

    tiny.ensure_builtin(tiny.TINY_SFT_ID)
    return tiny.TINY_SFT_ID


SHORT = [
    "train.max_steps=6",
    "train.logging_steps=1",
    "train.save_strategy=steps",
    "train.save_steps=3",
    "evaluate.limit=8",
]


@pytest.mark.distributed
@pytest.mark.slow
def test_ppo_on_fsdp2_saves_sharded_checkpoints_and_resumes_exactly(tiny_sft, tmp_path):
    run = tmp_path / "ppo"
    result = launch("cpu_fsdp2", "recipes/tiny/ppo.yaml", run, f"model.name_or_path={tiny_sft}", *SHORT)
    summary = assert_sharded_once(result, run)
    assert summary["steps"] == 6
    assert_plain_model_folder(run)  # the policy alone, consolidated
    assert not (run / "value_model.safetensors").exists()
    checkpoint = run / "checkpoint-3"
    for folder in (
        "pytorch_model_fsdp_0",
        "pytorch_model_fsdp_1",
        "optimizer_0",
        "optimizer_1",
    ):  # policy, critic
        assert sorted(p.name for p in (checkpoint / folder).glob("*.distcp")) == [
            "__0_0.distcp",
            "__1_0.distcp",
        ]
    assert json.loads((checkpoint / "rl_state.json").read_text())["algorithm"] == "ppo"

    # Continue a copy from step 3 as if the run had stopped there.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("checkpoint-6"))
    for name in ("model.safetensors", "summary.json"):
        (resumed / name).unlink()
    (resumed / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    result = launch(
        "cpu_fsdp2",
        "recipes/tiny/ppo.yaml",
        resumed,
        f"model.name_or_path={tiny_sft}",
        *SHORT,
        start="--resume",
    )
    assert "resuming   from checkpoint-3" in result.stdout
    before, after = losses(run), losses(resumed)
    assert sorted(after) == [1, 2, 3, 4, 5, 6] == sorted(before)
    assert [after[s] for s in (4, 5, 6)] == pytest.approx([before[s] for s in (4, 5, 6)], rel=RTOL)
    from safetensors.torch import load_file

    expected, got = load_file(str(run / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k], rtol=RTOL, atol=1e-7) for k in expected)
    assert summary_of(resumed)["task_metrics"] == summary["task_metrics"]


@pytest.mark.distributed
@pytest.mark.slow
def test_spo_per_prompt_on_fsdp2_shards_its_tracker_and_resumes_exactly(tiny_sft, tmp_path):
    """SPO's default baseline with the paper's prioritised sampling on 2 processes: each rank keeps and saves the
    tracker of its own prompts (one safetensors file each), the divergence forward runs on gathered weights, and a
    copy resumed from step 3 matches the uninterrupted run's later steps and final weights."""
    run = tmp_path / "spo"
    extra = ["train.baseline=per_prompt", "train.prioritized_sampling=true"]
    result = launch(
        "cpu_fsdp2", "recipes/tiny/spo.yaml", run, f"model.name_or_path={tiny_sft}", *SHORT, *extra
    )
    summary = assert_sharded_once(result, run)
    assert summary["steps"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # From the second step on, prompts sampled before get a divergence: the policy forward the ranks run on
    # gathered weights, each for its own prompts.
    assert any(r.get("divergence", 0) > 0 for r in rows if r.get("step", 0) >= 2), rows
    assert_plain_model_folder(run)
    checkpoint = run / "checkpoint-3"
    assert sorted(p.name for p in checkpoint.glob("spo_tracker-*")) == [
        "spo_tracker-00000-of-00002.safetensors",
        "spo_tracker-00001-of-00002.safetensors",
    ]
    assert "tracker" not in json.loads((checkpoint / "rl_state.json").read_text())

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("checkpoint-6"))
    for name in ("model.safetensors", "summary.json"):
        (resumed / name).unlink()
    (resumed / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    result = launch(
        "cpu_fsdp2",
        "recipes/tiny/spo.yaml",
        resumed,
        f"model.name_or_path={tiny_sft}",
        *SHORT,
        *extra,
        start="--resume",
    )
    assert "resuming   from checkpoint-3" in result.stdout
    before, after = losses(run), losses(resumed)
    assert [after[s] for s in (4, 5, 6)] == pytest.approx([before[s] for s in (4, 5, 6)], rel=RTOL)
    from safetensors.torch import load_file

    expected, got = load_file(str(run / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.allclose(expected[k], got[k], rtol=RTOL, atol=1e-7) for k in expected)
