"""Our PPO/SPO configs take TRL's vLLM knob names (vllm_tensor_parallel_size, vllm_enable_sleep_mode) and our
vllm_max_num_seqs, and hand them to the engine: TRL's `VLLMGeneration` when colocated, the `vllm serve` command
line of the run's own server. A recording stand-in replaces the engine: no vLLM needed."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from align_recipes.rl import generation, vllm_engine, vllm_server
from align_recipes.rl.config import PPOConfig, SPOConfig


def config(tmp_path, **vllm) -> PPOConfig:
    return PPOConfig(output_dir=str(tmp_path), use_vllm=True, use_cpu=True, **vllm)


def test_configs_take_the_knobs_and_refuse_impossible_values(tmp_path):
    ppo = config(tmp_path, vllm_tensor_parallel_size=2, vllm_enable_sleep_mode=True, vllm_max_num_seqs=16)
    assert (ppo.vllm_tensor_parallel_size, ppo.vllm_enable_sleep_mode, ppo.vllm_max_num_seqs) == (2, True, 16)
    defaults = SPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (
        defaults.vllm_tensor_parallel_size,
        defaults.vllm_enable_sleep_mode,
        defaults.vllm_max_num_seqs,
    ) == (
        1,
        False,
        None,
    )
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size must be >= 1"):
        config(tmp_path, vllm_tensor_parallel_size=0)
    with pytest.raises(ValueError, match="vllm_max_num_seqs must be >= 1"):
        config(tmp_path, vllm_max_num_seqs=0)


def test_make_generator_hands_the_knobs_to_the_engine(tmp_path, monkeypatch):
    import importlib

    trl_generation = importlib.import_module("trl.generation.vllm_generation")
    import_utils = importlib.import_module("trl.import_utils")

    built = {}

    class Recording:
        def __init__(self, **kwargs):
            built.update(kwargs)

    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(trl_generation, "VLLMGeneration", Recording)
    monkeypatch.setattr(vllm_engine, "for_policy", lambda model: contextlib.nullcontext())
    monkeypatch.setattr(vllm_engine, "install_sync", lambda engine: None)
    args = config(tmp_path, vllm_tensor_parallel_size=2, vllm_enable_sleep_mode=True, vllm_max_num_seqs=16)
    model = torch.nn.Linear(2, 2)
    made = generation.make_generator(args, lambda: model, None, None, [7], 0)
    assert isinstance(made, generation.VLLMGenerator)
    assert (built["tensor_parallel_size"], built["enable_sleep_mode"], built["max_num_seqs"]) == (2, True, 16)


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_serve_command_carries_tensor_parallel_and_max_num_seqs():
    command = vllm_server.serve_command(
        "m", 8123, "float32", 128, True, tensor_parallel_size=2, max_num_seqs=16
    )
    assert flag(command, "--tensor-parallel-size") == "2"
    assert flag(command, "--max-num-seqs") == "16"
    plain = vllm_server.serve_command("m", 8123, "float32", 128, True)
    assert flag(plain, "--tensor-parallel-size") == "1"
    assert "--max-num-seqs" not in plain


def test_the_runs_own_server_gets_the_recipes_knobs(tmp_path, monkeypatch):
    started = {}

    @contextlib.contextmanager
    def fake_server(source, dtype, length, log, timeout, cpu, **engine):
        started.update(engine, dtype=dtype)
        yield "http://127.0.0.1:1"

    monkeypatch.setattr(vllm_server, "local_server", fake_server)
    monkeypatch.setattr(vllm_engine, "on_cpu_build", lambda: True)
    args = SimpleNamespace(
        use_vllm=True,
        vllm_mode="server",
        vllm_server_timeout=5,
        vllm_tensor_parallel_size=2,
        vllm_max_num_seqs=16,
        max_new_tokens=4,
        max_prompt_length=8,
    )
    model = SimpleNamespace(
        name_or_path="tiny", parameters=lambda: iter([torch.zeros(1)]), config=SimpleNamespace()
    )
    with vllm_server.serve_policy(args, model, None, Path(tmp_path) / "log") as url:
        assert url == args.vllm_server_base_url
    assert started == {"tensor_parallel_size": 2, "max_num_seqs": 16, "dtype": "float32"}
