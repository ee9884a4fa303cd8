"""The built-in tiny model: deterministic build, cache, loading, tokenizer and chat template."""

from __future__ import annotations

import json

import pytest
import torch

from align_recipes import tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.ensure_tiny_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_build_is_deterministic_and_cached(model_dir, tmp_path):
    again = tiny.ensure_tiny_model(tmp_path)
    assert again.name == model_dir.name == f"tiny-qwen2-{tiny.asset_hash()}"
    assert _files(again) == _files(model_dir)  # byte-identical weights, tokenizer and configs
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_tiny_model(tmp_path) == again  # cached: not rebuilt
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path))
    assert tiny.tiny_model_dir().parent == tmp_path
    assert tiny.resolve_model_path("some/other-model") == "some/other-model"


def test_hash_follows_the_assets(monkeypatch):
    before = tiny.asset_hash()
    real = tiny._asset_bytes
    monkeypatch.setattr(
        tiny, "_asset_bytes", lambda name: real(name) + (b" " if name == "chat_template.jinja" else b"")
    )
    assert tiny.asset_hash() != before


def test_loads_with_auto_classes(model_dir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    info = json.loads((model_dir / tiny.MARKER_FILE).read_text())
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer) == info["vocab_size"]
    assert (
        sum(p.numel() for p in model.parameters())
        == info["num_parameters"]
        == tiny.describe()["num_parameters"]
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    reward = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    enc = tokenizer(["1+2=", "10+10=3"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert reward(**enc).logits.shape == (2, 1)


def test_tokenizer_is_byte_level_with_qwen_specials(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in (None, tokenizer.unk_token_id)
    text = "12+7=19\nHello, World! (a_b) ~ é"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[:7] == list(b"12+7=19")  # one token per ASCII character, id = byte value
    assert tokenizer.decode(ids) == text
    special = tokenizer("<|im_start|>user\n1<|im_end|>", add_special_tokens=False)["input_ids"]
    assert len(special) == 8
    assert tokenizer.decode(special, skip_special_tokens=True) == "user\n1"


def test_chat_template(tokenizer):
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    prompt = [{"role": "user", "content": "3+4="}]
    full = prompt + [{"role": "assistant", "content": "7"}]
    with_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    rendered = tokenizer.apply_chat_template(full, tokenize=False)
    assert with_prompt == "<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n"
    assert rendered == with_prompt + "7<|im_end|>\n"
    assert tokenizer.apply_chat_template(prompt, tokenize=False) == "<|im_start|>user\n3+4=<|im_end|>\n"
    system = [{"role": "system", "content": "Add."}] + full
    assert tokenizer.apply_chat_template(system, tokenize=False).startswith(
        "<|im_start|>system\nAdd.<|im_end|>\n"
    )

    out = tokenizer.apply_chat_template(
        full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == "7<|im_end|>\n"
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)


def test_generation_stops_at_eos(model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    # Make the model always say <|im_end|>: generate() must stop after one token, using the saved generation config.
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 10.0
    model.lm_head = head
    texts = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "1+1="}], [{"role": "user", "content": "12+19="}]],
        tokenize=False,
        add_generation_prompt=True,
    )
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 1
    assert out[:, -1].tolist() == [tokenizer.eos_token_id] * 2


def test_describe():
    info = tiny.describe()
    assert info["model_id"] == tiny.TINY_MODEL_ID == "builtin:tiny-qwen2"
    assert 50_000 < info["num_parameters"] < 2_000_000
    assert tiny.is_tiny_model_id("builtin:tiny-qwen2") and not tiny.is_tiny_model_id("Qwen/Qwen2.5-0.5B")
