"""Plan → trainer → outputs: the one place that loads models and data and calls `trainer.train()`.

A run reads like a recipe:

    start   = RunDir(plan.output_dir).plan_start(…)   fresh, resumed or refused, before anything heavy
    parts   = load(plan)                              tokenizer, data, reward functions, model
    trainer = build(plan, parts, …)                   the TRL config and the registry's trainer
    begin(…)                                          the folder prepared, the metric before, status running
    fit(trainer, start)                               trainer.train(), continuing a checkpoint if asked
    finish(…)                                         the model saved, the metric after, status complete

A `RunGuard` turns Ctrl-C/SIGTERM into "save a checkpoint, write the summary, exit 130/143 with the
resume command" and stops a run whose loss or gradient is no longer finite, keeping the last good
checkpoint. Any other failure after `begin` leaves summary.json at status `failed`, with the error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from align_recipes.errors import RecipeError
from align_recipes.plan import Plan, resolved_yaml
from align_recipes.redaction import redact
from align_recipes.registry import load_class
from align_recipes.run import checkpoints, guards, models
from align_recipes.run.measure import measure
from align_recipes.run.rundir import SUMMARY, RunDir, Start, first_and_last, is_main_process, whole_run_loss

TINY_MODEL_PARAMS = 5_000_000


@dataclass
class Parts:
    """What `load` brings in for one run."""

    config: Any  # the TRL Config object
    tokenizer: Any
    model: Any
    train_dataset: Any
    eval_dataset: Any
    extras: dict  # trainer keyword arguments only some algorithms take (reward functions)


def train(plan: Plan, overwrite: bool = False, resume: bool = False, command: list[str] | None = None) -> dict:
    """Run one recipe end to end and return its summary.

    resume=True (`--resume`) continues from the newest complete checkpoint in the output directory;
    the recipe's `train.resume_from_checkpoint` may also say `auto` (continue if there is a checkpoint,
    else start fresh), `latest` (as --resume) or name one checkpoint directory.
    Raises RecipeError (exit 2) for anything the user can fix, guards.RunInterrupted on Ctrl-C/SIGTERM
    (exit 130/143) and guards.TrainingDiverged (exit 2) when the loss stops being finite.
    """
    run_dir = RunDir(plan.output_dir)
    mode = checkpoints.RESUME_LATEST if resume else plan.train.get("resume_from_checkpoint")
    start = run_dir.plan_start(mode, overwrite, require_optimizer=not plan.train.get("save_only_model", False),
                               base_dir=plan.base_dir)
    command = list(command or [])
    existed = run_dir.path.exists()
    with guards.RunGuard(plan.output_dir) as guard:
        try:
            parts = load(plan)
            guard.fp16 = bool(parts.config.fp16)
            trainer = build(plan, parts, run_dir, guard)
        except BaseException:
            if not existed:
                run_dir.remove_if_empty()  # the Trainer creates output_dir early: leave no trace of a refused run
            raise
        record = begin(plan, parts, trainer, run_dir, start, overwrite, command)
        try:
            started = time.time()
            training_loss = fit(trainer, start, parts.config)
            record["runtime_s"] = round(time.time() - started, 2)
            return finish(plan, parts, trainer, run_dir, guard, record, start, command, training_loss)
        except (guards.RunInterrupted, guards.TrainingDiverged):
            raise  # their summary is written
        except BaseException as exc:
            if is_main_process():
                run_dir.write_summary({**record, "status": "failed", "error": redact(f"{type(exc).__name__}: {exc}"),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            raise


# --- load -------------------------------------------------------------------------------------------

def load(plan: Plan) -> Parts:
    """The TRL config, tokenizer, datasets, reward functions and model; user errors name their key."""
    try:
        model_path = models.resolve_model_path(plan.model, plan.base_dir)
        models.quiet_libraries()
        config = build_config(plan)

        from transformers import set_seed

        set_seed(config.seed)
        tokenizer = models.load_tokenizer(model_path, plan.model, plan.base_dir)
        train_dataset, eval_dataset = load_data(plan, tokenizer)
        extras = trainer_extras(plan, config)
        model = models.load_model(model_path, plan.model, plan.algorithm.model_head, use_cpu=bool(config.use_cpu))
    except RecipeError as exc:
        exc.file = exc.file or plan.provenance.where(exc.key or "") or str(plan.recipe_path)
        raise
    if plan.algorithm.model_head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.use_cpu:
        _set_cpu_threads(model)
    return Parts(config, tokenizer, model, train_dataset, eval_dataset, extras)


def build_config(plan: Plan):
    """The TRL Config object; its own __post_init__ checks become recipe errors, not tracebacks."""
    config_cls = load_class(plan.algorithm.config)
    args = dict(plan.train)
    # Which checkpoint to continue from is decided by RunDir.plan_start; the Trainer never reads it.
    args.pop("resume_from_checkpoint", None)
    try:
        config = config_cls(**args)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{plan.algorithm.config_name} rejected the train section: {redact(str(exc))}",
                          file=plan.recipe_path, key="train",
                          fix="see the message above; TRL's docs for this config apply as they are") from None
    if getattr(config, "hub_token", None):
        # The Trainer pickles its arguments into training_args.bin in every checkpoint: keep the token out
        # of them. huggingface_hub reads HF_TOKEN when pushing.
        os.environ["HF_TOKEN"] = config.hub_token
        config.hub_token = None
    return config


def load_data(plan: Plan, tokenizer):
    from align_recipes.data import DataError, load

    loaded = {}
    for split, spec in (("train", plan.data.train), ("eval", plan.data.eval)):
        if spec is None:
            continue
        try:
            dataset, report = load(spec, plan.base_dir, plan.algorithm.data_kind, tokenizer)
        except DataError as exc:
            exc.file = exc.file or plan.recipe_path
            raise
        if is_main_process():
            print(report.summary_line())
        loaded[split] = dataset
    return loaded.get("train"), loaded.get("eval")


def trainer_extras(plan: Plan, config) -> dict:
    """Keyword arguments only some trainers take (reward functions for online RL).

    A reward model named by `train.reward_model_path` (where the config has that field) joins the
    recipe's `rewards:` as one more reward function, weight 1: some trainers declare the field but never
    read it (TRL 1.16's OnlineDPOConfig), and every trainer takes reward functions."""
    if not plan.algorithm.uses_rewards:
        return {}
    from align_recipes.rewards import RewardSpecError, build_reward_funcs

    funcs, weights = build_reward_funcs(plan.rewards, plan.base_dir)
    reward_model = getattr(config, "reward_model_path", None)
    if reward_model:
        try:
            model_funcs, _ = build_reward_funcs([{"model": str(reward_model)}], plan.base_dir)
        except RewardSpecError as exc:
            raise RecipeError(str(exc), key="train.reward_model_path",
                              fix="point it at a saved reward model directory or a hub id") from None
        funcs, weights = funcs + model_funcs, weights + [1.0]
    if hasattr(config, "reward_weights") and weights and config.reward_weights is None:
        config.reward_weights = weights
    return {"reward_funcs": funcs}


def _set_cpu_threads(model) -> None:
    """Share the cores between processes; tiny models run fastest on one thread (thread start-up costs
    more than their matrix products: 100 tiny SFT steps took 8 s on one thread, 91 s on two busy cores)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tiny = sum(p.numel() for p in model.parameters()) < TINY_MODEL_PARAMS
    torch.set_num_threads(1 if tiny else max(1, (os.cpu_count() or 1) // world))


# --- build ------------------------------------------------------------------------------------------

def build(plan: Plan, parts: Parts, run_dir: RunDir, guard: guards.RunGuard):
    """The registry's trainer, with TRL's keyword arguments and our two callbacks."""
    trainer_cls = load_class(plan.algorithm.trainer)
    return trainer_cls(
        model=parts.model, args=parts.config, train_dataset=parts.train_dataset, eval_dataset=parts.eval_dataset,
        processing_class=parts.tokenizer, peft_config=models.peft_config(plan.model, plan.algorithm.model_head),
        callbacks=[run_dir.metrics_callback(), guard.callback()], **parts.extras,
    )


# --- begin ------------------------------------------------------------------------------------------

def begin(plan: Plan, parts: Parts, trainer, run_dir: RunDir, start: Start, overwrite: bool,
          command: list[str]) -> dict:
    """Prepare the folder, show what will run, measure the task metric before training, and write the
    summary at status `running`. Returns the summary fields every later status repeats."""
    main = is_main_process()
    previous = run_dir.summary() if start.checkpoint is not None else {}
    if main:
        run_dir.prepare(plan, start, overwrite, command, resolved_yaml(plan), parts.config)
        start_screen(plan, parts.model, parts.config, len(parts.train_dataset), start)
    before = (previous.get("task_metric_before") or measure(plan, trainer.model, parts.tokenizer)) if main else None
    record = {
        "algorithm": plan.algorithm.name,
        "recipe": str(plan.recipe_path),
        "model": plan.model.name_or_path,
        "adapter": plan.model.adapter,
        "profile": plan.profile.name,
        "seed": parts.config.seed,
        "output_dir": str(plan.output_dir),
        "task_metric_before": before,
    }
    if start.checkpoint is not None:
        record["resumed_from"] = [*previous.get("resumed_from", []), str(start.checkpoint)]
    if main:
        run_dir.write_summary({**record, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return record


def start_screen(plan: Plan, model, config, train_rows: int, start: Start) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    effective = config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    precision = "bf16" if config.bf16 else "fp16" if config.fp16 else plan.model.dtype
    params = sum(p.numel() for p in model.parameters())
    print("─" * 72)
    print(f"align-recipes · {plan.algorithm.name} · {plan.recipe_path}")
    print(f"  model      {plan.model.name_or_path} ({params / 1e6:.2f}M params), adapter {plan.model.adapter}")
    print(f"  precision  {precision} · profile {plan.profile.name} · world size {world} · seed {config.seed}")
    print(f"  data       {train_rows} training rows · effective batch {effective}")
    print(f"  steps      {config.max_steps if config.max_steps > 0 else f'{config.num_train_epochs:g} epoch(s)'}")
    print(f"  output     {plan.output_dir}")
    if start.checkpoint is not None:
        print(f"  resuming   from {start.checkpoint.name} (step {start.step})")
    for path, why in start.skipped:
        print(f"  skipped    {path.name}: {why}")
    print("─" * 72, flush=True)


# --- fit --------------------------------------------------------------------------------------------

def fit(trainer, start: Start, config) -> float | None:
    """trainer.train(), from the checkpoint `start` names; returns the Trainer's mean training loss."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # muted while loading; the training bar is worth seeing
    if _already_finished(start, config):
        # The Trainer would train one step past the end when resumed from the final checkpoint: load it instead.
        from transformers import TrainerState

        print(f"note: {start.checkpoint.name} is the last step: nothing left to train")
        trainer._load_from_checkpoint(str(start.checkpoint))
        trainer.state = TrainerState.load_from_json(str(start.checkpoint / "trainer_state.json"))
        return None
    result = trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
    return result.training_loss


def _already_finished(start: Start, config) -> bool:
    """Whether the checkpoint to resume from is already at the run's last step."""
    if start.checkpoint is None:
        return False
    try:
        state = json.loads((start.checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if config.max_steps and config.max_steps > 0:
        target = config.max_steps
    elif float(state.get("num_train_epochs") or -1) == float(config.num_train_epochs):
        target = state.get("max_steps")
    else:
        return False
    return bool(target) and state.get("global_step", 0) >= target


# --- finish -----------------------------------------------------------------------------------------

def finish(plan: Plan, parts: Parts, trainer, run_dir: RunDir, guard: guards.RunGuard, record: dict, start: Start,
           command: list[str], training_loss: float | None) -> dict:
    """Stop cleanly after a signal or divergence; otherwise save the model, measure it and write the
    summary at status `complete`."""
    main = is_main_process()
    steps = trainer.state.global_step
    records = run_dir.metrics() if main else []
    first, last = first_and_last(records)
    record = {**record, "steps": steps, "max_steps": trainer.state.max_steps,
              "train_loss": whole_run_loss(records, start.step, steps, training_loss),
              "metrics_first": first, "metrics_last": last}
    resume_cmd = checkpoints.resume_command(command)
    if guard.diverged is not None:
        _stop_diverged(plan, parts, run_dir, guard, record, resume_cmd, main)
    if guard.signum is not None and guard.signal_phase == "training":
        checkpoint = guard.last_good
        if main:
            run_dir.write_summary({**record, "status": "interrupted", "signal": guards.signal_name(guard.signum),
                                   "checkpoint": str(checkpoint) if checkpoint else None,
                                   "resume_command": resume_cmd})
        saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint could be saved"
        raise guards.RunInterrupted(guard.signum, f"{guards.signal_name(guard.signum)}: stopped at step {steps}"
                                    f"/{trainer.state.max_steps}; {saved}; summary in {run_dir / SUMMARY}"
                                    f"\n  resume with: {resume_cmd}")

    trainer.save_model(str(plan.output_dir))
    if not trainer.is_world_process_zero():
        return {}
    after = measure(plan, trainer.model, parts.tokenizer) if guard.signum is None else None
    summary = {**record, "status": "complete", "task_metric": _task_metric(record["task_metric_before"], after),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run_dir.write_summary(summary)
    if guard.signum is not None:
        raise guards.RunInterrupted(guard.signum, f"{guards.signal_name(guard.signum)}: training had finished and the "
                                    f"model is saved in {plan.output_dir}; the final evaluation was skipped")
    print(f"done: {summary['steps']} steps in {summary['runtime_s']:.1f}s · {headline(summary)}")
    return summary


def _stop_diverged(plan: Plan, parts: Parts, run_dir: RunDir, guard: guards.RunGuard, record: dict, resume_cmd: str,
                   main: bool) -> None:
    """Write the summary of a run whose loss or gradient stopped being finite, and raise."""
    where = guard.diverged
    values = ", ".join(f"{k}={v}" for k, v in where["values"].items())
    good, _ = checkpoints.newest_complete(plan.output_dir,
                                          require_optimizer=not plan.train.get("save_only_model", False))
    causes = guards.likely_causes(parts.config, parts.tokenizer, plan.algorithm.name)
    if main:
        run_dir.write_summary({**record, "status": "diverged", "diverged_at": where["step"],
                               "non_finite": where["values"], "likely_causes": causes,
                               "checkpoint": str(good) if good else None})
    kept = (f"kept the last good checkpoint, {good}; after the fix, continue it with: {resume_cmd}" if good else
            "no good checkpoint was saved (set train.save_strategy: steps and train.save_steps to keep some)")
    raise guards.TrainingDiverged(
        f"training stopped at step {where['step']}: {values} (the loss or gradient is no longer finite)",
        key="train", file=plan.recipe_path,
        fix="likely causes, most likely first:\n" + "\n".join(f"    - {c}" for c in causes) + f"\n  {kept}")


def _task_metric(before: dict | None, after: dict | None) -> dict | None:
    if not before or not after:
        return None
    return {"name": before["name"], "before": before["value"], "after": after["value"], "n": after.get("n")}


def headline(summary: dict) -> str:
    """The `done:` line's verdict: the task metric before → after, else the training loss."""
    task = summary.get("task_metric")
    if task:
        return f"{task['name']} {task['before']:.3f} → {task['after']:.3f}"
    loss = summary.get("train_loss")
    return f"train loss {loss:.4f}" if isinstance(loss, (int, float)) else "no loss logged"
