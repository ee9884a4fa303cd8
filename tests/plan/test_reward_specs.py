"""Reward specs: builtin rules, module/file functions, reward models; validation messages; no torch at
validation time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from align_recipes.data.messages import completion_text
from align_recipes.reward_builtins import BUILTINS, last_number
from align_recipes.reward_model import RewardModelFunc
from align_recipes.rewards import RewardSpecError, build_reward_funcs, check_reward_specs

CHAT = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731


def build_one(spec, base_dir=None):
    funcs, weights = build_reward_funcs([spec], base_dir)
    return funcs[0], weights[0]


def test_text_helpers():
    assert completion_text(CHAT(" 7 ")) == " 7 " and completion_text("x") == "x"
    assert last_number("so #### 1,234") == 1234.0 and last_number("none") is None and last_number(3) == 3.0


def test_exact_and_numeric_match_on_strings_and_chats():
    exact, weight = build_one({"name": "exact_match", "weight": 2})
    assert weight == 2.0 and exact.__name__ == "exact_match"
    assert exact(["p", "p"], [" 19\n", CHAT("18")], answer=["19", 19]) == [1.0, 0.0]
    numeric, _ = build_one({"name": "numeric_match", "column": "solution"})
    assert numeric([None] * 3, ["it is 42.", CHAT("42.0"), "41"], solution=["#### 42"] * 3) == [1.0, 1.0, 0.0]
    with pytest.raises(KeyError, match="needs the dataset column 'solution'.*columns: answer"):
        numeric(["p"], ["1"], answer=["1"])


def test_format_rules():
    regex, _ = build_one({"name": "regex", "pattern": r"^\d+$"})
    assert regex(
        [None] * 3,
        ["12", CHAT("12 apples"), ""],
    ) == [1.0, 0.0, 0.0]
    think, _ = build_one({"name": "think_format"})
    assert think([None] * 3, ["<think>a+b</think> 5", CHAT("<think>x</think>"), "5"]) == [1.0, 0.0, 0.0]
    length, _ = build_one({"name": "length_penalty", "max_length": 4})
    assert length([None] * 3, ["abcd", "abcdef", CHAT("x" * 20)]) == [0.0, -0.5, -1.0]


def test_function_references(tmp_path, monkeypatch):
    pkg = tmp_path / "my_rewards_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(
        textwrap.dedent("""
        def brevity_score(prompts, completions, **kwargs):
            return [1.0 / (1 + len(str(c))) for c in completions]
        def no_kwargs(prompts, completions):
            return [0.0 for c in completions]
        NOT_CALLABLE = 3
    """)
    )
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "custom.py").write_text(
        "def score(prompts, completions, **kw):\n    return [2.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    funcs, weights = build_reward_funcs(
        [
            {"function": "my_rewards_pkg.rules:brevity_score", "weight": 0.5},
            {"function": "rewards/custom.py:score"},
        ],
        base_dir=tmp_path,
    )
    assert weights == [0.5, 1.0]
    assert funcs[0](["p"], ["abc"]) == [0.25] and funcs[1](["p"], ["abc"]) == [2.0]
    assert funcs[0].__name__ == "brevity_score"

    errors = check_reward_specs(
        [
            {"function": "my_rewards_pkg.rules:brevity"},
            {"function": "my_rewards_pkg.rules:no_kwargs"},
            {"function": "my_rewards_pkg.rules:NOT_CALLABLE"},
            {"function": "no_such_module_xyz:f"},
            {"function": "rewards/missing.py:score"},
            {"function": "just_a_name"},
        ],
        base_dir=tmp_path,
    )
    assert errors[0] == (
        "rewards[0].function: module 'my_rewards_pkg.rules' has no attribute 'brevity'; "
        "did you mean 'brevity_score'?"
    )
    assert errors[1].startswith("rewards[1].function: 'my_rewards_pkg.rules:no_kwargs' must accept **kwargs")
    assert errors[2].startswith("rewards[2].function: 'my_rewards_pkg.rules:NOT_CALLABLE' is a int")
    assert errors[3].startswith("rewards[3].function: cannot import module 'no_such_module_xyz'")
    assert errors[4].startswith("rewards[4].function: file 'rewards/missing.py' not found")
    assert errors[5].startswith("rewards[5].function: 'just_a_name' is not 'module:function'")
    assert len(errors) == 6


def test_entries_declare_the_columns_they_read(tmp_path):
    from align_recipes.rewards import needed_columns

    assert needed_columns({"name": "exact_match"}) == ["answer"]  # the builtin's default column
    assert needed_columns({"name": "numeric_match", "column": "solution"}) == ["solution"]
    assert needed_columns({"name": "regex", "pattern": "x"}) == [] and needed_columns({"model": "o/rm"}) == []
    (tmp_path / "cols.py").write_text(
        textwrap.dedent("""
        def score(prompts, completions, reference, difficulty=1, *, label, trainer_state=None,
                  completion_ids=None, log_metric=None, **kwargs):
            return [0.0] * len(completions)
    """)
    )
    # required named parameters only; the trainer's own keyword arguments and defaulted ones are not columns
    assert needed_columns({"function": "cols.py:score"}, tmp_path) == ["reference", "label"]


def test_builtin_and_shape_errors(tmp_path):
    errors = check_reward_specs(
        [
            {"name": "exact_mach"},
            {"name": "regex"},
            {"name": "regex", "pattern": "(unclosed"},
            {"name": "length_penalty", "max_length": -3},
            {"name": "exact_match", "colum": "answer"},
            {"name": "exact_match", "function": "a:b"},
            {"weight": 1.0},
            "exact_match",
            {"name": "think_format", "weight": "high"},
        ],
        base_dir=tmp_path,
    )
    assert errors == [
        "rewards[0].name: unknown builtin reward 'exact_mach'; did you mean 'exact_match'? "
        "(or use function: 'module:func')",
        "rewards[1].pattern: 'regex' needs `pattern:` (a regular expression)",
        "rewards[2].pattern: is not a valid regular expression: missing ), unterminated subpattern at position 0",
        "rewards[3].max_length: must be an integer > 0 (characters) (got -3)",
        "rewards[4].colum: 'exact_match' takes no parameter 'colum'; did you mean 'column'? (it takes: column, weight)",
        "rewards[5]: has more than one of name / function / model; give exactly one",
        "rewards[6]: has none of name / function / model; give exactly one",
        "rewards[7]: must be a mapping like {name: exact_match} or {function: 'pkg.mod:func'}",
        "rewards[8].weight: must be a number (got 'high')",
    ]
    assert (
        check_reward_specs(
            [
                {
                    "name": n,
                    **({"pattern": "x"} if n == "regex" else {}),
                    **({"max_length": 3} if n == "length_penalty" else {}),
                }
                for n in BUILTINS
            ]
        )
        == []
    )
    with pytest.raises(RewardSpecError, match=r"rewards\[0\]\.name"):
        build_reward_funcs([{"name": "nope"}])


def test_model_references(tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    errors = check_reward_specs(
        [
            {"model": "rm"},
            {"model": "org/some-reward-model"},
            {"model": "empty"},
            {"model": "outputs/tiny/reward"},
        ],
        base_dir=tmp_path,
    )
    assert len(errors) == 2
    assert errors[0].startswith("rewards[2].model: '") and "has no config.json" in errors[0]
    assert errors[1].startswith("rewards[3].model: reward model 'outputs/tiny/reward' not found")
    func, _ = build_one({"model": "rm"}, tmp_path)
    assert isinstance(func, RewardModelFunc) and func.__name__ == "reward_model_rm"


def test_validation_imports_no_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from align_recipes.rewards import check_reward_specs
        errors = check_reward_specs([{{"name": "exact_match"}}, {{"name": "regex", "pattern": "a"}},
                                     {{"model": "org/rm"}}, {{"name": "bad"}}], {str(tmp_path)!r})
        assert len(errors) == 1, errors
        assert "torch" not in sys.modules, "validation imported torch"
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_checks_reward_columns_on_the_data_it_loaded():
    """Data `validate` cannot read (a hub dataset) is checked once the run has loaded it, before the model."""
    import datasets

    from align_recipes.errors import RecipeErrors
    from align_recipes.plan import load_plan
    from align_recipes.run.load import trainer_extras

    plan = load_plan("tests/fixtures/bad_inputs/good_grpo.yaml", profile="cpu")  # exact_match on `answer`
    other = datasets.Dataset.from_list([{"prompt": "1+1=", "solution": "2"}])
    with pytest.raises(RecipeErrors) as info:
        trainer_extras(plan, None, {"train": other, "eval": None})
    text = str(info.value)
    assert "rewards[0].name: reward 'exact_match' needs the column 'answer'" in text
    assert "columns it passes to rewards: solution" in text and "_grpo_base.yaml" in text  # where rewards: is
    right = datasets.Dataset.from_list([{"prompt": "1+1=", "answer": "2"}])
    assert len(trainer_extras(plan, None, {"train": right})["reward_funcs"]) == 1


def test_a_run_calls_the_rewards_on_the_data_it_loaded():
    """A hub dataset without answers, for the shipped toy_reward: refused once loaded, before the model."""
    import datasets

    from align_recipes.errors import RecipeErrors
    from align_recipes.plan import load_plan
    from align_recipes.run.load import trainer_extras

    toy = "rewards=[{function: 'align_recipes.tiny.toytask:toy_reward'}]"
    plan = load_plan("tests/fixtures/bad_inputs/good_grpo.yaml", [toy], profile="cpu")
    prompts = datasets.Dataset.from_list([{"prompt": f"{i}+1=", "source": "hub"} for i in range(6)])
    with pytest.raises(RecipeErrors) as info:
        trainer_extras(plan, None, {"train": prompts, "eval": None})
    text = str(info.value)
    assert (
        "rewards[0].function: reward 'align_recipes.tiny.toytask:toy_reward' cannot run on data.train" in text
    )
    assert (
        "toy_reward got 4 completions but 0 answers" in text and "data.train passes the column source" in text
    )
    right = datasets.Dataset.from_list([{"prompt": "1+1=", "answer": "2"}])
    assert len(trainer_extras(plan, None, {"train": right})["reward_funcs"]) == 1


def test_reward_model_path_joins_the_reward_functions(tmp_path):
    """`train.reward_model_path` reaches every trainer as one more reward function, weight 1: TRL 1.16's
    OnlineDPOConfig declares the field but its trainer never reads it."""
    from align_recipes.errors import RecipeError, RecipeErrors
    from align_recipes.plan import load_plan
    from align_recipes.run.load import build_config, trainer_extras

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text("{}")
    out = f"train.output_dir={tmp_path / 'out'}"
    plan = load_plan(
        "recipes/tiny/online_dpo.yaml", ["rewards=[]", f"train.reward_model_path={rm}", out], "cpu"
    )
    funcs = trainer_extras(plan, build_config(plan))["reward_funcs"]
    assert len(funcs) == 1 and isinstance(funcs[0], RewardModelFunc) and funcs[0].path == str(rm)

    plan = load_plan("recipes/tiny/ppo.yaml", [f"train.reward_model_path={rm}", out], "cpu")
    config = build_config(plan)
    funcs = trainer_extras(plan, config)["reward_funcs"]
    assert [f.__name__ for f in funcs] == ["toy_reward", "reward_model_rm"]
    assert config.reward_weights == [1.0, 1.0]  # one weight per function, so the trainer accepts both

    with pytest.raises(RecipeErrors) as caught:  # a folder that is not there: refused while validating
        load_plan(
            "recipes/tiny/online_dpo.yaml", [f"train.reward_model_path={tmp_path / 'gone'}", out], "cpu"
        )
    assert "train.reward_model_path: model folder" in str(caught.value) and "not found" in str(caught.value)
    (tmp_path / "empty").mkdir()  # there, but no saved model in it: refused before the policy loads
    plan = load_plan(
        "recipes/tiny/online_dpo.yaml", [f"train.reward_model_path={tmp_path / 'empty'}", out], "cpu"
    )
    with pytest.raises(RecipeError) as caught:
        trainer_extras(plan, build_config(plan))
    assert caught.value.key == "train.reward_model_path"
