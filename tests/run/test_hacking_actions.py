"""`evaluate.on_hacking`: what the reward-hacking watch does once it warns (run/hacking.py), on a scripted run
(no model: the greedy answers each check sees are written by hand), and the plan layer's checks of the key.
The tiny runs where a weak reward model is climbed are in tests/e2e/test_e2e_hacking.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from align_recipes.run import hacking, measure
from align_recipes.run.watch import _callback as watch_callback

ROWS = [{"prompt": f"{i}+0=", "answer": str(i)} for i in range(10)]
# Held-out exact match at each check, every 5 steps (the first is before training): 0.8 at the start (standard
# error sqrt(.75 * .25 / 10) = .137, so a fall must exceed .274), best at step 5, falling from step 20 while the
# proxy rises 0.1 per log. Steps 20 and 25 are suspicious: the watch warns at step 25, naming step 20.
RIGHT = {0: 8, 5: 9, 10: 8, 15: 8, 20: 3, 25: 2, 30: 2}


class ScriptedTrainer:
    """What the watch asks of a trainer: its output folder, save_model and _load_from_checkpoint. Its "weights"
    are the step they were trained to, so which policy was kept and restored can be read back."""

    def __init__(self, out: Path):
        self.args = SimpleNamespace(output_dir=str(out))
        self.weights = "step 0"

    def save_model(self, folder: str):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "weights.txt").write_text(self.weights)

    def _load_from_checkpoint(self, folder: str):
        self.weights = (Path(folder) / "weights.txt").read_text()


def run_watch(tmp_path, monkeypatch, action: str, until: int = 30):
    step = {"now": 0}

    def greedy(model, tokenizer, prompts, max_new_tokens):
        right = RIGHT[step["now"]]
        return [ROWS[i]["answer"] if i < right else "x" for i in range(len(prompts))]

    monkeypatch.setattr(measure, "generate", greedy)
    monkeypatch.setattr(measure, "row_rewards", lambda reward, rows, completions: [0.0] * len(completions))
    plan = SimpleNamespace(
        evaluate=SimpleNamespace(max_new_tokens=4, watch_every=5, on_hacking=action), train={}, rewards=[]
    )
    trainer, said = ScriptedTrainer(tmp_path), []
    watch = watch_callback(
        plan, "exact_match", ROWS, ([], []), tmp_path / "metrics.jsonl", said.append, trainer, action
    )
    args = SimpleNamespace(logging_steps=5, learning_rate=1e-4, kl_coef=0.05)
    state, control = SimpleNamespace(global_step=0, max_steps=100, epoch=0.0), TrainerControl()
    watch.on_train_begin(args, state, control)
    for s in range(5, until + 1, 5):
        step["now"] = state.global_step = s
        trainer.weights = f"step {s}"
        watch.on_log(args, state, control, logs={"reward": 0.02 * s})
        if control.should_training_stop:
            break
    return watch, trainer, control, said, state


def test_warn_keeps_training_and_acts_on_nothing(tmp_path, monkeypatch):
    watch, trainer, control, said, _ = run_watch(tmp_path, monkeypatch, "warn")
    summary = watch.summary()
    assert summary["reward_hacking"]["since_step"] == 20 and summary["reward_hacking"]["at_step"] == 25
    assert summary["reward_hacking"]["acted"] is None and hacking.run_status(summary) == "complete"
    assert not control.should_training_stop and trainer.weights == "step 30"
    assert not (tmp_path / hacking.BEST_DIR).exists()  # warn keeps no copy of the policy


def test_stop_ends_the_run_at_the_warning_and_saves_that_step(tmp_path, monkeypatch):
    watch, trainer, control, said, state = run_watch(tmp_path, monkeypatch, "stop")
    assert state.global_step == 25 and control.should_training_stop and control.should_save
    summary = watch.summary()
    assert summary["reward_hacking"]["acted"] == {
        "on_hacking": "stop",
        "stopped_at_step": 25,
        "metric": "exact_match",
    }
    assert (
        hacking.run_status(summary) == "stopped_hacking" and summary["reward_watch"]["on_hacking"] == "stop"
    )
    assert said[-1] == (
        "stopping: stopped at step 25 (evaluate.on_hacking: stop); a checkpoint of step 25 is saved"
    )
    assert trainer.weights == "step 25"  # the model is left as it was


def test_rollback_restores_the_best_checked_policy_before_the_fall_and_stops(tmp_path, monkeypatch):
    watch, trainer, control, said, state = run_watch(tmp_path, monkeypatch, "rollback")
    assert state.global_step == 25 and control.should_training_stop and not control.should_save
    assert trainer.weights == "step 5"  # 0.9 at step 5: the best check before the fall (start 0.8)
    acted = watch.summary()["reward_hacking"]["acted"]
    assert (acted["rolled_back_to_step"], acted["held_out_restored"], acted["stopped_at_step"]) == (
        5,
        0.9,
        25,
    )
    assert acted["held_out_restored"] >= RIGHT[25] / 10  # no lower than at the step the watch warned
    assert said[-1] == (
        "rolling back: rolled back to the policy of step 5 (held-out exact_match 0.900, the watch's best check "
        "before the fall) and stopped at step 25 (evaluate.on_hacking: rollback)"
    )
    assert (tmp_path / hacking.BEST_DIR / "weights.txt").read_text() == "step 5"
    summary = {"task_metrics": [{"name": "exact_match", "before": 0.8, "after": 0.9}], **watch.summary()}
    from align_recipes.run.finish import headline

    assert headline(summary).endswith(
        "; rolled back to the policy of step 5 (held-out exact_match 0.900, the watch's best check before the "
        "fall) and stopped at step 25 (evaluate.on_hacking: rollback) (fixes: summary.json reward_hacking)"
    )


def test_rollback_with_no_better_check_returns_to_the_start_model(tmp_path, monkeypatch):
    for step in (
        5,
        10,
        15,
    ):  # never back to the start's 0.8: the start model is the best (ties keep the later)
        monkeypatch.setitem(RIGHT, step, 7)
    watch, trainer, *_ = run_watch(tmp_path, monkeypatch, "rollback")
    assert (
        trainer.weights == "step 0" and watch.summary()["reward_hacking"]["acted"]["rolled_back_to_step"] == 0
    )


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (["evaluate.on_hacking=rollbak"], "evaluate.on_hacking", "did you mean 'rollback'"),
        (
            ["evaluate.on_hacking=stop", "evaluate.watch_every=0"],
            "evaluate.on_hacking",
            "evaluate.watch_every: 0 turns it off",
        ),
    ],
)
def test_bad_on_hacking_settings_are_named_before_anything_loads(overrides, key, message, repo_cwd):
    from align_recipes.errors import RecipeError, RecipeErrors
    from align_recipes.plan import load_plan

    with pytest.raises((RecipeError, RecipeErrors)) as info:
        load_plan("recipes/tiny/ppo.yaml", overrides, profile="cpu")
    errors = getattr(info.value, "errors", [info.value])
    assert any(e.key == key and message in str(e) for e in errors), [str(e) for e in errors]


def test_on_hacking_needs_an_algorithm_that_samples(repo_cwd):
    from align_recipes.errors import RecipeErrors
    from align_recipes.plan import load_plan

    with pytest.raises(RecipeErrors) as info:
        load_plan("recipes/tiny/dpo.yaml", ["evaluate.on_hacking=stop"], profile="cpu")
    assert "dpo does not sample while it trains" in str(info.value)
    plan = load_plan("recipes/tiny/ppo.yaml", ["evaluate.on_hacking=rollback"], profile="cpu")
    assert plan.evaluate.on_hacking == "rollback"
