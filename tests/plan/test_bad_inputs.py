"""Fail fast, fail clearly: every case in tests/fixtures/bad_inputs/ is run through the real command line.

Each case must exit with code 2, print one short message (no traceback) that names the file (or the
command line), the key or row, and a fix, and create no output directory. That it fails before torch is
imported is checked by `test_validation_happens_before_torch_is_imported` (module list, not a clock: a
busy machine makes any time limit flaky). docs/troubleshooting.md is written from these cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes.registry import ALGORITHMS

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "fixtures" / "bad_inputs"
MAX_LINES = 15

# case file, extra command-line words, key named in the message, fragments it must contain, where (file/line)
# `where` defaults to the case file's name; None means the message cannot name a file (a command-line flag).
TABLE = [
    # misspelled keys, at every level
    ("top_unknown_key.yaml", [], "trian", ["unknown key", "did you mean 'train'"], "top_unknown_key.yaml:4"),
    (
        "model_unknown_key.yaml",
        [],
        "model.name_or_pth",
        ["did you mean 'name_or_path'"],
        "model_unknown_key.yaml:6",
    ),
    (
        "lora_unknown_key.yaml",
        [],
        "model.lora.rank",
        ["unknown key", "valid keys: alpha"],
        "lora_unknown_key.yaml:7",
    ),
    ("data_unknown_key.yaml", [], "data.train.pth", ["did you mean 'path'"], "data_unknown_key.yaml:6"),
    (
        "evaluate_unknown_key.yaml",
        [],
        "evaluate.metrc",
        ["did you mean 'metric'"],
        "evaluate_unknown_key.yaml:5",
    ),
    (
        "train_unknown_key.yaml",
        [],
        "train.learnig_rate",
        ["SFTConfig", "did you mean 'learning_rate'"],
        "train_unknown_key.yaml:5",
    ),
    (
        "rewards_unknown_key.yaml",
        [],
        "rewards[0].colum",
        ["did you mean 'column'"],
        "rewards_unknown_key.yaml",
    ),
    # wrong types
    (
        "type_learning_rate.yaml",
        [],
        "train.learning_rate",
        ["expected float", "'fast'"],
        "type_learning_rate.yaml:5",
    ),
    (
        "type_epochs_list.yaml",
        [],
        "train.num_train_epochs",
        ["expected float", "list"],
        "type_epochs_list.yaml:5",
    ),
    ("type_model_not_mapping.yaml", [], "model", ["must be a mapping"], "type_model_not_mapping.yaml:3"),
    ("type_bool_string.yaml", [], "train.bf16", ["expected bool"], "type_bool_string.yaml:5"),
    ("type_lora_r_float.yaml", [], "model.lora.r", ["expected int", "8.5"], "type_lora_r_float.yaml:6"),
    (
        "type_trust_remote_code.yaml",
        [],
        "model.trust_remote_code",
        ["expected bool"],
        "type_trust_remote_code.yaml:5",
    ),
    ("type_data_not_mapping.yaml", [], "data.train", ["must be a mapping"], "type_data_not_mapping.yaml:5"),
    ("type_rewards_not_list.yaml", [], "rewards", ["must be a list"], "type_rewards_not_list.yaml:3"),
    # out-of-range values
    (
        "range_lr_negative.yaml",
        [],
        "train.learning_rate",
        ["impossible value", "must be > 0"],
        "range_lr_negative.yaml:5",
    ),
    (
        "range_batch_zero.yaml",
        [],
        "train.per_device_train_batch_size",
        ["impossible value 0", ">= 1"],
        "range_batch_zero.yaml:5",
    ),
    (
        "range_lora_dropout.yaml",
        [],
        "model.lora.dropout",
        ["impossible value 1.5", "<= 1"],
        "range_lora_dropout.yaml:6",
    ),
    (
        "range_max_drop_fraction.yaml",
        [],
        "data.train.max_drop_fraction",
        ["impossible value 2"],
        "range_max_drop_fraction.yaml:5",
    ),
    (
        "range_num_generations.yaml",
        [],
        "train.num_generations",
        ["impossible value 1", ">= 2"],
        "range_num_generations.yaml:4",
    ),
    # names that are not one of the choices
    (
        "choice_adapter.yaml",
        [],
        "model.adapter",
        ["'lorra' is not one of", "'lora'"],
        "choice_adapter.yaml:5",
    ),
    ("choice_dtype.yaml", [], "model.dtype", ["'fp16' is not one of", "float16"], "choice_dtype.yaml:5"),
    (
        "unknown_algorithm.yaml",
        [],
        "algorithm",
        ["unknown algorithm 'dop'", "did you mean 'dpo'"],
        "unknown_algorithm.yaml:2",
    ),
    (
        "missing_algorithm.yaml",
        [],
        "algorithm",
        ["no `algorithm:` given", "sft, reward, dpo"],
        "missing_algorithm.yaml",
    ),
    ("unknown_profile.yaml", [], "profile", ["unknown profile 't5'", "cpu"], None),
    ("good_sft.yaml", ["--profile", "t5"], "profile", ["unknown profile 't5'"], None),
    # the file itself
    ("not_a_mapping.yaml", [], None, ["must be a mapping of sections", "list"], "not_a_mapping.yaml"),
    ("scalar.yaml", [], None, ["must be a mapping of sections"], "scalar.yaml"),
    ("empty.yaml", [], None, ["the recipe is empty"], "empty.yaml"),
    ("comments_only.yaml", [], None, ["the recipe is empty"], "comments_only.yaml"),
    (
        "duplicate_key.yaml",
        [],
        None,
        ["duplicate key 'learning_rate' (first at line 5)"],
        "duplicate_key.yaml:6",
    ),
    ("python_tag.yaml", [], None, ["unsafe or unknown YAML tag", "python/object"], "python_tag.yaml:4"),
    ("invalid_yaml.yaml", [], None, ["invalid YAML"], "invalid_yaml.yaml:4"),
    ("tab_indent.yaml", [], None, ["invalid YAML", "'\\t'"], "tab_indent.yaml:5"),
    ("not_utf8.yaml", [], None, ["cannot read as a YAML text file"], "not_utf8.yaml"),
    (
        "extends_cycle_a.yaml",
        [],
        "extends",
        ["`extends` cycle", "extends_cycle_b.yaml"],
        "extends_cycle_a.yaml",
    ),
    ("extends_cycle_b.yaml", [], "extends", ["`extends` cycle"], "extends_cycle_b.yaml"),
    ("extends_missing.yaml", [], "extends", ["'_nope.yaml': file not found"], "extends_missing.yaml:3"),
    ("does_not_exist.yaml", [], None, ["file not found"], "does_not_exist.yaml"),
    ("data", [], None, ["cannot read as a YAML text file"], "bad_inputs/data"),
    # data
    (
        "data_missing_file.yaml",
        [],
        "data.train.path",
        ["dataset file not found: data/nope.jsonl", "looked in"],
        "data_missing_file.yaml:5",
    ),
    ("data_missing_path.yaml", [], "data.train.path", ["required key missing"], "data_missing_path.yaml:5"),
    ("data_missing_section.yaml", [], "data.train", ["required key missing"], "data_missing_section.yaml"),
    (
        "data_wrong_columns.yaml",
        [],
        "data.train",
        ["cannot tell the dataset format", "question_text, reply", "columns expected"],
        "wrong_columns.jsonl",
    ),
    (
        "data_empty_rows.yaml",
        [],
        "data.train",
        ["cannot tell the dataset format", "columns found: none"],
        "empty_rows.jsonl",
    ),
    (
        "data_mostly_bad_rows.yaml",
        [],
        "data.train",
        [
            "7 of 10 rows could not be converted",
            "empty 'chosen': rows 2, 3, 4 and 3 more",
            "identical chosen and rejected: row 10",
            "max_drop_fraction",
        ],
        "mostly_bad_prefs.jsonl",
    ),
    ("data_malformed_json.yaml", [], "data.train", ["line 3 is not valid JSON"], "malformed.jsonl:3"),
    ("data_not_objects.yaml", [], "data.train", ["line 2 is a JSON list"], "not_objects.jsonl:2"),
    ("data_truncated_json.yaml", [], "data.train", ["not valid JSON"], "truncated.json:3"),
    (
        "data_unsupported_file.yaml",
        [],
        "data.train.path",
        ["cannot read '.txt' files", ".jsonl"],
        "notes.txt",
    ),
    (
        "data_wrong_kind.yaml",
        [],
        "data.train",
        ["cannot serve an algorithm needing preference", "columns found: messages"],
        "sft.jsonl",
    ),
    (
        "data_unknown_format.yaml",
        [],
        "data.train.format",
        ["unknown format 'alpacca'", "did you mean 'alpaca'"],
        "data_unknown_format.yaml:5",
    ),
    (
        "data_columns_missing.yaml",
        [],
        "data.train.columns",
        ["'question' not in the data", "prompt, chosen, rejected"],
        "prefs.jsonl",
    ),
    (
        "evaluate_missing_data.yaml",
        [],
        "evaluate.data",
        ["required key missing"],
        "evaluate_missing_data.yaml",
    ),
    # rewards (grpo)
    ("reward_unresolved.yaml", [], "rewards[0].function", ["'nope.py' not found"], "reward_unresolved.yaml"),
    (
        "reward_unknown_builtin.yaml",
        [],
        "rewards[0].name",
        ["did you mean 'exact_match'"],
        "reward_unknown_builtin.yaml",
    ),
    (
        "reward_bad_signature.yaml",
        [],
        "rewards[0].function",
        ["must accept **kwargs"],
        "reward_bad_signature.yaml",
    ),
    (
        "reward_missing_attr.yaml",
        [],
        "rewards[0].function",
        ["has no attribute 'scor'", "did you mean 'score'"],
        "reward_missing_attr.yaml",
    ),
    (
        "reward_missing_column.yaml",
        [],
        "rewards[0].function",
        [
            "'rewards_bad.py:by_reference' needs the column 'reference'",
            "data.train (prompts.jsonl)",
            "answer",
            "data.train.columns: {reference: your_column}",
        ],
        "reward_missing_column.yaml",
    ),
    (
        "reward_builtin_missing_column.yaml",
        [],
        "rewards[0].name",
        [
            "'exact_match' needs the column 'solution'",
            "columns it passes to rewards: answer",
            "set `column:`",
        ],
        "reward_builtin_missing_column.yaml",
    ),
    # reward functions called on the first rows of the data they will score
    *[
        (
            f"reward_toy_{layout}.yaml",
            [],
            "rewards[0].function",
            [
                f"reward 'align_recipes.tiny.toytask:toy_reward' cannot run on data.train ({data})",
                "raised ValueError: toy_reward got 3 completions but 0 answers",
                f"it reads the column answer, data.train passes {passes}",
                "data.train.columns: {answer: your_column}",
            ],
            f"reward_toy_{layout}.yaml:6",
        )
        for layout, data, passes in [
            ("prompts_csv", "prompts_no_answer.csv", "none"),
            ("roleless", "roleless.jsonl", "none"),
            (
                "ultrafeedback",
                "ultrafeedback_binarized.parquet",
                "the columns prompt_id, score_chosen, score_rejected",
            ),
        ]
    ],
    (
        "reward_toy_evaluate_no_answer.yaml",
        [],
        "rewards[0].function",
        [
            "cannot run on evaluate.data (prompts_no_answer.csv)",
            "evaluate.data.columns: {answer: your_column}",
        ],
        "reward_toy_evaluate_no_answer.yaml:4",
    ),
    (
        "reward_default_column.yaml",
        [],
        "rewards[0].function",
        [
            "'rewards_bad.py:by_reference_or_none' cannot run on data.train (prompts.jsonl)",
            "with their `answer` values as completions",
            "raised TypeError: 'NoneType' object is not iterable",
            "it reads the column reference, data.train passes the column answer",
            "data.train.columns: {reference: your_column}",
        ],
        "reward_default_column.yaml:4",
    ),
    (
        "reward_raises.yaml",
        [],
        "rewards[0].function",
        [
            "'rewards_bad.py:crashes' cannot run",
            "raised ZeroDivisionError: division by zero",
            "one number (or None)",
        ],
        "reward_raises.yaml:4",
    ),
    (
        "reward_not_a_list.yaml",
        [],
        "rewards[0].function",
        [
            "'rewards_bad.py:one_number' cannot run",
            "returned float 1.0, not a list of one number per completion",
        ],
        "reward_not_a_list.yaml:4",
    ),
    ("grpo_no_rewards.yaml", [], "rewards", ["needs at least one reward"], "grpo_no_rewards.yaml"),
    ("dpo_with_rewards.yaml", [], "rewards", ["`dpo` takes no reward functions"], "dpo_with_rewards.yaml:6"),
    # impossible combinations, with the recipe or with a hardware profile
    ("qlora_8bit.yaml", [], "model.quantization", ["QLoRA is 4-bit"], "qlora_8bit.yaml:6"),
    ("full_quantized.yaml", [], "model.adapter", ["cannot be fully fine-tuned"], "full_quantized.yaml:5"),
    ("bf16_and_fp16.yaml", [], "train.fp16", ["bf16 and fp16"], "bf16_and_fp16.yaml:6"),
    ("good_sft.yaml", ["--profile", "t4", "train.bf16=true"], "train.", ["bf16"], None),
    (
        "good_sft.yaml",
        ["--profile", "cpu", "model.attn_implementation=flash_attention_2"],
        "model.attn_implementation",
        ["CUDA"],
        None,
    ),
    # command-line overrides
    ("good_sft.yaml", ["train.learning_rate"], None, ["is not KEY=VALUE"], None),
    ("good_sft.yaml", ["train.lr=1e-5"], "train.lr", ["unknown key for SFTConfig"], "command line"),
    (
        "good_sft.yaml",
        ["train.max_steps=many"],
        "train.max_steps",
        ["expected int", "'many'"],
        "command line",
    ),
    # intervals their strategy makes the trainer ignore (no checkpoint, no eval, no log)
    (
        "good_sft.yaml",
        ["train.save_steps=5"],
        "train.save_steps",
        [
            "train.save_strategy is 'no' (tests/fixtures/bad_inputs/_base.yaml)",
            "no checkpoint would be written every 5 steps",
            "also set train.save_strategy=steps",
        ],
        "command line",
    ),
    (
        "eval_steps_unread.yaml",
        [],
        "train.eval_steps",
        [
            "train.eval_strategy is 'no' (TRL's default)",
            "also set train.eval_strategy: steps (with data.eval)",
        ],
        "eval_steps_unread.yaml:5",
    ),
    # model references (checked before anything heavy is imported)
    (
        "model_unknown_builtin.yaml",
        [],
        "model.name_or_path",
        ["unknown builtin model", "builtin:tiny-qwen2"],
        "model_unknown_builtin.yaml",
    ),
    (
        "model_missing_dir.yaml",
        [],
        "model.name_or_path",
        ["'./models/nope' is neither an existing directory"],
        "model_missing_dir.yaml",
    ),
    (
        "good_sft.yaml",
        ["model.name_or_path=builtin:x"],
        "model.name_or_path",
        ["unknown builtin model"],
        "command line",
    ),
    # held-out metrics the evaluate data cannot serve
    (
        "evaluate_unknown_metric.yaml",
        [],
        "evaluate.metric",
        ["unknown metric 'acuracy'", "preference_accuracy"],
        "evaluate_unknown_metric.yaml:5",
    ),
    (
        "evaluate_needs_answers.yaml",
        [],
        "evaluate.metric",
        ["exact_match needs an `answer` column"],
        "evaluate_needs_answers.yaml:5",
    ),
    (
        "evaluate_reward_without_rewards.yaml",
        [],
        "evaluate.metric",
        ["reward needs reward functions"],
        "evaluate_reward_without_rewards.yaml:5",
    ),
    (
        "evaluate_serves_none.yaml",
        [],
        "evaluate.data",
        ["serves none of dpo's metrics", "implicit_reward_accuracy", "exact_match needs an `answer` column"],
        "evaluate_serves_none.yaml:7",
    ),
    # resuming what is not there
    ("good_sft.yaml", ["--resume"], "--resume", ["nothing to resume", "does not exist"], None),
    ("good_sft.yaml", ["--resume", "--overwrite"], "resume", ["contradict"], None),
    (
        "good_sft.yaml",
        ["train.resume_from_checkpoint=/nonexistent/checkpoint-3"],
        "train.resume_from_checkpoint",
        ["not found"],
        None,
    ),
]
CONTROLS = ["good_sft.yaml", "good_grpo.yaml"]


def _case_id(row) -> str:
    name, extra = row[0], row[1]
    return name.removesuffix(".yaml") + ("[" + " ".join(extra) + "]" if extra else "")


def run_cli(*words: str, env: dict | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "align_recipes", *words],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


PROBE = """
import sys
from align_recipes.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "trl", "datasets") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(rc)
"""


def run_probed(*words: str) -> tuple[int, str, str, str]:
    """The command line in a fresh interpreter, and which heavy modules it had imported when it returned."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *words], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    stderr, _, heavy = proc.stderr.rpartition("HEAVY=")
    return proc.returncode, proc.stdout, stderr, heavy.strip()


@pytest.mark.parametrize("row", TABLE, ids=[_case_id(r) for r in TABLE])
def test_bad_input_fails_early_and_clearly(row, tmp_path):
    name, extra, key, fragments, where = row
    out = tmp_path / "out"
    rc, stdout, stderr, heavy = run_probed(
        "train", str(CASES.relative_to(REPO) / name), f"train.output_dir={out}", *extra
    )
    shown = stdout + stderr
    assert rc == 2, f"exit code {rc}\n{shown}"
    assert "Traceback" not in shown, shown
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_LINES, stderr
    assert stderr.startswith("error: ") and "  fix: " in stderr, stderr
    if key:
        assert key in stderr, f"key {key!r} not named:\n{stderr}"
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} missing:\n{stderr}"
    if where:
        assert where in stderr, f"{where!r} (file/line) not named:\n{stderr}"
    assert not out.exists(), "an output directory was created for a run that failed validation"
    assert heavy == "", f"{heavy} imported before the recipe was refused (validation must not need torch)"


def test_every_case_file_is_in_the_table():
    listed = {row[0] for row in TABLE}
    files = {p.name for p in CASES.glob("*.yaml") if not p.name.startswith("_") and p.name not in CONTROLS}
    assert files <= listed, f"cases without an expectation: {sorted(files - listed)}"
    assert len(TABLE) >= 60


@pytest.mark.parametrize("name", CONTROLS)
def test_control_cases_are_valid(name):
    """The corpus's parents and data are sound: each bad case breaks exactly what it says."""
    rc, stdout, stderr = run_cli("validate", str(CASES.relative_to(REPO) / name))
    assert rc == 0, stderr
    assert stdout.startswith("ok: ")


# Bad only once the tokenizer has read the data: every row longer than train.max_length. The run stops after
# loading and before the first step, with the rows lost to each cause and the max_length that keeps one.
LONG_PREFS, LONG_CHATS = (
    "tests/fixtures/bad_inputs/data/long_prompt_prefs.jsonl",
    "tests/fixtures/bad_inputs/data/long_prompt_chats.jsonl",
)
AFTER_LOADING = [
    ("dpo", LONG_PREFS, "DPOTrainer leaves out all 12: the prompt alone fills train.max_length (32 tokens)"),
    ("kto", LONG_PREFS, "KTOTrainer leaves out all 24: the prompt alone fills"),
    ("orpo", LONG_PREFS, "ORPOTrainer leaves out all 12: the prompt alone fills"),
    ("reward", LONG_PREFS, "RewardTrainer leaves out all 12: longer than train.max_length (32 tokens)"),
    ("sft", LONG_CHATS, "SFTTrainer leaves out all 12: the prompt alone fills"),
]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, data, fragment", AFTER_LOADING, ids=[row[0] for row in AFTER_LOADING])
def test_rows_longer_than_max_length_stop_before_training(algorithm, data, fragment, tmp_path, capsys):
    """In this process (the CLI's `main`): what is checked is the run's own refusal after loading, and a fresh
    interpreter per case only added its imports (the early refusals above keep theirs: they prove no import)."""
    from align_recipes.cli import main

    def run_here(*words: str) -> tuple[int, str, str]:
        rc = main(list(words))
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    out = tmp_path / "out"
    words = [
        "train",
        f"recipes/tiny/{algorithm}.yaml",
        f"data.train.path={data}",
        "train.max_length=32",
        "model.name_or_path=builtin:tiny-qwen2",
        "evaluate=null",
        "train.max_steps=1",
        "--profile",
        "cpu",
        f"train.output_dir={out}",
        "--no-report",
    ]
    rc, stdout, stderr = run_here(*words)
    assert rc == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr and "\nerror: " in "\n" + stderr  # (ORPO logs warnings first)
    assert "data.train: no row is left to train on: 12 rows read" in stderr and fragment in stderr, stderr
    assert "raise train.max_length (command line) from 32 to at least" in stderr, stderr
    assert not out.exists(), "the refused run left an output directory"
    if algorithm != "dpo":
        return
    # The suggested max_length is the smallest that trains: the 10 rows with the shortest prompt (a one-digit
    # sum) fit, the 2 with a two-digit one are one token longer and are left out.
    suggested = int(stderr.split("to at least ")[1].split(":")[0])
    rc, stdout, stderr = run_here(
        *words[:-2], f"train.max_length={suggested}", f"train.output_dir={out}", "--no-report"
    )
    assert rc == 0, stdout + stderr
    assert "note: data.train: DPOTrainer leaves 2 of 12 rows out" in stderr and "done: 1 steps" in stdout


def test_no_row_left_counts_each_cause(tmp_path):
    """Rows lost while converting and rows the trainer's length rule drops are counted apart (no model
    is loaded: the trainer's prepared dataset is what DPOTrainer leaves of these rows, i.e. nothing)."""
    import json
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from align_recipes import tiny
    from align_recipes.data import DataError, load
    from align_recipes.plan import load_plan
    from align_recipes.run import rowcheck

    empty_chosen = {
        "prompt": [{"role": "user", "content": "1+1="}],
        "chosen": [],
        "rejected": [{"role": "assistant", "content": "3"}],
    }
    data = tmp_path / "prefs.jsonl"
    data.write_text((REPO / LONG_PREFS).read_text() + (json.dumps(empty_chosen) + "\n") * 2)
    plan = load_plan(
        "recipes/tiny/dpo.yaml",
        [
            f"data.train.path={data}",
            "train.max_length=32",
            "model.name_or_path=builtin:tiny-qwen2",
            "evaluate=null",
        ],
        profile="cpu",
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
    dataset, report = load(
        plan.data.train[0], plan.base_dir, "preference", tokenizer, cache_dir=tmp_path / "cache"
    )
    parts = SimpleNamespace(
        train_dataset=dataset, eval_dataset=None, reports={"train": report}, tokenizer=tokenizer
    )
    trainer = SimpleNamespace(train_dataset=dataset.select([]), eval_dataset=None)
    with pytest.raises(DataError) as info:
        rowcheck.check_trainable_rows(plan, parts, trainer)
    text = info.value.render()
    assert (
        "no row is left to train on: 14 rows read; 2 could not be converted (empty 'chosen': rows 13, 14); "
        "DPOTrainer leaves out the other 12: the prompt alone fills train.max_length (32 tokens)"
    ) in text
    # 351: TRL's own tokenization of the shortest prompt through the chat template (the slow test above
    # trains at the max_length this suggests)
    assert (
        "raise train.max_length (command line) from 32 to at least 352: the shortest prompt is 351 tokens"
        in text
    )


@pytest.mark.parametrize(
    "words",
    [
        ["train", "tests/fixtures/bad_inputs/train_unknown_key.yaml"],
        ["train", "tests/fixtures/bad_inputs/data_mostly_bad_rows.yaml"],
        ["train", "tests/fixtures/bad_inputs/model_missing_dir.yaml"],
        ["train", "tests/fixtures/bad_inputs/good_sft.yaml", "--resume"],
        ["validate", "tests/fixtures/bad_inputs/good_sft.yaml"],
    ],
    ids=["recipe", "data", "model", "resume", "validate"],
)
def test_validation_happens_before_torch_is_imported(words, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *words, f"train.output_dir={tmp_path / 'out'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 2), proc.stderr
    assert "HEAVY=\n" in proc.stderr or proc.stderr.rstrip().endswith("HEAVY="), proc.stderr


REWARD_ALGORITHMS = [name for name, algorithm in ALGORITHMS.items() if algorithm.uses_rewards]


@pytest.mark.parametrize("algorithm", REWARD_ALGORITHMS)
def test_a_reward_that_cannot_run_on_the_data_stops_every_reward_algorithm_before_loading(
    algorithm, tmp_path
):
    """The shipped recipe of each algorithm that takes rewards, its toy_reward on prompts without answers:
    exit 2 with the reward named, no traceback, no model (nor torch) loaded, no output directory."""
    out = tmp_path / "out"
    rc, stdout, stderr, heavy = run_probed(
        "train",
        f"recipes/tiny/{algorithm}.yaml",
        "data.train.path=tests/fixtures/bad_inputs/data/prompts_no_answer.csv",
        f"train.output_dir={out}",
    )
    assert rc == 2 and "Traceback" not in stdout + stderr, stdout + stderr
    assert stderr.startswith("error: recipes/tiny/") and "rewards[0].function: reward " in stderr, stderr
    assert "toy_reward got 3 completions but 0 answers" in stderr, stderr
    assert heavy == "" and not out.exists()


def test_secret_values_never_reach_error_messages(tmp_path):
    """A token pasted into the wrong place is hidden in the error that points at it."""
    rc, stdout, stderr = run_cli(
        "train",
        "tests/fixtures/bad_inputs/good_sft.yaml",
        f"train.output_dir={tmp_path / 'out'}",
        "train.learning_rate=hf_secret123",
        env={"HF_TOKEN": "hf_secret123"},
    )
    assert rc == 2 and "train.learning_rate" in stderr
    assert "hf_secret123" not in stdout + stderr
