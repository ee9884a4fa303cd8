"""builtin:tiny-qwen2-sft: the tiny SFT policy every later tiny stage starts from, built on first use.

That it equals `align-recipes train recipes/tiny/sft.yaml` at seed 42, weight for weight, is checked in
tests/e2e/test_e2e_offline.py, where that run exists anyway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes import tiny
from align_recipes.plan.load import load_plan
from align_recipes.tiny import sft, toytask

REPO = Path(__file__).resolve().parents[2]


def test_the_builder_trains_what_the_sft_recipe_says():
    plan = load_plan(REPO / "recipes" / "tiny" / "sft.yaml", profile="cpu")
    assert {key: plan.train[key] for key in sft.TRAIN} == sft.TRAIN
    assert plan.model.name_or_path == tiny.TINY_MODEL_ID and plan.model.adapter == "full"
    [source] = plan.data.train
    assert source.path == str(REPO / "recipes" / "tiny" / "data" / "sft.jsonl")
    assert toytask.load_rows(source.path) == toytask.generate_rows("sft")  # the builder's rows
    for key, value in sft.RUNTIME.items():  # what the profile and _base.yaml set, where the recipe sets it
        if key in plan.train:
            assert plan.train[key] == value, key
    assert sft._steps() == 336


def test_every_later_tiny_stage_starts_from_it_and_validate_knows_it():
    for name in ("dpo", "kto", "reward", "grpo", "ppo", "spo"):
        assert (
            load_plan(REPO / "recipes" / "tiny" / f"{name}.yaml", profile="cpu").model.name_or_path
            == sft.TINY_SFT_ID
        )
    assert tiny.TINY_SFT_ID == sft.TINY_SFT_ID and set(tiny.BUILTIN_MODELS) == {
        tiny.TINY_MODEL_ID,
        sft.TINY_SFT_ID,
    }
    assert tiny.is_tiny_model_id("builtin:tiny-qwen2-sft") and not tiny.is_tiny_model_id("builtin:tiny-qwen3")
    with pytest.raises(ValueError, match="builtin:tiny-qwen2-sft"):
        tiny.ensure_builtin("builtin:tiny-qwen3")


def test_cache_names_map_back_to_their_builtin(monkeypatch, tmp_path):
    monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path))
    assert sft.tiny_sft_dir().parent == tmp_path
    assert tiny.builtin_of_cache_dir(sft.tiny_sft_dir()) == sft.TINY_SFT_ID
    assert tiny.builtin_of_cache_dir(tiny.tiny_model_dir()) == tiny.TINY_MODEL_ID
    assert tiny.builtin_of_cache_dir("/models/qwen2-0.5b") is None


def test_the_cache_key_follows_settings_and_data(monkeypatch):
    before = sft.build_hash()
    monkeypatch.setitem(sft.TRAIN, "learning_rate", 1e-3)
    changed_settings = sft.build_hash()
    monkeypatch.undo()
    real = toytask.generate_rows
    monkeypatch.setattr(toytask, "generate_rows", lambda kind, **kw: real(kind, **kw)[:-1])
    assert len({before, changed_settings, sft.build_hash()}) == 3


def test_the_cache_key_follows_mkls_path(monkeypatch):
    """An Intel and an AMD CPU build different weights even in reproducible mode: a cache shared between
    them (a network home) must not hand one's build to the other."""
    from align_recipes import reproducible

    keys = set()
    for maker in ("GenuineIntel", "AuthenticAMD"):
        monkeypatch.setattr(reproducible, "cpu_maker", lambda cpuinfo=None, maker=maker: maker)
        keys.add(sft.build_hash())
    assert len(keys) == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_under_accelerate_one_child_builds_it_and_it_equals_the_in_process_build(
    tmp_path, monkeypatch, capfd
):
    """With WORLD_SIZE=2 (as `accelerate launch` sets it) the build runs in a child process without the
    distributed variables; the weights are the same as a build in this process."""
    from safetensors.torch import load_file

    shared = tiny.ensure_builtin(sft.TINY_SFT_ID)  # in-process (reused when another test built it)
    capfd.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "1")  # a child that joined a process group would fail on it
    built = sft.ensure_tiny_sft(tmp_path)
    printed = capfd.readouterr().out
    assert printed.count(f"building {sft.TINY_SFT_ID}") == 1 and str(built) in printed
    assert built.parent == tmp_path and built.name == shared.name
    marker = json.loads((built / tiny.MARKER_FILE).read_text())
    assert marker["steps"] == 336 and marker["held_out_exact_match"] >= 0.5, marker
    ours, theirs = load_file(str(built / "model.safetensors")), load_file(str(shared / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(bool((ours[k] == theirs[k]).all()) for k in ours)
    assert sorted(p.name for p in built.iterdir()) == sorted(p.name for p in shared.iterdir())
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert sft.ensure_tiny_sft(tmp_path) == built and capfd.readouterr().out == ""  # cached: nothing rebuilt
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_the_module_entry_point_prints_a_complete_build_without_training(tmp_path):
    """`python -m align_recipes.tiny.sft` is how the child builds; with a complete cache it only prints."""
    env = {**os.environ, tiny.CACHE_ENV: str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    target = tmp_path / sft.tiny_sft_dir(tmp_path).name
    target.mkdir()
    (target / tiny.MARKER_FILE).write_text("{}")  # stands for a complete build: nothing is trained
    proc = subprocess.run(
        [sys.executable, "-m", "align_recipes.tiny.sft"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
