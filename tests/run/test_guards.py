"""Guards: checkpoint completeness, resume planning, signals, the non-finite loss stop, secrets,
trust_remote_code, and the reproducibility manifest."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from align_recipes import redaction
from align_recipes.errors import RecipeError
from align_recipes.run import checkpoints, guards
from align_recipes.run import rundir as outputs
from align_recipes.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
SECRET = "hf_secret123"


# ------------------------------------------------------------------------------- fake checkpoints


def _safetensors(path: Path, floats: int = 4) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4 * floats)


def make_checkpoint(output_dir: Path, step: int, marker: bool = True) -> Path:
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    _safetensors(path / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (path / name).write_bytes(b"x" * 64)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    if marker:
        checkpoints.write_marker(path)
    return path


def test_a_complete_checkpoint_passes_with_or_without_marker(tmp_path):
    assert checkpoints.checkpoint_problem(make_checkpoint(tmp_path, 2)) is None
    assert checkpoints.checkpoint_problem(make_checkpoint(tmp_path, 4, marker=False)) is None
    assert checkpoints.read_marker(tmp_path / "checkpoint-2")["files"]["model.safetensors"] > 0


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: (p / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda p: (p / "trainer_state.json").write_text('{"global_st'), "not valid JSON"),
        (lambda p: (p / "trainer_state.json").write_text('{"global_step": 5}'), "for step 5, not 3"),
        (lambda p: (p / "model.safetensors").unlink(), "no model weights"),
        (lambda p: (p / "optimizer.pt").unlink(), "no optimizer state"),
        (lambda p: (p / "rng_state.pth").unlink(), "no RNG state"),
        (lambda p: (p / "optimizer.pt").write_bytes(b"x" * 10), "optimizer.pt is 10 bytes, 64 were written"),
        (lambda p: checkpoints.write_marker(p, "diverged", "weights were nan"), "marked diverged"),
    ],
)
def test_checkpoints_cut_short_are_detected(tmp_path, damage, expected):
    path = make_checkpoint(tmp_path, 3)
    damage(path)
    problem = checkpoints.checkpoint_problem(path)
    assert problem is not None and expected in problem, problem


def test_a_truncated_safetensors_file_is_detected_without_a_marker(tmp_path):
    path = make_checkpoint(tmp_path, 3, marker=False)
    with open(path / "model.safetensors", "r+b") as handle:
        handle.truncate(path.joinpath("model.safetensors").stat().st_size - 3)
    assert "truncated" in checkpoints.checkpoint_problem(path)


def test_sharded_weights_need_every_shard(tmp_path):
    path = make_checkpoint(tmp_path, 3, marker=False)
    (path / "model.safetensors").unlink()
    _safetensors(path / "model-00001-of-00002.safetensors")
    (path / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        )
    )
    assert "model-00002-of-00002.safetensors is missing" in checkpoints.checkpoint_problem(path)
    _safetensors(path / "model-00002-of-00002.safetensors")
    assert checkpoints.checkpoint_problem(path) is None


def test_save_only_model_checkpoints_resume_without_optimizer(tmp_path):
    path = make_checkpoint(tmp_path, 3, marker=False)
    (path / "optimizer.pt").unlink()
    assert checkpoints.checkpoint_problem(path, require_optimizer=False) is None


def test_newest_complete_skips_torn_checkpoints(tmp_path):
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 10)
    torn = make_checkpoint(tmp_path, 12)
    (torn / "trainer_state.json").unlink()
    (tmp_path / "checkpoint-14").mkdir()  # created, nothing written yet
    (tmp_path / "checkpoint-notes").mkdir()  # not a checkpoint at all
    newest, skipped = checkpoints.newest_complete(tmp_path)
    assert newest.name == "checkpoint-10"  # numeric order, not text order
    assert [p.name for p, _ in skipped] == ["checkpoint-14", "checkpoint-12"]


# ------------------------------------------------------------------------------- resume planning


def test_plan_start_fresh_and_refusals(tmp_path):
    out = tmp_path / "run"
    assert RunDir(out).plan_start(None, overwrite=False).checkpoint is None
    out.mkdir()
    (out / outputs.MANIFEST).write_text("{}")  # a run that died before training: nothing to lose
    assert RunDir(out).plan_start(None, overwrite=False).checkpoint is None
    (out / outputs.METRICS).write_text("{}\n")
    with pytest.raises(RecipeError, match="already holds a run") as err:
        RunDir(out).plan_start(None, overwrite=False)
    assert "--resume" in err.value.fix and "--overwrite" in err.value.fix
    assert RunDir(out).plan_start(None, overwrite=True).checkpoint is None
    with pytest.raises(RecipeError, match="contradict"):
        RunDir(out).plan_start("latest", overwrite=True)


def test_plan_start_latest_and_explicit(tmp_path):
    torn = make_checkpoint(tmp_path, 6)
    (torn / "trainer_state.json").unlink()
    with pytest.raises(RecipeError, match="nothing to resume") as err:
        RunDir(tmp_path).plan_start("latest", overwrite=False)
    assert "checkpoint-6 skipped: no trainer_state.json" in err.value.message
    make_checkpoint(tmp_path, 4)
    start = RunDir(tmp_path).plan_start("latest", overwrite=False)
    assert start.checkpoint.name == "checkpoint-4" and start.step == 4
    assert [p.name for p, _ in start.skipped] == ["checkpoint-6"]
    assert (
        RunDir(tmp_path).plan_start("checkpoint-4", overwrite=False).checkpoint == tmp_path / "checkpoint-4"
    )
    with pytest.raises(RecipeError, match="incomplete: no trainer_state.json") as err:
        RunDir(tmp_path).plan_start(str(torn), overwrite=False)
    assert "the newest complete one is" in err.value.fix


def test_plan_start_auto(tmp_path):
    out = tmp_path / "run"
    assert RunDir(out).plan_start("auto", overwrite=False).checkpoint is None  # nothing yet: fresh
    out.mkdir()
    RunDir(out).write_summary({"status": "running"})  # a crash before the first checkpoint
    start = RunDir(out).plan_start("auto", overwrite=False)
    assert start.checkpoint is None and start.fresh_over_leftovers
    RunDir(out).write_summary({"status": "complete"})
    with pytest.raises(RecipeError, match="holds a finished run"):
        RunDir(out).plan_start("auto", overwrite=False)
    make_checkpoint(out, 8)
    assert RunDir(out).plan_start("auto", overwrite=False).step == 8


def test_resume_command_is_the_same_command_with_resume():
    command = [
        "/x/src/align_recipes/__main__.py",
        "train",
        "recipes/tiny/sft.yaml",
        "train.learning_rate=1e-5",
        "--overwrite",
        "train.hub_token=abcdef123",
        "--profile",
        "t4",
    ]
    assert checkpoints.resume_command(command) == (
        "align-recipes train recipes/tiny/sft.yaml train.learning_rate=1e-5 "
        "'train.hub_token=***' --profile t4 --resume"
    )
    assert checkpoints.resume_command(["align-recipes", "train", "r.yaml", "--resume"]).count("--resume") == 1


def test_metrics_are_truncated_to_the_checkpoint_and_losses_combined(tmp_path):
    lines = [{"step": s, "loss": float(10 - s)} for s in range(1, 7)] + [{"step": 6, "train_runtime": 1.0}]
    (tmp_path / outputs.METRICS).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 7, "lo')
    assert (
        RunDir(tmp_path).truncate_metrics(4) == 3
    )  # steps 5, 6 and the summary row; the torn line is dropped
    assert [r["step"] for r in RunDir(tmp_path).metrics()] == [1, 2, 3, 4]
    records = RunDir(tmp_path).metrics()
    # steps 1-4 (losses 9, 8, 7, 6) from the log, steps 5-8 from the resumed Trainer (mean 3.0)
    assert outputs.whole_run_loss(records, 4, 8, 3.0) == pytest.approx((9 + 8 + 7 + 6 + 4 * 3.0) / 8)
    assert outputs.whole_run_loss(records, None, 8, 2.5) == 2.5


# ------------------------------------------------------------------------------------- signals


def test_a_signal_before_training_stops_at_once(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(guards.RunInterrupted) as err:
        with guards.RunGuard(tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert err.value.exit_code == 143 and "nothing to save" in err.value.message
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_signal_during_training_asks_for_a_checkpoint_then_hands_back(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with guards.RunGuard(tmp_path) as guard:
        guard.phase = "training"
        guard._handle(signal.SIGINT, None)
        assert guard.signum == signal.SIGINT and guard.signal_phase == "training"
        assert signal.getsignal(signal.SIGINT) == before  # a second Ctrl-C stops at once
        assert guard.world_signal(None)
    assert guards.RunInterrupted(signal.SIGINT, "x").exit_code == 130


# --------------------------------------------------------------------------------- non-finite


def test_non_finite_losses_stop_the_run():
    guard = guards.RunGuard()
    assert not guard.check_logs({"loss": 1.2, "grad_norm": 3.0, "learning_rate": float("inf")}, 5)
    assert guard.check_logs({"loss": float("nan"), "grad_norm": 1.0}, 10)
    assert guard.diverged == {"step": 10, "values": {"loss": "nan"}}
    assert guards.RunGuard().check_logs({"grad_norm": float("inf"), "loss": 1.0}, 3)
    assert guards.RunGuard().check_logs({"rewards/policy_loss": float("-inf")}, 3)


def test_fp16_overflow_is_tolerated_until_it_persists():
    guard = guards.RunGuard(fp16=True)
    assert not guard.check_logs({"grad_norm": float("inf"), "loss": 2.0}, 1)  # loss scaler skips the step
    assert not guard.check_logs({"grad_norm": 1.0, "loss": 2.0}, 2)
    assert not guard.check_logs({"grad_norm": float("inf"), "loss": 2.0}, 3)
    assert not guard.check_logs({"grad_norm": float("inf"), "loss": 2.0}, 4)
    assert guard.check_logs({"grad_norm": float("inf"), "loss": 2.0}, 5)


def test_likely_causes_name_fp16_learning_rate_and_pad_token():
    class Config:
        fp16, learning_rate, max_grad_norm = True, 2e-4, 0.0

    class Tokenizer:
        pad_token = eos_token = "<|im_end|>"

    causes = " | ".join(guards.likely_causes(Config(), Tokenizer(), "sft"))
    for fragment in (
        "fp16 overflow",
        "T4",
        "learning_rate is 0.0002",
        "missing pad token",
        "max_grad_norm: 0",
    ):
        assert fragment in causes


NAN_FROM_STEP = 4


def _nan_loss_from(step: int):
    """A Trainer callback that turns the model's weights to NaN just before optimizer step `step`, so that
    step's loss is NaN however the trainer computes it: a divergence on every CPU, with no luck involved."""
    from transformers import TrainerCallback

    class NaNWeights(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == step:
                import torch

                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    return NaNWeights()


@pytest.mark.slow
def test_a_diverging_run_stops_names_the_cause_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    from align_recipes.cli import main
    from align_recipes.run import training

    real_build = training.build

    def build_then_poison(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        trainer.add_callback(_nan_loss_from(NAN_FROM_STEP))
        return trainer

    monkeypatch.setattr(training, "build", build_then_poison)
    out = tmp_path / "nan"
    rc = main(
        [
            "train",
            "recipes/tiny/sft.yaml",
            f"train.output_dir={out}",
            "--profile",
            "cpu",
            "evaluate=null",
            "train.max_steps=10",
            "train.save_strategy=steps",
            "train.save_steps=1",
            "train.logging_steps=1",
            "train.per_device_train_batch_size=4",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "no longer finite" in err
    # The Trainer's logging_nan_inf_filter hides a NaN loss in its log; the gradient norm shows it.
    assert f"training stopped at step {NAN_FROM_STEP}: grad_norm=nan" in err, err
    assert "learning rate too high: train.learning_rate is 0.0015" in err
    assert (
        f"kept the last good checkpoint, {out / f'checkpoint-{NAN_FROM_STEP - 1}'}" in err
        and "--resume" in err
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"] == NAN_FROM_STEP
    good = Path(summary["checkpoint"])
    assert good.name == f"checkpoint-{NAN_FROM_STEP - 1}" and checkpoints.checkpoint_problem(good) is None
    assert not (out / "model.safetensors").exists(), "a diverged model must not be saved as the result"
    for path in checkpoints.list_checkpoints(out):  # nothing saved after the divergence is taken for complete
        assert checkpoints.checkpoint_step(path) <= summary["diverged_at"]
        if checkpoints.checkpoint_problem(path) is None:
            import torch
            from safetensors.torch import load_file

            assert all(torch.isfinite(t).all() for t in load_file(str(path / "model.safetensors")).values())


# ------------------------------------------------------------------------------------- secrets


def test_secret_names_and_values():
    for name in ("hub_token", "train.hub_token", "api_key", "WANDB_API_KEY", "password", "client_secret"):
        assert redaction.is_secret_key(name), name
    for name in ("pad_token", "eos_token", "max_new_tokens", "keep_columns", "tokenizer", "monkey"):
        assert not redaction.is_secret_key(name), name
    env = {"HF_TOKEN": SECRET, "TOKENIZERS_PARALLELISM": "false", "MY_API_KEY": "k", "PATH": "/usr/bin"}
    assert redaction.secret_values(env) == [SECRET]
    assert redaction.redact_obj({"train": {"hub_token": "abcdefgh", "pad_token": "<pad>"}}) == {
        "train": {"hub_token": "***", "pad_token": "<pad>"}
    }


@pytest.mark.slow
def test_secrets_never_reach_outputs_or_logs(tmp_path, monkeypatch, capfd):
    """HF_TOKEN in the environment and a token passed as an override are in no output file and no log line;
    the manifest still records everything needed to reproduce the run."""
    from align_recipes.cli import main

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_456")
    out = tmp_path / "run"
    argv = [
        "train",
        "recipes/tiny/sft.yaml",
        f"train.output_dir={out}",
        "--profile",
        "cpu",
        "evaluate=null",
        f"train.hub_token={SECRET}",
        "description=run by wandb_secret_456",
        "train.max_steps=2",
        "train.save_strategy=steps",
        "train.save_steps=1",
        "train.per_device_train_batch_size=4",
    ]
    assert main(argv) == 0
    printed = capfd.readouterr()
    for text in (printed.out, printed.err):
        assert SECRET not in text and "wandb_secret_456" not in text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"wandb_secret_456" not in data, path

    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["command"][:2] == ["align-recipes", "train"] and "train.hub_token=***" in manifest["command"]
    )
    assert manifest["versions"]["trl"].startswith("1.16") and manifest["versions"]["torch"]
    assert manifest["git"]["commit"] is None or len(manifest["git"]["commit"]) == 40
    assert manifest["hardware"]["cpu_count"] >= 1 and isinstance(manifest["hardware"]["gpus"], list)
    assert manifest["profile"] == "cpu" and manifest["seed"] == 42
    assert manifest["data"]["data.train"]["sha256"] and manifest["recipe_sha256"]
    assert "hub_token: '***'" in (out / "recipe.resolved.yaml").read_text()
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------------------------- remote code


def test_trust_remote_code_stays_off_and_says_why(tmp_path, capsys):
    """A local model whose config maps to code it ships is refused unless the recipe trusts it, and
    that code never runs."""
    from align_recipes.cli import main

    model = tmp_path / "custom-model"
    model.mkdir()
    ran = tmp_path / "custom-code-ran"
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "tinycustom",
                "architectures": ["TinyCustomForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_tinycustom.TinyCustomConfig",
                    "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM",
                },
            }
        )
    )
    for name in ("configuration_tinycustom.py", "modeling_tinycustom.py"):
        (model / name).write_text(f"open({str(ran)!r}, 'w').write('yes')\n")
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "tests/fixtures/bad_inputs/good_sft.yaml",
            f"model.name_or_path={model}",
            f"train.output_dir={out}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "model.trust_remote_code" in err and "runs its own model code" in err
    assert "set model.trust_remote_code: true" in err
    assert not ran.exists(), "the model's own code was executed"
    assert not out.exists()


def test_reward_code_is_imported_only_when_a_recipe_names_it():
    """Validating a recipe with builtin rewards imports no user code; naming a file imports exactly that file."""
    import subprocess
    import sys

    probe = (
        "import sys; from align_recipes.cli import main; rc = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.startswith('_align_recipes_reward_')))"
    )

    def imported(*overrides):
        proc = subprocess.run(
            [sys.executable, "-c", probe, "validate", "tests/fixtures/bad_inputs/good_grpo.yaml", *overrides],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    assert imported() == "[]"
    named = imported("rewards=[{function: 'rewards_bad.py:score'}]")
    assert "rewards_bad" in named and named.count(",") == 0
