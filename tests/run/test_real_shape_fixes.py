"""The defects that running the real recipes at their real shape found (issue 13), each pinned by a test that fails
on the code before its fix: QLoRA critic, bitsandbytes' CPU repacking, trainable dtypes, validation of model
folders and eval data, local folders over ModelScope, `status: failed`, the start screen's counts, and
assistant-only loss with a stock chat template. The tiny model stands in for the real one where the shape does
not matter (`recipes/tiny`)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan.sections import ModelSection

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir():
    from align_recipes import tiny

    return str(tiny.ensure_tiny_model())


def _qlora_policy(tiny_dir):
    from align_recipes.run import models

    spec = ModelSection.from_dict({"name_or_path": str(tiny_dir), "adapter": "qlora", "dtype": "float32"})
    return models.load_model(tiny_dir, spec, use_cpu=True)


# --- the critic ------------------------------------------------------------------------------------------


def test_qlora_critic_is_a_frozen_4bit_copy_with_its_own_adapter(tiny_dir):
    import torch
    from peft import LoraConfig

    from align_recipes.rl.value import value_model_from

    policy = _qlora_policy(tiny_dir)
    critic = value_model_from(None, policy, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    values = critic(torch.tensor([[5, 6, 7, 8]]))
    values.sum().backward()
    assert values.shape == (1, 4)
    assert all(p.grad is not None for n, p in critic.named_parameters() if p.requires_grad and "lora_B" in n)
    with pytest.raises(ValueError, match="quantized"):
        value_model_from(None, policy, None)  # a 4-bit backbone cannot be trained in full


def test_reward_model_critic_loads_in_the_policys_dtype(tiny_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from align_recipes.rl.value import value_model_from

    reward = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1, dtype=torch.bfloat16)
    reward.save_pretrained(tmp_path / "rm")
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    critic = value_model_from(str(tmp_path / "rm"), policy)
    assert {p.dtype for p in critic.backbone.parameters()} == {torch.float32}


# --- bitsandbytes on CPU ---------------------------------------------------------------------------------


def test_4bit_weights_are_not_repacked_by_an_eval_forward(tiny_dir, monkeypatch):
    """bitsandbytes 0.50 repacks 4-bit weights in place on an eval-mode no-grad forward on AVX512-BF16 CPUs, and the
    next training forward fails. Pretend this CPU has AVX512-BF16; the repacking must never be called."""
    import bitsandbytes.nn.modules as bnb_modules
    import torch

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)

    def repack(*args, **kwargs):
        raise AssertionError("4-bit weights repacked for CPU inference in a model that trains")

    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", repack)
    policy = _qlora_policy(tiny_dir)
    layers = [m for m in policy.modules() if isinstance(m, bnb_modules.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    policy.eval()
    with torch.no_grad():
        policy(torch.tensor([[5, 6, 7]]))


# --- trainable dtypes ------------------------------------------------------------------------------------


def test_trainable_half_weights_become_fp32_unless_bf16():
    import torch

    from align_recipes.run.models import match_trainable_dtypes

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    model.to(torch.bfloat16)
    model[0].requires_grad_(False)
    assert match_trainable_dtypes(model, bf16=True) == 0 and model[1].weight.dtype == torch.bfloat16
    assert match_trainable_dtypes(model, bf16=False) == 2
    assert model[1].weight.dtype == torch.float32 and model[0].weight.dtype == torch.bfloat16  # frozen stays


@pytest.mark.slow
def test_qlora_reward_model_trains_on_cpu(tmp_path):
    """TRL casts the score head of a quantized reward model to bf16; the cpu profile computes in fp32."""
    from align_recipes.plan.load import load_plan
    from align_recipes.run.training import train

    plan = load_plan(
        REPO / "recipes/tiny/reward.yaml",
        [
            "model.name_or_path=builtin:tiny-qwen2",
            "model.adapter=qlora",
            "train.max_steps=2",
            f"train.output_dir={tmp_path}",
        ],
        profile="cpu",
    )
    summary = train(plan)
    assert summary["status"] == "complete" and summary["steps"] == 2


# --- validation ------------------------------------------------------------------------------------------


def _errors(recipe, overrides):
    from align_recipes.plan.load import load_plan

    with pytest.raises(RecipeErrors) as info:
        load_plan(recipe, overrides, profile="cpu")
    return {e.key: e.message for e in info.value.errors}


def test_validate_names_a_missing_reward_model_folder(tmp_path):
    errors = _errors(REPO / "recipes/tiny/ppo.yaml", [f"train.reward_model_path={tmp_path}/reward/merged"])
    assert "not found" in errors["train.reward_model_path"]
    from align_recipes.plan.load import load_plan

    (tmp_path / "reward" / "merged").mkdir(parents=True)
    load_plan(
        REPO / "recipes/tiny/ppo.yaml", [f"train.reward_model_path={tmp_path}/reward/merged"], profile="cpu"
    )
    load_plan(
        REPO / "recipes/tiny/ppo.yaml", ["train.reward_model_path=someorg/some-reward-model"], profile="cpu"
    )


def test_validate_wants_eval_data_when_evaluating():
    errors = _errors(
        REPO / "recipes/tiny/dpo.yaml", ["train.eval_strategy=steps", "train.eval_steps=5", "data.eval=null"]
    )
    assert "no data.eval" in errors["train.eval_strategy"]


# --- model sources ---------------------------------------------------------------------------------------


def test_an_existing_local_folder_wins_over_modelscope(tmp_path, monkeypatch):
    from align_recipes.run import models

    fake = types.ModuleType("modelscope")
    fake.snapshot_download = lambda *a, **k: pytest.fail("a local folder must not be sent to ModelScope")
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    (tmp_path / "sft-merged").mkdir()
    spec = ModelSection.from_dict({"name_or_path": "sft-merged", "source": "modelscope"})
    assert models.resolve_model_path(spec, tmp_path) == str(tmp_path / "sft-merged")


def test_make_installs_the_modelscope_and_harness_extras():
    """What `make` would run to install (`make -n`: printed with its variables expanded, not run)."""
    printed = subprocess.run(
        ["make", "-n", "-B", ".venv/.installed"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    [install] = [line for line in printed.splitlines() if "-e " in line]
    assert install.startswith(".venv/bin/python -m pip install ")
    assert install.endswith(' -e ".[dev,modelscope,gguf,harness]"')


# --- failed runs and the start screen ------------------------------------------------------------------


def test_a_run_that_fails_after_starting_writes_status_failed(tmp_path, monkeypatch):
    from align_recipes import registry
    from align_recipes.plan.load import load_plan
    from align_recipes.run import training as run

    def broken(*args, **kwargs):
        raise RuntimeError("trainer exploded")

    real = registry.load_class
    monkeypatch.setattr(run, "load_class", lambda ref: broken if "Trainer" in ref else real(ref))
    plan = load_plan(REPO / "recipes/tiny/sft.yaml", [f"train.output_dir={tmp_path}"], profile="cpu")
    with pytest.raises(RuntimeError):
        run.train(plan)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "trainer exploded" in summary["error"]


@pytest.mark.slow
def test_start_screen_counts_4bit_params_unpacked_and_packed_sequences(tmp_path, capsys):
    from align_recipes import tiny
    from align_recipes.plan.load import load_plan
    from align_recipes.run.training import train

    plan = load_plan(
        REPO / "recipes/tiny/sft.yaml",
        [
            "model.adapter=qlora",
            "train.max_steps=1",
            "train.packing=true",
            "train.max_length=128",
            f"train.output_dir={tmp_path}",
        ],
        profile="cpu",
    )
    train(plan)
    out = capsys.readouterr().out
    unpacked = tiny.describe()["num_parameters"] / 1e6
    assert f"({unpacked:.2f}M params), adapter qlora" in out
    rows = sum(1 for line in (REPO / "recipes/tiny/data/sft.jsonl").read_text().splitlines() if line.strip())
    assert f"{rows} training rows packed into " in out


# --- assistant-only loss on a stock template ------------------------------------------------------------


def test_assistant_only_loss_gets_a_training_template_that_renders_the_same(tmp_path):
    from transformers import AutoTokenizer

    from align_recipes import tiny
    from align_recipes.results.rehearse.tokenizer import chat_template
    from align_recipes.run.chat_templates import use_training_template

    tokenizer = AutoTokenizer.from_pretrained(str(tiny.ensure_tiny_model()))
    chat = [{"role": "user", "content": "2+3="}, {"role": "assistant", "content": "5"}]
    for family, origin in (("qwen2", "qwen2_training.jinja"), ("qwen2_5", "TRL's training version")):
        tokenizer.chat_template = stock = chat_template(family)
        note = use_training_template(tokenizer)
        assert origin in note and "{% generation %}" in tokenizer.chat_template
        assert tokenizer.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(
            chat, tokenize=False, chat_template=stock
        )
        masked = tokenizer.apply_chat_template(chat, return_assistant_tokens_mask=True, return_dict=True)
        kept = [i for i, m in zip(masked["input_ids"], masked["assistant_masks"]) if m]
        assert (
            tokenizer.decode(kept).strip("\n") == "5<|im_end|>"
        )  # the reply and its end of turn, nothing else
    assert "You are a helpful assistant." in tokenizer.apply_chat_template(
        chat, tokenize=False, chat_template=chat_template("qwen2")
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(RecipeError, match="generation"):
        use_training_template(tokenizer)


def test_qwen05b_sft_trains_on_assistant_tokens_with_packing(capsys):
    from align_recipes.cli import main

    assert main(["show", "recipes/qwen05b/sft.yaml", "--profile", "t4"]) == 0
    shown = capsys.readouterr().out
    assert any("assistant_only_loss" in line and "True" in line for line in shown.splitlines())
    assert any("train.packing" in line and "True" in line for line in shown.splitlines())
