"""chat, merge and eval on run directories. The fast tests build run directories from the tiny model
directly (a random LoRA adapter, a reward head) instead of training; one slow test trains for real."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align_recipes.cli import main

REPO = Path(__file__).resolve().parents[2]
PREFS = "recipes/tiny/data/prefs.jsonl"


def _write_run(directory: Path, algorithm: str, adapter: str = "full", evaluate: dict | None = None) -> Path:
    recipe = {
        "algorithm": algorithm,
        "profile": "cpu",
        "model": {"dtype": "float32", "name_or_path": "builtin:tiny-qwen2", "adapter": adapter},
        "data": {"train": {"path": "data/prefs.jsonl"}},
        "train": {"output_dir": str(directory), "beta": 0.1},
    }
    if evaluate:
        recipe["evaluate"] = evaluate
    (directory / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    summary = {
        "algorithm": algorithm,
        "recipe": f"recipes/tiny/{algorithm}.yaml",
        "model": "builtin:tiny-qwen2",
        "adapter": adapter,
        "status": "complete",
        "steps": 3,
        "task_metric": {"name": "preference_accuracy", "before": 0.5, "after": 0.75, "n": 8},
        "metrics_first": {"loss": 0.69},
        "metrics_last": {"loss": 0.5},
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """full: the untouched tiny model as an 'sft' run; lora: a random adapter as a 'dpo' run; rm: a reward model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from align_recipes import tiny

    root = tmp_path_factory.mktemp("runs")
    base = tiny.ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    full = root / "full"
    shutil.copytree(base, full)
    _write_run(
        full,
        "sft",
        evaluate={
            "metric": "exact_match",
            "data": {"path": "data/eval.jsonl"},
            "max_new_tokens": 4,
            "limit": 6,
        },
    )
    torch.manual_seed(0)
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    lora = root / "lora"
    policy.save_pretrained(lora)
    tokenizer.save_pretrained(lora)
    _write_run(
        lora,
        "dpo",
        "lora",
        evaluate={"metric": "preference_accuracy", "data": {"path": "data/prefs.jsonl"}, "limit": 6},
    )
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm_dir = root / "rm"
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    _write_run(rm_dir, "reward")
    return {"full": full, "lora": lora, "rm": rm_dir, "root": root}


# ------------------------------------------------------------------------------------------------ chat


def test_chat_one_prompt_greedy_matches_the_library(runs, capsys):
    from align_recipes.results.chat import reply
    from align_recipes.run.saved import load_run

    assert (
        main(["chat", str(runs["lora"]), "--prompt", "2+3=", "--temperature", "0", "--max-new-tokens", "6"])
        == 0
    )
    printed = capsys.readouterr().out.strip()
    model, tokenizer, info = load_run(runs["lora"])
    assert info.adapter is not None and type(model).__name__.startswith("Peft")
    assert printed == reply(
        model, tokenizer, [{"role": "user", "content": "2+3="}], max_new_tokens=6, temperature=0
    )


def test_chat_interactive_reads_stdin(runs):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "align_recipes",
            "chat",
            str(runs["full"]),
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ],
        input="2+3=\n/reset\n/nonsense\n4+4=\n/exit\nnever read\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "chatting with" in out and out.count("assistant> ") == 2
    assert "(conversation cleared)" in out and "/reset" in out  # the help line names the commands


def test_chat_refuses_a_reward_model(runs, capsys):
    assert main(["chat", str(runs["rm"]), "--prompt", "hi"]) == 2
    assert "reward model" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- merge


def test_merge_gives_a_standalone_model_with_the_same_outputs(runs, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from align_recipes.run.saved import load_run

    out = runs["root"] / "merged"
    assert main(["merge", str(runs["lora"]), "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)  # no PEFT involved
    adapter_model, tokenizer, _ = load_run(runs["lora"])
    ids = tokenizer("<|im_start|>user\n12+7=<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = adapter_model(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-4)
    with torch.no_grad(), adapter_model.disable_adapter():
        assert not torch.allclose(
            adapter_model(input_ids=ids).logits, got, atol=1e-3
        )  # the adapter did something
    card = (out / "README.md").read_text()
    for text in (
        "builtin:tiny-qwen2",
        "lora: r=4, alpha=8",
        "preference_accuracy",
        "algorithm: dpo",
        "merge_and_unload",
    ):
        assert text in card, text
    assert main(["merge", str(runs["lora"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_merge_of_a_full_model_says_nothing_to_merge(runs, capsys):
    assert main(["merge", str(runs["full"]), "--out", str(runs["root"] / "never")]) == 2
    assert "nothing to merge" in capsys.readouterr().err
    assert not (runs["root"] / "never").exists()


# ------------------------------------------------------------------------------------------------ eval


def _eval(run_dir: Path, *args: str) -> dict:
    assert main(["eval", str(run_dir), *args]) == 0
    return json.loads((run_dir / "eval.json").read_text())["metrics"]


def test_implicit_reward_is_chance_when_policy_equals_reference(runs):
    metrics = _eval(runs["full"], "--data", PREFS, "--metric", "implicit_reward_accuracy", "--limit", "5")
    result = metrics["implicit_reward_accuracy"]
    assert result["n"] == 5 and result["reference"] == "builtin:tiny-qwen2"
    assert (
        result["value"] == 0.5 and abs(result["mean_margin"]) < 1e-6
    )  # every margin 0: each tie counts half


def test_dpo_adapter_defaults_and_merged_model_agree(runs):
    metrics = _eval(
        runs["lora"]
    )  # defaults: dpo's metrics its data serves + the recipe's preference_accuracy
    assert set(metrics) == {"implicit_reward_accuracy", "preference_accuracy"}
    adapter_result = metrics["implicit_reward_accuracy"]
    assert adapter_result["reference"] == "adapter disabled" and adapter_result["n"] == 6
    assert 0.0 <= adapter_result["value"] <= 1.0 and adapter_result["data"] == "data/prefs.jsonl"
    assert abs(adapter_result["mean_margin"]) > 1e-4
    merged = runs["root"] / "merged-eval"
    assert main(["merge", str(runs["lora"]), "--out", str(merged)]) == 0
    merged_result = _eval(merged, "--metric", "implicit_reward_accuracy")["implicit_reward_accuracy"]
    assert merged_result["reference"] == "builtin:tiny-qwen2"  # full model: reference = the recipe's base
    assert merged_result["value"] == adapter_result["value"]
    assert merged_result["mean_margin"] == pytest.approx(adapter_result["mean_margin"], abs=1e-3)


def test_a_per_epoch_beta_list_scales_the_implicit_reward_by_its_last_value(runs):
    """Online DPO takes `beta` as one value per epoch (the last kept after): eval uses the last one."""
    single = _eval(runs["lora"], "--metric", "implicit_reward_accuracy")["implicit_reward_accuracy"]
    listed = runs["root"] / "beta-list"
    shutil.copytree(runs["lora"], listed)
    recipe = yaml.safe_load((listed / "recipe.resolved.yaml").read_text())
    recipe["train"]["beta"] = [0.2, 0.05]
    (listed / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    result = _eval(listed, "--metric", "implicit_reward_accuracy")["implicit_reward_accuracy"]
    assert result["beta"] == 0.05 and result["value"] == single["value"]
    assert result["mean_margin"] == pytest.approx(single["mean_margin"] / 2)  # the recipe's 0.1 -> 0.05


def test_exact_match_default_and_reward_model_accuracy(runs):
    assert _eval(runs["full"])["exact_match"]["n"] == 6
    result = _eval(runs["rm"], "--data", PREFS, "--limit", "4")["preference_accuracy"]
    assert result["n"] == 4 and 0.0 <= result["value"] <= 1.0


def test_win_rate_against_itself_is_one_half(runs):
    result = _eval(
        runs["full"],
        "--data",
        PREFS,
        "--metric",
        "win_rate",
        "--reward-model",
        str(runs["rm"]),
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
    )["win_rate"]
    assert result["value"] == 0.5 and result["ties"] == 3 and len(result["examples"]) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "win_rate"], "--reward-model"),
        (["--metric", "bleu"], "unknown metric"),
        (["--metric", "win_rate", "--reward-model", "LORA"], "not a reward model"),
        (["--data", "nowhere.jsonl"], "not found"),
    ],
)
def test_eval_errors_are_user_errors(runs, capsys, args, message):
    args = [str(runs["lora"]) if a == "LORA" else a for a in args]
    assert main(["eval", str(runs["full"]), *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_results_show_up_in_the_report(runs):
    from align_recipes.results.report import write_report

    _eval(runs["full"], "--data", PREFS, "--metric", "implicit_reward_accuracy", "--limit", "2")
    (runs["full"] / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    text = write_report(runs["full"]).read_text()
    assert "## Held-out evaluation" in text and "implicit_reward_accuracy" in text


# ------------------------------------------------------------------------------ from any directory


@pytest.fixture
def moved_run(runs, tmp_path):
    """The lora run as a run folder written from the repository root: relative paths in its recipe and
    summary, and the manifest that says where it was started. The current directory is elsewhere."""
    run = tmp_path / "runs" / "dpo-lora"
    shutil.copytree(runs["lora"], run)
    (run / "manifest.json").write_text(json.dumps({"cwd": str(REPO), "recipe": "recipes/tiny/dpo.yaml"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # the autouse fixture restores the repository as the working directory
    return run


def test_eval_chat_merge_report_work_from_another_directory(moved_run, tmp_path, capsys):
    """The recipe's relative data path (data/prefs.jsonl, written in recipes/tiny/) is found through the
    directory the run was started in, wherever the verbs are run from."""
    metrics = _eval(moved_run)
    assert metrics["implicit_reward_accuracy"]["n"] == 6 and metrics["preference_accuracy"]["n"] == 6
    assert (
        main(["chat", str(moved_run), "--prompt", "2+3=", "--temperature", "0", "--max-new-tokens", "3"]) == 0
    )
    assert capsys.readouterr().out.strip()
    assert main(["merge", str(moved_run), "--out", "merged"]) == 0  # --out is relative to here
    merged = tmp_path / "elsewhere" / "merged"
    assert (merged / "model.safetensors").is_file()
    assert _eval(merged, "--metric", "implicit_reward_accuracy")["implicit_reward_accuracy"]["n"] == 6
    (moved_run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    assert main(["report", str(moved_run)]) == 0
    assert "implicit_reward_accuracy" in (moved_run / "report.md").read_text()


def test_an_old_run_without_a_manifest_still_works_from_the_repository_root(runs, tmp_path, capsys):
    """Relative paths and no manifest: from the repository root (where it was made) eval finds its data;
    elsewhere it says where it looked."""
    assert _eval(runs["full"], "--limit", "2")["exact_match"]["n"] == 2
    os.chdir(tmp_path)
    assert main(["eval", str(runs["full"]), "--limit", "2"]) == 2
    assert "dataset file not found: data/eval.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_trained_lora_run_chat_merge_eval(tmp_path, capsys):
    out = tmp_path / "sft-lora"
    assert (
        main(
            [
                "train",
                "recipes/tiny/sft.yaml",
                f"train.output_dir={out}",
                "--profile",
                "cpu",
                "model.adapter=lora",
                "train.max_steps=4",
                "train.logging_steps=2",
                "evaluate.limit=4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    os.chdir(
        tmp_path
    )  # the verbs work on the run folder from anywhere (the autouse fixture restores the cwd)
    assert main(["chat", str(out), "--prompt", "3+4=", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    answer = capsys.readouterr().out
    assert main(["merge", str(out), "--out", "merged"]) == 0
    capsys.readouterr()
    assert main(["chat", "merged", "--prompt", "3+4=", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == answer
    metrics = _eval(out, "--limit", "4")
    assert metrics["exact_match"]["n"] == 4


def test_eval_prints_and_records_n_and_the_95_percent_interval(runs, capsys):
    metrics = _eval(runs["full"], "--data", PREFS, "--metric", "implicit_reward_accuracy", "--limit", "5")
    chance = metrics["implicit_reward_accuracy"]  # every pair a tie (0.5): no spread at all
    assert chance["interval"] == [0.5, 0.5] and chance["n"] == 5 and chance["confidence"] == 0.95
    assert f"implicit_reward_accuracy   0.5000  95% interval [0.5000, 0.5000]  (n=5, data {PREFS})" in (
        capsys.readouterr().out
    )
    result = _eval(runs["lora"], "--metric", "preference_accuracy", "--limit", "6")["preference_accuracy"]
    p, (low, high) = result["value"], result["interval"]
    if abs(p * 6 - round(p * 6)) < 1e-9:  # no tie among the pairs: 0/1 scores, sd^2 = p(1-p) n / (n-1)
        half = 2.571 * math.sqrt(p * (1 - p) / 5)  # t_{0.975,5}
        assert [low, high] == pytest.approx([p - half, p + half], abs=2e-3)
    assert low <= p <= high and result["n"] == 6
