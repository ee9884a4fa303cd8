"""The validation path: peek reads local files with the stdlib/pyarrow only (no torch, no datasets) and
reports broken files by line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes.data import DataError, DataSpec, peek

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def test_validation_path_imports_neither_torch_nor_datasets():
    code = f"""
import sys
from pathlib import Path
from align_recipes.data import DataSpec, peek, detect_format, check_serves, preview
base = Path({str(FIXTURES)!r})
for name, kind in [("minimind_dpo.jsonl", "preference"), ("ultrafeedback_binarized.parquet", "preference"),
                   ("gsm8k_qa.csv", "prompt_only"), ("sharegpt.json", "language_modeling")]:
    spec = DataSpec(path=name)
    rows = peek(spec, base)
    detect_format(rows, spec)
    check_serves(rows, spec, kind)
    preview(rows, spec, kind)
print("torch" in sys.modules, "datasets" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    torch_loaded, datasets_loaded = out.split()
    assert (torch_loaded, datasets_loaded) == ("False", "False")


def test_peek_malformed_line_names_file_and_line():
    with pytest.raises(DataError) as info:
        peek(DataSpec(path="bad_malformed.jsonl"), FIXTURES)
    error = info.value
    assert error.line is None or error.line == 3
    assert "bad_malformed.jsonl" in str(error) and "line 3" in str(error) and "fix:" in str(error)


def test_peek_honours_slices():
    rows = peek(DataSpec(path="sliceable.jsonl", split="train[3:5]"), FIXTURES)
    assert [r["prompt"] for r in rows] == ["question 3", "question 4"]
    assert len(peek(DataSpec(path="sliceable.jsonl", split="train[:50%]"), FIXTURES, n=3)) == 3
    assert len(peek(DataSpec(path="sliceable.jsonl"), FIXTURES, n=4)) == 4


def test_peek_blank_lines_skipped_and_empty_objects_kept():
    rows = peek(DataSpec(path="bad_empty_rows.jsonl"), FIXTURES)
    assert len(rows) == 7 and rows[2] == {}


def test_peek_formats():
    assert peek(DataSpec(path="sharegpt.json"), FIXTURES)[1]["conversations"][2]["value"] == "Paris."
    assert peek(DataSpec(path="gsm8k_qa.csv"), FIXTURES)[0]["answer"] == "5"
    assert (
        peek(DataSpec(path="ultrafeedback_binarized.parquet", split="train[1:]"), FIXTURES)[0]["prompt_id"]
        == "a2"
    )


def test_peek_folder_uses_the_split_file():
    rows = peek(DataSpec(path="splits_dir", split="test"), FIXTURES)
    assert len(rows) == 2 and rows[0]["messages"][0]["content"] == "test q0"


def test_json_array_errors_have_line_numbers(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"a": 1},\n {"a": 2,,}\n]\n')
    with pytest.raises(DataError, match="line 3"):
        peek(DataSpec(path=str(bad)), None)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"data": [{"a": 1}]}, indent=2))
    with pytest.raises(DataError, match="rows under 'data'"):
        peek(DataSpec(path=str(nested)), None)


def test_relative_paths_resolve_in_the_recipe_folder_first_then_cwd(tmp_path, monkeypatch):
    """A relative path means the file next to the recipe that names it; the current directory is the
    fallback (where other runs' outputs live)."""
    recipe_dir, cwd = tmp_path / "recipe", tmp_path / "cwd"
    (recipe_dir / "data").mkdir(parents=True)
    (cwd / "data").mkdir(parents=True)
    (cwd / "data" / "t.jsonl").write_text('{"text": "from cwd"}\n')
    monkeypatch.chdir(cwd)
    spec = DataSpec(path="data/t.jsonl")
    assert peek(spec, recipe_dir)[0]["text"] == "from cwd"
    (recipe_dir / "data" / "t.jsonl").write_text('{"text": "from recipe dir"}\n')
    assert peek(spec, recipe_dir)[0]["text"] == "from recipe dir"


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError) as info:
        peek(DataSpec(path="data/missing.jsonl"), tmp_path)
    assert "not found" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        peek(DataSpec(path="org/name", source="local"), tmp_path)
    assert peek(DataSpec(path="org/name"), tmp_path) == []  # auto: a hub id
