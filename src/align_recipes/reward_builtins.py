"""The builtin reward rules a recipe names with `{name: …}` (exact_match, numeric_match, regex,
length_penalty, think_format): each a factory that takes the entry's parameters and returns a TRL-GRPO
reward callable, and `BUILTINS`, the table that rewards.py checks the entries against.

Pure Python (no torch), so validation can check the parameters without loading anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from align_recipes.data.messages import completion_text

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


# ----------------------------------------------------------------------------------- text helpers


def last_number(text: Any) -> float | None:
    """The last number written in ``text`` ("#### 1,234" -> 1234.0); None when there is none."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def _column(kwargs: dict, column: str, reward: str, n: int) -> list:
    if column not in kwargs:
        available = sorted(k for k, v in kwargs.items() if isinstance(v, list) and len(v) == n)
        raise KeyError(
            f"reward '{reward}' needs the dataset column '{column}', which the batch does not have "
            f"(columns: {', '.join(available) or 'none'}); set `column:` in its rewards entry"
        )
    return kwargs[column]


# ---------------------------------------------------------------------------------------- builtins


def _exact_match(column: str = "answer") -> Callable:
    def exact_match(prompts, completions, **kwargs):
        answers = _column(kwargs, column, "exact_match", len(completions))
        return [float(completion_text(c).strip() == str(a).strip()) for c, a in zip(completions, answers)]

    exact_match.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return exact_match


def _numeric_match(column: str = "answer", tolerance: float = 1e-6) -> Callable:
    def numeric_match(prompts, completions, **kwargs):
        answers = _column(kwargs, column, "numeric_match", len(completions))
        scores = []
        for c, a in zip(completions, answers):
            got, want = last_number(completion_text(c)), last_number(a)
            scores.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
        return scores

    numeric_match.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return numeric_match


def _regex(pattern: str) -> Callable:
    compiled = re.compile(pattern)

    def regex(prompts, completions, **kwargs):
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    regex.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return regex


def _length_penalty(max_length: int) -> Callable:
    def length_penalty(prompts, completions, **kwargs):
        lengths = [len(completion_text(c)) for c in completions]
        return [0.0 if n <= max_length else -min(1.0, (n - max_length) / max_length) for n in lengths]

    length_penalty.reward_range = (-1.0, 0.0)
    return length_penalty


_THINK = re.compile(r"\s*<think>.*?</think>\s*\S", re.DOTALL)


def _think_format() -> Callable:
    def think_format(prompts, completions, **kwargs):
        return [float(_THINK.match(completion_text(c)) is not None) for c in completions]

    think_format.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return think_format


def is_str(v):
    return isinstance(v, str) and v != ""


def _is_pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_nonneg_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


# name -> (factory, {param: (required, check, "what it must be")}, one-line description)
BUILTINS: dict[str, tuple[Callable, dict[str, tuple[bool, Callable, str]], str]] = {
    "exact_match": (
        _exact_match,
        {"column": (False, is_str, "a column name")},
        "1.0 when the completion equals the answer column (whitespace-trimmed), else 0.0",
    ),
    "numeric_match": (
        _numeric_match,
        {"column": (False, is_str, "a column name"), "tolerance": (False, _is_nonneg_num, "a number >= 0")},
        "1.0 when the last number in the completion equals the answer's last number",
    ),
    "regex": (
        _regex,
        {"pattern": (True, is_str, "a regular expression")},
        "1.0 when the pattern is found in the completion (use ^...$ to match all of it)",
    ),
    "length_penalty": (
        _length_penalty,
        {"max_length": (True, _is_pos_int, "an integer > 0 (characters)")},
        "0 up to max_length characters, then down to -1.0 at twice that length",
    ),
    "think_format": (_think_format, {}, "1.0 for '<think>...</think>' followed by a non-empty answer"),
}
