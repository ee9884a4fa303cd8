"""End-to-end: SPO with its default baseline, the SPO paper's per-prompt tracker (`baseline: per_prompt`), learns
the toy task. The tiny recipe (recipes/tiny/spo.yaml) uses MiniMind's `global` baseline, so without this test the
default had no learning test at all (issue 22).

The recipe is spo.yaml with the baseline switched, nothing else changed. The held-out metrics are compared row by
row (`align_recipes.stats.compare`: the paired difference's 95% interval over the 100 held-out prompts, greedy
answers of the SFT start against those of the trained policy); the standard is that neither falls significantly
while the sampled reward rises. Measured at seeds 42, 1, 2 (OMP_NUM_THREADS=1, docs/benchmarks.md): sampled reward
+0.17 to +0.18; held-out exact match +0.01, +0.07, +0.04; held-out reward +0.01, +0.06, +0.04."""

from __future__ import annotations

import pytest
from e2e_helpers import early_late, from_sft, held_out, logged

from align_recipes import stats
from align_recipes.tiny import toytask

pytestmark = pytest.mark.slow

EVAL_ROWS = "recipes/tiny/data/eval.jsonl"


def per_row_scores(model_dir, rows: list[dict]) -> dict[str, list[float]]:
    """Greedy answers (8 new tokens, as the recipe's evaluate section) scored per row: exact match and toy_reward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_recipes.run.measure import answer_matches, generate

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    completions = generate(model, tokenizer, [r["prompt"] for r in rows], 8)
    return {
        "exact_match": answer_matches(completions, rows),
        "reward": toytask.toy_reward(None, completions, [r["answer"] for r in rows]),
    }


def test_spo_per_prompt_baseline_raises_sampled_reward_without_a_significant_held_out_fall(sft_run, tmp_path):
    summary = from_sft("spo", sft_run, tmp_path, "train.baseline=per_prompt")
    early, late = early_late(logged(tmp_path / "spo", "reward"))
    assert late > early + 0.1, (early, late)
    assert max(logged(tmp_path / "spo", "kl")) < 2.0
    rows = toytask.load_rows(EVAL_ROWS)
    before, after = per_row_scores(sft_run[0], rows), per_row_scores(tmp_path / "spo", rows)
    summarised = held_out(summary)
    for name in ("exact_match", "reward"):
        comparison = stats.compare(before[name], after[name])
        # the same measurement as the run's summary, row by row
        assert comparison["before"] == pytest.approx(summarised[name]["before"], abs=1e-6), name
        assert comparison["after"] == pytest.approx(summarised[name]["after"], abs=1e-6), name
        assert comparison["verdict"] != stats.FELL, (name, stats.describe(comparison))
