"""Distributed runs: the accelerate configs parse, and the tiny dpo, grpo and ppo recipes train under
`accelerate launch` with two CPU processes (gloo DDP) and save their results once.

Why configs/accelerate/cpu_ddp.yaml and not `accelerate launch --cpu --num_processes 2`: accelerate's
`--cpu` path uses its simple launcher, which starts ONE process unless mpirun is configured; the
cpu_ddp config selects the torchrun launcher (two processes) and the cpu profile keeps each rank on
the CPU, where torch.distributed uses gloo.

Evidence that both ranks took part: the start screen reports world size 2; DDP's gradient all-reduce
blocks until every rank contributes, so a finished run (exit 0) needed both; and for DPO one epoch
takes half the optimizer steps one process takes at the same micro-batch, because each rank trained on
its half of the data. (The plan gives each rank half the recipe's micro-batch, so the effective batch
and the steps per epoch are the recipe's: tests/run/test_sharded.py.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from launch_helpers import accelerate_bin, clean_env

from align_recipes.plan import hardware

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_DIR = REPO / "configs" / "accelerate"
CONFIGS = ["single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2", "multi_node", "cpu_ddp", "cpu_fsdp2"]
TIMEOUT = 240  # seconds per launch: generous for a loaded 2-core CI runner; typical runs take 25-60 s


# --- configs (fast) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_config_parses(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ACCELERATE_DIR / f"{name}.yaml"))
    expected = {
        "single_gpu": DistributedType.NO,
        "fsdp2": DistributedType.FSDP,
        "cpu_fsdp2": DistributedType.FSDP,
        "zero2": DistributedType.DEEPSPEED,
        "zero3": DistributedType.DEEPSPEED,
        "multi_node": DistributedType.DEEPSPEED,
    }.get(name, DistributedType.MULTI_GPU)
    assert config.distributed_type == expected
    # Precision is the profile's and the recipe's business (train.bf16/fp16), never the launcher's.
    assert str(config.mixed_precision) == "no"
    if name in ("zero2", "zero3", "multi_node"):
        assert config.deepspeed_config["zero_stage"] == (2 if name == "zero2" else 3)
    if name in ("fsdp2", "cpu_fsdp2"):
        assert config.fsdp_config["fsdp_version"] == 2
    if name == "cpu_fsdp2":  # sharded checkpoints; the final save is consolidated by align-recipes
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if name == "multi_node":
        assert config.num_machines == 2 and config.main_process_ip and config.main_process_port


def test_makefile_runner_uses_these_configs():
    makefile = (REPO / "Makefile").read_text()
    assert "configs/accelerate/$(ACCELERATE).yaml" in makefile and "--num_processes" in makefile


def test_zero3_environment_is_seen_by_the_profile_checks(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert hardware.sharding() == ("zero3", 8)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert hardware.sharding() == ("fsdp", 8)


# --- two-process CPU runs (slow) ---------------------------------------------------------------------------


def launch(recipe: str, output_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = clean_env()
    command = [
        accelerate_bin(),
        "launch",
        "--config_file",
        str(ACCELERATE_DIR / "cpu_ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "align_recipes",
        "train",
        recipe,
        "--profile",
        "cpu",
        "--overwrite",
        f"train.output_dir={output_dir}",
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return result


def assert_ran_on_two_ranks_and_saved_once(result: subprocess.CompletedProcess, output_dir: Path) -> dict:
    log = result.stdout + result.stderr
    assert "world size 2" in log, log[-3000:]
    assert log.count("align-recipes · ") == 1, "only rank 0 prints the start screen"
    assert log.count("done: ") == 1, "only rank 0 writes the summary"
    files = sorted(p.name for p in output_dir.iterdir())
    assert files.count("summary.json") == 1 and files.count("manifest.json") == 1
    weights = [f for f in files if f.endswith(".safetensors")]
    assert len(weights) == 1, files  # one model file set (model or adapter), not one per rank
    assert not [f for f in files if "rank" in f.lower()], files
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    # The training logs; the reward-hacking watch's held-out checks (`watch/...`) are rows of their own.
    train_rows = [
        r for r in records if "train_runtime" not in r and not any(k.startswith("watch/") for k in r)
    ]
    assert len({r["step"] for r in train_rows}) == len(train_rows), "each step logged once, by rank 0"
    assert sum("train_runtime" in r for r in records) == 1
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["steps"] >= 1 and summary["profile"] == "cpu"
    return summary


@pytest.fixture(scope="session")
def tiny_sft() -> str:
    """The tiny SFT policy the grpo and ppo recipes start from: the builtin (`recipes/tiny/sft.yaml` trained in
    one process), built here once rather than by both ranks of the first launch. These tests check the
    distributed plumbing, not how well the policy learned."""
    from align_recipes import tiny

    tiny.ensure_builtin(tiny.TINY_SFT_ID)
    return tiny.TINY_SFT_ID


def eval_limit(recipe: str, rows: int) -> list[str]:
    """`evaluate.limit=N` when the recipe measures a task metric (rank 0 measures it before and after)."""
    from align_recipes.errors import RecipeError, RecipeErrors
    from align_recipes.plan.load import load_plan

    try:
        has_metric = bool(load_plan(REPO / recipe, profile="cpu").recipe.get("evaluate"))
    except (RecipeError, RecipeErrors):  # e.g. a stage output that does not exist yet: the run will say
        has_metric = False
    return [f"evaluate.limit={rows}"] if has_metric else []


def needs_recipe(name: str) -> str:
    path = REPO / "recipes" / "tiny" / f"{name}.yaml"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO)} is not in this checkout")
    return str(path.relative_to(REPO))


@pytest.mark.distributed
@pytest.mark.slow
def test_dpo_on_two_cpu_processes(tmp_path):
    recipe = needs_recipe("dpo")
    output_dir = tmp_path / "dpo"
    result = launch(
        recipe,
        output_dir,
        "train.num_train_epochs=1",
        "train.max_steps=-1",
        *eval_limit(recipe, 16),
        "model.name_or_path=builtin:tiny-qwen2",
    )  # DDP needs no SFT stage first
    summary = assert_ran_on_two_ranks_and_saved_once(result, output_dir)
    # One epoch = ceil(rows / (micro-batch x accumulation x 2 ranks)) optimizer steps: half of what one process
    # needs at the same micro-batch.
    rows = sum(
        1
        for line in (REPO / "recipes" / "tiny" / "data" / "prefs.jsonl").read_text().splitlines()
        if line.strip()
    )
    train = yaml.safe_load((output_dir / "recipe.resolved.yaml").read_text())["train"]
    micro, accumulation = train["per_device_train_batch_size"], train.get("gradient_accumulation_steps", 1)
    per_rank_batches = math.ceil(math.ceil(rows / 2) / micro)
    assert summary["steps"] == math.ceil(per_rank_batches / accumulation), (summary["steps"], rows, micro)
    assert summary["steps"] < math.ceil(rows / micro / accumulation)  # what one process would need
    asked = yaml.safe_load((REPO / recipe).read_text())["train"]
    # The recipe's effective batch, kept over 2 ranks (tiny dpo: micro-batch 16 -> 8 per rank).
    assert micro * accumulation * 2 == asked["per_device_train_batch_size"] * asked.get(
        "gradient_accumulation_steps", 1
    )


@pytest.mark.distributed
@pytest.mark.slow
def test_grpo_on_two_cpu_processes(tmp_path, request):
    recipe = needs_recipe("grpo")
    tiny_sft = request.getfixturevalue("tiny_sft")  # only built when the recipe exists
    output_dir = tmp_path / "grpo"
    result = launch(
        recipe, output_dir, f"model.name_or_path={tiny_sft}", "train.max_steps=2", *eval_limit(recipe, 8)
    )
    summary = assert_ran_on_two_ranks_and_saved_once(result, output_dir)
    assert summary["steps"] == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_ppo_on_two_cpu_processes(tmp_path, request):
    recipe = needs_recipe("ppo")
    tiny_sft = request.getfixturevalue("tiny_sft")
    output_dir = tmp_path / "ppo"
    result = launch(
        recipe, output_dir, f"model.name_or_path={tiny_sft}", "train.max_steps=2", *eval_limit(recipe, 8)
    )
    summary = assert_ran_on_two_ranks_and_saved_once(result, output_dir)
    assert summary["steps"] == 2
