"""Held-out metrics as paired per-row scores: what `measure` keeps, how before and after are compared
(summary.json's task_metrics), where the scores are kept (heldout_scores.json), and the done line and
model card that show the comparison. Hand-made scores and a stubbed model: no training, except the one
slow test that trains, resumes and reads what the run wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from align_recipes.plan.load import load_plan
from align_recipes.run import measure
from align_recipes.run.card import model_card
from align_recipes.run.finish import headline
from align_recipes.run.rundir import HELDOUT_SCORES, RunDir, task_metrics

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny"


def test_pair_and_implicit_wins_score_each_row_one_half_on_a_tie():
    assert measure.pair_wins([2.0, 1.0, -1.0], [1.0, 1.0, 0.0]) == [1.0, 0.5, 0.0]
    # margins (c - rc) - (r - rr): 1, 0, -3
    wins = measure.implicit_wins(
        [-1.0, -2.0, -2.0], [-3.0, -3.0, -1.0], [-2.0, -2.0, -1.0], [-3.0, -3.0, -3.0]
    )
    assert wins == [1.0, 0.5, 0.0]


class StubModel:
    """What `measure` needs of a model when generation and scoring are replaced: nothing."""


def _stub(monkeypatch, answers: list[str], chosen: list[float], rejected: list[float]) -> None:
    monkeypatch.setattr(
        measure, "generate", lambda model, tok, prompts, max_new_tokens=16: answers[: len(prompts)]
    )
    monkeypatch.setattr(measure, "pair_scores", lambda model, tok, rows, head: (chosen, rejected))


def test_measure_keeps_per_row_scores_in_row_order_and_compares_them_paired(monkeypatch, tmp_path):
    plan = load_plan(TINY / "dpo.yaml", ["evaluate.limit=6"], profile="cpu")
    rows = measure.held_out_rows(plan, "preference")
    truth = [r["answer"] for r in measure.held_out_rows(plan, "prompt_only")]
    assert plan.evaluate.metrics == ["implicit_reward_accuracy", "exact_match"] and len(rows) == 6

    start = measure.StartScores()
    reference = ([-1.0] * 6, [-2.0] * 6)
    _stub(monkeypatch, [*truth[:2], "x", "x", "x", "x"], *reference)
    before = measure.measure(plan, StubModel(), None, start)
    assert [m["scores"] for m in before] == [[0.5] * 6, [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    assert [m["value"] for m in before] == [0.5, pytest.approx(2 / 6)]

    # after: margins +1, +1, +1, +1, 0, -1 for the pairs; the first five answers right
    _stub(monkeypatch, [*truth[:5], "x"], [0.0, 0.0, 0.0, 0.0, -1.0, -2.0], [-2.0] * 6)
    after = measure.measure(plan, StubModel(), None, start)
    assert [m["scores"] for m in after] == [[1.0, 1.0, 1.0, 1.0, 0.5, 0.0], [1.0] * 5 + [0.0]]

    run = RunDir(tmp_path)
    run.write_heldout_scores("before", measure.scores_by_name(before))
    run.write_heldout_scores("after", measure.scores_by_name(after))
    assert json.loads((tmp_path / HELDOUT_SCORES).read_text())["before"]["exact_match"] == [1, 1, 0, 0, 0, 0]
    entries = measure.compare_metrics(measure.without_scores(before), after, run.heldout_scores("before"))
    by_name = {e["name"]: e for e in entries}

    # exact_match: d = [0, 0, 1, 1, 1, 0], mean 0.5, variance 6 * 0.25 / 5 = 0.3, se sqrt(0.05), t_{0.975,5} 2.571
    em = by_name["exact_match"]
    half = 2.571 * math.sqrt(0.05)
    assert em["n"] == 6 and em["before"] == pytest.approx(2 / 6) and em["after"] == pytest.approx(5 / 6)
    assert em["difference"] == pytest.approx(0.5)
    assert em["interval"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-3)
    assert em["verdict"] == "no significant change" and em["confidence"] == 0.95
    # the after value's own interval: scores 1 x5, 0: variance (5/36 + 25/36) / 5 = 1/6, se 1/6
    assert em["after_interval"] == pytest.approx([5 / 6 - 2.571 / 6, 5 / 6 + 2.571 / 6], abs=1e-3)
    # implicit: d = [0.5, 0.5, 0.5, 0.5, 0, -0.5], mean 0.25
    assert by_name["implicit_reward_accuracy"]["difference"] == pytest.approx(0.25)
    assert "scores" not in json.dumps(measure.without_scores(before))  # summary.json stays small


def test_without_the_before_scores_the_comparison_is_the_bare_difference():
    """A run resumed from a folder written before per-row scores were kept: no interval, no verdict."""
    before = [{"name": "exact_match", "value": 0.5, "n": 4}]
    after = [{"name": "exact_match", "value": 0.75, "n": 4, "scores": [1.0, 1.0, 1.0, 0.0]}]
    (entry,) = measure.compare_metrics(before, after, {})
    assert entry["difference"] == 0.25 and entry["interval"] is None and entry["verdict"] is None
    assert headline({"task_metrics": [entry]}) == "exact_match 0.500 → 0.750 (+0.250, n=4)"
    # scored on other rows (the held-out data changed): not paired either
    (other,) = measure.compare_metrics(before, after, {"exact_match": [1.0, 0.0]})
    assert other["interval"] is None and other["verdict"] is None


def _rose_and_flat() -> list[dict]:
    """Two metrics on 100 rows: exact_match gains 20 rows (rose), implicit gains 12 and loses 10 (flat)."""
    em_before, em_after = [0.0] * 20 + [1.0] * 70 + [0.0] * 10, [1.0] * 90 + [0.0] * 10
    ir_before, ir_after = [0.0] * 12 + [1.0] * 10 + [1.0] * 78, [1.0] * 12 + [0.0] * 10 + [1.0] * 78
    before = [
        {"name": "implicit_reward_accuracy", "value": 0.88, "n": 100},
        {"name": "exact_match", "value": 0.7, "n": 100},
    ]
    after = [
        {"name": "implicit_reward_accuracy", "value": 0.9, "n": 100, "scores": ir_after},
        {"name": "exact_match", "value": 0.9, "n": 100, "scores": em_after},
    ]
    return measure.compare_metrics(
        before, after, {"implicit_reward_accuracy": ir_before, "exact_match": em_before}
    )


def test_the_done_line_shows_change_interval_n_and_verdict():
    # exact_match: d = 20 ones in 100: mean 0.2, se 0.4 / sqrt(99) = 0.04020, t_{0.975,99} 1.984: ±0.0798
    # implicit: d = 12 ones, 10 minus ones: mean 0.02, var (12 * 0.98^2 + 10 * 1.02^2 + 78 * 0.02^2) / 99
    #   = 0.2218, se 0.04710, half 0.0934
    assert headline({"task_metrics": _rose_and_flat()}) == (
        "implicit_reward_accuracy 0.880 → 0.900 (+0.020 [-0.073, +0.113], n=100, no significant change)"
        " · exact_match 0.700 → 0.900 (+0.200 [+0.120, +0.280], n=100, rose)"
    )


def test_summaries_with_and_without_the_paired_fields_read_back(tmp_path):
    entries = _rose_and_flat()
    (tmp_path / "summary.json").write_text(json.dumps({"status": "complete", "task_metrics": entries}))
    read = task_metrics(RunDir(tmp_path).summary())
    assert [t["verdict"] for t in read] == ["no significant change", "rose"]
    assert set(read[1]) >= {"n", "before", "after", "difference", "interval", "confidence", "verdict"}
    old = {"task_metrics": [{"name": "exact_match", "before": 0.79, "after": 0.82, "n": 100}]}
    assert task_metrics(old)[0].get("verdict") is None
    assert headline(old) == "exact_match 0.790 → 0.820"
    assert RunDir(tmp_path).heldout_scores("before") == {}  # no heldout_scores.json: nothing paired


def test_the_model_card_shows_the_change_its_interval_and_the_verdict(tmp_path):
    summary = {"algorithm": "dpo", "status": "complete", "task_metrics": _rose_and_flat()}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    card = model_card(tmp_path)
    assert "| held-out metric | before | after | n | change [95% interval] | verdict |" in card
    assert "| exact_match | 0.7 | 0.9 | 100 | +0.200 [+0.120, +0.280] | rose |" in card
    assert (
        "| implicit_reward_accuracy | 0.88 | 0.9 | 100 | +0.020 [-0.073, +0.113] | no significant change |"
        in card
    )
    assert "95% interval" in card and "excludes zero" in card
    old = {"algorithm": "dpo", "task_metric": {"name": "exact_match", "before": 0.5, "after": 0.75, "n": 8}}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    assert "| exact_match | 0.5 | 0.75 | 8 | +0.250 |  |" in model_card(tmp_path)


@pytest.mark.slow
def test_a_run_and_its_resumption_record_the_paired_comparison(tmp_path, capsys):
    from align_recipes.cli import main

    out = tmp_path / "sft"
    common = ["--profile", "cpu", "--no-report", "evaluate.limit=8", "train.save_strategy=steps"]
    args = ["train", "recipes/tiny/sft.yaml", f"train.output_dir={out}", *common, "train.save_steps=2"]
    assert main([*args, "train.max_steps=2"]) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    summary = json.loads((out / "summary.json").read_text())
    (entry,) = summary["task_metrics"]
    kept = json.loads((out / HELDOUT_SCORES).read_text())
    before, after = kept["before"]["exact_match"], kept["after"]["exact_match"]
    assert len(before) == len(after) == entry["n"] == 8 and set(before + after) <= {0.0, 1.0}
    assert entry["before"] == pytest.approx(sum(before) / 8) and entry["after"] == pytest.approx(
        sum(after) / 8
    )
    assert entry["difference"] == pytest.approx((sum(after) - sum(before)) / 8)
    # the interval by hand: d = after - before per row, t_{0.975,7} = 2.365
    d = [a - b for a, b in zip(after, before)]
    mean = sum(d) / 8
    half = 2.365 * math.sqrt(sum((x - mean) ** 2 for x in d) / 7 / 8)
    assert entry["interval"] == pytest.approx([mean - half, mean + half], abs=1e-3)
    assert entry["verdict"] in ("rose", "no significant change", "fell")
    assert "scores" not in json.dumps(summary)
    assert len(done) == 1 and "n=8" in done[0] and "exact_match" in done[0]
    assert "| exact_match |" in (out / "README.md").read_text()

    # resumed: the before scores come back from heldout_scores.json, so the comparison stays paired
    assert main([*args, "train.max_steps=4", "--resume"]) == 0
    resumed = json.loads((out / "summary.json").read_text())["task_metrics"][0]
    again = json.loads((out / HELDOUT_SCORES).read_text())
    assert again["before"]["exact_match"] == before and len(again["after"]["exact_match"]) == 8
    assert resumed["before"] == entry["before"] and resumed["n"] == 8
    assert resumed["difference"] == pytest.approx((sum(again["after"]["exact_match"]) - sum(before)) / 8)
    assert "interval" in resumed and "verdict" in resumed


def test_the_e2e_helper_reads_a_metrics_verdict():
    from e2e_helpers import verdict

    summary = {"task_metrics": _rose_and_flat()}
    assert verdict(summary, "exact_match") == "rose"
    assert verdict(summary, "implicit_reward_accuracy") == "no significant change"
    assert verdict({"task_metrics": [{"name": "reward", "before": 0.1, "after": 0.2}]}, "reward") is None
    with pytest.raises(AssertionError, match="not measured"):
        verdict(summary, "reward")
