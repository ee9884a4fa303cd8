"""Reward functions are called on the first rows of the data before any model loads (plan/reward_calls.py);
the refusals through the CLI are cases in tests/fixtures/bad_inputs (test_bad_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

from align_recipes.data import DataSpec, peek
from align_recipes.plan.reward_calls import PLACEHOLDER, call_problem, peeked_sources, reward_call_problems
from align_recipes.rewards import load_function

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RECORDER = """
CALLS = []


def record(prompts, completions, **kwargs):
    CALLS.append({"prompts": prompts, "completions": completions, **kwargs})
    return [0.5 for _ in completions]


def needs_state(prompts, completions, trainer_state, **kwargs):
    return [float(trainer_state.global_step) for _ in completions]
"""


def source(path: Path, section: str = "data.train") -> dict:
    spec = DataSpec(path=str(path), section=section)
    return peeked_sources({section: (peek(spec, path.parent, 20), spec)})


def recorder(tmp_path: Path) -> tuple[dict, list]:
    (tmp_path / "recorder.py").write_text(RECORDER)
    spec = {"function": "recorder.py:record"}
    return spec, load_function(spec["function"], tmp_path).__globals__["CALLS"]


def test_call_problem_accepts_one_number_or_none_per_completion():
    ok = lambda prompts, completions, **kw: [1, 0.5, None]  # noqa: E731
    assert call_problem(ok, ["a", "b", "c"], ["x", "y", "z"], {}) is None


def test_call_problem_names_what_went_wrong():
    def raises(prompts, completions, **kwargs):
        raise KeyError("answer")

    assert call_problem(raises, ["a"], ["x"], {}) == "raised KeyError: 'answer'"
    assert call_problem(lambda prompts, completions, **kw: [1.0], ["a", "b"], ["x", "y"], {}) == (
        "returned 1 values for 2 completions (one per completion is needed)"
    )
    assert call_problem(lambda prompts, completions, **kw: ["high"], ["a"], ["x"], {}) == (
        "returned 'high' (str) for a completion, not a number or None"
    )
    assert call_problem(lambda prompts, completions, **kw: None, ["a"], ["x"], {}) == (
        "returned NoneType None, not a list of one number per completion"
    )


def test_answers_stand_in_for_completions_in_the_prompts_shape(tmp_path):
    """recipes/tiny/data/prompts.jsonl: chat prompts with an `answer` column. The first 4 rows' answers
    are the completions, as assistant messages; the column goes along as a keyword argument."""
    spec, calls = recorder(tmp_path)
    path = FIXTURES.parents[1] / "recipes" / "tiny" / "data" / "prompts.jsonl"
    first = [json.loads(line) for line in path.read_text().splitlines()[:4]]
    assert reward_call_problems([spec], source(path), tmp_path) == []
    (call,) = calls
    assert call["prompts"] == [row["prompt"] for row in first]
    assert call["completions"] == [[{"role": "assistant", "content": row["answer"]}] for row in first]
    assert call["answer"] == [row["answer"] for row in first] and set(call) == {
        "prompts",
        "completions",
        "answer",
    }


def test_a_placeholder_stands_in_without_answers(tmp_path):
    """tests/fixtures/data/prompt_only.jsonl has `reference`, not `answer` (its prompts become chat messages)."""
    spec, calls = recorder(tmp_path)
    assert reward_call_problems([spec], source(FIXTURES / "data" / "prompt_only.jsonl"), tmp_path) == []
    (call,) = calls
    assert call["prompts"][0] == [{"role": "user", "content": "Solve: 3*7"}]
    assert call["completions"] == [[{"role": "assistant", "content": PLACEHOLDER}]] * len(call["prompts"])
    assert call["reference"][:2] == ["21", "6"]


def test_the_shipped_toy_reward_runs_on_a_csv_with_answers(tmp_path):
    spec = {"function": "align_recipes.tiny.toytask:toy_reward"}
    assert reward_call_problems([spec], source(FIXTURES / "data" / "gsm8k_qa.csv"), tmp_path) == []


def test_what_the_probe_cannot_stand_in_for_is_not_called(tmp_path):
    (tmp_path / "recorder.py").write_text(RECORDER)
    data = source(FIXTURES / "data" / "prompt_only.jsonl")
    # a trainer-only argument (trainer_state) without a default: not called, not refused
    assert reward_call_problems([{"function": "recorder.py:needs_state"}], data, tmp_path) == []
    # a hub dataset (no rows offline) is read when the run starts
    hub = peeked_sources({"data.train": ([], DataSpec(path="org/dataset", section="data.train"))})
    assert reward_call_problems([{"function": "align_recipes.tiny.toytask:toy_reward"}], hub, tmp_path) == []


def test_one_problem_per_reward_entry_with_its_key(tmp_path):
    toy = {"function": "align_recipes.tiny.toytask:toy_reward"}
    data = {
        **source(FIXTURES / "bad_inputs" / "data" / "prompts_no_answer.csv"),
        **source(FIXTURES / "bad_inputs" / "data" / "roleless.jsonl", "data.eval"),
    }
    problems = reward_call_problems([{"name": "length_penalty", "max_length": 5}, toy], data, tmp_path)
    assert [key for key, _, _ in problems] == ["rewards[1].function"]
    assert "cannot run on data.train (prompts_no_answer.csv)" in problems[0][1]
