"""Rules across the keys of a recipe: the model, the rewards, the train section and where the run reports to.

Each function is one rule of the table in plan/rules.py: it reads the merged recipe (a RecipeContext) and
yields a Problem per thing wrong. Data and evaluate rules, which read rows, are in plan/data_rules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from align_recipes.errors import did_you_mean
from align_recipes.paths import find_local, looks_like_hub_id
from align_recipes.plan import trl_fields
from align_recipes.plan.checking import Problem, RecipeContext
from align_recipes.plan.hardware import hub_token_problem, tracker_problems
from align_recipes.registry import names_text
from align_recipes.tiny import BUILTIN_MODELS

MODEL_PATH_KEYS = ("reward_model_path", "value_model_path")  # train keys naming a model folder

# --- inputs another recipe of the family writes -------------------------------------------------------


def _written_later(ctx: RecipeContext, key: str, value: str):
    """plan.pending's answer for a local input that does not exist (None: nothing in the family writes it)."""
    from align_recipes.plan.pending import family_writer

    memo = ctx.memo.setdefault("family_writer", {})
    if (key, value) not in memo:
        memo[key, value] = family_writer(key, value, ctx.recipe_path) if ctx.recipe_path is not None else None
    return memo[key, value]


def _local_inputs(ctx: RecipeContext) -> Iterator[tuple[str, str]]:
    """(key, value) of the model references that name a local folder which does not exist."""
    name = ctx.section("model").get("name_or_path")
    if (
        isinstance(name, str)
        and not name.startswith("builtin:")
        and find_local(name, ctx.base_dir, None) is None
    ):
        yield "model.name_or_path", name  # else a hub id, or refused when the run resolves it
    yield from _missing_model_folders(ctx)


def _missing_model_folders(ctx: RecipeContext) -> Iterator[tuple[str, str]]:
    """train.reward_model_path / value_model_path naming a local path found nowhere. The plan made every path
    it found absolute (plan.layers), so what is left relative was found nowhere; hub ids are left to the run."""
    train = ctx.section("train")
    for key in MODEL_PATH_KEYS:
        value = train.get(key)
        if not isinstance(value, str) or not value or find_local(value, ctx.base_dir, None) is not None:
            continue
        first_is_folder = find_local(value.split("/")[0], ctx.base_dir, None) is not None or value.startswith(
            "outputs/"
        )
        if looks_like_hub_id(value) and not first_is_folder:
            continue
        yield f"train.{key}", value


def input_not_written_yet(ctx: RecipeContext) -> Iterator[Problem]:
    """A model folder another recipe of the family writes, before it has run: pending under `validate`
    (listed, exit 0), refused by `train` with the command that writes it (plan/pending.py)."""
    for key, value in _local_inputs(ctx):
        found = _written_later(ctx, key, value)
        if found is None:
            continue
        if ctx.pending is not None:
            ctx.pending.append(found)
        else:
            yield Problem(
                key, f"'{value}' does not exist yet: {found.how}", f"run `{found.command}` first", value
            )


def model_folder_missing(ctx: RecipeContext) -> Iterator[Problem]:
    """A reward or value model named by a local path that does not exist (and nothing in the family writes)."""
    for key, value in _missing_model_folders(ctx):
        if _written_later(ctx, key, value) is None:
            yield Problem(
                key,
                f"model folder '{value}' not found",
                "train the stage that writes it first (align-recipes pipeline runs the stages in order), "
                "or point it at an existing folder or a hub id",
                value,
            )


# --- the model -------------------------------------------------------------------------------------------


def builtin_model_unknown(ctx: RecipeContext) -> Iterator[Problem]:
    """`builtin:<name>` that is not one of the models align-recipes builds."""
    name = ctx.section("model").get("name_or_path")
    if isinstance(name, str) and name.startswith("builtin:") and name not in BUILTIN_MODELS:
        hint = did_you_mean(name, BUILTIN_MODELS)
        yield Problem(
            "model.name_or_path",
            f"unknown builtin model '{name}'",
            hint if hint.startswith("did you mean") else f"builtin models: {', '.join(BUILTIN_MODELS)}",
        )


def qlora_not_4bit(ctx: RecipeContext) -> Iterator[Problem]:
    """QLoRA with 8-bit weights."""
    model = ctx.section("model")
    if model.get("adapter") == "qlora" and model.get("quantization") == "8bit":
        yield Problem(
            "model.quantization", "QLoRA is 4-bit by definition", "use quantization: 4bit, or adapter: lora"
        )


def quantized_full_fine_tuning(ctx: RecipeContext) -> Iterator[Problem]:
    """Full fine-tuning of quantized weights (they cannot take gradient updates)."""
    model = ctx.section("model")
    if model.get("adapter") == "full" and model.get("quantization") in ("4bit", "8bit"):
        yield Problem(
            "model.adapter",
            "a quantized model cannot be fully fine-tuned",
            "use adapter: qlora (4-bit) or lora, or quantization: none",
        )


# --- rewards ---------------------------------------------------------------------------------------------


def has_reward_model(recipe: dict) -> bool:
    train = recipe.get("train")
    return isinstance(train, dict) and bool(train.get("reward_model_path"))


def rewards_not_taken(ctx: RecipeContext) -> Iterator[Problem]:
    """A rewards section for an algorithm that takes none."""
    if ctx.recipe.get("rewards") and not ctx.algorithm.uses_rewards:
        yield Problem(
            "rewards",
            f"`{ctx.algorithm.name}` takes no reward functions",
            f"remove the rewards section (it is for {names_text(lambda a: a.uses_rewards)})",
        )


def rewards_needed(ctx: RecipeContext) -> Iterator[Problem]:
    """An algorithm that optimises rewards, given none (no rewards section, no reward model)."""
    if ctx.algorithm.uses_rewards and not ctx.recipe.get("rewards") and not has_reward_model(ctx.recipe):
        yield Problem(
            "rewards",
            f"`{ctx.algorithm.name}` needs at least one reward",
            "add e.g. `rewards: [{name: exact_match}]` or a reward model (docs/recipes.md)",
        )


def _reward_entries(ctx: RecipeContext) -> list | None:
    """The rewards list when the algorithm takes rewards and the recipe gives a list; else None."""
    rewards = ctx.recipe.get("rewards")
    return rewards if rewards and ctx.algorithm.uses_rewards and isinstance(rewards, list) else None


def rewards_not_a_list(ctx: RecipeContext) -> Iterator[Problem]:
    """`rewards:` written as something other than a list of entries."""
    rewards = ctx.recipe.get("rewards")
    if rewards and ctx.algorithm.uses_rewards and not isinstance(rewards, list):
        yield Problem(
            "rewards", "must be a list of reward entries", "write `rewards:` then `- {name: exact_match}`"
        )


def _spec_problems(ctx: RecipeContext) -> list[tuple[str, str]]:
    """(key, message) of rewards.check_reward_specs, once per recipe (it imports the reward modules)."""
    from align_recipes.rewards import check_reward_specs

    if "reward_specs" not in ctx.memo:
        entries = _reward_entries(ctx)
        problems = check_reward_specs(entries, ctx.rewards_dir) if entries is not None else []
        found = []
        for message in problems:
            key, _, text = message.partition(": ")
            found.append((key if key.startswith("rewards") else "rewards", text or message))
        ctx.memo["reward_specs"] = found
    return ctx.memo["reward_specs"]


ENTRY_FIX = (
    "each entry is {name: <builtin>}, {function: 'module:func' or 'file.py:func'} or "
    "{model: <dir or hub id>}, plus an optional weight (docs/recipes.md)"
)


def reward_entry_invalid(ctx: RecipeContext) -> Iterator[Problem]:
    """A reward entry that does not resolve: an unknown builtin, a function that does not import or has the
    wrong signature, an unknown key."""
    for key, message in _spec_problems(ctx):
        if not key.endswith(".model"):
            yield Problem(key, message, ENTRY_FIX)


def reward_model_missing(ctx: RecipeContext) -> Iterator[Problem]:
    """A `{model: …}` reward entry whose folder does not exist (or holds no saved model)."""
    entries = _reward_entries(ctx) or []
    for key, message in _spec_problems(ctx):
        if key.endswith(".model"):
            index = int(key.split("[", 1)[1].split("]", 1)[0])
            yield Problem(key, message, ENTRY_FIX, str(entries[index].get("model")))


def reward_column_missing(ctx: RecipeContext) -> Iterator[Problem]:
    """A column a reward function reads that the data does not hand it (from the peeked rows)."""
    from align_recipes.data import DataError, reward_columns
    from align_recipes.rewards import missing_columns

    entries = _reward_entries(ctx)
    if entries is None or _spec_problems(ctx):
        return
    for section, (rows, data_spec) in ctx.peeked.items():
        if not rows:
            continue  # a hub dataset: checked when the run loads it
        try:
            carried = reward_columns(rows, data_spec)
        except DataError:
            continue
        for key, message, fix in missing_columns(
            entries, carried, section, Path(data_spec.path).name, ctx.rewards_dir
        ):
            yield Problem(key, message, fix)


def reward_call_fails(ctx: RecipeContext) -> Iterator[Problem]:
    """A reward function that fails when called on the first rows of the data it will score
    (plan/reward_calls.py)."""
    from align_recipes.plan.reward_calls import peeked_sources, reward_call_problems

    entries = _reward_entries(ctx)
    if entries is None or _spec_problems(ctx) or ctx.has_errors("rewards"):
        return
    sources = peeked_sources({**ctx.peeked, **ctx.held_out})
    for key, message, fix in reward_call_problems(entries, sources, ctx.rewards_dir):
        yield Problem(key, message, fix)


# --- train -----------------------------------------------------------------------------------------------


def bf16_and_fp16(ctx: RecipeContext) -> Iterator[Problem]:
    """Both mixed precisions switched on."""
    train = ctx.section("train")
    if train.get("bf16") and train.get("fp16"):
        yield Problem(
            "train.fp16", "bf16 and fp16 are both on", "keep one: fp16 on T4/V100, bf16 on Ampere or newer"
        )


def tracker_not_installed(ctx: RecipeContext) -> Iterator[Problem]:
    """train.report_to names a tracker whose package is missing."""
    for tracker, package in tracker_problems(ctx.section("train").get("report_to")):
        yield Problem(
            "train.report_to",
            f"report_to names {tracker}, but its package is not installed",
            f"pip install {package}, or drop {tracker} from train.report_to",
        )


def hub_model_id_missing(ctx: RecipeContext) -> Iterator[Problem]:
    """push_to_hub without the repository to push to."""
    train = ctx.section("train")
    if train.get("push_to_hub") and not train.get("hub_model_id"):
        yield Problem(
            "train.hub_model_id",
            "push_to_hub needs the repository to push to",
            "set train.hub_model_id: <user or org>/<model name>",
        )


def hub_token_missing(ctx: RecipeContext) -> Iterator[Problem]:
    """push_to_hub with no token that can write."""
    problem = hub_token_problem() if ctx.section("train").get("push_to_hub") else None
    if problem:
        yield Problem(
            "train.push_to_hub",
            f"push_to_hub is on but {problem}",
            "export HF_TOKEN=hf_… (a write token) or run `huggingface-cli login`, or set train.push_to_hub: false",
        )


def eval_strategy_without_eval_data(ctx: RecipeContext) -> Iterator[Problem]:
    """An evaluation strategy with nothing to evaluate."""
    strategy = ctx.section("train").get("eval_strategy")
    if strategy not in (None, "no") and not ctx.section("data").get("eval"):
        yield Problem(
            "train.eval_strategy",
            f"eval_strategy is '{strategy}' but the recipe has no data.eval",
            "add data.eval: {path: …} with held-out rows, or set train.eval_strategy: no",
        )


# An interval a Trainer reads only under the "steps" strategy: (interval, strategy, what is lost, fix's extra).
STEP_INTERVALS = (
    ("save_steps", "save_strategy", "no checkpoint would be written", ""),
    ("eval_steps", "eval_strategy", "data.eval would not be evaluated", " (with data.eval)"),
    ("logging_steps", "logging_strategy", "nothing would be logged", ""),
)


def interval_unread(ctx: RecipeContext) -> Iterator[Problem]:
    """An interval the user set that its strategy makes the Trainer ignore, e.g. `train.save_steps=5` under the
    tiny recipes' `save_strategy: "no"`: refused, not silently dropped (no checkpoint, and `--resume` later finds
    nothing); the fix names the one setting that makes it count. `ctx.rank(key)` orders the layers that set a
    key (command line highest, then the recipe, then its parents; below 0 for profiles and our defaults): an
    interval set below the strategy's layer is one the user turned off on purpose, and is left alone."""
    train = ctx.recipe.get("train")
    if not isinstance(train, dict) or ctx.rank is None or ctx.locate is None:
        return
    fields = trl_fields.config_fields(ctx.algorithm.config_name)
    for interval, strategy, lost, needs in STEP_INTERVALS:
        if train.get(interval) is None or strategy not in fields:
            continue
        mode = train.get(strategy, fields[strategy].default)
        if mode == "steps" or ctx.rank(f"train.{interval}") < max(ctx.rank(f"train.{strategy}"), 0):
            continue
        where = ctx.locate(f"train.{strategy}")[0] if strategy in train else None
        said = f"train.{strategy} is '{mode}'" + (f" ({where})" if where else " (TRL's default)")
        also = (
            f"train.{strategy}=steps"
            if ctx.locate(f"train.{interval}")[0] == "command line"
            else f"train.{strategy}: steps"
        )
        yield Problem(
            f"train.{interval}",
            f"train.{interval} is {train[interval]!r}, but {said}, so it would be ignored: "
            f"{lost} every {train[interval]} steps",
            f"also set {also}{needs}, or drop train.{interval}",
        )
