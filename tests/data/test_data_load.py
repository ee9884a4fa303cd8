"""The full load through `datasets`: same rows as the stdlib preview, slicing, errors with line
numbers, the drop limit, the datasets cache, and the hub/ModelScope dispatch (mocked, no network)."""

import sys
import types
from pathlib import Path

import datasets
import pytest

from align_recipes.data import DataError, DataSpec, load, peek, preview
from align_recipes.data import loader as data_load

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
LM, PREF, UNP, PO = "language_modeling", "preference", "unpaired", "prompt_only"

datasets.disable_progress_bars()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf-cache"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    "name,kinds",
    [
        ("messages.jsonl", [LM, PO]),
        ("sharegpt.json", [LM]),
        ("rlaif_mini.jsonl", [PO]),
        ("belle_alpaca.jsonl", [LM]),
        ("prompt_completion.jsonl", [LM]),
        ("prompt_response_markers.jsonl", [LM]),
        ("prompt_only.jsonl", [PO]),
        ("text.jsonl", [LM]),
        ("preference_messages.jsonl", [PREF]),
        ("minimind_dpo.jsonl", [PREF, UNP]),
        ("hh_rlhf.jsonl", [PREF]),
        ("implicit_prompt_text.jsonl", [PREF, UNP, PO]),
        ("ultrafeedback_binarized.parquet", [LM, PREF, UNP, PO]),
        ("argilla.jsonl", [PREF]),
        ("llamafactory_pref.jsonl", [PREF]),
        ("unpaired.jsonl", [UNP, PO]),
    ],
)
def test_load_matches_preview(name, kinds, cache):
    spec = DataSpec(path=name)
    rows = peek(spec, FIXTURES)
    for kind in kinds:
        dataset, report = load(spec, FIXTURES, kind, cache_dir=cache)
        expected, expected_report = preview(rows, spec, kind)
        assert dataset.to_list() == expected, (name, kind)
        assert (report.format, report.rows_in, report.rows_kept, report.dropped) == (
            expected_report.format,
            expected_report.rows_in,
            expected_report.rows_kept,
            expected_report.dropped,
        )


def test_output_types_are_trl_conversational(cache):
    dataset, _ = load(DataSpec(path="unpaired.jsonl"), FIXTURES, UNP, cache_dir=cache)
    assert dataset.features["label"] == datasets.Value("bool")
    assert dataset.features["prompt"] == datasets.List(
        {"role": datasets.Value("string"), "content": datasets.Value("string")}
    )
    assert set(dataset[0]["prompt"][0]) == {"role", "content"}  # what trl.is_conversational checks


def test_prompt_only_keeps_answer_column(cache):
    dataset, report = load(DataSpec(path="gsm8k_qa.csv"), FIXTURES, PO, cache_dir=cache)
    assert dataset.column_names == ["prompt", "answer"]
    assert dataset[1]["prompt"] == [u("What is 6 times 7?")] and str(dataset[1]["answer"]) == "42"
    assert report.summary_line() == "data.train: detected prompt_response, kept 3/3 rows"


def test_slicing_local_files(cache):
    dataset, report = load(
        DataSpec(path="sliceable.jsonl", split="train[2:4]"), FIXTURES, LM, cache_dir=cache
    )
    assert [r["prompt"][0]["content"] for r in dataset] == ["question 2", "question 3"]
    assert report.rows_in == 2
    dataset, _ = load(DataSpec(path="sliceable.jsonl", split="train[:30%]"), FIXTURES, PO, cache_dir=cache)
    assert len(dataset) == 3
    # a single file is one split: only the slice of a hub-style split name is used
    dataset, _ = load(
        DataSpec(path="ultrafeedback_binarized.parquet", split="train_prefs[:2]"),
        FIXTURES,
        PREF,
        cache_dir=cache,
    )
    assert len(dataset) == 2


def test_folder_splits(cache):
    dataset, _ = load(DataSpec(path="splits_dir", split="test"), FIXTURES, LM, cache_dir=cache)
    assert dataset.to_list() == [
        {"messages": [u("test q0"), a("test a0")]},
        {"messages": [u("test q1"), a("test a1")]},
    ]
    with pytest.raises(DataError, match="split 'validation'.*'train', 'test'"):
        load(DataSpec(path="splits_dir", split="validation"), FIXTURES, LM, cache_dir=cache)


def test_malformed_line_reported_with_line_number(cache):
    with pytest.raises(DataError) as info:
        load(DataSpec(path="bad_malformed.jsonl"), FIXTURES, PREF, cache_dir=cache)
    text = str(info.value)
    assert "bad_malformed.jsonl:3:" in text and "line 3 is not valid JSON" in text


def test_drop_limit(cache):
    with pytest.raises(DataError) as info:
        load(DataSpec(path="bad_empty_rows.jsonl"), FIXTURES, PREF, cache_dir=cache)
    text = str(info.value)
    assert "4 of 7 rows could not be converted" in text and "empty 'chosen': rows 2, 6" in text
    assert "max_drop_fraction" in text
    dataset, report = load(
        DataSpec(path="bad_empty_rows.jsonl", max_drop_fraction=0.6), FIXTURES, PREF, cache_dir=cache
    )
    assert [r["prompt"][0]["content"] for r in dataset] == ["p1", "p4", "p7"]
    assert report.dropped == {
        "empty 'chosen'": [2, 6],
        "empty row": [3],
        "identical chosen and rejected": [5],
    }


def test_drop_row_numbers_follow_a_fixed_slice_start(cache):
    spec = DataSpec(path="bad_empty_rows.jsonl", split="train[1:]", max_drop_fraction=1)
    _, report = load(spec, FIXTURES, PREF, cache_dir=cache)
    assert report.dropped["empty row"] == [3]


def test_mismatched_kind(cache):
    with pytest.raises(DataError) as info:
        load(DataSpec(path="messages.jsonl"), FIXTURES, PREF, cache_dir=cache)
    text = str(info.value)
    assert "cannot serve an algorithm needing preference" in text and "columns found: messages, id" in text


def test_columns_mapping(cache):
    spec = DataSpec(path="custom_columns.jsonl", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    dataset, _ = load(spec, FIXTURES, UNP, cache_dir=cache)
    assert len(dataset) == 4 and dataset[1] == {
        "prompt": [u("Is water wet?")],
        "completion": [a("No idea.")],
        "label": False,
    }


def test_second_load_reuses_the_datasets_cache(cache, monkeypatch):
    calls = []
    original = data_load.convert_batch

    def counting(batch, **kwargs):
        calls.extend(batch["prompt"])
        return original(batch, **kwargs)

    monkeypatch.setattr(data_load, "convert_batch", counting)
    spec = DataSpec(path="bad_empty_rows.jsonl", max_drop_fraction=0.9)
    first, report1 = load(spec, FIXTURES, UNP, cache_dir=cache)
    assert len(calls) == 7
    second, report2 = load(spec, FIXTURES, UNP, cache_dir=cache)
    assert len(calls) == 7  # nothing recomputed
    assert first._fingerprint == second._fingerprint and first.cache_files == second.cache_files
    assert report1.dropped == report2.dropped and second.to_list() == first.to_list()
    load(DataSpec(path="bad_empty_rows.jsonl", max_drop_fraction=0.9), FIXTURES, PREF, cache_dir=cache)
    assert len(calls) == 14  # another kind is another conversion


class _NoTemplate:
    chat_template = None


def test_tokenizer_without_chat_template_gets_plain_strings(cache):
    dataset, _ = load(DataSpec(path="preference_text.jsonl"), FIXTURES, PREF, _NoTemplate(), cache_dir=cache)
    assert dataset[0] == {
        "prompt": "What is machine learning?",
        "chosen": "A field where computers learn from data.",
        "rejected": "It is programming.",
    }
    with pytest.raises(DataError, match="no chat template"):
        load(DataSpec(path="messages.jsonl"), FIXTURES, LM, _NoTemplate(), cache_dir=cache)


def test_hub_dispatch(monkeypatch, tmp_path):
    seen = {}

    def fake_load_dataset(path, name=None, split=None, cache_dir=None, **kwargs):
        seen.update(path=path, name=name, split=split)
        return datasets.Dataset.from_list(
            [
                {
                    "prompt": "p",
                    "chosen": [u("p"), a("good")],
                    "rejected": [u("p"), a("bad")],
                    "score_chosen": 9.0,
                    "score_rejected": 1.0,
                }
            ]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = DataSpec(path="HuggingFaceH4/ultrafeedback_binarized", split="train_prefs[:1]", name="default")
    dataset, report = load(spec, tmp_path, PREF)
    assert seen == {
        "path": "HuggingFaceH4/ultrafeedback_binarized",
        "name": "default",
        "split": "train_prefs[:1]",
    }
    assert report.format == "ultrafeedback_binarized" and dataset[0]["chosen"] == [a("good")]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataError, match="could not load 'org/name' from the Hugging Face hub: Couldn't reach"
    ):
        load(DataSpec(path="org/name"), tmp_path, PREF)


def test_modelscope_dispatch(monkeypatch, tmp_path):
    seen = {}

    class FakeMsDataset:
        @staticmethod
        def load(dataset_name, subset_name=None, split=None, **kwargs):
            seen.update(dataset_name=dataset_name, subset_name=subset_name, split=split)
            return FakeMsDataset()

        def to_hf_dataset(self):
            return datasets.Dataset.from_list(
                [{"conversations": [{"content": f"q{i}"}, {"content": f"a{i}"}]} for i in range(4)]
            )

    module = types.ModuleType("modelscope.msdatasets")
    module.MsDataset = FakeMsDataset
    monkeypatch.setitem(sys.modules, "modelscope", types.ModuleType("modelscope"))
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", module)
    spec = DataSpec(path="gongjy/minimind_dataset", source="modelscope", split="train[1:3]", name="rlaif")
    dataset, report = load(spec, tmp_path, PO)
    assert seen == {"dataset_name": "gongjy/minimind_dataset", "subset_name": "rlaif", "split": "train"}
    assert dataset.to_list() == [{"prompt": [u("q1")]}, {"prompt": [u("q2")]}]
    assert report.format == "roleless_conversations"
    assert report.source == "modelscope:gongjy/minimind_dataset"


def test_plain_full_text_pairs_split_as_trl_does_and_stay_text(cache):
    """The prompt of chosen/rejected plain texts is the one TRL's own extract_prompt finds, and the rows stay
    strings even for a tokenizer with a chat template (TRL would not template them either)."""
    from trl import extract_prompt

    spec = DataSpec(path="implicit_prompt_text.jsonl")
    with_template = types.SimpleNamespace(chat_template="{{ messages }}")
    dataset, report = load(spec, FIXTURES, PREF, with_template, cache_dir=cache)
    assert report.format == "implicit_preference_text" and report.rows_kept == 3
    source = [r for r in peek(spec, FIXTURES) if r["chosen"] != "Hi there"]
    assert dataset.to_list() == [extract_prompt(r) for r in source]
    assert dataset.features["prompt"] == datasets.Value("string")
