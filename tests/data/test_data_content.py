"""Rows that are more than text: image, audio and video parts are refused by name (exit 2, the row and its
line) instead of being trained on as their text alone; tool calls reach SFT's chat template, and are
refused by name for the kinds whose trainers here take none."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import datasets
import pytest

from align_recipes.data import DataError, DataSpec, check_refused, load, peek, preview

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "data"
TOOLS_TEMPLATE = REPO / "tests" / "fixtures" / "templates" / "tools.jinja"
LM, PREF, UNP, PO = "language_modeling", "preference", "unpaired", "prompt_only"

datasets.disable_progress_bars()


def chat(user, reply="ok"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- image, audio, video -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "part, media",
    [
        ({"type": "image_url", "image_url": {"url": "cat.png"}}, "image"),
        ({"type": "image"}, "image"),
        ({"type": "input_audio", "input_audio": {"data": "UklGR…", "format": "wav"}}, "audio"),
        ({"type": "audio"}, "audio"),
        ({"type": "video"}, "video"),
    ],
)
def test_a_media_part_is_refused_naming_row_line_and_type(tmp_path, part, media):
    rows = [
        chat("one"),
        chat("two"),
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "what is it?"}, part]},
                {"role": "assistant", "content": "a thing"},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "mm.jsonl", rows)
    spec = DataSpec(path=str(path))
    with pytest.raises(DataError) as caught:
        check_refused(peek(spec, None), spec, LM, None)
    error = caught.value
    assert (error.line, error.key) == (3, "data.train")
    assert f"row 3 (line 3) holds a{'n' if media != 'video' else ''} {media} content part" in error.message
    assert f'{{"type": "{part["type"]}"}}' in error.message and "remove the" in error.fix


def test_a_media_column_is_refused(tmp_path):
    spec = DataSpec(path="images_column.jsonl")
    with pytest.raises(DataError, match=r"row 1 \(line 1\) holds an image reference \(column 'images'\)"):
        check_refused(peek(spec, FIXTURES), spec, LM, FIXTURES)


def test_every_row_is_checked_at_load_whatever_max_drop_fraction_allows(tmp_path):
    """Row 26 is past what validate peeks, and 1 row of 30 is well under the drop limit: still refused."""
    rows = [chat(f"q{i}") for i in range(25)]
    rows.append(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "x.png"}},
                        {"type": "text", "text": "and this?"},
                    ],
                },
                {"role": "assistant", "content": "a dog"},
            ]
        }
    )
    rows += [chat(f"r{i}") for i in range(4)]
    path = write_jsonl(tmp_path / "late.jsonl", rows)
    spec = DataSpec(path=str(path), max_drop_fraction=0.9)
    check_refused(peek(spec, None), spec, LM, None)  # the first 20 rows are text only
    with pytest.raises(DataError) as caught:
        load(spec, None, LM, cache_dir=tmp_path / "cache")
    assert (caught.value.file, caught.value.line) == (str(path), 26)
    assert "row 26 (line 26) holds an image content part" in caught.value.message


def test_text_parts_still_read_as_text_and_other_parts_drop_the_row():
    spec = DataSpec(path="x.jsonl")
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Name a "},
                        {"type": "input_text", "text": "colour."},
                    ],
                },
                {"role": "assistant", "content": "Blue."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]},
                {"role": "assistant", "content": "?"},
            ]
        },
    ]
    converted, report = preview(rows, spec, LM)
    assert converted == [
        {
            "messages": [
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
            ]
        }
    ]
    assert report.dropped == {"content part of type 'file'": [2]}


def image_recipe_args(tmp_path, data):
    return [
        "train",
        "recipes/tiny/sft.yaml",
        f"data.train.path={data}",
        "model.name_or_path=builtin:tiny-qwen2",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=1",
        "evaluate=null",
        "--profile",
        "cpu",
    ]


@pytest.mark.slow
def test_training_on_image_rows_exits_2_naming_image(tmp_path):
    """Done when: training the tiny SFT on rows containing an image part exits 2 and names "image"; caught by
    validate for the fixture's third row, and at load for a row validate did not peek, before the model loads."""
    late = [chat(f"q{i}") for i in range(24)] + [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": "cat.png"}]},
                {"role": "assistant", "content": "a cat"},
            ]
        }
    ]
    late_file = write_jsonl(tmp_path / "late.jsonl", late)
    for data, line in ((FIXTURES / "image_parts.jsonl", 3), (late_file, 25)):
        result = subprocess.run(
            [sys.executable, "-m", "align_recipes", *image_recipe_args(tmp_path, data)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-2000:]
        assert "Traceback" not in output
        assert f"{data}:{line}:" in output and f"(line {line}) holds an image content part" in output
        assert "align-recipes · sft" not in output  # the start screen: the model was never loaded
        assert not (tmp_path / "run").exists()


# --- tool calls ----------------------------------------------------------------------------------------


def test_tool_calls_and_tools_survive_conversion_for_sft(tmp_path):
    spec = DataSpec(path="tool_calls.jsonl")
    dataset, report = load(spec, FIXTURES, LM, cache_dir=tmp_path / "cache")
    assert (report.format, report.rows_kept) == ("messages", 3)
    rows = dataset.to_list()
    assert rows == preview(peek(spec, FIXTURES), spec, LM)[0]
    first = rows[0]["messages"]
    assert first[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}},
                "id": "call_1",
            }
        ],
    }
    assert first[2] == {"role": "tool", "content": "12", "name": "multiply", "tool_call_id": "call_1"}
    assert rows[0]["tools"][0]["function"]["name"] == "multiply"
    # arguments written as a JSON string become a mapping, as chat templates expect
    assert rows[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert rows[2] == {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "tools": None,
    }


def test_llamafactory_function_call_turns_become_tool_calls(tmp_path):
    dataset, report = load(
        DataSpec(path="llamafactory_tools.jsonl"), FIXTURES, LM, cache_dir=tmp_path / "cache"
    )
    row = dataset[0]
    assert report.format == "sharegpt"
    assert row["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 6, "b": 7}}}],
    }
    assert row["messages"][2] == {"role": "tool", "content": "42"}
    written = json.loads(
        json.loads((FIXTURES / "llamafactory_tools.jsonl").read_text())["tools"]
    )  # a JSON string
    assert row["tools"] == [{"type": "function", "function": written[0]}]


@pytest.mark.parametrize(
    "kind, row, found",
    [
        (
            PREF,
            {
                "prompt": "3*4?",
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}},
                            }
                        ],
                    }
                ],
                "rejected": "13",
            },
            "tool calls or tool turns in 'chosen'",
        ),
        (
            UNP,
            {"prompt": "3*4?", "completion": [{"role": "tool", "content": "12"}], "label": True},
            "tool calls or tool turns in 'completion'",
        ),
        (PO, {"prompt": "3*4?", "tools": '[{"name": "multiply"}]'}, "a 'tools' column"),
    ],
)
def test_tool_use_is_refused_by_name_where_the_trainer_takes_none(kind, row, found):
    spec = DataSpec(path="x.jsonl")
    with pytest.raises(DataError) as caught:
        check_refused([row], spec, kind, None)
    assert f"row 1 holds {found}, which {kind} data does not take here" in caught.value.message
    assert "train the tool use with sft" in caught.value.fix


def test_the_sft_trainer_renders_the_tool_calls(tmp_path):
    """The rows reach TRL's SFTTrainer with their tools and tool calls; a template that renders them (a test
    template: the tiny model's ignores tools, as many do) puts them in the tokens, and trains the call."""
    from align_recipes.plan import load_plan
    from align_recipes.run import guards, training
    from align_recipes.run.load import load
    from align_recipes.run.rundir import RunDir

    plan = load_plan(
        "recipes/tiny/sft.yaml",
        [
            f"data.train.path={FIXTURES / 'tool_calls.jsonl'}",
            "model.name_or_path=builtin:tiny-qwen2",
            f"model.chat_template={TOOLS_TEMPLATE}",
            "evaluate=null",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_length=512",
        ],
        profile="cpu",
    )
    parts = load(plan)
    with guards.RunGuard(plan.output_dir) as guard:
        trainer = training.build(plan, parts, RunDir(plan.output_dir), guard)
    prepared = trainer.train_dataset
    decode = parts.tokenizer.decode
    first = prepared[0]
    text = decode(first["input_ids"])
    trained = decode([t for t, label in zip(first["input_ids"], first["labels"]) if label != -100])
    assert "Tools: multiply" in text
    assert '<tool_call>multiply {"a": 3, "b": 4}</tool_call>' in text and "<|im_start|>tool\n12" in text
    assert trained.startswith('<tool_call>multiply {"a": 3, "b": 4}</tool_call>')  # the call is trained
    assert "Tools:" not in decode(prepared[2]["input_ids"])  # the row without tools renders none


@pytest.mark.parametrize(
    "rows, tokenizer",
    [
        # single-turn tool rows with a tokenizer that has no chat template would become plain strings
        (
            [
                {
                    "prompt": [{"role": "user", "content": "3*4?"}],
                    "completion": [
                        {
                            "role": "assistant",
                            "tool_calls": [{"name": "multiply", "arguments": {"a": 3, "b": 4}}],
                        }
                    ],
                }
            ],
            types.SimpleNamespace(chat_template=None),
        ),
        # plain text never goes through a chat template
        ([{"text": "3*4=12", "tools": [{"name": "multiply"}]}], None),
    ],
)
def test_tool_rows_that_would_become_plain_text_are_refused(tmp_path, rows, tokenizer):
    path = write_jsonl(tmp_path / "plain_tools.jsonl", rows)
    with pytest.raises(DataError) as caught:
        load(DataSpec(path=str(path)), None, LM, tokenizer, cache_dir=tmp_path / "cache")
    assert "row 1 (line 1) holds" in caught.value.message
    assert "which only a chat template renders" in caught.value.message
    assert "model.chat_template" in caught.value.fix


def test_a_mixed_type_prompt_column_is_not_mistaken_for_tool_use(tmp_path):
    """prompt_completion.jsonl mixes text and message-list prompts (datasets stores those as JSON): without a
    chat template its single-turn rows still become plain strings, as before."""
    dataset, report = load(
        DataSpec(path="prompt_completion.jsonl"),
        FIXTURES,
        LM,
        types.SimpleNamespace(chat_template=None),
        cache_dir=tmp_path / "cache",
    )
    assert report.rows_kept == 2 and dataset[1] == {
        "prompt": "What is the boiling point of water?",
        "completion": "100 °C at sea level.",
    }
