"""Training progress: a live bar with ETA on a terminal, compact lines elsewhere, the algorithm's key metrics."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from align_recipes.registry import ALGORITHMS
from align_recipes.run.progress import (
    format_seconds,
    format_value,
    key_metrics,
    metrics_text,
    progress_callback,
)

REPO = Path(__file__).resolve().parents[2]


def test_each_algorithm_shows_what_it_optimises():
    assert key_metrics(ALGORITHMS["sft"]) == ("loss", "learning_rate")
    assert key_metrics(ALGORITHMS["dpo"]) == (
        "loss",
        "rewards/margins",
        "rewards/accuracies",
        "learning_rate",
    )
    assert key_metrics(ALGORITHMS["reward"]) == ("loss", "accuracy", "margin", "learning_rate")
    assert key_metrics(ALGORITHMS["grpo"]) == ("loss", "reward", "kl", "learning_rate")


def test_numbers_are_compact():
    assert (
        format_value(0.41234) == "0.4123" and format_value(12.0) == "12" and format_value(3e-6) == "3.0e-06"
    )
    assert format_value(float("nan")) == "nan"
    assert format_seconds(7) == "7s" and format_seconds(83) == "1m23s" and format_seconds(3725) == "1h02m"
    logs = {"loss": 0.5, "learning_rate": 1.2e-3, "rewards/margins": 0.25, "epoch": 1.0, "note": "text"}
    assert metrics_text(logs, key_metrics(ALGORITHMS["dpo"])) == "loss 0.5 · margin 0.25 · lr 1.2e-03"


def test_without_a_terminal_each_log_is_one_plain_line_with_the_pace():
    stream = io.StringIO()
    callback = progress_callback(("loss", "learning_rate"), stream=stream, interactive=False)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=10)
    callback.on_train_begin(None, state, None)
    callback.started -= 5.0  # five seconds spent on the first five steps
    state.global_step = 5
    callback.on_step_end(None, state, None)
    callback.on_log(None, state, None, logs={"loss": 0.75, "learning_rate": 1e-4, "grad_norm": 2.0})
    callback.on_log(None, state, None, logs={"train_runtime": 5.0, "train_loss": 0.8})  # the end-of-run row
    callback.on_train_end(None, state, None)
    [line] = stream.getvalue().splitlines()
    assert line.startswith("step 5/10 · loss 0.75 · lr 1.0e-04 · ")
    assert "1.00 s/step" in line and line.endswith("eta 5s")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("script") is None, reason="needs util-linux `script` to give the run a terminal"
)
def test_a_run_on_a_terminal_shows_a_live_bar_with_the_eta(tmp_path):
    command = (
        f"{sys.executable} -m align_recipes train recipes/tiny/sft.yaml --profile cpu --no-report "
        f"train.output_dir={tmp_path / 'run'} train.max_steps=6 train.logging_steps=3 evaluate=null"
    )
    shown = subprocess.run(
        ["script", "-qec", command, "/dev/null"], cwd=REPO, capture_output=True, text=True, timeout=300
    ).stdout
    frames = [frame for frame in shown.replace("\r", "\n").splitlines() if "|" in frame and "step" in frame]
    assert frames, shown[-2000:]
    assert "6/6 [" in frames[-1] and "step/s" in frames[-1] and "loss " in frames[-1], frames[-1]
    assert any("<" in frame for frame in frames)  # tqdm's "elapsed<remaining": the ETA
    assert "step 3/6 ·" not in shown  # plain lines are for logs, not terminals
