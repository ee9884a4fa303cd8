"""End-to-end: every tiny recipe trains through the product and its held-out metrics move the right way.

The offline algorithms; the online ones (they sample while training) are in test_e2e_online.py.
SFT runs once per session from the untrained tiny model (the `sft_run` fixture, tests/conftest.py); every
other algorithm starts from its output (ORPO from the untrained model, as its recipe says), as the
classic flow does. Every run takes its
seed from ALIGN_RECIPES_TEST_SEED (default 42), passed as `train.seed`; CI runs both files with a
second seed. Held-out metrics are asserted by their verdict (align_recipes.stats: the 95% interval of the
per-row paired difference on the 100 held-out rows), never by a raw threshold: "rose" only where the interval
lay above zero at every seed measured, in reproducible mode and on an emulated other CPU; elsewhere "did not
fall", next to the training metric the algorithm optimises (docs/benchmarks.md, "Verdicts per seed").
"""

from __future__ import annotations

import json

import pytest
from e2e_helpers import SEED, assert_not_fell, assert_rose, from_sft, held_out, train

from align_recipes.cli import main

pytestmark = pytest.mark.slow


def test_sft_raises_held_out_exact_match(sft_run):
    _, summary = sft_run
    task = held_out(summary)["exact_match"]
    assert task["before"] <= 0.05
    assert_rose(summary, "exact_match")
    assert summary["metrics_last"]["loss"] < summary["metrics_first"]["loss"]


def test_run_writes_every_output(sft_run):
    out, summary = sft_run
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "recipe.resolved.yaml",
        "metrics.jsonl",
        "summary.json",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 10 and all("step" in r for r in records)
    assert summary["steps"] > 0 and summary["algorithm"] == "sft" and summary["status"] == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "cpu" and manifest["versions"]["trl"].startswith("1.16")
    assert "algorithm: sft" in (out / "recipe.resolved.yaml").read_text()


@pytest.mark.skipif(SEED != 42, reason="the builtin is built with seed 42")
def test_the_builtin_sft_policy_is_the_sft_recipe_at_seed_42(sft_run):
    """builtin:tiny-qwen2-sft (tiny/sft.py, plain TRL) has exactly the weights `train recipes/tiny/sft.yaml`
    gives: the later tiny recipes start where a user who ran the SFT recipe first would."""
    from safetensors.torch import load_file

    from align_recipes import tiny

    built = load_file(str(tiny.ensure_builtin(tiny.TINY_SFT_ID) / "model.safetensors"))
    trained = load_file(str(sft_run[0] / "model.safetensors"))
    assert built.keys() == trained.keys() and all(bool((built[k] == trained[k]).all()) for k in built)


def test_existing_run_is_not_overwritten(sft_run, capsys):
    out, _ = sft_run
    before = (out / "summary.json").read_text()
    rc = main(["train", "recipes/tiny/sft.yaml", f"train.output_dir={out}", "--profile", "cpu"])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_reward_model_learns_to_rank_held_out_pairs(sft_run, tmp_path):
    summary = from_sft("reward", sft_run, tmp_path)
    assert_not_fell(summary, "preference_accuracy")
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["margin"] > first["margin"] and last["accuracy"] > first["accuracy"]


def test_dpo_raises_held_out_implicit_reward_accuracy_and_keeps_exact_match(sft_run, tmp_path):
    summary = from_sft("dpo", sft_run, tmp_path)
    metrics = held_out(summary)
    assert metrics["implicit_reward_accuracy"]["before"] == 0.5  # the policy is its own reference: margins 0
    assert_rose(summary, "implicit_reward_accuracy")
    assert_not_fell(summary, "exact_match")  # the SFT term keeps the task
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["rewards/margins"] > first["rewards/margins"] + 0.05


def test_orpo_learns_the_task_and_the_preference_from_scratch(tmp_path, repo_cwd):
    """ORPO replaces SFT: it starts from the untrained model. The test runs 200 of the recipe's 300 steps (the
    whole recipe was a third of this file's time): both verdicts rose there at seeds 42, 7 and 1 and with the
    mode off on an emulated other CPU, every interval's lower end at +0.10 or more (docs/benchmarks.md,
    "Verdicts per seed")."""
    summary = train("orpo", tmp_path / "orpo", "train.max_steps=200")
    metrics = held_out(summary)
    assert metrics["exact_match"]["before"] <= 0.05
    assert_rose(summary, "preference_accuracy")
    assert_rose(summary, "exact_match")
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert (
        last["logps/chosen"] - last["logps/rejected"] > first["logps/chosen"] - first["logps/rejected"] + 0.5
    )


@pytest.mark.parametrize(
    "overrides", [(), ("train.loss_type=simpo", "train.beta=2.0")], ids=["cpo", "cpo-simpo"]
)
def test_cpo_and_its_simpo_loss_raise_held_out_exact_match(sft_run, tmp_path, overrides):
    """CPO (no reference model) and SimPO's loss in the same trainer, both with the behaviour-cloning
    term (cpo_alpha 1.0). Over seeds 42, 1-4 (docs/benchmarks.md) held-out exact match rose by 0.04 to 0.20
    (CPO) and 0.01 to 0.12 (CPO-SimPO) from each seed's SFT start (0.71-0.85); at the small end that is
    within the noise of 100 rows, so the held-out metrics must not fall, and the training margins must rise."""
    summary = from_sft("cpo", sft_run, tmp_path, *overrides)
    first, last = summary["metrics_first"], summary["metrics_last"]
    assert last["rewards/margins"] > first["rewards/margins"] and last["rewards/accuracies"] >= 0.95, (
        first,
        last,
    )
    assert last["nll_loss"] < first["nll_loss"]
    held_out(summary)
    assert_not_fell(summary, "exact_match")
    assert_not_fell(summary, "preference_accuracy")


def test_kto_raises_its_reward_margin_and_keeps_the_held_out_metrics(sft_run, tmp_path):
    summary = from_sft("kto", sft_run, tmp_path)
    metrics = held_out(summary)
    assert metrics["implicit_reward_accuracy"]["before"] == 0.5
    # 0.62-0.75 over six seeds here, but 0.59 (+0.09 [-0.01, +0.19]) outside the mode on an emulated other CPU
    # (docs/benchmarks.md, "Verdicts per seed"): within the noise of 100 rows, so only "did not fall" is claimed.
    assert_not_fell(summary, "implicit_reward_accuracy")
    first, last = summary["metrics_first"], summary["metrics_last"]
    # lr 1e-5 keeps exact match, so the margin moves little: about 0.00 -> 0.014-0.019 over six seeds
    assert last["rewards/margins"] > first["rewards/margins"] + 0.007, (first, last)
    assert_not_fell(summary, "exact_match")
