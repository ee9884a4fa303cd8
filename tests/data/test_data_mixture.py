"""Weighted dataset mixtures: `data.train` as a list of sources, each converted on its own, sampled by its
weight (a share of its converted rows, or a row count), concatenated and shuffled with the recipe's seed.
Counts below are worked out by hand from the weights and the files' row counts."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from align_recipes.cli import main
from align_recipes.data import DataError, DataSpec, load, load_mixture
from align_recipes.data.mixture import take_count
from align_recipes.plan import load_plan
from align_recipes.plan.show import print_plan

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "data"
TINY_SFT = REPO / "recipes" / "tiny" / "data" / "sft.jsonl"  # 200 chats
LM = "language_modeling"

datasets.disable_progress_bars()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def two_layouts(tmp_path):
    """10 chats in `messages` (a0…a9) and 6 in ShareGPT `conversations` (b0…b5)."""
    chats = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"a{i}"},
                    {"role": "assistant", "content": f"reply a{i}"},
                ]
            }
            for i in range(10)
        ],
    )
    sharegpt = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [
            {"conversations": [{"from": "human", "value": f"b{i}"}, {"from": "gpt", "value": f"reply b{i}"}]}
            for i in range(6)
        ],
    )
    return chats, sharegpt


def spec(path, weight=1.0, section="data.train[0]", **more) -> DataSpec:
    return DataSpec.from_dict({"path": str(path), "weight": weight, **more}, section=section)


def firsts(dataset) -> list[str]:
    return [row["messages"][0]["content"] for row in dataset]


@pytest.mark.parametrize(
    "weight, available, expected",
    [
        (0.5, 10, 5),
        (0.25, 10, 2),
        (0.29, 100, 29),
        (1.0, 7, 7),
        (1, 7, 7),
        (3, 10, 3),
        (10, 10, 10),
        (0.999, 3, 2),
    ],
)
def test_take_count_by_hand(weight, available, expected):
    assert take_count(spec("x.jsonl", weight), available) == expected


@pytest.mark.parametrize(
    "weight, available, message",
    [
        (11, 10, "asks for 11 rows but x.jsonl gives 10"),
        (0.05, 10, "takes no row"),
    ],
)
def test_take_count_refuses_what_the_rows_cannot_give(weight, available, message):
    with pytest.raises(DataError, match=message) as caught:
        take_count(spec("x.jsonl", weight, section="data.train[1]"), available)
    assert caught.value.key == "data.train[1].weight"


@pytest.mark.parametrize(
    "weight, message",
    [(0, "takes no row"), (-0.5, "takes no row"), (1.5, "more than 1"), ("half", "must be a number")],
)
def test_weight_out_of_range_is_refused_by_the_spec(weight, message):
    with pytest.raises(DataError, match=message) as caught:
        spec("x.jsonl", weight, section="data.train[1]")
    assert caught.value.key == "data.train[1].weight"


def test_two_layouts_mix_with_their_weights(two_layouts, tmp_path):
    chats, sharegpt = two_layouts
    specs = [spec(chats, 0.5, "data.train[0]"), spec(sharegpt, 1.0, "data.train[1]")]
    mixed, report = load_mixture(specs, None, LM, seed=42, cache_dir=tmp_path / "cache")
    names = firsts(mixed)
    from_a = [n for n in names if n.startswith("a")]
    from_b = [n for n in names if n.startswith("b")]
    assert len(mixed) == 5 + 6  # half of 10, all of 6
    assert len(set(from_a)) == 5 and set(from_a) <= {f"a{i}" for i in range(10)}
    assert sorted(from_b) == [f"b{i}" for i in range(6)]
    assert names != sorted(names, key=lambda n: (n[0], int(n[1:])))  # shuffled, not a then b in file order
    assert [(r["section"], r["format"], r["rows_read"], r["rows_kept"]) for r in report.records()] == [
        ("data.train[0]", "messages", 10, 5),
        ("data.train[1]", "sharegpt", 6, 6),
    ]
    lines = report.lines()
    assert lines[0].endswith("weight 0.5: 5 of 10 rows taken")
    assert lines[-1] == "data.train: 2 sources mixed, 11 rows, shuffled with seed 42"


def test_same_seed_same_rows_other_seed_other_rows(two_layouts, tmp_path):
    chats, sharegpt = two_layouts
    specs = [spec(chats, 0.5, "data.train[0]"), spec(sharegpt, 1.0, "data.train[1]")]
    run = lambda seed: firsts(load_mixture(specs, None, LM, seed=seed, cache_dir=tmp_path / "cache")[0])  # noqa: E731
    assert run(42) == run(42)
    assert run(42) != run(7)


def test_a_row_count_weight(two_layouts, tmp_path):
    chats, sharegpt = two_layouts
    mixed, report = load_mixture(
        [spec(chats, 3, "data.train[0]"), spec(sharegpt, 0.5, "data.train[1]")],
        None,
        LM,
        seed=1,
        cache_dir=tmp_path / "cache",
    )
    names = firsts(mixed)
    assert sum(n.startswith("a") for n in names) == 3 and sum(n.startswith("b") for n in names) == 3
    assert report.rows == 6 and report.rows_left_out == 7 + 3


def test_one_source_without_weight_is_loaded_as_before(two_layouts, tmp_path):
    chats, _ = two_layouts
    alone, _ = load(spec(chats, section="data.train"), None, LM, cache_dir=tmp_path / "cache")
    mixed, report = load_mixture(
        [spec(chats, section="data.train")], None, LM, seed=42, cache_dir=tmp_path / "cache"
    )
    assert firsts(mixed) == firsts(alone) == [f"a{i}" for i in range(10)]  # file order: nothing sampled
    assert report.lines() == ["data.train: detected messages, kept 10/10 rows"]


def test_chats_and_conversational_prompt_completion_mix_as_chats(two_layouts, tmp_path):
    chats, _ = two_layouts
    alpaca = write_jsonl(
        tmp_path / "alpaca.jsonl", [{"instruction": "c0", "input": "", "output": "reply c0"}]
    )
    mixed, report = load_mixture(
        [spec(chats, 2, "data.train[0]"), spec(alpaca, 1.0, "data.train[1]")],
        None,
        LM,
        seed=3,
        cache_dir=tmp_path / "cache",
    )
    assert mixed.column_names == ["messages"]
    joined = [row["messages"] for row in mixed if row["messages"][0]["content"] == "c0"]
    assert joined == [[{"role": "user", "content": "c0"}, {"role": "assistant", "content": "reply c0"}]]
    assert any("joined into chats" in line for line in report.lines())


def test_chats_and_plain_text_do_not_mix(two_layouts, tmp_path):
    chats, _ = two_layouts
    with pytest.raises(
        DataError,
        match=r"data.train\[0\] converts to messages \(chat\) but data.train\[1\] "
        r"to text \(text\)",
    ):
        load_mixture(
            [spec(chats, 1.0, "data.train[0]"), spec(FIXTURES / "text.jsonl", 1.0, "data.train[1]")],
            None,
            LM,
            seed=3,
            cache_dir=tmp_path / "cache",
        )


# --- recipes: validate, show, train ------------------------------------------------------------------


def mixture_recipe(tmp_path: Path, second: str, weight: str = "1.0", extra: str = "") -> Path:
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(f"""algorithm: sft
extends: {REPO / "recipes" / "tiny" / "sft.yaml"}
model:
  name_or_path: builtin:tiny-qwen2
data:
  train:
    - path: {TINY_SFT}
      weight: 0.5
    - path: {second}
      weight: {weight}
{extra}""")
    return recipe


@pytest.mark.parametrize(
    "weight, message",
    [("1.5", "more than 1"), ("0", "takes no row"), ("500", "asks for 500 rows but sharegpt.json holds 2")],
)
def test_validate_refuses_an_impossible_weight_naming_the_key_and_line(tmp_path, capsys, weight, message):
    recipe = mixture_recipe(tmp_path, FIXTURES / "sharegpt.json", weight)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:10: data.train[1].weight" in err and message in err


def test_validate_checks_every_source(tmp_path, capsys):
    recipe = mixture_recipe(tmp_path, "missing.jsonl", extra="    - {path: data.jsonl, wieght: 0.5}\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:9: data.train[1].path: dataset file not found: missing.jsonl" in err
    assert f"{recipe}:11: data.train[2].wieght: unknown key" in err and "did you mean 'weight'" in err


def test_validate_refuses_sources_that_cannot_mix(tmp_path, capsys):
    recipe = mixture_recipe(tmp_path, FIXTURES / "text.jsonl")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "data.train[1]: converts to text (text), but data.train[0] to messages (chat)" in err


def test_show_explains_the_mix(tmp_path, capsys):
    plan = load_plan(mixture_recipe(tmp_path, FIXTURES / "sharegpt.json"), profile="cpu")
    print_plan(plan)
    out = capsys.readouterr().out
    assert "data.train[0]  sft.jsonl      weight 0.5  -> 100 of the 200 rows in the file" in out
    assert "data.train[1]  sharegpt.json  weight 1    -> all 2 rows in the file" in out
    assert "shuffled with train.seed (42)" in out
    assert f"data.train[1].path         '{FIXTURES / 'sharegpt.json'}'" in out


def test_a_mapping_is_a_list_of_one_and_relative_paths_resolve_per_source(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(
        tmp_path / "sub" / "a.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}],
    )
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.write_text(
        f"algorithm: sft\nextends: {REPO / 'recipes' / 'tiny' / 'sft.yaml'}\n"
        "model: {name_or_path: builtin:tiny-qwen2}\n"
        "data:\n  train: [{path: a.jsonl}, {path: a.jsonl, weight: 1}]\n  eval: {path: a.jsonl}\n"
    )
    plan = load_plan(recipe, profile="cpu")
    assert [s.path for s in plan.data.train] == [str(tmp_path / "sub" / "a.jsonl")] * 2
    assert [s.section for s in plan.data.train] == ["data.train[0]", "data.train[1]"]
    assert [s.section for s in plan.data.eval] == ["data.eval"]


@pytest.mark.slow
def test_a_two_layout_mixture_trains_and_the_run_names_both_sources(tmp_path, capsys):
    """Done when: two local files in different layouts, weights 0.5 and 1.0, train; the output names both."""
    out = tmp_path / "run"
    recipe = mixture_recipe(tmp_path, FIXTURES / "sharegpt.json")
    rc = main(
        [
            "train",
            str(recipe),
            f"train.output_dir={out}",
            "train.max_steps=2",
            "train.max_length=256",
            "evaluate=null",
            "--profile",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed[-2000:]
    assert "data.train[0]: detected messages, kept 200/200 rows; weight 0.5: 100 of 200 rows taken" in printed
    assert "data.train[1]: detected sharegpt, kept 2/2 rows" in printed
    assert "102 training rows" in printed
    assert "data.train[0]: 100 rows of sft.jsonl (weight 0.5, 200 converted)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2
    assert [
        (r["section"], Path(r["path"]).name, r["format"], r["rows_kept"]) for r in summary["data"]["train"]
    ] == [("data.train[0]", "sft.jsonl", "messages", 100), ("data.train[1]", "sharegpt.json", "sharegpt", 2)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["data.train[0]"]["weight"] == 0.5 and manifest["data"]["data.train[0]"]["sha256"]
    # the recipe sits in tmp_path (no git repository): a file outside its folder is named by its file name
    assert manifest["data"]["data.train[1]"]["resolved"] == "sharegpt.json"
    card = (out / "README.md").read_text()
    assert "| data (train[0]) |" in card and "weight 0.5: 100 of 200 converted rows" in card
    assert "| data (train[1]) |" in card and "weight 1: 2 of 2 converted rows" in card


def test_eval_verb_reads_a_mixed_data_eval(two_layouts, tmp_path):
    from align_recipes.results.evaluate import load_rows

    chats, sharegpt = two_layouts
    entry = [{"path": chats.name, "weight": 4}, {"path": sharegpt.name, "weight": 0.5}]
    rows = load_rows(entry, [tmp_path], "prompt_only", None, "exact_match", seed=42)
    prompts = [row["prompt"][0]["content"] for row in rows]
    assert sum(p.startswith("a") for p in prompts) == 4 and sum(p.startswith("b") for p in prompts) == 3
