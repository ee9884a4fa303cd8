"""A run that breaks after it began leaves summary.json at status `failed` with the error (never
`running`), and the same command then starts it again without --overwrite when no checkpoint was written.
Failures are injected where a real one can happen: measuring the task metric before training, inside
`trainer.train()`, and saving the final model."""

from __future__ import annotations

import json

import pytest

from align_recipes.cli import main
from align_recipes.run import training

ARGS = [
    "train",
    "recipes/tiny/sft.yaml",
    "train.max_steps=2",
    "train.per_device_train_batch_size=4",
    "evaluate.limit=2",
    "--profile",
    "cpu",
    "--no-report",
]


def boom(*args, **kwargs):
    raise RuntimeError("injected failure")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["measure before", "trainer.train", "save_model"])
def test_a_run_that_breaks_says_failed_and_the_same_command_starts_it_again(
    where, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = [*ARGS, f"train.output_dir={out}"]
    with monkeypatch.context() as patch:
        if where == "measure before":
            patch.setattr(training, "measure", boom)
        elif where == "trainer.train":
            patch.setattr("trl.SFTTrainer.train", boom)
        else:
            patch.setattr("trl.SFTTrainer.save_model", boom)
        with pytest.raises(RuntimeError, match="injected failure"):
            main(args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: injected failure"
    assert summary["algorithm"] == "sft" and summary["output_dir"] == str(out) and "finished" in summary
    capsys.readouterr()
    assert main(args) == 0  # the same command, no --overwrite: nothing was worth keeping
    assert "note: nothing to resume" in capsys.readouterr().err  # a note: stderr (align_recipes.console)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2 and "error" not in summary
