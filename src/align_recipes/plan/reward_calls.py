"""Call each reward function on the first rows of the data, before any model loads. No torch.

A reward's signature says little: `toy_reward(prompts, completions, answer=(), **kwargs)` gives its column a
default, so the column check passes on data without `answer`, and the run used to end in a traceback after the
model had loaded (`toy_reward got 64 completions but 0 answers`). Calling it costs microseconds and finds that,
and any other exception a function raises on this data, while the fix is still one line of the recipe.

Each builtin rule and module/file function is called as the trainers call it: keyword arguments `prompts`,
`completions` and the columns the data carries to rewards (`data.reward_columns`), on the first `PROBE_ROWS`
rows of every local source of data.train and data.eval, and of evaluate.data when the held-out `reward` is
measured. The completions are the rows' reference answers where the data has an `answer` column, else a
placeholder: a reward must score any text the policy writes. Reward models are not called (that would load one);
nor are functions that require an argument only a trainer has (`trainer_state`, `completion_ids`, ...).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from align_recipes.data import PROMPT_ONLY, DataError, preview, reward_columns
from align_recipes.rewards import TRAINER_KWARGS, build_reward_funcs, is_file_ref, needed_columns

PROBE_ROWS = 4
PLACEHOLDER = "a placeholder answer"
ANSWER = "answer"  # the column whose values stand in for completions (as exact_match's held-out metric reads)


def reward_call_problems(
    specs: list[dict], sources: dict[str, tuple[list[dict], list[str], str]], base_dir: Path
) -> list[tuple[str, str, str]]:
    """(key, message, fix) for each reward entry that fails when called on the first rows of `sources`
    ({section: (rows in the trainer's layout, the columns carried to rewards, the data's name)}); at most one
    per entry, from the first source it fails on."""
    problems = []
    for index, spec in enumerate(specs):
        kind = "name" if "name" in spec else "function" if "function" in spec else None
        if kind is None:
            continue  # a reward model: calling it would load it
        func = build_reward_funcs([spec], base_dir)[0][0]
        if _needs_trainer_argument(func):
            continue
        wanted = _wanted_columns(spec, func, base_dir)
        for section, (rows, carried, name) in sources.items():
            found = _call_on(func, rows[:PROBE_ROWS], carried)
            if found is None:
                continue
            what, problem = found
            reads = f"it reads {_columns(wanted)}" if wanted else "it reads no column by name"
            message = (
                f"reward '{_label(spec, kind)}' cannot run on {section} ({name}): called "
                f"on its first rows with {what} as completions, it {problem}; {reads}, {section} passes "
                f"{_columns(carried) if carried else 'none'}"
            )
            absent = [c for c in wanted if c not in carried]
            if absent:
                fix = (
                    f"map a column of yours to '{absent[0]}' with {section}.columns: {{{absent[0]}: your_column}}, "
                    f"point {section} at data that has it, or make the function work without it"
                )
            else:
                fix = "make the function return one number (or None) per completion, for any completion text"
            problems.append((f"rewards[{index}].{kind}", message, fix))
            break
    return problems


def peeked_sources(peeked: dict[str, tuple[list[dict], Any]]) -> dict[str, tuple[list[dict], list[str], str]]:
    """Peeked rows ({section: (raw rows, DataSpec)}) in the trainer's layout, for reward_call_problems; hub
    datasets (no rows offline) and rows that cannot be read as prompts (other checks report those) left out."""
    sources = {}
    for section, (rows, data_spec) in peeked.items():
        if not rows:
            continue
        try:
            converted, _ = preview(rows[: PROBE_ROWS * 4], data_spec, PROMPT_ONLY)
            carried = reward_columns(rows, data_spec)
        except DataError:
            continue
        if converted:
            sources[section] = (converted[:PROBE_ROWS], carried, Path(data_spec.path).name)
    return sources


def _call_on(func, rows: list[dict], carried: list[str]) -> tuple[str, str] | None:
    """(what the completions were, the problem) when calling `func` on `rows` fails; None when it works."""
    if not rows:
        return None
    prompts = [row["prompt"] for row in rows]
    has_answers = ANSWER in carried
    texts = [str(row.get(ANSWER)) if has_answers else PLACEHOLDER for row in rows]
    completions = [
        [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
        for prompt, text in zip(prompts, texts)
    ]
    columns = {column: [row.get(column) for row in rows] for column in carried}
    problem = call_problem(func, prompts, completions, columns)
    what = f"their `{ANSWER}` values" if has_answers else f"'{PLACEHOLDER}'"
    return None if problem is None else (what, problem)


def call_problem(func, prompts: list, completions: list, columns: dict[str, list]) -> str | None:
    """What goes wrong calling `func` as a trainer does (None: it returns one number or None per completion)."""
    try:
        values = func(prompts=prompts, completions=completions, **columns)
    except Exception as exc:  # noqa: BLE001 - any exception in user code is the finding, named in the message
        return f"raised {type(exc).__name__}: {exc}"[:300]
    try:
        count = len(values)
    except TypeError:
        return (
            f"returned {type(values).__name__} {values!r}"[:120] + ", not a list of one number per completion"
        )
    if count != len(completions):
        return f"returned {count} values for {len(completions)} completions (one per completion is needed)"
    for value in values:
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return (
                f"returned {value!r} ({type(value).__name__})"[:120]
                + " for a completion, not a number or None"
            )
    return None


def _needs_trainer_argument(func) -> bool:
    """Whether `func` requires an argument only a trainer can pass (the probe cannot stand in for it)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name in TRAINER_KWARGS and p.name not in ("prompts", "completions") and p.default is p.empty
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _wanted_columns(spec: dict, func, base_dir: Path) -> list[str]:
    """The columns a reward reads by name: a builtin's `column`, a function's named parameters besides what
    the trainer passes, those with a default included (a default is no guarantee the function can do without)."""
    if "name" in spec:
        return needed_columns(spec, base_dir)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.name not in TRAINER_KWARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _label(spec: dict, kind: str) -> str:
    """The entry as the user wrote it; a file reference (resolved absolute) by the file's name."""
    label = str(spec[kind])
    target, _, attr = label.rpartition(":")
    return f"{Path(target).name}:{attr}" if kind == "function" and is_file_ref(target) else label


def _columns(names: list[str]) -> str:
    return ("the column " if len(names) == 1 else "the columns ") + ", ".join(names)
