"""Model cards in every run folder, the hub push (upload mocked, nothing leaves the machine), and the
checks `validate` makes before a run that reports to a tracker or pushes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from align_recipes.cli import main
from align_recipes.run.card import model_card

REPO = Path(__file__).resolve().parents[2]
SFT = "recipes/tiny/sft.yaml"


def test_a_card_names_the_base_the_data_the_metrics_the_command_and_versions(tmp_path):
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "algorithm": "dpo",
                "recipe": "/x/recipes/qwen05b/dpo.yaml",
                "steps": 60,
                "profile": "t4",
                "seed": 3,
                "task_metric": {"name": "preference_accuracy", "before": 0.48, "after": 0.91, "n": 100},
                "metrics_first": {"loss": 0.69},
                "metrics_last": {"loss": 0.31},
            }
        )
    )
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "command": ["align-recipes", "train", "recipes/qwen05b/dpo.yaml"],
                "versions": {"trl": "1.16.0"},
                "git_commit": "abc123",
            }
        )
    )
    (tmp_path / "recipe.resolved.yaml").write_text(
        yaml.safe_dump(
            {
                "algorithm": "dpo",
                "model": {"name_or_path": "Qwen/Qwen2-0.5B-Instruct", "adapter": "lora"},
                "data": {"train": {"path": "HuggingFaceH4/ultrafeedback_binarized", "split": "train_prefs"}},
            }
        )
    )
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"r": 16, "lora_alpha": 32, "task_type": "CAUSAL_LM"})
    )
    card = model_card(tmp_path)
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "Qwen/Qwen2-0.5B-Instruct" and front["library_name"] == "transformers"
    assert front["datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"] and "align-recipes" in front["tags"]
    assert "| preference_accuracy | 0.48 | 0.91 | 100 |" in card
    assert (
        "align-recipes train recipes/qwen05b/dpo.yaml" in card and "trl 1.16.0" in card and "abc123" in card
    )
    # /x/recipes is no folder on this machine: the recipe is named by its file name
    assert "`dpo.yaml`" in card and "/x/" not in card and "[report.md](report.md)" in card
    assert "AutoPeftModelForCausalLM" in card and "r=16, alpha=32" in card


def test_push_needs_a_repository_and_a_token_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    out = f"train.output_dir={tmp_path / 'out'}"
    assert main(["validate", SFT, "--profile", "cpu", out, "train.push_to_hub=true"]) == 2
    err = capsys.readouterr().err
    assert "train.hub_model_id" in err and "train.push_to_hub" in err and "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_tests")
    assert (
        main(
            ["validate", SFT, "--profile", "cpu", out, "train.push_to_hub=true", "train.hub_model_id=me/tiny"]
        )
        == 0
    )


def test_a_tracker_that_is_not_installed_is_named_with_its_pip_install(capsys):
    assert main(["validate", SFT, "--profile", "cpu", "train.report_to=[swanlab]"]) == 2
    err = capsys.readouterr().err
    assert "train.report_to" in err and "pip install swanlab" in err


@pytest.fixture
def uploads(monkeypatch):
    """The hub client with its network calls replaced: what would have been uploaded, and where."""
    import huggingface_hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_tests")
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/{repo_id}",
    )

    def upload_folder(self, folder_path, repo_id, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls.append(("upload", repo_id, {"files": files, **kw}))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


@pytest.mark.slow
def test_a_run_writes_its_card_and_pushes_it_with_the_model(tmp_path, uploads, repo_cwd):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                SFT,
                "--profile",
                "cpu",
                f"train.output_dir={out}",
                "train.max_steps=3",
                "evaluate.limit=5",
                "train.push_to_hub=true",
                "train.hub_model_id=me/tiny-sft",
            ]
        )
        == 0
    )
    card = (out / "README.md").read_text()
    # the recipe by its path in the project, never the machine's folder
    assert (
        "align-recipes" in card and f"`{SFT}`" in card and str(REPO) not in card and "| exact_match |" in card
    )
    (kind, repo, create), (_, _, upload) = uploads
    assert (kind, repo, create["exist_ok"]) == ("create", "me/tiny-sft", True)
    assert {"README.md", "report.md", "model.safetensors", "summary.json"} <= set(upload["files"])
    assert "checkpoint-*" in upload["ignore_patterns"]


@pytest.mark.slow
def test_merge_push_uploads_the_merged_model_and_its_card(tmp_path, uploads, repo_cwd):
    run = tmp_path / "lora"
    assert (
        main(
            [
                "train",
                SFT,
                "--profile",
                "cpu",
                f"train.output_dir={run}",
                "train.max_steps=2",
                "evaluate=null",
                "model.adapter=lora",
                "--no-report",
            ]
        )
        == 0
    )
    merged = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(merged), "--push", "me/tiny-merged", "--private"]) == 0
    (_, repo, create), (_, _, upload) = uploads
    assert repo == "me/tiny-merged" and create["private"] is True
    assert {"README.md", "model.safetensors", "tokenizer.json"} <= set(upload["files"])
    assert "adapter merged" in (merged / "README.md").read_text()
