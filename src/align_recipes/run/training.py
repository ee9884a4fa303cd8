"""Plan → trainer → outputs: the one place that loads models and data and calls `trainer.train()`.

A run reads like a recipe:

    start   = RunDir(plan.output_dir).plan_start(…)   fresh, resumed or refused, before anything heavy
    parts   = load(plan)                              tokenizer, data, reward functions, model (run/load.py)
    trainer = build(plan, parts, …)                   the TRL config and the registry's trainer
    rowcheck.check_trainable_rows(…)                  stop if the trainer's length filters left no row
    begin(…)                                          the folder prepared, the metric before, status running
    fit(trainer, start)                               trainer.train(), continuing a checkpoint if asked
    finish(…)                                         the model saved, the metric after, status complete
                                                      (run/finish.py, with every other way a run ends)

A `RunGuard` turns Ctrl-C/SIGTERM into "save a checkpoint, write the summary, exit 130/143 with the
resume command" and stops a run whose loss or gradient is no longer finite, keeping the last good
checkpoint. Any other failure after `begin` leaves summary.json at status `failed`, with the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from align_recipes import console
from align_recipes.errors import RecipeError
from align_recipes.plan import Plan, resolved_yaml
from align_recipes.plan.generator import generator_record, given_server
from align_recipes.registry import load_class
from align_recipes.run import (
    checkpoints,
    data_audit,
    guards,
    harness,
    models,
    rowcheck,
    sharded,
    watch,
)
from align_recipes.run.finish import finish, server_death, write_failed
from align_recipes.run.load import Parts, load
from align_recipes.run.measure import (
    measure,
    remember_start,
    run_reward,
    scores_by_name,
    without_scores,
)
from align_recipes.run.progress import key_metrics, progress_callback
from align_recipes.run.rundir import (
    METRICS,
    RunDir,
    Start,
    is_main_process,
    metrics_before,
)


def train(
    plan: Plan, overwrite: bool = False, resume: bool = False, command: list[str] | None = None
) -> dict:
    """Run one recipe end to end and return its summary.

    resume=True (`--resume`) continues from the newest complete checkpoint in the output directory;
    the recipe's `train.resume_from_checkpoint` may also say `auto` (continue if there is a checkpoint,
    else start fresh), `latest` (as --resume) or name one checkpoint directory.
    Raises RecipeError (exit 2) for anything the user can fix, guards.RunInterrupted on Ctrl-C/SIGTERM
    (exit 130/143) and guards.TrainingDiverged (exit 2) when the loss stops being finite.
    """
    run_dir = RunDir(plan.output_dir)
    mode = checkpoints.RESUME_LATEST if resume else plan.train.get("resume_from_checkpoint")
    start = run_dir.plan_start(
        mode,
        overwrite,
        require_optimizer=not plan.train.get("save_only_model", False),
        base_dir=plan.base_dir,
    )
    command = list(command or [])
    existed = run_dir.path.exists()
    record = run_record(plan)
    # The run's own vLLM server (server mode with none named) lives in `servers`: stopped however the run ends.
    with guards.RunGuard(plan.output_dir) as guard, contextlib.ExitStack() as servers:
        try:
            parts = load(plan)
            guard.fp16 = bool(parts.config.fp16)
            served = servers.enter_context(serve_policy(plan, parts, run_dir))
            if served and "generator" in record:
                record["generator"]["server"] = served
            trainer = build(plan, parts, run_dir, guard)
            rowcheck.check_trainable_rows(plan, parts, trainer)
        except (RecipeError, KeyboardInterrupt) as exc:
            if isinstance(exc, data_audit.AuditStop):  # the folder says why: summary `failed`, audit.json
                if write_failed(run_dir, record, exc, existed):
                    data_audit.write_report(run_dir.path, exc.record)
            elif not existed:
                run_dir.remove_if_empty()  # the Trainer creates output_dir early: a refused run leaves no trace
            raise
        except BaseException as exc:  # a crash while loading or building: the folder says what happened
            cause = server_death(exc)
            write_failed(run_dir, record, cause, existed)
            if cause is not exc:
                raise cause from exc
            raise
        record["seed"] = parts.config.seed
        record["data"] = {split: report.records() for split, report in parts.reports.items()}
        try:
            begin(plan, parts, trainer, run_dir, start, overwrite, command, record)
            started = time.time()
            training_loss = fit(trainer, start, parts.config)
            record["runtime_s"] = round(time.time() - started, 2)
            return finish(plan, parts, trainer, run_dir, guard, record, start, command, training_loss)
        except (guards.RunInterrupted, guards.TrainingDiverged):
            raise  # their summary is written
        except BaseException as exc:
            # From `prepare` on the folder is this run's: whatever broke, its summary says so (never `running`).
            cause = server_death(exc)
            if run_dir.prepared:
                write_failed(run_dir, record, cause, existed=True)
            if cause is not exc:
                raise cause from exc
            raise


# --- build ------------------------------------------------------------------------------------------


def serve_policy(plan: Plan, parts: Parts, run_dir: RunDir):
    """vLLM server mode with no server named: the run's own local server (rl/vllm_server.py), its log in the
    output folder; yields its URL, or None when the run needs none."""
    if not getattr(parts.config, "use_vllm", False):
        return contextlib.nullcontext(None)
    from align_recipes.rl import vllm_server

    log = run_dir.path / "vllm_server.log"
    run_dir.live.add(log.name)  # written from the server's start, before --overwrite clears the folder
    return vllm_server.serve_policy(parts.config, parts.model, given_server(plan), log)


def build(plan: Plan, parts: Parts, run_dir: RunDir, guard: guards.RunGuard):
    """The registry's trainer, with TRL's keyword arguments and our callbacks: metrics.jsonl, the guard,
    and the progress display in place of the Trainer's own."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from align_recipes.rl import vllm_engine

    trainer_cls = load_class(plan.algorithm.trainer)
    sharded.adopt_fsdp_on_cpu(parts.config)
    use_vllm = bool(getattr(parts.config, "use_vllm", False))
    with vllm_engine.for_policy(parts.model, enabled=use_vllm):
        trainer = trainer_cls(
            model=parts.model,
            args=parts.config,
            train_dataset=parts.train_dataset,
            eval_dataset=parts.eval_dataset,
            processing_class=parts.tokenizer,
            peft_config=models.peft_config(plan.model, plan.algorithm.model_head),
            callbacks=[run_dir.metrics_callback(), guard.callback()],
            **parts.extras,
        )
    if use_vllm:
        vllm_engine.adopt(trainer)  # layerwise-reload weight sync, the trainer's stop tokens
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    progress = progress_callback(key_metrics(plan.algorithm))
    trainer.add_callback(progress)
    reward_watch = watch.reward_watch(plan, trainer, run_dir / METRICS, say=progress.note)
    if reward_watch is not None:
        trainer.add_callback(reward_watch)
    models.match_trainable_dtypes(trainer.model, bf16=bool(parts.config.bf16))
    return trainer


# --- begin ------------------------------------------------------------------------------------------


def run_record(plan: Plan) -> dict:
    """The summary fields every status of this run repeats (the task metric before is added by `begin`)."""
    return {
        "algorithm": plan.algorithm.name,
        "recipe": str(plan.recipe_path),
        "model": plan.model.name_or_path,
        "adapter": plan.model.adapter,
        "profile": plan.profile.name,
        "seed": plan.train.get("seed", 42),
        "output_dir": str(plan.output_dir),
        "task_metrics_before": None,
        **({"generator": generator} if (generator := generator_record(plan)) else {}),
    }


def begin(
    plan: Plan,
    parts: Parts,
    trainer,
    run_dir: RunDir,
    start: Start,
    overwrite: bool,
    command: list[str],
    record: dict,
) -> None:
    """Prepare the folder, show what will run, measure the task metric before training, and write the
    summary at status `running` (the per-row scores beside it, in heldout_scores.json). Fills `record`
    with the fields every later status repeats."""
    main = is_main_process()
    previous = run_dir.summary() if start.checkpoint is not None else {}
    if main:
        run_dir.prepare(plan, start, overwrite, command, resolved_yaml(plan), parts.config)
        data_audit.write_report(run_dir.path, parts.audit)
        # After the trainer is built: SFT's packing has made its sequences.
        packed = len(trainer.train_dataset) if getattr(parts.config, "packing", False) else None
        start_screen(
            plan,
            parts.params,
            parts.config,
            len(parts.train_dataset),
            start,
            packed,
            parts.reports.get("train"),
        )
    with sharded.whole_on_every_rank(trainer.model):  # ZeRO-3 loads the weights already split over the ranks
        before = None
        if (
            main
        ):  # the model as loaded is the start, also when resuming (the Trainer applies the checkpoint later)
            before = metrics_before(previous)
            if before:
                remember_start(plan, trainer.model, parts.tokenizer, parts.start)
            else:
                measured = measure(
                    plan, trainer.model, parts.tokenizer, parts.start, run_reward(plan, trainer)
                )
                before = without_scores(measured)
                if measured is not None:
                    run_dir.write_heldout_scores("before", scores_by_name(measured))
            harness_before = harness.measure_before(
                plan, run_dir.path, trainer.model, parts.tokenizer, resuming=start.checkpoint is not None
            )
            if harness_before is not None:
                record["harness_before"] = harness_before
    record["task_metrics_before"] = before
    if start.checkpoint is not None:
        record["resumed_from"] = [*previous.get("resumed_from", []), str(start.checkpoint)]
    if main:
        run_dir.write_summary(
            {**record, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        )


def start_screen(
    plan: Plan, params: int, config, train_rows: int, start: Start, packed: int | None = None, mixture=None
) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    effective = config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    precision = "bf16" if config.bf16 else "fp16" if config.fp16 else plan.model.dtype
    console.info(console.RULE)
    console.info(f"align-recipes · {plan.algorithm.name} · {plan.recipe_path}")
    console.info(
        f"  model      {plan.model.name_or_path} ({params / 1e6:.2f}M params), adapter {plan.model.adapter}"
    )
    console.info(
        f"  precision  {precision} · profile {plan.profile.name} · world size {world} · seed {config.seed}"
    )
    packing = (
        f" packed into {packed} sequences of ≤{getattr(config, 'max_length', None)} tokens" if packed else ""
    )
    console.info(f"  data       {train_rows} training rows{packing} · effective batch {effective}")
    for source in mixture.sources if mixture is not None and len(mixture.sources) > 1 else []:
        console.info(
            f"             {source.spec.section}: {source.taken} rows of {Path(source.spec.path).name} "
            f"(weight {source.spec.weight:g}, {source.converted} converted)"
        )
    console.info(
        f"  steps      {config.max_steps if config.max_steps > 0 else f'{config.num_train_epochs:g} epoch(s)'}"
    )
    console.info(f"  output     {plan.output_dir}")
    if start.checkpoint is not None:
        console.info(f"  resuming   from {start.checkpoint.name} (step {start.step})")
    for path, why in start.skipped:
        console.info(f"  skipped    {path.name}: {why}")
    console.info(console.RULE)


# --- fit --------------------------------------------------------------------------------------------


def fit(trainer, start: Start, config) -> float | None:
    """trainer.train(), from the checkpoint `start` names; returns the Trainer's mean training loss."""
    if _already_finished(start, config):
        # The Trainer would train one step past the end when resumed from the final checkpoint: load it instead.
        from transformers import TrainerState

        console.note(f"{start.checkpoint.name} is the last step: nothing left to train")
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
