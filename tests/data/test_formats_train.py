"""Data people actually have trains through the right algorithm, and model sources resolve offline.

Each fixture (a few rows in a real-world layout) is pointed at by `data.train.path=FILE` on the command
line, exactly as a user would, and trained for two steps on the tiny model.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from align_recipes.cli import main
from align_recipes.errors import RecipeError
from align_recipes.plan.sections import ModelSection
from align_recipes.run.models import resolve_model_path

FIXTURES = "tests/fixtures/data"


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm, fixture, detected",
    [
        ("sft", "sharegpt.json", "sharegpt"),
        ("sft", "belle_alpaca.jsonl", "alpaca"),
        ("reward", "argilla.jsonl", "preference"),
        ("dpo", "hh_rlhf.jsonl", "hh_rlhf"),
        ("dpo", "minimind_dpo.jsonl", "implicit_preference"),
        ("dpo", "ultrafeedback_binarized.parquet", "ultrafeedback_binarized"),
        ("kto", "better_worse.jsonl", "preference"),
        ("grpo", "rlaif_mini.jsonl", "roleless_conversations"),
        # TRL's implicit prompt in plain text, for every algorithm that takes pairs
        ("dpo", "implicit_prompt_text.jsonl", "implicit_preference_text"),
        ("orpo", "implicit_prompt_text.jsonl", "implicit_preference_text"),
        ("kto", "implicit_prompt_text.jsonl", "implicit_preference_text"),
        ("reward", "implicit_prompt_text.jsonl", "implicit_preference_text"),
    ],
)
def test_fixture_format_trains_through_its_algorithm(tmp_path, capsys, algorithm, fixture, detected):
    out = tmp_path / "run"
    extra = (
        [
            "rewards=[{name: regex, pattern: '^\\d+$'}]",
            "train.num_generations=2",
            "train.per_device_train_batch_size=2",
            "train.max_completion_length=4",
        ]
        if algorithm == "grpo"
        else ["train.max_length=512"]
    )
    rc = main(
        [
            "train",
            f"recipes/tiny/{algorithm}.yaml",
            f"data.train.path={FIXTURES}/{fixture}",
            "model.name_or_path=builtin:tiny-qwen2",
            f"train.output_dir={out}",
            "train.max_steps=2",
            "evaluate=null",
            "--profile",
            "cpu",
            *extra,
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed[-2000:]
    assert f"detected {detected}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["status"] == "complete"


def test_modelscope_ids_resolve_through_snapshot_download(monkeypatch, tmp_path):
    """model.source: modelscope hands the id to modelscope's snapshot_download and loads its local dir."""
    calls = []
    fake = types.ModuleType("modelscope")

    def snapshot_download(model_id, **kwargs):
        calls.append((model_id, kwargs))
        return str(tmp_path)

    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    spec = {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct", "source": "modelscope", "revision": "v1"}
    assert resolve_model_path(ModelSection.from_dict(spec)) == str(tmp_path)
    assert calls == [("Qwen/Qwen2.5-1.5B-Instruct", {"revision": "v1"})]


def test_local_hub_and_missing_model_sources(tmp_path):
    (tmp_path / "model").mkdir()
    assert resolve_model_path(ModelSection.from_dict({"name_or_path": str(tmp_path / "model")})) == str(
        tmp_path / "model"
    )
    assert resolve_model_path(ModelSection.from_dict({"name_or_path": "model"}), base_dir=tmp_path) == str(
        tmp_path / "model"
    )
    assert (
        resolve_model_path(ModelSection.from_dict({"name_or_path": "Qwen/Qwen2-0.5B-Instruct"}))
        == "Qwen/Qwen2-0.5B-Instruct"
    )
    with pytest.raises(RecipeError, match="not found"):
        resolve_model_path(
            ModelSection.from_dict({"name_or_path": "nowhere", "source": "local"}), base_dir=tmp_path
        )
    with pytest.raises(RecipeError, match="neither an existing directory nor a hub id"):
        resolve_model_path(ModelSection.from_dict({"name_or_path": "outputs/tiny/none"}), base_dir=tmp_path)
