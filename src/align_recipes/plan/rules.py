"""Every check align-recipes makes before anything loads, as one table of named rules, and the one checker.

A rule is a small function: it reads a recipe section, a whole recipe, a profile file, a pipeline file or a
recipe on a hardware profile (`reads`), and yields a `Problem` (key, message, fix) per thing wrong
(plan/checking.py). The checker runs every rule of a kind, in the table's order, places each problem (file,
line), names its rule on the RecipeError, and returns them all, so a user fixes a file in one round trip.
A rule that needs an earlier rule's result (peeked rows) reads it from the context; the table's order is the
order they run in. `waits` marks the rules whose problem may be an input an earlier pipeline stage writes:
the pipeline leaves those for when that stage has run (results/pipeline.py), by rule, not by message.

Adding a check: write the function beside its kind (schema_rules, recipe_rules, data_rules, feasibility,
profile_rules, pipeline_rules), add it to its kind's list here (the rule's name is the function's, in kebab
case), and a bad input for it in tests/plan/test_rules.py.
`rules.describe()` prints the table (docs/architecture.md shows it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from align_recipes.errors import RecipeError
from align_recipes.plan import (
    data_rules,
    feasibility,
    pipeline_rules,
    profile_rules,
    recipe_rules,
    schema_rules,
)
from align_recipes.plan.checking import Problem

Check = Callable[..., Iterable[Problem | RecipeError]]  # a rule's function: a context in, its problems out
SECTION, RECIPE, PROFILE, PIPELINE, FEASIBILITY = "section", "recipe", "profile", "pipeline", "feasibility"
READS = {
    SECTION: "each section of a recipe against its fields (plan/sections.py, TRL's config fields for train:)",
    RECIPE: "the whole merged recipe, with the rows of its local data",
    PROFILE: "a hardware profile file (configs/profiles/*.yaml)",
    PIPELINE: "a pipeline file and its stages",
    FEASIBILITY: "a validated recipe on a hardware profile and the installed packages",
}


@dataclass(frozen=True)
class Rule:
    check: Check
    reads: str  # one of READS
    waits: bool = False  # its problem may be an input an earlier pipeline stage writes

    @property
    def name(self) -> str:
        """The function's name in kebab case: what errors, docs and the pipeline call the rule."""
        return self.check.__name__.replace("_", "-")

    @property
    def summary(self) -> str:
        """The first sentence of the rule's docstring: what it refuses."""
        text = " ".join((self.check.__doc__ or "").split())
        return text.split(". ")[0].rstrip(".") + "."


@dataclass(frozen=True)
class _Waiting:
    check: Check


def waits(check: Check) -> _Waiting:
    """Marks a rule in the table whose problem may be an input an earlier pipeline stage writes."""
    return _Waiting(check)


def _table(**checks_by_kind: list[Check | _Waiting]) -> dict[str, Rule]:
    table: dict[str, Rule] = {}
    for reads, checks in checks_by_kind.items():
        assert reads in READS, reads
        for entry in checks:
            rule = Rule(entry.check, reads, waits=True) if isinstance(entry, _Waiting) else Rule(entry, reads)
            assert rule.name not in table, rule.name
            table[rule.name] = rule
    return table


# A rule's name is its function's; the order below is the order the rules run in.
RULES = _table(
    section=[
        schema_rules.not_a_mapping,
        schema_rules.unknown_key,
        schema_rules.required_key,
        schema_rules.wrong_type,
        schema_rules.not_a_choice,
        schema_rules.out_of_range,
    ],
    recipe=[
        # the model
        waits(recipe_rules.input_not_written_yet),
        recipe_rules.builtin_model_unknown,
        recipe_rules.qlora_not_4bit,
        recipe_rules.quantized_full_fine_tuning,
        # data
        data_rules.sources_empty,
        data_rules.dataset_unusable,
        data_rules.sources_differ_in_layout,
        data_rules.audit_data_not_read,
        data_rules.audit_finding_unknown,
        # evaluate
        data_rules.on_hacking_without_watch,
        data_rules.on_hacking_watch_off,
        data_rules.metric_unknown,
        data_rules.metric_list_empty,
        data_rules.harness_tasks_empty,
        data_rules.harness_task_unusable,
        data_rules.lm_eval_missing,
        data_rules.metric_unserved,
        # rewards
        recipe_rules.rewards_not_taken,
        recipe_rules.rewards_needed,
        recipe_rules.rewards_not_a_list,
        recipe_rules.reward_entry_invalid,
        waits(recipe_rules.reward_model_missing),
        recipe_rules.reward_column_missing,
        recipe_rules.reward_call_fails,
        # train
        recipe_rules.bf16_and_fp16,
        recipe_rules.tracker_not_installed,
        recipe_rules.hub_model_id_missing,
        recipe_rules.hub_token_missing,
        waits(recipe_rules.model_folder_missing),
        recipe_rules.eval_strategy_without_eval_data,
        recipe_rules.interval_unread,
    ],
    profile=[
        profile_rules.profile_not_a_mapping,
        profile_rules.profile_unknown_key,
        profile_rules.profile_not_a_number,
        profile_rules.profile_rule_adapter,
        profile_rules.profile_rule_sharding,
    ],
    pipeline=[
        pipeline_rules.pipeline_without_stages,
        pipeline_rules.pipeline_unknown_key,
        pipeline_rules.stage_not_a_mapping,
        pipeline_rules.stage_name_invalid,
        pipeline_rules.stage_name_twice,
        pipeline_rules.stage_recipe_missing,
        pipeline_rules.stage_overrides_not_a_mapping,
        pipeline_rules.placeholder_not_earlier,
        pipeline_rules.override_stage_unknown,
        pipeline_rules.gate_not_a_mapping,
        pipeline_rules.gate_metric_unknown,
        pipeline_rules.gate_minimum_invalid,
        pipeline_rules.gate_not_measured,
    ],
    feasibility=[
        feasibility.bf16_unsupported,
        feasibility.fp16_on_cpu,
        feasibility.float16_training_on_cpu,
        feasibility.fp16_without_master_weights,
        feasibility.flash_attention_unavailable,
        feasibility.bitsandbytes_missing,
        feasibility.trainer_not_sharded,
        feasibility.quantized_weights_not_sharded,
        feasibility.vllm_unavailable,
        feasibility.vllm_without_gpu,
        feasibility.vllm_with_8bit_weights,
        feasibility.vllm_sleep_mode_on_cpu,
        feasibility.vllm_tensor_parallel_impossible,
        feasibility.model_does_not_fit,
    ],
)
WAITING = frozenset(name for name, rule in RULES.items() if rule.waits)


def run(
    reads: str, context, place: Callable[[str], tuple], only: Iterable[str] | None = None
) -> list[RecipeError]:
    """Every problem the rules of kind `reads` find in `context`, as RecipeErrors named by rule. `place(key)`
    gives the (file, line) where the key was written. Errors are also appended to `context.errors`, which
    later rules may read. `only` restricts the run to those rule names (the pipeline's stage rules)."""
    found: list[RecipeError] = []
    for rule in RULES.values():
        if rule.reads != reads or (only is not None and rule.name not in only):
            continue
        for problem in rule.check(context) or ():
            error = problem if isinstance(problem, RecipeError) else _placed(problem, place)
            error.rule = rule.name
            found.append(error)
            context.errors.append(error)
    return found


def _placed(problem: Problem, place: Callable[[str], tuple]) -> RecipeError:
    file, line = place(problem.key)
    return RecipeError(
        problem.message,
        fix=problem.fix,
        file=file,
        key=problem.key or None,
        line=line,
        subject=problem.subject,
    )


def describe() -> str:
    """The table as text: one line per rule (its kind, name and what it refuses)."""
    width = max(map(len, RULES))
    return "\n".join(f"{rule.reads:<12} {name:<{width}}  {rule.summary}" for name, rule in RULES.items())
