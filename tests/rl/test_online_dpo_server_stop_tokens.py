"""Online DPO in vLLM server mode stops on the trainer's EOS set (rl/vllm_engine.adopt): TRL 1.16's server path
sends the server only ``args.generation_kwargs``, not the `SamplingParams` colocate mode uses, so without
`stop_server_on` the server stops on the checkpoint's generation config alone. TRL's own
``_generate_vllm_server`` runs here against a recording client: no vLLM needed."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from align_recipes.rl import vllm_engine
from align_recipes.tiny import ensure_tiny_model

EOS_SET = [7, 11]


class RecordingClient:
    """TRL `VLLMClient`'s ``generate``/``chat`` signature; records what the server would be asked."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n=1, generation_kwargs=None, **sampling):
        self.calls.append(generation_kwargs)
        return {"completion_ids": [[5, 6] for _ in range(len(prompts) * n)]}

    def chat(self, messages, n=1, generation_kwargs=None, **sampling):
        self.calls.append(generation_kwargs)
        return {"completion_ids": [[5, 6] for _ in range(len(messages) * n)]}


def server_trainer(generation_kwargs=None):
    """The attributes TRL's online DPO ``_generate_vllm_server`` reads, as its __init__ sets them."""
    return SimpleNamespace(
        vllm_mode="server",
        llm=None,
        vllm_client=RecordingClient(),
        eos_token_ids=EOS_SET,
        generation_config=SimpleNamespace(max_tokens=6),  # a vLLM SamplingParams in TRL; unused on this path
        args=SimpleNamespace(generation_kwargs=generation_kwargs),
        state=SimpleNamespace(global_step=0),
        _last_loaded_step=0,
        _move_model_to_vllm=lambda: None,
        accelerator=SimpleNamespace(is_main_process=True, process_index=0),
        processing_class=AutoTokenizer.from_pretrained(ensure_tiny_model()),
        num_generations=2,
        repetition_penalty=1.0,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        min_p=None,
        structured_outputs_regex=None,
    )


@pytest.fixture
def generate_on_server(monkeypatch):
    monkeypatch.setattr(vllm_engine, "on_cpu_build", lambda: False)  # the file sync is not under test here
    module = importlib.import_module("trl.experimental.online_dpo.online_dpo_trainer")
    return lambda trainer: module.OnlineDPOTrainer._generate_vllm_server(trainer, ["1+2=", "3*3="])


def test_without_adopt_the_server_is_not_told_the_eos_set(generate_on_server):
    """What TRL does alone: the check below can fail."""
    trainer = server_trainer()
    generate_on_server(trainer)
    assert trainer.vllm_client.calls == [None]


def test_adopted_server_generation_stops_on_the_trainers_eos_set(generate_on_server):
    trainer = server_trainer()
    vllm_engine.adopt(trainer)
    completions, _ = generate_on_server(trainer)
    assert len(completions) == 4
    assert trainer.vllm_client.calls == [{"stop_token_ids": EOS_SET}]


def test_the_recipes_own_generation_kwargs_are_kept_and_win(generate_on_server):
    trainer = server_trainer({"stop_token_ids": [3], "min_tokens": 1})
    vllm_engine.adopt(trainer)
    generate_on_server(trainer)
    assert trainer.vllm_client.calls == [{"stop_token_ids": [3], "min_tokens": 1}]
    trainer = server_trainer({"min_tokens": 1})
    vllm_engine.adopt(trainer)
    trainer.vllm_client.chat(messages=[[{"role": "user", "content": "hi"}]], n=2, generation_kwargs=None)
    assert trainer.vllm_client.calls == [{"stop_token_ids": EOS_SET}]
