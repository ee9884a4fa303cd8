"""Recipe loading: merge order, provenance, and every class of recipe error (with file, key, line, fix)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan.load import load_plan, parse_override

REPO = Path(__file__).resolve().parents[2]
PREFS = "prefs.jsonl"  # written next to each test's recipe by the fixture below


@pytest.fixture(autouse=True)
def prefs_file(tmp_path):
    row = '{"prompt": [{"role": "user", "content": "2+2="}], "chosen": [{"role": "assistant", "content": "4"}], '
    row += '"rejected": [{"role": "assistant", "content": "5"}]}'
    (tmp_path / PREFS).write_text((row + "\n") * 3)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def base_recipe(tmp_path: Path, train: str = "beta: 0.1", extra: str = "") -> Path:
    return write(
        tmp_path,
        "dpo.yaml",
        f"""
        algorithm: dpo
        model: {{name_or_path: builtin:tiny-qwen2}}
        data: {{train: {{path: {PREFS}}}}}
        train: {{{train}}}
        {extra}
    """,
    )


def errors_of(call) -> list[RecipeError]:
    with pytest.raises((RecipeError, RecipeErrors)) as info:
        call()
    exc = info.value
    return exc.errors if isinstance(exc, RecipeErrors) else [exc]


def test_minimal_recipe_resolves_with_sources(tmp_path):
    plan = load_plan(base_recipe(tmp_path), profile="cpu")
    assert plan.algorithm.name == "dpo" and plan.algorithm.config_name == "DPOConfig"
    assert plan.train["beta"] == 0.1
    assert plan.sources["train.beta"].startswith("recipe:") and plan.sources["train.beta"].endswith(
        "dpo.yaml"
    )
    assert plan.sources["train.use_cpu"] == "profile:cpu"
    assert plan.output_dir == Path(f"outputs/{tmp_path.name}/dpo")
    effective = plan.effective_config()
    assert effective["loss_type"][1] == "default"  # untouched TRL default


def test_merge_order_default_profile_recipe_override(tmp_path):
    recipe = base_recipe(tmp_path, train="beta: 0.1, fp16: false, learning_rate: 1.0e-4")
    plan = load_plan(recipe, ["train.learning_rate=3e-4", "train.output_dir=/tmp/elsewhere"], profile="t4")
    assert plan.train["fp16"] is False and plan.sources["train.fp16"].startswith(
        "recipe:"
    )  # recipe > profile
    assert (
        plan.train["activation_checkpointing"] is True
        and plan.sources["train.activation_checkpointing"] == "profile:t4"
    )
    assert (
        plan.train["learning_rate"] == pytest.approx(3e-4)
        and plan.sources["train.learning_rate"] == "override"
    )
    assert plan.output_dir == Path("/tmp/elsewhere")


def test_extends_chain_child_wins_and_keeps_parent_provenance(tmp_path):
    write(
        tmp_path,
        "_base.yaml",
        """
        model: {name_or_path: builtin:tiny-qwen2, adapter: lora, lora: {r: 4}}
        train: {beta: 0.5, seed: 7}
    """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        f"""
        algorithm: dpo
        extends: _base.yaml
        data: {{train: {{path: {PREFS}}}}}
        train: {{beta: 0.2}}
    """,
    )
    plan = load_plan(child, profile="cpu")
    assert plan.train["beta"] == 0.2 and plan.sources["train.beta"].endswith("child.yaml")
    assert plan.train["seed"] == 7 and plan.sources["train.seed"].endswith("_base.yaml")
    assert plan.recipe["model"]["lora"]["r"] == 4


def test_misspelled_train_key_names_the_fix_and_line(tmp_path):
    recipe = write(
        tmp_path,
        "r.yaml",
        f"""
        algorithm: dpo
        model: {{name_or_path: builtin:tiny-qwen2}}
        data: {{train: {{path: {PREFS}}}}}
        train:
          beta: 0.1
          learnig_rate: 1.0e-5
    """,
    )
    [error] = errors_of(lambda: load_plan(recipe, profile="cpu"))
    assert error.key == "train.learnig_rate" and error.line == 6 and str(error.file).endswith("r.yaml")
    assert "'learning_rate'" in error.fix


@pytest.mark.parametrize(
    "extra, key, fragment",
    [
        ("modle: {}", "modle", "'model'"),
        (
            "evaluate: {metric: exact_match, data: {path: x.jsonl}, max_new_tokns: 3}",
            "evaluate.max_new_tokns",
            "'max_new_tokens'",
        ),
    ],
)
def test_misspelled_keys_in_every_section(tmp_path, extra, key, fragment):
    errors = errors_of(lambda: load_plan(base_recipe(tmp_path, extra=extra), profile="cpu"))
    assert any(e.key == key and fragment in e.fix for e in errors), [e.render() for e in errors]


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("model.adaptor=lora", "model.adaptor", "'adapter'"),
        ("model.lora.rank=8", "model.lora.rank", "valid keys"),
        ("data.train.colums={}", "data.train.colums", "'columns'"),
        ("train.learning_rate=fast", "train.learning_rate", "expected float"),
        ("train.learning_rate=-1", "train.learning_rate", "impossible value"),
        ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size", "impossible value"),
        ("model.lora.r=0", "model.lora.r", "impossible value"),
        ("model.adapter=lorra", "model.adapter", "not one of"),
        ("model.dtype=fp16", "model.dtype", "not one of"),
        ("train.num_train_epochs=[1]", "train.num_train_epochs", "expected float"),
        ("model.adapter=full model.quantization=4bit", "model.adapter", "cannot be fully fine-tuned"),
    ],
)
def test_bad_values_name_key_and_reason(tmp_path, override, key, fragment):
    errors = errors_of(lambda: load_plan(base_recipe(tmp_path), override.split(), profile="cpu"))
    matching = [e for e in errors if e.key == key]
    assert matching, [e.render() for e in errors]
    assert fragment in matching[0].render()
    assert matching[0].file == "command line"


def test_numeric_strings_become_numbers(tmp_path):
    plan = load_plan(
        base_recipe(tmp_path, train="learning_rate: 1e-5"), profile="cpu"
    )  # YAML 1.1 reads a str
    assert plan.train["learning_rate"] == pytest.approx(1e-5)
    assert isinstance(parse_override("train.max_steps=10")[1], int)


def test_duplicate_keys_are_rejected_with_both_lines(tmp_path):
    recipe = write(
        tmp_path,
        "dup.yaml",
        """
        algorithm: dpo
        train:
          beta: 0.1
          beta: 0.2
    """,
    )
    [error] = errors_of(lambda: load_plan(recipe))
    assert "duplicate key 'beta'" in error.message and "line 3" in error.message and error.line == 4


def test_python_tags_are_refused(tmp_path):
    recipe = write(tmp_path, "evil.yaml", "algorithm: !!python/object/apply:os.system ['echo hi']\n")
    [error] = errors_of(lambda: load_plan(recipe))
    assert "unsafe or unknown YAML tag" in error.message and error.line == 1


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("- algorithm: dpo\n", "must be a mapping"),
        ("algorithm: dpo\nmodel: [1, 2\n", "invalid YAML"),
    ],
)
def test_empty_list_or_broken_files(tmp_path, text, fragment):
    recipe = write(tmp_path, "bad.yaml", text)
    [error] = errors_of(lambda: load_plan(recipe))
    assert fragment in error.message and str(error.file).endswith("bad.yaml")


def test_extends_cycle_and_missing_parent(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nalgorithm: dpo\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    [error] = errors_of(lambda: load_plan(tmp_path / "a.yaml"))
    assert "cycle" in error.message and "a.yaml -> b.yaml -> a.yaml" in error.message
    write(tmp_path, "c.yaml", "extends: nowhere.yaml\nalgorithm: dpo\n")
    [error] = errors_of(lambda: load_plan(tmp_path / "c.yaml"))
    assert "nowhere.yaml" in error.message and error.key == "extends"


def test_unknown_algorithm_and_profile(tmp_path):
    recipe = base_recipe(tmp_path)
    [error] = errors_of(lambda: load_plan(recipe, ["algorithm=dpoo"]))
    assert "unknown algorithm 'dpoo'" in error.message and "'dpo'" in error.fix
    [error] = errors_of(lambda: load_plan(recipe, profile="t5"))
    assert "unknown profile 't5'" in error.message and "t4" in error.fix


def test_missing_recipe_file_and_required_keys(tmp_path):
    [error] = errors_of(lambda: load_plan(tmp_path / "nope.yaml"))
    assert error.message == "file not found"
    recipe = write(tmp_path, "r.yaml", "algorithm: sft\ntrain: {}\n")
    errors = errors_of(lambda: load_plan(recipe, profile="cpu"))
    assert {e.key for e in errors} >= {"model", "data"} or {e.key for e in errors} >= {"model.name_or_path"}


def test_rewards_only_for_online_algorithms(tmp_path):
    errors = errors_of(
        lambda: load_plan(base_recipe(tmp_path, extra="rewards: [{name: exact_match}]"), profile="cpu")
    )
    assert any(e.key == "rewards" and "takes no reward" in e.message for e in errors)


def test_malformed_override():
    with pytest.raises(RecipeError, match="not KEY=VALUE"):
        parse_override("train.learning_rate")


# --- paths resolve where they were written ---------------------------------------------------------


def test_a_recipe_elsewhere_extending_a_project_recipe_finds_the_base_files(tmp_path, monkeypatch):
    """The base's relative data paths resolve in the base's folder, not the child's or the current one."""
    child = write(
        tmp_path,
        "mine.yaml",
        f"""
        extends: {REPO / "recipes" / "tiny" / "sft.yaml"}
        train: {{max_steps: 2}}
    """,
    )
    monkeypatch.chdir("/")
    plan = load_plan(child, ["train.learning_rate=1e-3"], profile="cpu")
    tiny_data = REPO / "recipes" / "tiny" / "data"
    assert plan.data.train[0].path == str(tiny_data / "sft.jsonl")
    assert plan.evaluate.data.path == str(tiny_data / "eval.jsonl")
    assert plan.train["max_steps"] == 2 and plan.train["learning_rate"] == pytest.approx(1e-3)


def test_validate_from_the_root_directory_a_recipe_extending_a_project_recipe(tmp_path, monkeypatch, capsys):
    from align_recipes.cli import main

    child = write(tmp_path, "mine.yaml", f"extends: {REPO / 'recipes' / 'tiny' / 'sft.yaml'}\n")
    monkeypatch.chdir("/")
    assert main(["validate", str(child)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"ok: {child} (sft")


def test_reward_files_and_models_in_a_base_resolve_in_the_base_folder(tmp_path, monkeypatch):
    """`function: my_rewards.py:score`, `model: rm` and a module `my_pkg.mod` written in an `extends` parent
    are the parent's neighbours, not the child's or the current directory's."""
    shared = tmp_path / "shared"
    (shared / "rm").mkdir(parents=True)
    (shared / "rm" / "config.json").write_text("{}")
    (shared / "my_rewards.py").write_text(
        "def score(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n"
    )
    (shared / "prompts.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n' * 3)
    write(
        shared,
        "_grpo.yaml",
        """
        algorithm: grpo
        model: {name_or_path: builtin:tiny-qwen2}
        data: {train: {path: prompts.jsonl}}
        rewards: [{function: "my_rewards.py:score", weight: 2}, {model: rm}, {function: "my_pkg.mod:f"}]
        train: {num_generations: 2, per_device_train_batch_size: 2}
    """,
    )
    (tmp_path / "mine").mkdir()
    child = write(tmp_path / "mine", "grpo.yaml", f"extends: {shared / '_grpo.yaml'}\n")
    monkeypatch.chdir("/")
    (shared / "my_pkg").mkdir()
    (shared / "my_pkg" / "__init__.py").write_text("")
    (shared / "my_pkg" / "mod.py").write_text(
        "def f(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n"
    )
    plan = load_plan(child, profile="cpu")  # my_pkg.mod imports from the base's folder too
    assert plan.rewards == [
        {"function": f"{shared / 'my_rewards.py'}:score", "weight": 2},
        {"model": str(shared / "rm")},
        {"function": "my_pkg.mod:f"},
    ]


def test_overrides_resolve_against_the_current_directory_and_the_resolved_recipe_is_absolute(
    tmp_path, monkeypatch
):
    from align_recipes.plan import resolved_yaml

    recipe = base_recipe(tmp_path)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "other.jsonl").write_text((tmp_path / PREFS).read_text())
    monkeypatch.chdir(elsewhere)
    plan = load_plan(recipe, ["data.eval.path=other.jsonl"], profile="cpu")
    assert plan.data.train[0].path == str(tmp_path / PREFS)  # written in the recipe: its folder
    assert plan.data.eval[0].path == str(elsewhere / "other.jsonl")  # written on the command line: here
    text = resolved_yaml(plan)
    assert f"path: {tmp_path / PREFS}" in text and f"path: {elsewhere / 'other.jsonl'}" in text
    assert "name_or_path: builtin:tiny-qwen2" in text  # not a path: left alone


def test_a_name_that_exists_nowhere_is_kept_as_written(tmp_path):
    recipe = base_recipe(tmp_path)
    plan = load_plan(recipe, ["model.name_or_path=Qwen/Qwen2-0.5B-Instruct"], profile="cpu")
    assert plan.model.name_or_path == "Qwen/Qwen2-0.5B-Instruct"


def test_the_old_checkpointing_name_in_a_recipe_beats_the_profiles_new_one(tmp_path):
    recipe = base_recipe(tmp_path, train="beta: 0.1, gradient_checkpointing: false")
    plan = load_plan(recipe, profile="t4")
    assert plan.train["activation_checkpointing"] is False and "gradient_checkpointing" not in plan.train
    assert plan.sources["train.activation_checkpointing"].startswith("recipe:")


def test_a_registry_entry_missing_from_the_field_snapshot_is_a_recipe_error(tmp_path, monkeypatch):
    from align_recipes.plan import trl_fields

    snapshot = trl_fields._snapshot()
    monkeypatch.setattr(
        trl_fields,
        "_snapshot",
        lambda: {**snapshot, "configs": {k: v for k, v in snapshot["configs"].items() if k != "DPOConfig"}},
    )
    [error] = errors_of(lambda: load_plan(base_recipe(tmp_path), profile="cpu"))
    assert "DPOConfig" in error.message and "python -m align_recipes.plan.trl_fields" in error.fix
