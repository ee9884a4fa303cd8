"""Pipelines: the file format, validation of every stage before training, placeholder wiring, the skip
logic (with a stand-in for training: fast) and one real tiny pipeline end to end (slow)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from align_recipes.cli import main
from align_recipes.results import pipeline as pl

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def two_stage(tmp_path) -> Path:
    """sft -> dpo using the tiny recipes (by absolute path), outputs under tmp_path/out."""
    return write(
        tmp_path / "pipe.yaml",
        f"""
output_dir: {tmp_path / "out"}
stages:
  - {{name: sft, recipe: {TINY / "sft.yaml"}}}
  - name: dpo
    recipe: {TINY / "dpo.yaml"}
    overrides: {{model.name_or_path: "{{sft}}", train.beta: 0.2}}
""",
    )


def test_placeholders_expand_to_earlier_stage_models(two_stage, tmp_path):
    p = pl.load_pipeline(two_stage, ["sft:train.max_steps=3", "evaluate.limit=4"])
    sft, dpo = p.stages
    assert sft.output_dir == tmp_path / "out" / "sft" and dpo.deps == ["sft"]
    assert dpo.plan.recipe["model"]["name_or_path"] == str((tmp_path / "out" / "sft").resolve())
    assert dpo.plan.train["beta"] == 0.2 and dpo.plan.train["output_dir"] == str(tmp_path / "out" / "dpo")
    assert sft.plan.train["max_steps"] == 3 and dpo.plan.train.get("max_steps") != 3  # STAGE: prefix
    assert (
        sft.plan.recipe["evaluate"]["limit"] == 4 and dpo.plan.recipe["evaluate"]["limit"] == 4
    )  # no prefix: all


def test_lora_stage_hands_on_its_merged_model(two_stage, tmp_path):
    p = pl.load_pipeline(two_stage, ["sft:model.adapter=lora"])
    assert p.stages[0].adapter and p.stages[0].model_dir == tmp_path / "out" / "sft" / "merged"
    assert p.stages[1].plan.recipe["model"]["name_or_path"].endswith("/out/sft/merged")
    text = two_stage.read_text().replace('"{sft}"', '"{sft.output_dir}"')
    p = pl.load_pipeline(write(two_stage, text), ["sft:model.adapter=lora"])
    assert p.stages[1].plan.recipe["model"]["name_or_path"].endswith("/out/sft")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "stages:\n  - {name: a, recipe: RECIPE, overrides: {model.name_or_path: '{b}'}}\n"
            "  - {name: b, recipe: RECIPE}\n",
            "'{b}' does not name an earlier stage",
        ),
        ("stages:\n  - {name: a, recipe: RECIPE}\n  - {name: a, recipe: RECIPE}\n", "used twice"),
        ("stages:\n  - {name: a, recipe: nowhere.yaml}\n", "recipe file 'nowhere.yaml' not found"),
        ("stages:\n  - {name: a, recipe: RECIPE, overides: {}}\n", "did you mean 'overrides'"),
        ("stage:\n  - {name: a, recipe: RECIPE}\n", "non-empty `stages:`"),
        ("stages:\n  - {name: a, recipe: RECIPE, overrides: {train.learnig_rate: 1}}\n", "learnig_rate"),
    ],
)
def test_bad_pipeline_files_are_user_errors(tmp_path, capsys, text, message):
    path = write(tmp_path / "p.yaml", text.replace("RECIPE", str(TINY / "sft.yaml")))
    assert main(["pipeline", str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    if text.startswith("stages:"):
        assert main(["validate", str(path)]) == 2  # `validate` recognises pipeline files too
        assert message in capsys.readouterr().err


def test_every_stage_is_validated_before_anything_trains(two_stage, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("align_recipes.run.train", lambda *a, **k: calls.append(a))
    assert main(["pipeline", str(two_stage), "dpo:train.learning_rate=fast"]) == 2
    assert "stage 'dpo'" in capsys.readouterr().err and calls == []
    assert main(["pipeline", str(two_stage), "nostage:train.seed=1"]) == 2
    assert "does not have" in capsys.readouterr().err


def test_shipped_pipelines_validate(capsys):
    assert main(["validate", "recipes/tiny/pipeline.yaml"]) == 0
    assert "sft -> reward -> ppo" in capsys.readouterr().out
    if not (REPO / "recipes" / "qwen05b" / "ppo.yaml").exists():
        pytest.skip("recipes/qwen05b/ppo.yaml is not written yet")
    assert main(["validate", "recipes/qwen05b/pipeline.yaml", "--profile", "t4"]) == 0


# ------------------------------------------------------------------------------------- skip logic


class FakeTrain:
    """Stands in for run.train: writes what a complete run leaves behind, records the calls."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, plan, overwrite=False, resume=False, command=None):
        from align_recipes.plan.load import resolved_yaml

        out = plan.output_dir
        assert overwrite or resume or not (out / "summary.json").exists()
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.resolved.yaml").write_text(resolved_yaml(plan))
        (out / "summary.json").write_text(
            json.dumps({"algorithm": plan.algorithm.name, "status": "complete"})
        )
        (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
        (out / "config.json").write_text("{}")
        self.calls.append(
            (plan.algorithm.name, {"overwrite": overwrite, "resume": resume, "command": command})
        )
        time.sleep(0.01)  # distinct summary.json modification times
        return {}


def test_rerun_skips_complete_unchanged_stages(two_stage, tmp_path, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr("align_recipes.run.train", fake)
    args = ["pipeline", str(two_stage)]
    assert main(args) == 0
    assert [c[0] for c in fake.calls] == ["sft", "dpo"]
    assert fake.calls[0][1]["command"][:3] == ["align-recipes", "train", str(TINY / "sft.yaml")]
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["ran", "ran"]
    assert (tmp_path / "out" / "sft" / "report.md").is_file()

    fake.calls.clear()
    assert main(args) == 0
    assert fake.calls == []
    assert capsys.readouterr().out.count("skipped, complete and unchanged") == 2

    assert main([*args, "dpo:train.beta=0.3"]) == 0  # only the changed stage runs again
    assert [c[0] for c in fake.calls] == ["dpo"] and fake.calls[0][1]["overwrite"] is True
    assert "changed: train.beta" in capsys.readouterr().out

    fake.calls.clear()
    assert main([*args, "dpo:train.beta=0.3", "sft:train.seed=7"]) == 0  # upstream changed: downstream stale
    assert [c[0] for c in fake.calls] == ["sft", "dpo"]
    assert "(stale)" in capsys.readouterr().out


def test_interrupted_stage_resumes_and_newer_upstream_makes_stale(two_stage, tmp_path, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr("align_recipes.run.train", fake)
    args = ["pipeline", str(two_stage)]
    assert main(args) == 0
    summary = tmp_path / "out" / "dpo" / "summary.json"
    summary.write_text(json.dumps({"status": "interrupted"}))
    fake.calls.clear()
    assert main(args) == 0
    assert fake.calls == [
        ("dpo", {"overwrite": False, "resume": True, "command": fake.calls[0][1]["command"]})
    ]

    fake.calls.clear()
    upstream = tmp_path / "out" / "sft" / "summary.json"
    later = summary.stat().st_mtime + 5
    os.utime(upstream, (later, later))  # sft was re-trained by hand after dpo
    assert main([*args, "--dry-run"]) == 0
    assert fake.calls == [] and "dpo (dpo.yaml): would run (stale)" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0 and [c[0] for c in fake.calls] == ["sft", "dpo"]


def test_checks_that_need_an_earlier_output_wait_for_it(tmp_path, monkeypatch, capsys):
    """A reward-model reference to an earlier stage cannot resolve before that stage has run."""
    write(
        tmp_path / "grpo.yaml",
        f"""
algorithm: grpo
extends: {TINY / "_base.yaml"}
data: {{train: {{path: {TINY / "data" / "prompts.jsonl"}}}}}
evaluate: null
train: {{num_generations: 2, per_device_train_batch_size: 2, max_completion_length: 4}}
""",
    )
    path = write(
        tmp_path / "pipe.yaml",
        f"""
output_dir: {tmp_path / "out"}
stages:
  - {{name: rm, recipe: {TINY / "reward.yaml"}}}
  - name: rl
    recipe: grpo.yaml
    overrides: {{rewards: [{{model: "{{rm}}"}}]}}
""",
    )
    assert main(["pipeline", str(path), "--dry-run"]) == 0
    assert "rl (grpo.yaml): would run (missing)" in capsys.readouterr().out
    fake = FakeTrain()
    monkeypatch.setattr("align_recipes.run.train", fake)
    assert main(["pipeline", str(path)]) == 0
    assert [c[0] for c in fake.calls] == ["reward", "grpo"]
    resolved = yaml.safe_load((tmp_path / "out" / "rl" / "recipe.resolved.yaml").read_text())
    assert resolved["rewards"] == [{"model": str((tmp_path / "out" / "rm").resolve())}]
    write(tmp_path / "pipe.yaml", path.read_text().replace('"{rm}"', '"/no/such/reward/model"'))
    assert main(["pipeline", str(path), "--dry-run"]) == 2  # not an earlier stage's output: an error at once


def test_a_pipeline_runs_from_any_directory_and_its_paths_resolve_next_to_it(tmp_path, monkeypatch):
    """Stage recipes and paths in stage overrides are relative to the pipeline file, not to the current
    directory; the stage's command line (its manifest) carries them absolute."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mine.jsonl").write_text((TINY / "data" / "sft.jsonl").read_text())
    (project / "recipes").mkdir()
    write(project / "recipes" / "sft.yaml", f"extends: {TINY / 'sft.yaml'}\n")
    path = write(
        project / "pipe.yaml",
        f"""
stages:
  - {{name: sft, recipe: recipes/sft.yaml, overrides: {{data.train.path: mine.jsonl}}}}
  - {{name: dpo, recipe: {TINY / "dpo.yaml"}, overrides: {{model.name_or_path: "{{sft}}"}}}}
""",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    fake = FakeTrain()
    monkeypatch.setattr("align_recipes.run.train", fake)
    assert main(["pipeline", str(path), "--output-dir", "out"]) == 0
    sft_recipe = yaml.safe_load((elsewhere / "out" / "sft" / "recipe.resolved.yaml").read_text())
    assert sft_recipe["data"]["train"]["path"] == str(project / "mine.jsonl")
    assert f"data.train.path={project / 'mine.jsonl'}" in fake.calls[0][1]["command"]
    dpo_recipe = yaml.safe_load((elsewhere / "out" / "dpo" / "recipe.resolved.yaml").read_text())
    assert dpo_recipe["model"]["name_or_path"] == str(elsewhere / "out" / "sft")
    assert dpo_recipe["data"]["train"]["path"] == str(TINY / "data" / "prefs.jsonl")  # written in dpo.yaml


def test_lora_stage_is_merged_before_the_next_stage(two_stage, tmp_path, monkeypatch):
    merged = []
    fake = FakeTrain()
    monkeypatch.setattr("align_recipes.run.train", fake)
    monkeypatch.setattr(
        "align_recipes.results.merge.merge", lambda src, out, overwrite=False: merged.append((src, out))
    )
    assert main(["pipeline", str(two_stage), "sft:model.adapter=lora"]) == 0
    assert merged == [(tmp_path / "out" / "sft", tmp_path / "out" / "sft" / "merged")]


# ------------------------------------------------------------------------------------------- gates


@pytest.fixture
def gated(tmp_path) -> Path:
    """reward -> ppo (the tiny flow after SFT), PPO gated on the reward model's held-out preference accuracy."""
    return write(
        tmp_path / "pipe.yaml",
        f"""
output_dir: {tmp_path / "out"}
stages:
  - {{name: reward, recipe: {TINY / "reward.yaml"}}}
  - name: ppo
    recipe: {TINY / "ppo.yaml"}
    gate: {{preference_accuracy: 0.8}}
    overrides: {{train.reward_model_path: "{{reward}}", rewards: []}}
""",
    )


class FakeRewardTrain(FakeTrain):
    """FakeTrain whose reward stage records a held-out preference accuracy (as a real reward run's summary)."""

    def __init__(self, accuracy: float | None):
        super().__init__()
        self.accuracy = accuracy

    def __call__(self, plan, **kwargs):
        super().__call__(plan, **kwargs)
        if plan.algorithm.name == "reward" and self.accuracy is not None:
            summary = json.loads((plan.output_dir / "summary.json").read_text())
            summary["task_metrics"] = [
                {"name": "preference_accuracy", "before": 0.5, "after": self.accuracy, "n": 100}
            ]
            (plan.output_dir / "summary.json").write_text(json.dumps(summary))
        return {}


def test_gate_stops_before_ppo_under_the_minimum(gated, tmp_path, monkeypatch, capsys):
    fake = FakeRewardTrain(0.62)
    monkeypatch.setattr("align_recipes.run.train", fake)
    assert main(["pipeline", str(gated)]) == 2
    assert [c[0] for c in fake.calls] == ["reward"]  # PPO never started
    err = capsys.readouterr().err
    assert "stage 'ppo' not started" in err and "stage 'reward'" in err
    assert "0.620" in err and "0.800" in err and "n=100" in err and "gate.preference_accuracy" in err
    assert "fix:" in err and "ppo:gate.preference_accuracy=0.62" in err and len(err.splitlines()) <= 6
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["ran", "stopped by its gate"]
    assert not (tmp_path / "out" / "ppo").exists()

    # the command line lowers the minimum (the reward stage is complete: skipped)
    fake.calls.clear()
    assert main(["pipeline", str(gated), "ppo:gate.preference_accuracy=0.6"]) == 0
    assert [c[0] for c in fake.calls] == ["ppo"]
    assert "gate: stage 'reward' preference_accuracy 0.620, n=100 >= 0.600" in capsys.readouterr().out


def test_gate_passes_at_the_minimum_and_needs_a_measurement(gated, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("align_recipes.run.train", FakeRewardTrain(0.8))
    assert main(["pipeline", str(gated)]) == 0
    assert "preference_accuracy 0.800, n=100 >= 0.800" in capsys.readouterr().out

    monkeypatch.setattr("align_recipes.run.train", FakeRewardTrain(None))  # a summary without the metric
    assert main(["pipeline", str(gated), "--force"]) == 2
    err = capsys.readouterr().err
    assert "records no held-out preference_accuracy" in err and "ppo:gate.preference_accuracy=0" in err
    assert main(["pipeline", str(gated), "--force", "ppo:gate.preference_accuracy=0"]) == 0  # 0: off


@pytest.mark.parametrize(
    "gate, override, message",
    [
        ("{preference_acuracy: 0.8}", None, "unknown gate metric 'preference_acuracy'"),
        ("{preference_accuracy: 1.5}", None, "gate minimum 1.5 must be a number from 0 to 1"),
        ("{preference_accuracy: high}", None, "gate minimum 'high'"),
        ("0.8", None, "gate must map held-out metrics to minimums"),
        ("{implicit_reward_accuracy: 0.8}", None, "none of the stages it reads from (reward) measures it"),
        ("{preference_accuracy: 0.8}", "ppo:gate.preference_accuracy=yes", "gate minimum True"),
    ],
)
def test_bad_gates_are_refused_at_validation(gated, monkeypatch, capsys, gate, override, message):
    calls = []
    monkeypatch.setattr("align_recipes.run.train", lambda *a, **k: calls.append(a))
    gated.write_text(gated.read_text().replace("{preference_accuracy: 0.8}", gate))
    assert main(["validate", str(gated), *([override] if override else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err
    assert (str(gated) in err) == (override is None)  # the file (and its key) when the file wrote it
    assert main(["pipeline", str(gated), *([override] if override else [])]) == 2 and calls == []


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, capsys):
    """recipes/tiny/pipeline.yaml (sft -> reward -> ppo) with a LoRA SFT stage: trains, merges, wires each
    stage's output into the next, then skips everything on a re-run."""
    args = [
        "pipeline",
        "recipes/tiny/pipeline.yaml",
        "--output-dir",
        str(tmp_path),
        "--profile",
        "cpu",
        "sft:model.adapter=lora",
        "train.max_steps=2",
        "train.logging_steps=1",
        "evaluate.limit=2",
        "ppo:gate.preference_accuracy=0",
    ]  # two steps train no reward model worth a gate
    assert main(args) == 0
    sft, reward, ppo = tmp_path / "sft", tmp_path / "reward", tmp_path / "ppo"
    assert (sft / "adapter_config.json").is_file() and (sft / "merged" / "model.safetensors").is_file()
    merged = str((sft / "merged").resolve())
    assert yaml.safe_load((reward / "recipe.resolved.yaml").read_text())["model"]["name_or_path"] == merged
    recipe = yaml.safe_load((ppo / "recipe.resolved.yaml").read_text())
    assert recipe["model"]["name_or_path"] == merged
    assert recipe["train"]["reward_model_path"] == str(reward.resolve()) and recipe["rewards"] == []
    for stage in (sft, reward, ppo):
        summary = json.loads((stage / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["steps"] == 2, stage
        assert (stage / "report.md").is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("skipped, complete and unchanged") == 3
    assert [s["status"] for s in json.loads((tmp_path / "pipeline.json").read_text())["stages"]] == [
        "skipped"
    ] * 3


class FakePairedRewardTrain(FakeRewardTrain):
    """A reward stage whose summary carries the paired comparison and the after value's 95% interval."""

    def __init__(self, accuracy: float, after_interval: list[float], interval: list[float], verdict: str):
        super().__init__(accuracy)
        self.extra = {
            "difference": accuracy - 0.5,
            "interval": interval,
            "confidence": 0.95,
            "verdict": verdict,
            "after_interval": after_interval,
        }

    def __call__(self, plan, **kwargs):
        super().__call__(plan, **kwargs)
        if plan.algorithm.name == "reward":
            path = plan.output_dir / "summary.json"
            summary = json.loads(path.read_text())
            summary["task_metrics"][0].update(self.extra)
            path.write_text(json.dumps(summary))
        return {}


def test_gate_lines_show_the_value_interval_and_decide_on_the_point_value(gated, monkeypatch, capsys):
    passing = FakePairedRewardTrain(0.85, [0.78, 0.92], [0.25, 0.45], "rose")
    monkeypatch.setattr("align_recipes.run.train", passing)
    assert main(["pipeline", str(gated)]) == 0
    out = capsys.readouterr().out
    assert (
        "gate: stage 'reward' preference_accuracy 0.850, n=100 >= 0.800 "
        "(point value; 95% interval [0.780, 0.920]; it reaches below the minimum)" in out
    )
    # the pipeline's closing lines: every stage's held-out before → after with its verdict
    assert "  reward: preference_accuracy 0.500 → 0.850 (+0.350 [+0.250, +0.450], n=100, rose)" in out

    failing = FakePairedRewardTrain(0.62, [0.525, 0.715], [0.02, 0.22], "rose")
    monkeypatch.setattr("align_recipes.run.train", failing)
    assert main(["pipeline", str(gated), "--force"]) == 2
    err = capsys.readouterr().err
    assert "held-out preference_accuracy 0.620, n=100 (95% interval [0.525, 0.715])" in err
    assert "under this gate's minimum 0.800 (the gate reads the point value)" in err
    assert len(err.splitlines()) <= 6
