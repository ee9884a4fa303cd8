"""Check a merged recipe: unknown keys, wrong types, impossible values, missing files. No torch.

Collects every problem it finds (not only the first) so a user fixes a recipe in one round trip.
Numeric strings such as "1e-5" (which YAML 1.1 reads as text) are converted to numbers in place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError, did_you_mean
from align_recipes.fields import FieldInfo, kind_of
from align_recipes.paths import find_local, looks_like_hub_id
from align_recipes.plan import sections, trl_fields
from align_recipes.plan.hardware import hub_token_problem, tracker_problems
from align_recipes.registry import EXACT_MATCH, PREFERENCE_ACCURACY, REWARD, Algorithm, names_text
from align_recipes.tiny import BUILTIN_MODELS

PEEK_ROWS = 20  # rows `validate` reads from each local dataset
Locate = Callable[[str], "tuple[str | None, int | None]"]


class _Checker:
    def __init__(self, locate: Locate, recipe_path: Path | None = None, pending: list | None = None):
        self.locate = locate
        self.errors: list[RecipeError] = []
        self.recipe_path = recipe_path
        self.pending = pending  # None: an input an earlier step writes is an error (train), else listed here

    def missing_input(self, key: str, value: str) -> bool:
        """An input the family writes before this recipe runs (plan.pending): listed as pending (validate) or
        refused with the command that writes it (train). False when nothing in the family writes it."""
        from align_recipes.plan.pending import family_writer

        found = family_writer(key, value, self.recipe_path) if self.recipe_path is not None else None
        if found is None:
            return False
        if self.pending is not None:
            self.pending.append(found)
        else:
            self.error(key, f"'{value}' does not exist yet: {found.how}", f"run `{found.command}` first")
        return True

    def error(self, key: str, message: str, fix: str = "") -> None:
        file, line = self.locate(key)
        self.errors.append(RecipeError(message, fix=fix, file=file, key=key, line=line))

    def mapping(self, data: Any, fields: dict[str, FieldInfo], prefix: str, owner: str) -> dict:
        """Check one mapping against its fields; returns it (or {} when it is not a mapping)."""
        if not isinstance(data, dict):
            self.error(
                prefix.rstrip("."),
                f"must be a mapping, got {kind_of(data)} {data!r}"[:160],
                f"write `{prefix.rstrip('.').rsplit('.', 1)[-1]}:` followed by indented `key: value` lines",
            )
            return {}
        for key in list(data):
            path = f"{prefix}{key}"
            info = fields.get(key) if isinstance(key, str) else None
            if info is None:
                self.error(path, f"unknown key for {owner}", did_you_mean(str(key), fields))
                continue
            data[key] = self.value(path, data[key], info)
        for key in (name for name, info in fields.items() if info.required):
            if data.get(key) in (None, ""):
                self.error(
                    f"{prefix}{key}",
                    f"required key missing in {owner}",
                    f"add `{key}:` ({fields[key].help})" if fields[key].help else f"add `{key}:`",
                )
        return data

    def value(self, path: str, value: Any, info: FieldInfo) -> Any:
        value = _coerce_number(value, info)
        if not info.accepts(value):
            expected = " or ".join(k for k in info.kinds if k != "null") + (
                " (or null)" if "null" in info.kinds else ""
            )
            self.error(
                path,
                f"expected {expected}, got {kind_of(value)} {value!r}"[:200],
                f"e.g. {path.rsplit('.', 1)[-1]}: {info.default!r}"
                if info.default not in (None, "", [], {})
                else "see docs/recipes.md",
            )
        elif info.choices and value is not None and _hashable(value) and value not in info.choices:
            self.error(
                path,
                f"'{value}' is not one of: {', '.join(map(str, info.choices))}",
                did_you_mean(str(value), map(str, info.choices)),
            )
        return value

    def ranges(self, data: dict, bounds: dict, prefix: str) -> None:
        for key, (low, high, low_inclusive) in bounds.items():
            value = data.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            too_low = low is not None and (value < low if low_inclusive else value <= low)
            too_high = high is not None and value > high
            if too_low or too_high:
                rule = f"{'>=' if low_inclusive else '>'} {low}" if low is not None else ""
                if high is not None:
                    rule = f"{rule} and <= {high}".strip(" and")
                self.error(f"{prefix}{key}", f"impossible value {value}", f"must be {rule}")


def _coerce_number(value: Any, info: FieldInfo) -> Any:
    if isinstance(value, str) and ("float" in info.kinds or "int" in info.kinds) and "str" not in info.kinds:
        try:
            number = float(value)
        except ValueError:
            return value
        return (
            int(number)
            if "int" in info.kinds and "float" not in info.kinds and number.is_integer()
            else number
        )
    return value


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _check_dataset(check: _Checker, spec: Any, prefix: str, base_dir: Path, kind: str | None):
    """Check one dataset entry and peek at its rows; returns (rows, DataSpec) when they serve `kind`
    (None: only that they read), None when it has problems or names no path."""
    before = len(check.errors)
    spec = check.mapping(spec, sections.DATASET, prefix, "a dataset entry")
    check.ranges(spec, sections.DATASET_RANGES, prefix)
    if not isinstance(spec.get("path"), str) or len(check.errors) > before:
        return None
    # light: no torch, no datasets
    from align_recipes.data import DataError, DataSpec, check_refused, check_serves, peek
    from align_recipes.data.sources import count_rows

    section = prefix.rstrip(".")
    try:
        data_spec = DataSpec.from_dict(spec, section=section)
        rows = peek(data_spec, base_dir, PEEK_ROWS)
        if rows and kind is not None:
            check_serves(rows, data_spec, kind)
            check_refused(rows, data_spec, kind, base_dir)
            if len(rows) < PEEK_ROWS:  # the whole file (or slice) was read: its unusable rows are known now
                _check_drops(rows, data_spec, kind)
            available = count_rows(data_spec, base_dir) if data_spec.count is not None else None
            if available is not None and data_spec.count > available:
                raise DataError(
                    f"weight {data_spec.weight} asks for {data_spec.count} rows but "
                    f"{Path(data_spec.path).name} holds {available}",
                    key=f"{section}.weight",
                    fix=f"ask for at most {available} rows, or a share such as 0.5",
                )
        return rows, data_spec
    except DataError as exc:
        if exc.file is None:
            exc.file, exc.line = check.locate(exc.key if exc.key and exc.key != section else f"{prefix}path")
        check.errors.append(exc)
    return None


def _check_split(check: _Checker, value: Any, split: str, base_dir: Path, kind: str) -> dict:
    """Check every source of one split (a mapping, or a list to mix); {section: (rows, DataSpec)} of those
    peeked, and one error when their converted rows would not share one layout."""
    from align_recipes.data.spec import source_entries

    if isinstance(value, list) and not value:
        check.error(f"data.{split}", "an empty list of sources", "list at least one {path: …} entry")
        return {}
    peeked = {}
    for section, entry in source_entries(value, f"data.{split}"):
        found = _check_dataset(check, entry, f"{section}.", base_dir, kind)
        if found is not None:
            peeked[section] = found
    if len(peeked) > 1 and not check.errors:
        _check_layouts(check, peeked, kind)
    return peeked


def _check_layouts(check: _Checker, peeked: dict, kind: str) -> None:
    """The sources of a mixture convert to one layout (what data.mixture.align accepts), from peeked rows."""
    from align_recipes.data import DataError, preview

    shapes = {}
    for section, (rows, data_spec) in peeked.items():
        if not rows:
            continue  # a hub dataset: checked when the run loads it
        try:
            converted, _ = preview(rows, data_spec, kind)
        except DataError:
            continue
        if converted:
            shapes[section] = _layout(converted[0])
    sections = list(shapes)
    for section in sections[1:]:
        if shapes[section] != shapes[sections[0]]:
            describe = lambda shape: ", ".join(f"{c} ({k})" for c, k in shape)  # noqa: E731
            check.error(
                section,
                f"converts to {describe(shapes[section])}, but {sections[0]} to "
                f"{describe(shapes[sections[0]])}: a trainer takes one layout",
                "mix sources that convert alike (chats with chats, plain text with plain text; docs/data.md)",
            )
            return


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


def _check_reward_columns(check: _Checker, rewards: list, datasets: dict, base_dir: Path) -> None:
    """Every column a reward function reads is one the data hands it (validate time, peeked rows)."""
    from align_recipes.data import DataError, reward_columns
    from align_recipes.rewards import missing_columns

    for section, (rows, data_spec) in datasets.items():
        if not rows:
            continue  # a hub dataset: checked when the run loads it
        try:
            carried = reward_columns(rows, data_spec)
        except DataError:
            continue
        for key, message, fix in missing_columns(
            rewards, carried, section, Path(data_spec.path).name, base_dir
        ):
            check.error(key, message, fix)


def _check_reward_calls(check: _Checker, rewards: list, sources: dict, base_dir: Path) -> None:
    """Every reward function runs on the first rows of the data it will score (plan.reward_calls)."""
    from align_recipes.plan.reward_calls import peeked_sources, reward_call_problems

    for key, message, fix in reward_call_problems(rewards, peeked_sources(sources), base_dir):
        check.error(key, message, fix)


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


def _check_on_hacking(check: _Checker, evaluation: dict, algorithm: Algorithm) -> None:
    """`on_hacking: stop | rollback` acts on the watch's warning: refused where the watch cannot run."""
    action = evaluation.get("on_hacking", "warn")
    if action in (None, "warn"):
        return
    if not algorithm.generates:
        check.error(
            "evaluate.on_hacking",
            f"{algorithm.name} does not sample while it trains, so there is no reward-hacking watch to act",
            "remove on_hacking (the watch runs for the algorithms that generate: `align-recipes list`)",
        )
    elif evaluation.get("watch_every") == 0:
        check.error(
            "evaluate.on_hacking",
            f"on_hacking: {action} needs the watch, and evaluate.watch_every: 0 turns it off",
            "remove watch_every (about 10 checks per run) or set it to the steps between checks",
        )


def _check_evaluate(
    check: _Checker, evaluation: Any, algorithm: Algorithm, base_dir: Path, has_rewards: bool
) -> dict:
    """The evaluate section. Without `metric:` it gets the algorithm's metrics that its data can serve,
    written into the section in place (as numbers are coerced), so the plan and recipe.resolved.yaml
    name what is measured. Returns {"evaluate.data": (rows, DataSpec)} when the held-out reward scores
    those rows with the recipe's rewards (for _check_reward_calls), else {}."""
    evaluation = check.mapping(evaluation, sections.EVALUATE, "evaluate.", "the evaluate section")
    check.ranges(evaluation, sections.EVALUATE_RANGES, "evaluate.")
    _check_on_hacking(check, evaluation, algorithm)
    named = evaluation.get("metric")
    wanted = [named] if isinstance(named, str) else named if isinstance(named, list) else None
    for name in wanted or []:
        if name not in sections.METRICS:
            hint = did_you_mean(str(name), sections.METRICS)
            check.error(
                "evaluate.metric",
                f"unknown metric '{name}'",
                hint if hint.startswith("did you mean") else f"metrics: {', '.join(sections.METRICS)}",
            )
    if wanted == []:
        check.error("evaluate.metric", "an empty list measures nothing", "name a metric, or remove `metric:`")
    if evaluation.get("harness") is not None:
        _check_harness(check, evaluation["harness"])
    if not isinstance(evaluation.get("data"), dict) or check.errors:
        return {}
    found = _check_dataset(check, evaluation["data"], "evaluate.data.", base_dir, None)
    if found is None:
        return {}
    rows, spec = found
    if wanted is not None:
        for name in wanted:
            problem = metric_problem(name, rows, spec, has_rewards, algorithm.model_head)
            if problem:
                check.error(
                    "evaluate.metric",
                    problem,
                    "point evaluate.data at data that serves it, or measure "
                    "another metric (or leave `metric:` out: the algorithm's own, those the data serves)",
                )
        return {"evaluate.data": found} if REWARD in wanted else {}
    problems = {
        m: metric_problem(m, rows, spec, has_rewards, algorithm.model_head) for m in algorithm.metrics
    }
    served = [m for m, problem in problems.items() if problem is None]
    if not served:
        reasons = "; ".join(problems.values())
        check.error(
            "evaluate.data",
            f"serves none of {algorithm.name}'s metrics: {reasons}",
            f"name one with evaluate.metric ({', '.join(sections.METRICS)}), or point evaluate.data "
            "at data that serves it",
        )
        return {}
    evaluation["metric"] = served
    return {"evaluate.data": found} if REWARD in served else {}


def _check_harness(check: _Checker, harness: Any) -> None:
    """evaluate.harness: its keys, every task entry (a task file must exist and read; plan/harness.py),
    and lm-eval installed."""
    from align_recipes.plan import harness as lm_harness

    harness = check.mapping(harness, sections.HARNESS, "evaluate.harness.", "evaluate.harness")
    check.ranges(harness, sections.HARNESS_RANGES, "evaluate.harness.")
    tasks = harness.get("tasks")
    if tasks == []:
        check.error(
            "evaluate.harness.tasks", "an empty list runs nothing", "name a task, or remove evaluate.harness"
        )
    for index, task in enumerate(tasks if isinstance(tasks, list) else []):
        key = f"evaluate.harness.tasks[{index}]"
        if not isinstance(task, str) or not task.strip():
            check.error(
                key,
                f"expected a task file or a task name, got {kind_of(task)} {task!r}"[:160],
                "e.g. `- harness/toy_arith.yaml` (a task file beside the recipe) or `- hellaswag` (online)",
            )
        elif lm_harness.is_task_file(task):
            problem = lm_harness.task_file_problem(Path(task))
            if problem:
                check.error(
                    key,
                    problem,
                    "task files are relative to the recipe file that names them; data_files inside one "
                    "are relative to the task file (docs/recipes.md)",
                )
    problem = lm_harness.lm_eval_problem()
    if problem:
        check.error("evaluate.harness", problem, lm_harness.INSTALL_FIX)


def _check_audit(check: _Checker, audit: Any, algorithm: Algorithm) -> None:
    """data.audit: the run's data must be what the audit reads, and fail_on must name its findings."""
    from align_recipes.data.audit import AUDITED_KINDS, FINDINGS

    audit = check.mapping(audit, sections.AUDIT, "data.audit.", "data.audit")
    if algorithm.data_kind not in AUDITED_KINDS:
        check.error(
            "data.audit",
            f"{algorithm.name} trains on {algorithm.data_kind.replace('_', ' ')} data, which the audit does not read",
            f"remove data.audit (it applies to {names_text(lambda a: a.data_kind in AUDITED_KINDS)})",
        )
    for name in audit.get("fail_on") if isinstance(audit.get("fail_on"), list) else []:
        if name not in FINDINGS:
            hint = did_you_mean(str(name), FINDINGS)
            check.error(
                "data.audit.fail_on",
                f"unknown finding '{name}'",
                hint if hint.startswith("did you mean") else f"findings: {', '.join(FINDINGS)}",
            )


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


def validate_recipe(
    recipe: dict,
    algorithm: Algorithm,
    locate: Locate,
    base_dir: Path,
    rewards_dir: Path | None = None,
    recipe_path: Path | None = None,
    pending: list | None = None,
) -> list[RecipeError]:
    """All problems in a fully merged recipe (model, data, rewards, evaluate, train). Relative references
    resolve against `base_dir` (the recipe's folder), reward modules against `rewards_dir` (the folder of
    the file that wrote `rewards:`) when given. With `recipe_path`, a model folder another recipe of the
    family writes is pending (plan.pending): appended to `pending` when a list is given, else an error."""
    rewards_dir = rewards_dir or base_dir
    check = _Checker(locate, recipe_path, pending)
    check.mapping(recipe, sections.TOP_LEVEL, "", "a recipe")
    model = check.mapping(recipe.get("model"), sections.MODEL, "model.", "the model section")
    if "lora" in model:
        lora = check.mapping(model["lora"], sections.LORA, "model.lora.", "model.lora")
        check.ranges(lora, sections.LORA_RANGES, "model.lora.")
    name = model.get("name_or_path")
    if isinstance(name, str) and not name.startswith("builtin:") and find_local(name, base_dir, None) is None:
        check.missing_input("model.name_or_path", name)  # else a hub id, or refused when the run resolves it
    if isinstance(name, str) and name.startswith("builtin:") and name not in BUILTIN_MODELS:
        hint = did_you_mean(name, BUILTIN_MODELS)
        check.error(
            "model.name_or_path",
            f"unknown builtin model '{name}'",
            hint if hint.startswith("did you mean") else f"builtin models: {', '.join(BUILTIN_MODELS)}",
        )
    if model.get("adapter") == "qlora" and model.get("quantization") == "8bit":
        check.error(
            "model.quantization", "QLoRA is 4-bit by definition", "use quantization: 4bit, or adapter: lora"
        )
    if model.get("adapter") == "full" and model.get("quantization") in ("4bit", "8bit"):
        check.error(
            "model.adapter",
            "a quantized model cannot be fully fine-tuned",
            "use adapter: qlora (4-bit) or lora, or quantization: none",
        )

    data = check.mapping(recipe.get("data"), sections.DATA, "data.", "the data section")
    if data.get("audit") is not None:
        _check_audit(check, data["audit"], algorithm)
    peeked, held_out = {}, {}
    for split in ("train", "eval"):
        if data.get(split) is not None:
            peeked.update(_check_split(check, data[split], split, base_dir, algorithm.data_kind))

    rewards = recipe.get("rewards")
    if recipe.get("evaluate") is not None:
        held_out = _check_evaluate(
            check,
            recipe["evaluate"],
            algorithm,
            base_dir,
            has_rewards=bool(rewards) or _has_reward_model(recipe),
        )

    if rewards and not algorithm.uses_rewards:
        check.error(
            "rewards",
            f"`{algorithm.name}` takes no reward functions",
            f"remove the rewards section (it is for {names_text(lambda a: a.uses_rewards)})",
        )
    elif algorithm.uses_rewards and not rewards and not _has_reward_model(recipe):
        check.error(
            "rewards",
            f"`{algorithm.name}` needs at least one reward",
            "add e.g. `rewards: [{name: exact_match}]` or a reward model (docs/recipes.md)",
        )
    elif rewards:
        from align_recipes.rewards import check_reward_specs

        if not isinstance(rewards, list):
            check.error(
                "rewards", "must be a list of reward entries", "write `rewards:` then `- {name: exact_match}`"
            )
        else:
            problems = check_reward_specs(rewards, rewards_dir)
            for message in problems:
                key, _, text = message.partition(": ")
                check.error(
                    key if key.startswith("rewards") else "rewards",
                    text or message,
                    "each entry is {name: <builtin>}, {function: 'module:func' or 'file.py:func'} or "
                    "{model: <dir or hub id>}, plus an optional weight (docs/recipes.md)",
                )
            if not problems:
                before = len(check.errors)
                _check_reward_columns(check, rewards, peeked, rewards_dir)
                if len(check.errors) == before:
                    _check_reward_calls(check, rewards, {**peeked, **held_out}, rewards_dir)

    train_fields = trl_fields.config_fields(algorithm.config_name)
    train = check.mapping(recipe.get("train", {}), train_fields, "train.", algorithm.config_name)
    check.ranges(train, sections.TRAIN_RANGES, "train.")
    if train.get("bf16") and train.get("fp16"):
        check.error(
            "train.fp16", "bf16 and fp16 are both on", "keep one: fp16 on T4/V100, bf16 on Ampere or newer"
        )
    _check_outlets(check, train)
    _check_model_paths(check, train, base_dir)
    if train.get("eval_strategy") not in (None, "no") and not data.get("eval"):
        check.error(
            "train.eval_strategy",
            f"eval_strategy is '{train['eval_strategy']}' but the recipe has no data.eval",
            "add data.eval: {path: …} with held-out rows, or set train.eval_strategy: no",
        )
    return check.errors


# An interval a Trainer reads only under the "steps" strategy: (interval, strategy, what is lost, fix's extra).
STEP_INTERVALS = (
    ("save_steps", "save_strategy", "no checkpoint would be written", ""),
    ("eval_steps", "eval_strategy", "data.eval would not be evaluated", " (with data.eval)"),
    ("logging_steps", "logging_strategy", "nothing would be logged", ""),
)


def unread_intervals(
    train: dict, config_name: str, locate: Locate, rank: Callable[[str], int]
) -> list[RecipeError]:
    """Intervals the user set that their strategy makes the Trainer ignore, e.g. `train.save_steps=5` under the
    tiny recipes' `save_strategy: "no"`: refused, not silently dropped (no checkpoint, and `--resume` later
    finds nothing); the fix names the one setting that makes it count. `rank(key)` orders the layers that set
    a key (command line highest, then the recipe, then its parents; below 0 for profiles and our defaults): an
    interval set below the strategy's layer is one the user turned off on purpose, and is left alone."""
    fields = trl_fields.config_fields(config_name)
    check = _Checker(locate)
    for interval, strategy, lost, needs in STEP_INTERVALS:
        if train.get(interval) is None or strategy not in fields:
            continue
        mode = train.get(strategy, fields[strategy].default)
        if mode == "steps" or rank(f"train.{interval}") < max(rank(f"train.{strategy}"), 0):
            continue
        where = locate(f"train.{strategy}")[0] if strategy in train else None
        said = f"train.{strategy} is '{mode}'" + (f" ({where})" if where else " (TRL's default)")
        also = (
            f"train.{strategy}=steps"
            if locate(f"train.{interval}")[0] == "command line"
            else f"train.{strategy}: steps"
        )
        check.error(
            f"train.{interval}",
            f"train.{interval} is {train[interval]!r}, but {said}, so it would be ignored: "
            f"{lost} every {train[interval]} steps",
            f"also set {also}{needs}, or drop train.{interval}",
        )
    return check.errors


def _check_outlets(check: _Checker, train: dict) -> None:
    """Where the run reports to and publishes: the tracker packages installed, the hub push possible."""
    for tracker, package in tracker_problems(train.get("report_to")):
        check.error(
            "train.report_to",
            f"report_to names {tracker}, but its package is not installed",
            f"pip install {package}, or drop {tracker} from train.report_to",
        )
    if train.get("push_to_hub"):
        if not train.get("hub_model_id"):
            check.error(
                "train.hub_model_id",
                "push_to_hub needs the repository to push to",
                "set train.hub_model_id: <user or org>/<model name>",
            )
        problem = hub_token_problem()
        if problem:
            check.error(
                "train.push_to_hub",
                f"push_to_hub is on but {problem}",
                "export HF_TOKEN=hf_… (a write token) or run `huggingface-cli login`, "
                "or set train.push_to_hub: false",
            )


def _check_model_paths(check: _Checker, train: dict, base_dir: Path) -> None:
    """A reward or value model named by a local path must exist (an earlier pipeline stage's output is
    checked when that stage has run); hub ids cannot be checked offline and are left to the run. The
    plan made every path it found absolute (plan.layers), so what is left relative was found nowhere."""
    for key in ("reward_model_path", "value_model_path"):
        value = train.get(key)
        if not isinstance(value, str) or not value or find_local(value, base_dir, None) is not None:
            continue
        first_is_folder = find_local(value.split("/")[0], base_dir, None) is not None or value.startswith(
            "outputs/"
        )
        if looks_like_hub_id(value) and not first_is_folder:
            continue
        if check.missing_input(f"train.{key}", value):
            continue
        check.error(
            f"train.{key}",
            f"model folder '{value}' not found",
            "train the stage that writes it first (align-recipes pipeline runs the stages in order), "
            "or point it at an existing folder or a hub id",
        )


def _has_reward_model(recipe: dict) -> bool:
    return bool(recipe.get("train", {}).get("reward_model_path"))
