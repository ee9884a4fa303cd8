"""Held-out metrics: which ones a run measures (the registry's `metrics` trait, filtered by what the
evaluate data serves), their arithmetic on hand-made numbers, and how summaries old and new read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_recipes.plan.load import load_plan
from align_recipes.plan.sections import METRICS
from align_recipes.registry import ALGORITHMS
from align_recipes.run import measure
from align_recipes.run.finish import headline
from align_recipes.run.rundir import task_metrics

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny"
USER = [{"role": "user", "content": "2+2="}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- which metrics --------------------------------------------------------------------------------------


def test_every_algorithm_names_known_metrics_and_the_tiny_recipes_measure_them_all():
    """The tiny eval file serves every metric, so each tiny recipe measures exactly its algorithm's trait."""
    for algorithm in ALGORITHMS.values():
        assert algorithm.metrics and set(algorithm.metrics) <= set(METRICS), algorithm.name
        plan = load_plan(TINY / f"{algorithm.name}.yaml", profile="cpu")
        assert plan.evaluate.metrics == list(algorithm.metrics), algorithm.name
        assert plan.source("evaluate.metric") == "align-recipes"
    assert ALGORITHMS["dpo"].metrics[0] == "implicit_reward_accuracy"
    assert ALGORITHMS["grpo"].metrics == ("reward", "exact_match")


def test_metrics_the_data_cannot_serve_are_left_out_unless_named(tmp_path):
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": USER, "chosen": "4", "rejected": "5"}] * 3)
    answers = _jsonl(tmp_path / "answers.jsonl", [{"prompt": USER, "answer": "4"}] * 3)

    def plan_for(data: Path, *overrides: str):
        return load_plan(TINY / "dpo.yaml", [f"evaluate.data.path={data}", *overrides], profile="cpu")

    assert plan_for(pairs).evaluate.metrics == ["implicit_reward_accuracy"]  # no answers: no exact match
    assert plan_for(answers).evaluate.metrics == ["exact_match"]  # no pairs: no preference metric
    assert plan_for(answers, "evaluate.metric=[exact_match]").evaluate.metrics == ["exact_match"]
    assert plan_for(pairs, "evaluate.metric=preference_accuracy").evaluate.metrics == ["preference_accuracy"]
    reward = load_plan(TINY / "reward.yaml", profile="cpu")
    assert reward.evaluate.metrics == ["preference_accuracy"]  # a reward model: its score, no generation


def test_a_run_written_elsewhere_keeps_what_it_measured_in_the_resolved_recipe(tmp_path):
    from align_recipes.plan import resolved_yaml

    text = resolved_yaml(load_plan(TINY / "ppo.yaml", profile="cpu"))
    assert "metric:\n  - reward\n  - exact_match" in text


# --- the arithmetic -------------------------------------------------------------------------------------


def test_implicit_accuracy_counts_positive_margins_and_half_the_ties():
    # margins (c - rc) - (r - rr): (-1+2) - (-3+3) = 1 > 0; (-2+2) - (-3+3) = 0 tie; (-2+1) - (-1+3) = -3 < 0
    value = measure.implicit_accuracy(
        chosen=[-1.0, -2.0, -2.0],
        rejected=[-3.0, -3.0, -1.0],
        ref_chosen=[-2.0, -2.0, -1.0],
        ref_rejected=[-3.0, -3.0, -3.0],
    )
    assert value == pytest.approx((1 + 0.5) / 3)
    same = [-1.5, -0.5]
    assert measure.implicit_accuracy(same, same[::-1], same, same[::-1]) == 0.5  # an unchanged model: chance
    assert measure.implicit_accuracy([], [], [], []) == 0.0


def test_mean_reward_weights_each_function_and_skips_none():
    rows = [{"prompt": USER, "answer": "4"}, {"prompt": USER, "answer": "5"}]
    seen = {}

    def right(prompts, completions, answer, **kwargs):
        seen.update(completions=completions, answer=answer)
        return [float(c[0]["content"] == a) for c, a in zip(completions, answer)]

    def short(prompts, completions, **kwargs):
        return [None, 0.5]

    value = measure.mean_reward(([right, short], [2.0, 1.0]), rows, ["4", "4"])
    assert value == pytest.approx(((2 * 1.0) + (2 * 0.0 + 0.5)) / 2)
    assert seen["completions"][0] == [{"role": "assistant", "content": "4"}]  # conversational, as in training
    assert seen["answer"] == ["4", "5"]  # the data's other columns, as TRL passes them


def test_exact_match_of_ignores_surrounding_whitespace():
    rows = [{"answer": "12"}, {"answer": " 7"}, {"answer": "3"}]
    assert measure.exact_match_of(["12\n", "7", "30"], rows) == pytest.approx(2 / 3)
    with pytest.raises(Exception, match="answer"):
        measure.exact_match_of(["1"], [{"prompt": "x"}])


# --- summaries ------------------------------------------------------------------------------------------


def test_summaries_old_and_new_read_the_same_way():
    new = {
        "task_metrics": [
            {"name": "implicit_reward_accuracy", "before": 0.5, "after": 0.8, "n": 100},
            {"name": "exact_match", "before": 0.79, "after": 0.82, "n": 100},
        ]
    }
    assert [t["name"] for t in task_metrics(new)] == ["implicit_reward_accuracy", "exact_match"]
    old = {"task_metric": {"name": "exact_match", "before": 0.0, "after": 0.76, "n": 100}}
    assert task_metrics(old) == [old["task_metric"]]
    cut = {"task_metrics_before": [{"name": "reward", "value": 0.6, "n": 10}]}
    assert task_metrics(cut) == [{"name": "reward", "before": 0.6, "after": None, "n": 10}]
    old_cut = {"task_metric": None, "task_metric_before": {"name": "exact_match", "value": 0.1, "n": 10}}
    assert task_metrics(old_cut) == [{"name": "exact_match", "before": 0.1, "after": None, "n": 10}]
    assert task_metrics({}) == []


def test_the_done_line_shows_every_held_out_metric():
    summary = {
        "task_metrics": [
            {"name": "implicit_reward_accuracy", "before": 0.5, "after": 0.79, "n": 100},
            {"name": "exact_match", "before": 0.79, "after": 0.82, "n": 100},
        ],
        "train_loss": 0.8,
    }
    assert headline(summary) == "implicit_reward_accuracy 0.500 → 0.790 · exact_match 0.790 → 0.820"
    assert headline({"train_loss": 0.25}) == "train loss 0.2500"
    assert (
        headline({"task_metric": {"name": "exact_match", "before": 0.0, "after": 0.5}})
        == "exact_match 0.000 → 0.500"
    )


def test_report_tables_and_plots_every_metric(tmp_path):
    from align_recipes.results import report

    run = tmp_path / "dpo"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n')
    (run / "summary.json").write_text(
        json.dumps(
            {
                "algorithm": "dpo",
                "status": "complete",
                "task_metrics": [
                    {"name": "implicit_reward_accuracy", "before": 0.5, "after": 0.8, "n": 100},
                    {"name": "exact_match", "before": 0.79, "after": 0.82, "n": 100},
                ],
            }
        )
    )
    text = report.write_report(run).read_text()
    assert "| implicit_reward_accuracy | 0.5 | 0.8 | +0.3 | 100 |" in text
    assert "| exact_match | 0.79 | 0.82 | +0.03 | 100 |" in text
    assert (run / "plots" / "task_metric.png").stat().st_size > 2000


# --- the eval verb's choice -----------------------------------------------------------------------------


def test_eval_picks_the_algorithms_metrics_that_the_data_serves(tmp_path):
    from align_recipes.results.evaluate import data_serves, default_metrics
    from align_recipes.run.saved import RunInfo

    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": USER, "chosen": "4", "rejected": "5"}] * 3)
    both = TINY / "data" / "eval.jsonl"

    def chosen(algorithm: str, data: Path, head: str = "causal_lm", **recipe) -> list[str]:
        info = RunInfo(run_dir=tmp_path, recipe={"algorithm": algorithm, **recipe}, head=head)
        return default_metrics(info, None, data_serves({"path": str(data)}, [tmp_path], info))

    assert chosen("dpo", both) == ["implicit_reward_accuracy", "exact_match"]
    assert chosen("dpo", pairs) == ["implicit_reward_accuracy"]
    assert chosen("orpo", both) == ["preference_accuracy", "exact_match", "implicit_reward_accuracy"]
    assert chosen("sft", both) == ["exact_match"]
    assert chosen("reward", both, head="reward") == ["preference_accuracy"]
    assert chosen("grpo", both) == ["exact_match"]  # no reward functions in its recipe: no reward metric
    assert chosen("grpo", both, rewards=[{"name": "exact_match"}]) == ["reward", "exact_match"]
    with pytest.raises(Exception, match="serves none"):
        chosen("sft", pairs)
