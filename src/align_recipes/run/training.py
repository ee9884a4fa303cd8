"""Plan → trainer → outputs: the one place that loads models and data and calls `trainer.train()`.

A run reads like a recipe:

    start   = RunDir(plan.output_dir).plan_start(…)   fresh, resumed or refused, before anything heavy
    parts   = load(plan)                              tokenizer, data, reward functions, model
    trainer = build(plan, parts, …)                   the TRL config and the registry's trainer
    rowcheck.check_trainable_rows(…)                  stop if the trainer's length filters left no row
    begin(…)                                          the folder prepared, the metric before, status running
    fit(trainer, start)                               trainer.train(), continuing a checkpoint if asked
    finish(…)                                         the model saved, the metric after, status complete

A `RunGuard` turns Ctrl-C/SIGTERM into "save a checkpoint, write the summary, exit 130/143 with the
resume command" and stops a run whose loss or gradient is no longer finite, keeping the last good
checkpoint. Any other failure after `begin` leaves summary.json at status `failed`, with the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align_recipes import console, reproducible, stats
from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan import Plan, resolved_yaml
from align_recipes.plan.generator import generator_record, given_server
from align_recipes.redaction import redact
from align_recipes.registry import load_class
from align_recipes.run import (
    checkpoints,
    data_audit,
    guards,
    hacking,
    harness,
    models,
    rowcheck,
    sharded,
    watch,
)
from align_recipes.run.card import write_card
from align_recipes.run.chat_templates import use_training_template
from align_recipes.run.inference_template import save_inference_template
from align_recipes.run.measure import (
    StartScores,
    compare_metrics,
    measure,
    remember_start,
    run_reward,
    scores_by_name,
    without_scores,
)
from align_recipes.run.progress import key_metrics, progress_callback
from align_recipes.run.rundir import (
    METRICS,
    SUMMARY,
    RunDir,
    Start,
    first_and_last,
    is_main_process,
    metrics_before,
    task_metrics,
    whole_run_loss,
)

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
    reports: dict = field(
        default_factory=dict
    )  # "train"/"eval" -> data.mixture.MixtureReport (rows per source)
    params: int = (
        0  # as loaded, before adapters; a 4-bit weight counts the parameters it holds, not its bytes
    )
    start: StartScores = field(default_factory=StartScores)  # held-out scores of the start model (π_ref)
    audit: dict | None = None  # the data audit's report (audit.json), for preference, KTO and reward runs


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
                if _write_failed(run_dir, record, exc, existed):
                    data_audit.write_report(run_dir.path, exc.record)
            elif not existed:
                run_dir.remove_if_empty()  # the Trainer creates output_dir early: a refused run leaves no trace
            raise
        except BaseException as exc:  # a crash while loading or building: the folder says what happened
            cause = _server_death(exc)
            _write_failed(run_dir, record, cause, existed)
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
            cause = _server_death(exc)
            if run_dir.prepared:
                _write_failed(run_dir, record, cause, existed=True)
            if cause is not exc:
                raise cause from exc
            raise


def _server_death(exc: BaseException) -> BaseException:
    """The run's own vLLM server exited while the run used it (rl/vllm_server.died): that is the error to report,
    not the refused connection the trainer saw. Any other error, and Ctrl-C, stay as they are."""
    module = sys.modules.get("align_recipes.rl.vllm_server")  # imported only when the run started a server
    if module is None or not isinstance(exc, Exception):
        return exc
    return module.died() or exc


def _write_failed(run_dir: RunDir, record: dict, exc: BaseException, existed: bool) -> bool:
    """summary.json at status `failed`, with the error. Not over another run's folder that was never ours
    (an existing folder this run had not prepared keeps its summary). Returns whether it wrote."""
    if not is_main_process() or (
        existed and not run_dir.prepared and run_dir.status() not in (None, "failed")
    ):
        return False
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.write_summary(
        {
            **record,
            "status": "failed",
            "error": redact(f"{type(exc).__name__}: {exc}")[:2000],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    return True


# --- load -------------------------------------------------------------------------------------------


def load(plan: Plan) -> Parts:
    """The TRL config, tokenizer, datasets, reward functions and model; user errors name their key."""
    try:
        model_path = models.resolve_model_path(plan.model, plan.base_dir)
        models.quiet_libraries()
        config = build_config(plan)

        from transformers import set_seed

        if plan.reproducible:
            reproducible.apply_after_import()
        set_seed(config.seed)
        tokenizer = models.load_tokenizer(model_path, plan.model, plan.base_dir)
        if plan.train.get("assistant_only_loss"):
            # TRL masks non-assistant tokens only with a template that marks them: swap one in before loading weights.
            note = use_training_template(tokenizer, file=plan.provenance.where("train.assistant_only_loss"))
            if note and is_main_process():
                console.note(note)
        # Preference, KTO and reward data: one line, and a stop on what data.audit.fail_on names.
        audit = data_audit.audit_training_data(plan, tokenizer, config)
        train_dataset, eval_dataset, reports = load_data(plan, tokenizer, config.seed)
        extras = trainer_extras(plan, config, {"train": train_dataset, "eval": eval_dataset})
        model = models.load_model(
            model_path, plan.model, plan.algorithm.model_head, use_cpu=bool(config.use_cpu)
        )
    except RecipeError as exc:
        exc.file = exc.file or plan.provenance.where(exc.key or "") or str(plan.recipe_path)
        raise
    if plan.algorithm.model_head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.use_cpu:
        _set_cpu_threads(model, one=plan.reproducible)
    return Parts(
        config,
        tokenizer,
        model,
        train_dataset,
        eval_dataset,
        extras,
        reports,
        params=sharded.parameter_count(model),
        audit=audit,
    )


def build_config(plan: Plan):
    """The TRL Config object; its own __post_init__ checks become recipe errors, not tracebacks."""
    config_cls = load_class(plan.algorithm.config)
    args = dict(plan.train)
    # Which checkpoint to continue from is decided by RunDir.plan_start; the Trainer never reads it.
    args.pop("resume_from_checkpoint", None)
    # align-recipes pushes the finished folder itself (results.publish), with its own model card: the
    # Trainer would push at every save and replace the card with its own.
    args["push_to_hub"] = False
    try:
        config = config_cls(**args)
    except (ValueError, TypeError) as exc:
        raise RecipeError(
            f"{plan.algorithm.config_name} rejected the train section: {redact(str(exc))}",
            file=plan.recipe_path,
            key="train",
            fix="see the message above; TRL's docs for this config apply as they are",
        ) from None
    if getattr(config, "hub_token", None):
        # The Trainer pickles its arguments into training_args.bin in every checkpoint: keep the token out
        # of them. huggingface_hub reads HF_TOKEN when pushing.
        os.environ["HF_TOKEN"] = config.hub_token
        config.hub_token = None
    return config


def load_data(plan: Plan, tokenizer, seed: int):
    """Each split's sources loaded, converted and mixed by their weights (one source: as it converted)."""
    from align_recipes.data import DataError, load_mixture

    loaded, reports = {}, {}
    for split in ("train", "eval"):
        specs = getattr(plan.data, split)
        if not specs:
            continue
        try:
            dataset, report = load_mixture(
                specs, plan.base_dir, plan.algorithm.data_kind, tokenizer, seed=seed, section=f"data.{split}"
            )
        except DataError as exc:
            if exc.file is None:  # a weight the data cannot meet, sources that do not mix: the recipe's line
                exc.file, exc.line = plan.provenance.locate(exc.key or f"data.{split}")
                exc.file = exc.file or plan.recipe_path
            raise
        if is_main_process():
            console.info("\n".join(report.lines()))
        loaded[split], reports[split] = dataset, report
    return loaded.get("train"), loaded.get("eval"), reports


def trainer_extras(plan: Plan, config, datasets: dict | None = None) -> dict:
    """Keyword arguments only some trainers take (reward functions for online RL).

    A reward that reads a column the loaded data lacks, or fails when called on its first rows (a hub
    dataset `validate` could not read), stops here, before the model loads. A reward model named by
    `train.reward_model_path` (where the config has that field) joins the recipe's `rewards:` as one more
    reward function, weight 1: some trainers declare the field but never read it (TRL 1.16's
    OnlineDPOConfig), and every trainer takes reward functions."""
    if not plan.algorithm.uses_rewards:
        return {}
    from align_recipes.rewards import RewardSpecError, build_reward_funcs, missing_columns

    problems = []
    for split, dataset in (datasets or {}).items():
        if dataset is not None:
            carried = [c for c in dataset.column_names if c != "prompt"]
            name = ", ".join(Path(spec.path).name for spec in getattr(plan.data, split))
            problems += missing_columns(plan.rewards, carried, f"data.{split}", name, plan.rewards_dir)
    if not problems:  # and each reward runs on the first rows it will score (plan/reward_calls.py)
        from align_recipes.plan.reward_calls import PROBE_ROWS, reward_call_problems

        sources = {
            f"data.{split}": (
                [dataset[i] for i in range(min(PROBE_ROWS, len(dataset)))],
                [c for c in dataset.column_names if c != "prompt"],
                ", ".join(Path(spec.path).name for spec in getattr(plan.data, split)),
            )
            for split, dataset in (datasets or {}).items()
            if dataset is not None and "prompt" in dataset.column_names
        }
        problems = reward_call_problems(plan.rewards, sources, plan.rewards_dir)
    if problems:
        where = plan.provenance.where("rewards") or str(plan.recipe_path)
        raise RecipeErrors(
            [RecipeError(message, fix=fix, key=key, file=where) for key, message, fix in problems]
        )
    funcs, weights = build_reward_funcs(plan.rewards, plan.rewards_dir)
    reward_model = getattr(config, "reward_model_path", None)
    if reward_model:
        try:
            model_funcs, _ = build_reward_funcs([{"model": str(reward_model)}], plan.base_dir)
        except RewardSpecError as exc:
            raise RecipeError(
                str(exc),
                key="train.reward_model_path",
                fix="point it at a saved reward model directory or a hub id",
            ) from None
        funcs, weights = funcs + model_funcs, weights + [1.0]
    if hasattr(config, "reward_weights") and weights and config.reward_weights is None:
        config.reward_weights = weights
    return {"reward_funcs": funcs}


def _set_cpu_threads(model, one: bool = False) -> None:
    """Share the cores between processes; tiny models run fastest on one thread (thread start-up costs
    more than their matrix products: 100 tiny SFT steps took 8 s on one thread, 91 s on two busy cores).
    Reproducible mode (`one`) always takes one: a sum split over threads depends on the core count."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tiny = sharded.parameter_count(model) < TINY_MODEL_PARAMS
    torch.set_num_threads(1 if tiny or one else max(1, (os.cpu_count() or 1) // world))


# --- build ------------------------------------------------------------------------------------------


def serve_policy(plan: Plan, parts: Parts, run_dir: RunDir):
    """vLLM server mode with no server named: the run's own local server (rl/vllm_server.py), its log in the
    output folder; yields its URL, or None when the run needs none."""
    if not getattr(parts.config, "use_vllm", False):
        return contextlib.nullcontext(None)
    from align_recipes.rl import vllm_server

    log = run_dir.path / "vllm_server.log"
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


# --- finish -----------------------------------------------------------------------------------------


def finish(
    plan: Plan,
    parts: Parts,
    trainer,
    run_dir: RunDir,
    guard: guards.RunGuard,
    record: dict,
    start: Start,
    command: list[str],
    training_loss: float | None,
) -> dict:
    """Stop cleanly after a signal or divergence; otherwise save the model, measure it and write the
    summary at status `complete`."""
    main = is_main_process()
    steps = trainer.state.global_step
    records = run_dir.metrics() if main else []
    first, last = first_and_last(records)
    record = {
        **record,
        "distributed": sharded.describe(trainer),
        "steps": steps,
        "max_steps": trainer.state.max_steps,
        "train_loss": whole_run_loss(records, start.step, steps, training_loss),
        "metrics_first": first,
        "metrics_last": last,
    }
    resume_cmd = checkpoints.resume_command(command)
    if guard.diverged is not None:
        _stop_diverged(plan, parts, run_dir, guard, record, resume_cmd, main)
    if guard.signum is not None and guard.signal_phase == "training":
        checkpoint = guard.last_good
        if main:
            run_dir.write_summary(
                {
                    **record,
                    "status": "interrupted",
                    "signal": guards.signal_name(guard.signum),
                    "checkpoint": str(checkpoint) if checkpoint else None,
                    "resume_command": resume_cmd,
                }
            )
        saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint could be saved"
        raise guards.RunInterrupted(
            guard.signum,
            f"{guards.signal_name(guard.signum)}: stopped at step {steps}"
            f"/{trainer.state.max_steps}; {saved}; summary in {run_dir / SUMMARY}"
            f"\n  resume with: {resume_cmd}",
        )

    sharded.save_consolidated(trainer, plan.output_dir)
    if not trainer.is_world_process_zero():
        return {}
    save_inference_template(plan.output_dir, parts.tokenizer)
    measured = sharded.measured_model(trainer, plan.output_dir) if guard.signum is None else None
    after = (
        measure(plan, measured, parts.tokenizer, parts.start, run_reward(plan, trainer))
        if measured is not None
        else None
    )
    if after is not None:
        run_dir.write_heldout_scores("after", scores_by_name(after))
    general = (
        harness.measure_after(plan, run_dir.path, measured, parts.tokenizer) if measured is not None else None
    )
    watched = watch.watch_summary(trainer)
    summary = {
        **record,
        "status": hacking.run_status(watched),  # `stopped_hacking` when evaluate.on_hacking ended it
        "task_metrics": compare_metrics(
            record["task_metrics_before"], after, run_dir.heldout_scores("before")
        ),
        **({"harness": general} if general is not None else {}),
        **watched,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    run_dir.write_summary(summary)
    write_card(plan.output_dir)
    if guard.signum is not None:
        raise guards.RunInterrupted(
            guard.signum,
            f"{guards.signal_name(guard.signum)}: training had finished and the "
            f"model is saved in {plan.output_dir}; the final evaluation was skipped",
        )
    # The wall time has its own line: the `done:` line is the run's result, the same on every x86-64 CPU in
    # reproducible mode (README quotes it exactly), and time is not.
    console.info(f"trained in {summary['runtime_s']:.1f}s · {plan.output_dir}")
    console.done(f"{summary['steps']} steps · {headline(summary)}")
    return summary


def _stop_diverged(
    plan: Plan,
    parts: Parts,
    run_dir: RunDir,
    guard: guards.RunGuard,
    record: dict,
    resume_cmd: str,
    main: bool,
) -> None:
    """Write the summary of a run whose loss or gradient stopped being finite, and raise."""
    where = guard.diverged
    values = ", ".join(f"{k}={v}" for k, v in where["values"].items())
    good, _ = checkpoints.newest_complete(
        plan.output_dir, require_optimizer=not plan.train.get("save_only_model", False)
    )
    causes = guards.likely_causes(parts.config, parts.tokenizer, plan.algorithm.name)
    if main:
        run_dir.write_summary(
            {
                **record,
                "status": "diverged",
                "diverged_at": where["step"],
                "non_finite": where["values"],
                "likely_causes": causes,
                "checkpoint": str(good) if good else None,
            }
        )
    kept = (
        f"kept the last good checkpoint, {good}; after the fix, continue it with: {resume_cmd}"
        if good
        else "no good checkpoint was saved (set train.save_strategy: steps and train.save_steps to keep some)"
    )
    raise guards.TrainingDiverged(
        f"training stopped at step {where['step']}: {values} (the loss or gradient is no longer finite)",
        key="train",
        file=plan.recipe_path,
        fix="likely causes, most likely first:\n" + "\n".join(f"    - {c}" for c in causes) + f"\n  {kept}",
    )


def headline(summary: dict) -> str:
    """The `done:` line's verdict: every held-out metric before → after with its paired difference, 95%
    interval, n and verdict (stats.before_after), else the training loss."""
    shown = [
        stats.before_after(t)
        for t in task_metrics(summary)
        if isinstance(t.get("before"), (int, float)) and isinstance(t.get("after"), (int, float))
    ]
    if shown:
        return " · ".join(shown) + hacking.done_note(summary)
    loss = summary.get("train_loss")
    return f"train loss {loss:.4f}" if isinstance(loss, (int, float)) else "no loss logged"
