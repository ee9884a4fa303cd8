"""Rules that read rows: every data source reads and serves the algorithm, mixed sources share one layout,
the held-out metrics are ones the evaluate data can serve, the harness tasks can run. No torch: the rows are
peeked (the first PEEK_ROWS of each local file) with the data layer's light readers.

Each function is one rule of the table in plan/rules.py. `dataset_unusable` leaves the rows it peeked in
`ctx.peeked` (and `metric_unserved` the held-out rows in `ctx.held_out`) for the reward rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError, did_you_mean
from align_recipes.fields import kind_of
from align_recipes.plan import sections
from align_recipes.plan.checking import Problem, RecipeContext
from align_recipes.registry import EXACT_MATCH, PREFERENCE_ACCURACY, REWARD

PEEK_ROWS = 20  # rows `validate` reads from each local dataset

# --- data.train and data.eval ------------------------------------------------------------------------------


def _sources(ctx: RecipeContext) -> Iterator[tuple[str, Any]]:
    from align_recipes.data.spec import source_entries

    data = ctx.section("data")
    for split in ("train", "eval"):
        if data.get(split) is not None:
            yield from source_entries(data[split], f"data.{split}")


def sources_empty(ctx: RecipeContext) -> Iterator[Problem]:
    """`data.train: []`: a split with no source."""
    data = ctx.section("data")
    for split in ("train", "eval"):
        if isinstance(data.get(split), list) and not data[split]:
            yield Problem(f"data.{split}", "an empty list of sources", "list at least one {path: …} entry")


def dataset_unusable(ctx: RecipeContext) -> Iterator[RecipeError]:
    """A data source that cannot be read or cannot serve the algorithm: file missing, malformed rows, columns
    that fit no format, too many rows that cannot be converted, a weight asking for more rows than there are
    (the data layer's DataError, naming the data file and row)."""
    for section, entry in _sources(ctx):
        found = yield from _peek(ctx, section, entry, ctx.algorithm.data_kind)
        if found is not None:
            ctx.peeked[section] = found


def _peek(ctx: RecipeContext, section: str, entry: Any, kind: str | None):
    """Peek at one dataset entry's rows; (rows, DataSpec) when they serve `kind` (None: only that they read).
    Yields the DataError when they do not; entries the schema rules refused are left alone."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or ctx.has_errors(section + "."):
        return None
    from align_recipes.data import DataError, DataSpec, check_refused, check_serves, peek
    from align_recipes.data.sources import count_rows

    try:
        data_spec = DataSpec.from_dict(entry, section=section)
        rows = peek(data_spec, ctx.base_dir, PEEK_ROWS)
        if rows and kind is not None:
            check_serves(rows, data_spec, kind)
            check_refused(rows, data_spec, kind, ctx.base_dir)
            if len(rows) < PEEK_ROWS:  # the whole file (or slice) was read: its unusable rows are known now
                _check_drops(rows, data_spec, kind)
            available = count_rows(data_spec, ctx.base_dir) if data_spec.count is not None else None
            if available is not None and data_spec.count > available:
                raise DataError(
                    f"weight {data_spec.weight} asks for {data_spec.count} rows but "
                    f"{Path(data_spec.path).name} holds {available}",
                    key=f"{section}.weight",
                    fix=f"ask for at most {available} rows, or a share such as 0.5",
                )
        return rows, data_spec
    except DataError as exc:
        if exc.file is None and ctx.locate is not None:
            exc.file, exc.line = ctx.locate(exc.key if exc.key and exc.key != section else f"{section}.path")
        yield exc
    return None


def _check_drops(rows: list[dict], spec: Any, kind: str) -> None:
    """The load-time rule (too many rows that cannot be converted), applied before any model loads."""
    from align_recipes.data import DataError, preview

    _, report = preview(rows, spec, kind)
    if report.rows_in and (
        report.rows_kept == 0 or report.rows_dropped / report.rows_in > spec.max_drop_fraction
    ):
        raise DataError(
            f"{report.rows_dropped} of {report.rows_in} rows could not be converted to {kind} "
            f"(format {report.format}): {report.reasons_text()}",
            file=spec.path,
            key=spec.section,
            fix=f"fix those rows, map the right columns with columns:, or raise max_drop_fraction "
            f"(now {spec.max_drop_fraction})",
        )


def sources_differ_in_layout(ctx: RecipeContext) -> Iterator[Problem]:
    """Mixed sources of one split that convert to different layouts (what data.mixture.align refuses)."""
    from align_recipes.data import DataError, preview

    if ctx.has_errors("data"):
        return
    for split in ("data.train", "data.eval"):
        peeked = {s: found for s, found in ctx.peeked.items() if s.startswith(split + "[")}
        shapes = {}
        for section, (rows, data_spec) in peeked.items():
            if not rows:
                continue  # a hub dataset: checked when the run loads it
            try:
                converted, _ = preview(rows, data_spec, ctx.algorithm.data_kind)
            except DataError:
                continue
            if converted:
                shapes[section] = _layout(converted[0])
        names = list(shapes)
        for section in names[1:]:
            if shapes[section] != shapes[names[0]]:
                describe = lambda shape: ", ".join(f"{c} ({k})" for c, k in shape)  # noqa: E731
                yield Problem(
                    section,
                    f"converts to {describe(shapes[section])}, but {names[0]} to "
                    f"{describe(shapes[names[0]])}: a trainer takes one layout",
                    "mix sources that convert alike (chats with chats, plain text with plain text; docs/data.md)",
                )
                break


def _layout(row: dict) -> tuple:
    """A converted row's layout: its TRL columns and whether each holds chat messages or text. Conversational
    prompt/completion counts as chats, since a mixture joins those into messages."""
    kinds = {
        c: "chat" if isinstance(v, list) else "text"
        for c, v in row.items()
        if c in ("messages", "prompt", "completion", "chosen", "rejected", "text")
    }
    if "messages" in kinds or (
        kinds.get("prompt") == "chat" and "completion" in kinds and "chosen" not in kinds
    ):
        if set(kinds) <= {"messages", "prompt", "completion"} and "text" not in kinds.values():
            return (("messages", "chat"),)
    return tuple(sorted(kinds.items()))


# --- evaluate: held-out metrics -----------------------------------------------------------------------------


def metric_problem(
    metric: str, rows: list[dict], spec: Any, has_rewards: bool, head: str = "causal_lm"
) -> str | None:
    """Why held-out `rows` cannot serve `metric` for a model with `head` (None when they can, or when no
    rows could be read)."""
    from align_recipes.data import DataError, check_serves, preview

    if metric == REWARD and not has_rewards:
        return "reward needs reward functions: a rewards: section or train.reward_model_path"
    if head == "reward" and metric != PREFERENCE_ACCURACY:
        return f"{metric} needs a policy; a reward model is measured by preference_accuracy"
    if not rows:
        return None  # a hub dataset read only when the run starts
    kind = sections.METRIC_KINDS[metric]
    try:
        check_serves(rows, spec, kind)
    except DataError as exc:
        return f"{metric} needs {kind.replace('_', '-')} data: {exc.message}"
    if metric == EXACT_MATCH:
        converted, _ = preview(rows, spec, kind)
        if converted and "answer" not in converted[0]:
            return "exact_match needs an `answer` column (map one with columns: {answer: <column>})"
    return None


def _wanted(ctx: RecipeContext) -> list | None:
    named = ctx.section("evaluate").get("metric")
    return [named] if isinstance(named, str) else named if isinstance(named, list) else None


def metric_unknown(ctx: RecipeContext) -> Iterator[Problem]:
    """evaluate.metric names a metric align-recipes does not measure."""
    for name in _wanted(ctx) or []:
        if name not in sections.METRICS:
            hint = did_you_mean(str(name), sections.METRICS)
            yield Problem(
                "evaluate.metric",
                f"unknown metric '{name}'",
                hint if hint.startswith("did you mean") else f"metrics: {', '.join(sections.METRICS)}",
            )


def metric_list_empty(ctx: RecipeContext) -> Iterator[Problem]:
    """`evaluate.metric: []`."""
    if _wanted(ctx) == []:
        yield Problem(
            "evaluate.metric", "an empty list measures nothing", "name a metric, or remove `metric:`"
        )


def metric_unserved(ctx: RecipeContext) -> Iterator[Problem | RecipeError]:
    """evaluate.data cannot serve the metrics named (or, with no `metric:`, none of the algorithm's own). Without
    `metric:` the section gets the algorithm's metrics the data can serve, written in place (as numbers are
    coerced), so the plan and recipe.resolved.yaml name what is measured."""
    from align_recipes.plan.recipe_rules import has_reward_model

    evaluation = ctx.section("evaluate")
    if not isinstance(evaluation.get("data"), dict) or ctx.has_errors("data", "evaluate"):
        return
    found = yield from _peek(ctx, "evaluate.data", evaluation["data"], None)
    if found is None:
        return
    rows, spec = found
    has_rewards = bool(ctx.recipe.get("rewards")) or has_reward_model(ctx.recipe)
    head = ctx.algorithm.model_head
    wanted = _wanted(ctx)
    if wanted is None:
        problems = {m: metric_problem(m, rows, spec, has_rewards, head) for m in ctx.algorithm.metrics}
        wanted = [m for m, problem in problems.items() if problem is None]
        if not wanted:
            yield Problem(
                "evaluate.data",
                f"serves none of {ctx.algorithm.name}'s metrics: {'; '.join(problems.values())}",
                f"name one with evaluate.metric ({', '.join(sections.METRICS)}), or point evaluate.data "
                "at data that serves it",
            )
            return
        evaluation["metric"] = wanted
    else:
        for name in wanted:
            problem = metric_problem(name, rows, spec, has_rewards, head)
            if problem:
                yield Problem(
                    "evaluate.metric",
                    problem,
                    "point evaluate.data at data that serves it, or measure "
                    "another metric (or leave `metric:` out: the algorithm's own, those the data serves)",
                )
    if REWARD in wanted:
        ctx.held_out["evaluate.data"] = found


# --- data.audit ---------------------------------------------------------------------------------------------


def _audit(ctx: RecipeContext) -> dict | None:
    audit = ctx.section("data").get("audit")
    return audit if isinstance(audit, dict) else None


def audit_data_not_read(ctx: RecipeContext) -> Iterator[Problem]:
    """`data.audit` on an algorithm whose training data the audit does not read (it reads preference, unpaired
    and reward data)."""
    from align_recipes.data.audit import AUDITED_KINDS
    from align_recipes.registry import names_text

    if _audit(ctx) is not None and ctx.algorithm.data_kind not in AUDITED_KINDS:
        kind = ctx.algorithm.data_kind.replace("_", " ")
        yield Problem(
            "data.audit",
            f"{ctx.algorithm.name} trains on {kind} data, which the audit does not read",
            f"remove data.audit (it applies to {names_text(lambda a: a.data_kind in AUDITED_KINDS)})",
        )


def audit_finding_unknown(ctx: RecipeContext) -> Iterator[Problem]:
    """A `data.audit.fail_on` entry that names no finding of the audit."""
    from align_recipes.data.audit import FINDINGS

    fail_on = (_audit(ctx) or {}).get("fail_on")
    for name in fail_on if isinstance(fail_on, list) else []:
        if name not in FINDINGS:
            hint = did_you_mean(str(name), FINDINGS)
            yield Problem(
                "data.audit.fail_on",
                f"unknown finding '{name}'",
                hint if hint.startswith("did you mean") else f"findings: {', '.join(FINDINGS)}",
            )


# --- evaluate: the reward-hacking watch ------------------------------------------------------------------


def _on_hacking(ctx: RecipeContext) -> str | None:
    action = ctx.section("evaluate").get("on_hacking", "warn")
    return None if action in (None, "warn") else action


def on_hacking_without_watch(ctx: RecipeContext) -> Iterator[Problem]:
    """`on_hacking: stop | rollback` for an algorithm that does not sample while it trains (no watch to act)."""
    if _on_hacking(ctx) and not ctx.algorithm.generates:
        yield Problem(
            "evaluate.on_hacking",
            f"{ctx.algorithm.name} does not sample while it trains, so there is no reward-hacking watch to act",
            "remove on_hacking (the watch runs for the algorithms that generate: `align-recipes list`)",
        )


def on_hacking_watch_off(ctx: RecipeContext) -> Iterator[Problem]:
    """`on_hacking: stop | rollback` with the watch switched off (`watch_every: 0`)."""
    action = _on_hacking(ctx)
    if action and ctx.algorithm.generates and ctx.section("evaluate").get("watch_every") == 0:
        yield Problem(
            "evaluate.on_hacking",
            f"on_hacking: {action} needs the watch, and evaluate.watch_every: 0 turns it off",
            "remove watch_every (about 10 checks per run) or set it to the steps between checks",
        )


# --- evaluate.harness ----------------------------------------------------------------------------------------


def _harness(ctx: RecipeContext) -> dict | None:
    harness = ctx.section("evaluate").get("harness")
    return harness if isinstance(harness, dict) else None


def harness_tasks_empty(ctx: RecipeContext) -> Iterator[Problem]:
    """`evaluate.harness.tasks: []`."""
    if (_harness(ctx) or {}).get("tasks") == []:
        yield Problem(
            "evaluate.harness.tasks", "an empty list runs nothing", "name a task, or remove evaluate.harness"
        )


def harness_task_unusable(ctx: RecipeContext) -> Iterator[Problem]:
    """A harness task entry that is not a name or a task file, or a task file that is missing or cannot be
    read, or whose data files are missing (plan/harness.py)."""
    from align_recipes.plan import harness as lm_harness

    tasks = (_harness(ctx) or {}).get("tasks")
    for index, task in enumerate(tasks if isinstance(tasks, list) else []):
        key = f"evaluate.harness.tasks[{index}]"
        if not isinstance(task, str) or not task.strip():
            yield Problem(
                key,
                f"expected a task file or a task name, got {kind_of(task)} {task!r}"[:160],
                "e.g. `- harness/toy_arith.yaml` (a task file beside the recipe) or `- hellaswag` (online)",
            )
        elif lm_harness.is_task_file(task):
            problem = lm_harness.task_file_problem(Path(task))
            if problem:
                yield Problem(
                    key,
                    problem,
                    "task files are relative to the recipe file that names them; data_files inside one "
                    "are relative to the task file (docs/recipes.md)",
                )


def lm_eval_missing(ctx: RecipeContext) -> Iterator[Problem]:
    """evaluate.harness without lm-evaluation-harness installed (in the tested range)."""
    from align_recipes.plan import harness as lm_harness

    if _harness(ctx) is not None:
        problem = lm_harness.lm_eval_problem()
        if problem:
            yield Problem("evaluate.harness", problem, lm_harness.INSTALL_FIX)
