"""Every check align-recipes makes before anything loads, as one table of named rules, and the one checker.

A rule is a small function: it reads a recipe section, a whole recipe, a profile file, a pipeline file or a
recipe on a hardware profile (`reads`), and yields a `Problem` (key, message, fix) per thing wrong
(plan/checking.py). The checker runs every rule of a kind, in the table's order, places each problem (file,
line), names its rule on the RecipeError, and returns them all, so a user fixes a file in one round trip.
A rule that needs an earlier rule's result (peeked rows) reads it from the context; the table's order is the
order they run in. `waits` marks the rules whose problem may be an input an earlier pipeline stage writes:
the pipeline leaves those for when that stage has run (results/pipeline.py), by rule, not by message.

Adding a check: write the function beside its kind (schema_rules, recipe_rules, data_rules, feasibility,
profile_rules, pipeline_rules), add its row here, and a bad input for it in tests/plan/test_rules.py.
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
    name: str
    reads: str  # one of READS
    check: Callable[..., Iterable[Problem | RecipeError]]
    waits: bool = False  # its problem may be an input an earlier pipeline stage writes

    @property
    def summary(self) -> str:
        """The first sentence of the rule's docstring: what it refuses."""
        text = " ".join((self.check.__doc__ or "").split())
        return text.split(". ")[0].rstrip(".") + "."


def _table(*rows: Rule) -> dict[str, Rule]:
    table: dict[str, Rule] = {}
    for row in rows:
        assert row.name not in table and row.reads in READS, row
        table[row.name] = row
    return table


RULES = _table(
    # each section of a recipe
    Rule("not-a-mapping", SECTION, schema_rules.not_a_mapping),
    Rule("unknown-key", SECTION, schema_rules.unknown_key),
    Rule("required-key", SECTION, schema_rules.required_key),
    Rule("wrong-type", SECTION, schema_rules.wrong_type),
    Rule("not-a-choice", SECTION, schema_rules.not_a_choice),
    Rule("out-of-range", SECTION, schema_rules.out_of_range),
    # the model
    Rule("input-not-written-yet", RECIPE, recipe_rules.input_not_written_yet, waits=True),
    Rule("builtin-model-unknown", RECIPE, recipe_rules.builtin_model_unknown),
    Rule("qlora-not-4bit", RECIPE, recipe_rules.qlora_not_4bit),
    Rule("quantized-full-fine-tuning", RECIPE, recipe_rules.quantized_full_fine_tuning),
    # data
    Rule("sources-empty", RECIPE, data_rules.sources_empty),
    Rule("dataset-unusable", RECIPE, data_rules.dataset_unusable),
    Rule("sources-differ-in-layout", RECIPE, data_rules.sources_differ_in_layout),
    Rule("audit-data-not-read", RECIPE, data_rules.audit_data_not_read),
    Rule("audit-finding-unknown", RECIPE, data_rules.audit_finding_unknown),
    # evaluate
    Rule("on-hacking-without-watch", RECIPE, data_rules.on_hacking_without_watch),
    Rule("on-hacking-watch-off", RECIPE, data_rules.on_hacking_watch_off),
    Rule("metric-unknown", RECIPE, data_rules.metric_unknown),
    Rule("metric-list-empty", RECIPE, data_rules.metric_list_empty),
    Rule("harness-tasks-empty", RECIPE, data_rules.harness_tasks_empty),
    Rule("harness-task-unusable", RECIPE, data_rules.harness_task_unusable),
    Rule("lm-eval-missing", RECIPE, data_rules.lm_eval_missing),
    Rule("metric-unserved", RECIPE, data_rules.evaluate_metric_unserved),
    # rewards
    Rule("rewards-not-taken", RECIPE, recipe_rules.rewards_not_taken),
    Rule("rewards-needed", RECIPE, recipe_rules.rewards_needed),
    Rule("rewards-not-a-list", RECIPE, recipe_rules.rewards_not_a_list),
    Rule("reward-entry-invalid", RECIPE, recipe_rules.reward_entry_invalid),
    Rule("reward-model-missing", RECIPE, recipe_rules.reward_model_missing, waits=True),
    Rule("reward-column-missing", RECIPE, recipe_rules.reward_column_missing),
    Rule("reward-call-fails", RECIPE, recipe_rules.reward_call_fails),
    # train
    Rule("bf16-and-fp16", RECIPE, recipe_rules.bf16_and_fp16),
    Rule("tracker-not-installed", RECIPE, recipe_rules.tracker_not_installed),
    Rule("hub-model-id-missing", RECIPE, recipe_rules.hub_model_id_missing),
    Rule("hub-token-missing", RECIPE, recipe_rules.hub_token_missing),
    Rule("model-folder-missing", RECIPE, recipe_rules.model_folder_missing, waits=True),
    Rule("eval-strategy-without-eval-data", RECIPE, recipe_rules.eval_strategy_without_eval_data),
    Rule("interval-unread", RECIPE, recipe_rules.interval_unread),
    # a hardware profile file
    Rule("profile-not-a-mapping", PROFILE, profile_rules.profile_not_a_mapping),
    Rule("profile-unknown-key", PROFILE, profile_rules.profile_unknown_key),
    Rule("profile-not-a-number", PROFILE, profile_rules.profile_not_a_number),
    Rule("profile-rule-adapter", PROFILE, profile_rules.profile_rule_adapter),
    Rule("profile-rule-sharding", PROFILE, profile_rules.profile_rule_sharding),
    # a pipeline file
    Rule("pipeline-without-stages", PIPELINE, pipeline_rules.pipeline_without_stages),
    Rule("pipeline-unknown-key", PIPELINE, pipeline_rules.pipeline_unknown_key),
    Rule("stage-not-a-mapping", PIPELINE, pipeline_rules.stage_not_a_mapping),
    Rule("stage-name-invalid", PIPELINE, pipeline_rules.stage_name_invalid),
    Rule("stage-name-twice", PIPELINE, pipeline_rules.stage_name_twice),
    Rule("stage-recipe-missing", PIPELINE, pipeline_rules.stage_recipe_missing),
    Rule("stage-overrides-not-a-mapping", PIPELINE, pipeline_rules.stage_overrides_not_a_mapping),
    Rule("placeholder-not-earlier", PIPELINE, pipeline_rules.placeholder_not_earlier),
    Rule("override-stage-unknown", PIPELINE, pipeline_rules.override_stage_unknown),
    Rule("gate-not-a-mapping", PIPELINE, pipeline_rules.gate_not_a_mapping),
    Rule("gate-metric-unknown", PIPELINE, pipeline_rules.gate_metric_unknown),
    Rule("gate-minimum-invalid", PIPELINE, pipeline_rules.gate_minimum_invalid),
    Rule("gate-not-measured", PIPELINE, pipeline_rules.gate_not_measured),
    # a recipe on a hardware profile
    Rule("bf16-unsupported", FEASIBILITY, feasibility.bf16_unsupported),
    Rule("fp16-on-cpu", FEASIBILITY, feasibility.fp16_on_cpu),
    Rule("float16-training-on-cpu", FEASIBILITY, feasibility.float16_training_on_cpu),
    Rule("fp16-without-master-weights", FEASIBILITY, feasibility.fp16_without_master_weights),
    Rule("flash-attention-unavailable", FEASIBILITY, feasibility.flash_attention_unavailable),
    Rule("bitsandbytes-missing", FEASIBILITY, feasibility.bitsandbytes_missing),
    Rule("trainer-not-sharded", FEASIBILITY, feasibility.trainer_not_sharded),
    Rule("quantized-weights-not-sharded", FEASIBILITY, feasibility.quantized_weights_not_sharded),
    Rule("vllm-unavailable", FEASIBILITY, feasibility.vllm_unavailable),
    Rule("vllm-without-gpu", FEASIBILITY, feasibility.vllm_without_gpu),
    Rule("vllm-with-8bit-weights", FEASIBILITY, feasibility.vllm_with_8bit_weights),
    Rule("vllm-sleep-mode-on-cpu", FEASIBILITY, feasibility.vllm_sleep_mode_on_cpu),
    Rule("vllm-tensor-parallel-impossible", FEASIBILITY, feasibility.vllm_tensor_parallel_impossible),
    Rule("model-does-not-fit", FEASIBILITY, feasibility.model_does_not_fit),
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
