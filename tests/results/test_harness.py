"""evaluate.harness: lm-evaluation-harness tasks on the start model and on the result (run/harness.py).

Fast: the section's validation (unknown keys, task files, lm-eval missing), path resolution, lm-eval's
results turned into paired rows (hand-made results, hand-computed intervals), the tables. One lm-eval call
on the untrained tiny model checks that the harness leaves the training's random streams and the model's
mode alone. Slow: the tiny recipe with a harness section, offline, through the CLI."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

from align_recipes.errors import RecipeErrors
from align_recipes.plan import harness as plan_harness
from align_recipes.plan import load_plan
from align_recipes.run import harness

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO / "recipes" / "tiny" / "data" / "eval.jsonl"
TOY_TASK = REPO / "recipes" / "tiny" / "harness" / "toy_arith.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def recipe(tmp_path: Path, harness_yaml: str, name: str = "recipe.yaml") -> Path:
    """A tiny dpo recipe whose evaluate section ends with `harness_yaml` (indented under evaluate:);
    the harness section starts on line 7."""
    head = textwrap.dedent(
        f"""
        algorithm: dpo
        model: {{name_or_path: builtin:tiny-qwen2}}
        data:
          train: {{path: {REPO}/recipes/tiny/data/prefs.jsonl}}
        evaluate:
          data: {{path: {EVAL_DATA}}}
        """
    ).lstrip()
    body = textwrap.indent(textwrap.dedent(harness_yaml).strip(), "  ")
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + body + "\n")
    return path


def task_file(folder: Path, data_files: str = "../data.jsonl", name: str = "toy.yaml") -> Path:
    return write(
        folder / name,
        f"""
        task: toy
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data_files}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{prompt[0].content}}}}"
        doc_to_target: "{{{{answer}}}}"
        metric_list:
          - metric: exact_match
        """,
    )


def errors_of(path: Path) -> list:
    with pytest.raises(RecipeErrors) as info:
        load_plan(path)
    return info.value.errors


# --- validation -------------------------------------------------------------------------------------------


def test_a_valid_section_resolves_task_files_against_the_recipe_and_keeps_names(tmp_path):
    (tmp_path / "data.jsonl").write_text(EVAL_DATA.read_text())
    task_file(tmp_path / "tasks")
    path = recipe(
        tmp_path,
        """
          harness:
            tasks: [tasks/toy.yaml, hellaswag]
            limit: 20
        """,
    )
    plan = load_plan(path)
    section = plan.evaluate.harness
    assert section.tasks == [str(tmp_path / "tasks" / "toy.yaml"), "hellaswag"]
    assert (section.limit, section.num_fewshot, section.batch_size, section.apply_chat_template) == (
        20,
        None,
        16,
        False,
    )
    assert load_plan(REPO / "recipes" / "tiny" / "dpo.yaml").evaluate.harness is None


def test_a_task_file_written_by_a_parent_recipe_resolves_against_the_parent(tmp_path):
    (tmp_path / "base" / "data.jsonl").parent.mkdir(parents=True)
    (tmp_path / "base" / "data.jsonl").write_text(EVAL_DATA.read_text())
    task_file(tmp_path / "base" / "tasks")
    recipe(tmp_path / "base", "harness: {tasks: [tasks/toy.yaml]}", name="_base.yaml")
    child = write(tmp_path / "child" / "run.yaml", "extends: ../base/_base.yaml\n")
    assert load_plan(child).evaluate.harness.tasks == [str(tmp_path / "base" / "tasks" / "toy.yaml")]


def test_an_unknown_key_is_named_with_its_line_and_a_suggestion(tmp_path):
    path = recipe(
        tmp_path,
        """
          harness:
            tasks: [hellaswag]
            limt: 20
        """,
    )
    (error,) = errors_of(path)
    assert error.key == "evaluate.harness.limt"
    assert "unknown key" in error.message and "did you mean 'limit'" in error.fix
    assert (Path(error.file).name, error.line) == ("recipe.yaml", 9)  # limt:


def test_a_missing_task_file_is_named_with_the_file_and_line(tmp_path):
    path = recipe(
        tmp_path,
        """
          harness:
            tasks:
              - hellaswag
              - tasks/missing.yaml
        """,
    )
    (error,) = errors_of(path)
    assert error.key == "evaluate.harness.tasks[1]"
    assert "task file 'tasks/missing.yaml' not found" in error.message
    assert "relative to the recipe file" in error.fix
    assert (Path(error.file).name, error.line) == ("recipe.yaml", 8)  # tasks:


def test_a_task_file_whose_data_file_is_missing_is_named(tmp_path):
    task_file(tmp_path / "tasks", data_files="../absent.jsonl")
    (error,) = errors_of(recipe(tmp_path, "harness: {tasks: [tasks/toy.yaml]}"))
    assert error.key == "evaluate.harness.tasks[0]"
    assert "toy.yaml: data file" in error.message and "absent.jsonl' not found" in error.message


def test_a_task_file_that_names_no_task_is_refused(tmp_path):
    write(tmp_path / "tasks" / "toy.yaml", "dataset_path: json\n")
    (error,) = errors_of(recipe(tmp_path, "harness: {tasks: [tasks/toy.yaml]}"))
    assert "names no `task:`" in error.message


@pytest.mark.parametrize(
    "section, key, fragment",
    [
        ("harness: {tasks: []}", "evaluate.harness.tasks", "an empty list runs nothing"),
        (
            "harness: {tasks: [3]}",
            "evaluate.harness.tasks[0]",
            "expected a task file or a task name, got int",
        ),
        ("harness: {tasks: hellaswag}", "evaluate.harness.tasks", "expected list"),
        ("harness: {tasks: [hellaswag], limit: 0}", "evaluate.harness.limit", "impossible value 0"),
        ("harness: {limit: 5}", "evaluate.harness.tasks", "required key missing"),
        ("harness: [hellaswag]", "evaluate.harness", "expected dict"),
    ],
)
def test_malformed_sections_are_refused(tmp_path, section, key, fragment):
    errors = errors_of(recipe(tmp_path, section))
    assert any(e.key == key and fragment in e.message for e in errors), [e.render() for e in errors]


def test_lm_eval_missing_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_harness, "has_module", lambda name: name != "lm_eval")
    (error,) = errors_of(recipe(tmp_path, "harness: {tasks: [hellaswag]}"))
    assert error.key == "evaluate.harness"
    assert "not installed" in error.message
    assert "pip install 'align-recipes[harness]'" in error.fix and "lm-eval>=0.4.13,<0.5" in error.fix


def test_lm_eval_outside_the_tested_range_is_refused(monkeypatch):
    monkeypatch.setattr(plan_harness, "has_module", lambda name: True)
    for version, ok in (("0.4.13", True), ("0.4.20", True), ("0.4.12", False), ("0.5.0", False)):
        monkeypatch.setattr(plan_harness, "package_version", lambda name, v=version: v)
        assert (plan_harness.lm_eval_problem() is None) is ok, version


def test_data_files_resolve_against_the_task_file(tmp_path):
    config = {
        "task": "t",
        "dataset_kwargs": {
            "data_files": {"test": "../d.jsonl", "train": ["a.jsonl", "/abs/b.jsonl", "hf://x/y.jsonl"]}
        },
    }
    fixed = plan_harness.absolute_data_files(config, Path("/tasks"))
    assert fixed["dataset_kwargs"]["data_files"] == {
        "test": "/tasks/../d.jsonl",
        "train": ["/tasks/a.jsonl", "/abs/b.jsonl", "hf://x/y.jsonl"],
    }
    assert config["dataset_kwargs"]["data_files"]["test"] == "../d.jsonl"  # the input is left as it was
    assert plan_harness.absolute_data_files({"task": "t"}, Path("/tasks")) == {"task": "t"}
    single = {"dataset_kwargs": {"data_files": "d.jsonl"}}
    assert (
        plan_harness.absolute_data_files(single, Path("/t"))["dataset_kwargs"]["data_files"] == "/t/d.jsonl"
    )


def test_includes_merge_under_the_task_file(tmp_path):
    write(
        tmp_path / "common.yaml",
        "output_type: generate_until\ndoc_to_text: '!'\nprocess_docs: !function u.f\n",
    )
    write(tmp_path / "task.yaml", "include: common.yaml\ntask: t\ndoc_to_text: '?'\n")
    assert plan_harness.read_task_file(tmp_path / "task.yaml") == {
        "output_type": "generate_until",
        "doc_to_text": "?",
        "process_docs": "u.f",
        "task": "t",
    }


def test_unknown_catalogue_names_get_close_matches():
    (problem,) = harness.unknown_tasks(["hellaswag", "helaswag"], ["hellaswag", "arc_easy", "mmlu"])
    message, fix = problem
    assert "'helaswag' is neither a task file nor a task" in message
    assert "did you mean 'hellaswag'" in fix


# --- results → rows ----------------------------------------------------------------------------------------

BEFORE_SCORES = [1, 0, 1, 1, 0, 1]
AFTER_SCORES = [1, 1, 1, 0, 1, 1]


def lm_eval_results(scores: list[float], bleu: float) -> dict:
    """simple_evaluate's shape: a mean-aggregated exact_match with its samples (listed out of order, as
    lm-eval may), a corpus-level bleu whose per-document items are not numbers, and a group without samples."""
    samples = [
        {"doc_id": i, "filter": "none", "exact_match": float(s), "bleu": ("ref", "pred")}
        for i, s in enumerate(scores)
    ]
    return {
        "results": {
            "toy": {
                "alias": "toy",
                "exact_match,none": sum(scores) / len(scores),
                "exact_match_stderr,none": "N/A",
                "bleu,none": bleu,
            },
            "suite": {"alias": "suite", "acc,none": 0.5},
        },
        "samples": {"toy": samples[::-1]},
        "higher_is_better": {"toy": {"exact_match": True, "bleu": True}},
        "n-samples": {"toy": {"original": 100, "effective": len(scores)}},
    }


def test_results_become_rows_with_per_document_scores():
    rows = harness.results_rows(lm_eval_results(BEFORE_SCORES, 12.5))
    by_metric = {(r["task"], r["metric"]): r for r in rows}
    assert set(by_metric) == {("toy", "exact_match"), ("toy", "bleu"), ("suite", "acc")}
    em = by_metric["toy", "exact_match"]
    assert em["doc_ids"] == [0, 1, 2, 3, 4, 5] and em["scores"] == BEFORE_SCORES
    assert (em["value"], em["n"], em["higher_is_better"]) == (4 / 6, 6, True)
    assert by_metric["toy", "bleu"]["scores"] is None and by_metric["toy", "bleu"]["n"] == 6
    assert by_metric["suite", "acc"]["scores"] is None and by_metric["suite", "acc"]["n"] is None


def test_a_filter_other_than_none_joins_the_metric_name():
    results = {
        "results": {"gsm": {"exact_match,strict-match": 0.5}},
        "samples": {
            "gsm": [
                {"doc_id": 0, "filter": "strict-match", "exact_match": 1.0},
                {"doc_id": 1, "filter": "strict-match", "exact_match": 0.0},
            ]
        },
    }
    (row,) = harness.results_rows(results)
    assert row["metric"] == "exact_match (strict-match)" and row["scores"] == [1.0, 0.0]


def test_before_and_after_are_paired_per_document_with_a_hand_computed_interval():
    before = harness.results_rows(lm_eval_results(BEFORE_SCORES, 12.5))
    after = harness.results_rows(lm_eval_results(AFTER_SCORES, 14.0))
    rows = {r["metric"]: r for r in harness.compare_results(before, after)}
    em = rows["exact_match"]
    # d = after - before per document = [0, 1, 0, -1, 1, 0]: mean 1/6, sample sd sqrt(0.5667),
    # t(0.975, 5) = 2.571 (table), half width 2.571 * sqrt(0.5667 / 6) = 0.7901
    assert (em["before"], em["after"], em["n"]) == (4 / 6, 5 / 6, 6)
    assert em["difference"] == pytest.approx(1 / 6)
    half = 2.571 * math.sqrt((3 * (1 / 6) ** 2 + 2 * (5 / 6) ** 2 + (7 / 6) ** 2) / 5 / 6)
    assert half == pytest.approx(0.7901, abs=1e-4)
    assert em["interval"] == pytest.approx([1 / 6 - half, 1 / 6 + half], abs=2e-3)
    assert em["verdict"] == "no significant change"
    bleu = rows["bleu"]  # a corpus score: its two values and their difference, no interval
    assert (bleu["before"], bleu["after"], bleu["difference"], bleu["interval"], bleu["verdict"]) == (
        12.5,
        14.0,
        1.5,
        None,
        None,
    )


def test_a_clear_rise_gets_the_verdict_rose():
    before = harness.results_rows(lm_eval_results([0] * 20, 1.0))
    after = harness.results_rows(lm_eval_results([1] * 15 + [0] * 5, 1.0))
    em = next(r for r in harness.compare_results(before, after) if r["metric"] == "exact_match")
    assert em["difference"] == pytest.approx(0.75) and em["verdict"] == "rose"


def test_documents_that_differ_are_not_paired():
    before = harness.results_rows(lm_eval_results(BEFORE_SCORES, 1.0))
    after = harness.results_rows(lm_eval_results(AFTER_SCORES[:5], 1.0))
    em = next(r for r in harness.compare_results(before, after) if r["metric"] == "exact_match")
    assert em["interval"] is None and em["difference"] == pytest.approx(4 / 5 - 4 / 6)


def test_the_table_shows_before_after_change_interval_n_and_verdict():
    row = {
        "task": "toy",
        "metric": "exact_match",
        "before": 0.8,
        "after": 0.84,
        "n": 50,
        "difference": 0.04,
        "interval": [0.002, 0.078],
        "verdict": "rose",
        "higher_is_better": True,
    }
    lines = harness.table_lines([row])
    assert lines[0] == "## General ability (lm-evaluation-harness)"
    assert "| toy | exact_match ↑ | 0.800 | 0.840 | +0.040 [+0.002, +0.078] | 50 | rose |" in lines
    assert harness.table_lines([]) == [] and harness.table_lines(None) == []


def fake_plan(limit: int = 4):
    from types import SimpleNamespace

    from align_recipes.plan.sections import HarnessSection

    section = HarnessSection.from_dict({"tasks": ["t.yaml"], "limit": limit})
    return SimpleNamespace(evaluate=SimpleNamespace(harness=section))


def test_a_resumed_run_reuses_the_start_scores_unless_the_section_changed(tmp_path, monkeypatch):
    measured = []
    row = {"task": "t", "metric": "acc", "value": 0.5, "n": 2, "doc_ids": [0, 1], "scores": [1.0, 0.0]}
    monkeypatch.setattr(harness, "evaluate", lambda plan, model, tokenizer: measured.append(plan) or [row])
    brief = [{"task": "t", "metric": "acc", "value": 0.5, "n": 2}]
    assert harness.measure_before(fake_plan(), tmp_path, None, None, resuming=False) == brief
    assert len(measured) == 1 and (tmp_path / harness.BEFORE_FILE).is_file()
    assert harness.measure_before(fake_plan(), tmp_path, None, None, resuming=True) == brief
    assert len(measured) == 1  # reused
    harness.measure_before(fake_plan(limit=8), tmp_path, None, None, resuming=True)
    assert len(measured) == 2  # a changed limit is measured again
    harness.measure_before(fake_plan(limit=8), tmp_path, None, None, resuming=False)
    assert len(measured) == 3  # a fresh run always measures


def test_after_training_without_a_start_measurement_there_is_nothing_to_compare(tmp_path, monkeypatch):
    monkeypatch.setattr(
        harness, "evaluate", lambda *a: pytest.fail("nothing to compare with: no measurement")
    )
    assert harness.measure_after(fake_plan(), tmp_path, None, None) is None
    from types import SimpleNamespace

    assert harness.measure_before(SimpleNamespace(evaluate=None), tmp_path, None, None, False) is None


# --- lm-eval on the tiny model ---------------------------------------------------------------------------


def test_the_harness_leaves_random_streams_and_the_model_mode_alone(tmp_path):
    """lm-eval reseeds python, numpy and torch unless told not to: a recipe with a harness must train the same
    weights as without one."""
    pytest.importorskip("lm_eval")
    import random

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_recipes.tiny import TINY_MODEL_ID, ensure_builtin

    folder = ensure_builtin(TINY_MODEL_ID)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    model.train()
    path = recipe(tmp_path, f"harness: {{tasks: [{TOY_TASK}], limit: 4, apply_chat_template: true}}")
    plan = load_plan(path)
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    rows = harness.evaluate(plan, model, tokenizer)
    drawn = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    assert drawn == (torch.rand(1).item(), random.random(), np.random.rand())
    assert model.training
    (row,) = rows
    assert (row["task"], row["metric"], row["n"], row["doc_ids"]) == (
        "toy_arith",
        "exact_match",
        4,
        [0, 1, 2, 3],
    )
    assert row["value"] == sum(row["scores"]) / 4


# --- end to end --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_recipe_with_a_harness_shows_before_and_after_everywhere(tmp_path):
    """recipes/tiny/dpo_harness.yaml, offline: the toy task through lm-eval on the start model and on the
    result, in summary.json, report.md and the model card, with n and the paired interval."""
    pytest.importorskip("lm_eval")
    from align_recipes.cli import main

    out = tmp_path / "run"
    rc = main(["train", "recipes/tiny/dpo_harness.yaml", f"train.output_dir={out}", "--profile", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["harness"]
    assert (row["task"], row["metric"], row["n"]) == ("toy_arith", "exact_match", 50)
    low, high = row["interval"]
    assert low <= row["difference"] <= high and row["verdict"] is not None
    assert row["difference"] == pytest.approx(row["after"] - row["before"])
    stored = json.loads((out / harness.BEFORE_FILE).read_text())["results"][0]
    assert stored["doc_ids"] == list(range(50)) and row["before"] == pytest.approx(sum(stored["scores"]) / 50)
    assert summary["harness_before"] == [{k: stored[k] for k in ("task", "metric", "value", "n")}]
    assert {t["name"] for t in summary["task_metrics"]} == {"implicit_reward_accuracy", "exact_match"}
    line = f"| toy_arith | exact_match ↑ | {row['before']:.3f} | {row['after']:.3f} | {harness.change_text(row)} | 50 |"
    for document in ("report.md", "README.md"):
        text = (out / document).read_text()
        assert "## General ability (lm-evaluation-harness)" in text, document
        assert line in text, (document, line)
