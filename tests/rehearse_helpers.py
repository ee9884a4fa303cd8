"""Shared by the rehearsal tests (tests/results/test_rehearse*.py): the shipped qwen05b recipes rehearsed at
their real shape with QLoRA, with shorter lengths than the CLI (TEST_CAPS) to keep the suite's time modest;
they share the cached rehearsal model and tokenizer (built once per cache)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QWEN05 = REPO / "recipes" / "qwen05b"
# 64 tokens hold the short sample rows whole (system prompt, question, a one-sentence answer): shorter, TRL's DPO and
# KTO drop every pair (an empty dataset) and ORPO's completions are cut to nothing (NaN loss).
TEST_CAPS = {
    "max_length": 64,
    "max_prompt_length": 24,
    "max_completion_length": 6,
    "max_new_tokens": 6,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
}
WHOLE_PAIRS = {"max_length": 64}  # reward models drop pairs longer than max_length: the short sample rows fit
PAIRS = {"per_device_train_batch_size": 2, "per_device_eval_batch_size": 2}  # KTO and GRPO need 2 per batch


def offline(monkeypatch) -> None:
    """No network and no GPU, whatever the host."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ALIGN_RECIPES_OFFLINE", "1")  # restored afterwards (the CLI's --offline sets it)
    monkeypatch.setenv("ALIGN_RECIPES_NVIDIA_SMI", "")


def rehearse_recipe(tmp_path, recipe, *overrides, steps=1, caps=None):
    """One step (evaluated, saved, reloaded) keeps the suite short; two where evaluating and then training again
    matters (reward model, PPO critic copy)."""
    from align_recipes.results.rehearse import STAGES, rehearse, render

    result = rehearse(
        recipe,
        ["model.adapter=qlora", *overrides],
        profile="cpu",
        workdir=tmp_path / "r",
        caps={**TEST_CAPS, **(caps or {})},
        steps=steps,
    )
    screen = render(result)
    failed = {n: s.detail for n, s in result.stages.items() if not s.ok}
    assert result.exit_code == 0 and not failed, screen
    assert list(result.stages) == list(STAGES) and "Traceback" not in screen
    run = tmp_path / "r" / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == steps and summary["adapter"] == "qlora"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("eval_") for r in records if r["step"] == 1 for k in r), "evaluated after step 1"
    assert (
        (run / f"checkpoint-{steps}").is_dir()
        and (run / "adapter_config.json").is_file()
        and (run / "report.md").is_file()
    )
    assert "STAND-IN" in screen and "t4" in screen and result.peak_rss_gb > 0.3
    return result, screen, records
