"""Plan → trainer → outputs. The only place that loads models and data and calls `trainer.train()`.

Before anything heavy is imported, `checkpoints.plan_start` decides whether the run starts fresh or
continues a checkpoint (and refuses to write over another run). During training a `RunGuard`
turns Ctrl-C/SIGTERM into "save a checkpoint, write the summary, exit 130/143 with the resume
command", and stops a run whose loss or gradient is no longer finite, keeping the last good
checkpoint. summary.json always tells the state of the run: running, interrupted, diverged or complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import yaml

from align_recipes import checkpoints, guards, models, outputs, redaction, sharded
from align_recipes.errors import RecipeError
from align_recipes.recipe import Plan, resolved_yaml
from align_recipes.registry import load_class

log = logging.getLogger("align_recipes")


def _quiet_libraries() -> None:
    """Keep the console for our own report: library chatter that users cannot act on is muted."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    # transformers 5 renames gradient_checkpointing; TRL 1.16 still sets the old name itself.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated and will be removed in v6.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def build_config(plan: Plan):
    """The TRL Config object; its own __post_init__ checks become recipe errors, not tracebacks."""
    config_cls = load_class(plan.algorithm.config)
    args = dict(plan.train_args)
    # Which checkpoint to continue from is decided by checkpoints.plan_start; the Trainer never reads it.
    args.pop("resume_from_checkpoint", None)
    try:
        config = config_cls(**args)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{plan.algorithm.config_name} rejected the train section: {redaction.redact(str(exc))}",
                          file=plan.recipe_path, key="train",
                          fix="see the message above; TRL's docs for this config apply as they are") from None
    if getattr(config, "hub_token", None):
        # The Trainer pickles its arguments into training_args.bin in every checkpoint: keep the token out
        # of them. huggingface_hub reads HF_TOKEN when pushing.
        os.environ["HF_TOKEN"] = config.hub_token
        config.hub_token = None
    return config


def load_data(plan: Plan, tokenizer):
    from align_recipes.data import DataError, DataSpec, load

    loaded = {}
    for split in ("train", "eval"):
        entry = plan.recipe["data"].get(split)
        if not entry:
            continue
        try:
            dataset, report = load(DataSpec.from_dict(entry, section=f"data.{split}"), plan.base_dir,
                                   plan.algorithm.data_kind, tokenizer)
        except DataError as exc:
            exc.file = exc.file or plan.recipe_path
            raise
        if outputs.is_main_process():
            print(report.summary_line())
        loaded[split] = dataset
    return loaded.get("train"), loaded.get("eval")


def trainer_extras(plan: Plan, config) -> dict:
    """Keyword arguments only some trainers take (reward functions for online RL)."""
    if not plan.algorithm.uses_rewards:
        return {}
    from align_recipes.rewards import build_reward_funcs

    funcs, weights = build_reward_funcs(plan.recipe.get("rewards") or [], plan.base_dir)
    if hasattr(config, "reward_weights") and weights and config.reward_weights is None:
        config.reward_weights = weights
    return {"reward_funcs": funcs}


TINY_MODEL_PARAMS = 5_000_000


def _set_cpu_threads(model) -> None:
    """Share the cores between processes; tiny models run fastest on one thread (thread start-up costs
    more than their matrix products: 100 tiny SFT steps took 8 s on one thread, 91 s on two busy cores)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tiny = sharded.parameter_count(model) < TINY_MODEL_PARAMS
    torch.set_num_threads(1 if tiny else max(1, (os.cpu_count() or 1) // world))


def start_screen(plan: Plan, model, config, train_rows: int, start: checkpoints.Start) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    effective = config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    spec = plan.recipe["model"]
    precision = "bf16" if config.bf16 else "fp16" if config.fp16 else str(spec.get("dtype", "auto"))
    params = sharded.parameter_count(model)
    print("─" * 72)
    print(f"align-recipes · {plan.algorithm.name} · {plan.recipe_path}")
    print(f"  model      {spec['name_or_path']} ({params / 1e6:.2f}M params), adapter {spec.get('adapter', 'full')}")
    print(f"  precision  {precision} · profile {plan.profile.name} · world size {world} · seed {config.seed}")
    print(f"  data       {train_rows} training rows · effective batch {effective}")
    print(f"  steps      {config.max_steps if config.max_steps > 0 else f'{config.num_train_epochs:g} epoch(s)'}")
    print(f"  output     {plan.output_dir}")
    if start.checkpoint is not None:
        print(f"  resuming   from {start.checkpoint.name} (step {start.step})")
    for path, why in start.skipped:
        print(f"  skipped    {path.name}: {why}")
    print("─" * 72, flush=True)


def train(plan: Plan, overwrite: bool = False, resume: bool = False, command: list[str] | None = None,
          report: bool = True) -> dict:
    """Run one recipe end to end and return its summary.

    resume=True (`--resume`) continues from the newest complete checkpoint in the output directory;
    the recipe's `train.resume_from_checkpoint` may also say `auto` (continue if there is a checkpoint,
    else start fresh), `latest` (as --resume) or name one checkpoint directory.
    report=False (`--no-report`) skips report.md and its plots; `align-recipes report DIR` writes them later.
    Raises RecipeError (exit 2) for anything the user can fix, guards.RunInterrupted on Ctrl-C/SIGTERM
    (exit 130/143) and guards.TrainingDiverged (exit 2) when the loss stops being finite.
    """
    mode = checkpoints.RESUME_LATEST if resume else plan.train_args.get("resume_from_checkpoint")
    start = checkpoints.plan_start(plan.output_dir, mode, overwrite, base_dir=plan.base_dir,
                                   require_optimizer=not plan.train_args.get("save_only_model", False))
    with guards.RunGuard(plan.output_dir) as guard:
        return _train(plan, start, guard, overwrite, list(command or []), report)


def _prepare_output_dir(plan: Plan, start: checkpoints.Start, overwrite: bool, command: list[str], config) -> None:
    """Clear, continue or create the output directory, and record how to reproduce the run."""
    output_dir = plan.output_dir
    resolved = yaml.safe_dump(redaction.redact_obj(yaml.safe_load(resolved_yaml(plan))), sort_keys=False,
                              allow_unicode=True)
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    if start.checkpoint is not None or start.fresh_over_leftovers:
        # Checkpoints cut short after the one we continue from would be overwritten half-way: remove them.
        for path, why in start.skipped:
            shutil.rmtree(path, ignore_errors=True)
    if start.fresh_over_leftovers:
        for name in (outputs.METRICS, outputs.SUMMARY):
            (output_dir / name).unlink(missing_ok=True)
        print(f"note: nothing to resume in {output_dir} (no complete checkpoint): starting over")
    output_dir.mkdir(parents=True, exist_ok=True)
    if start.checkpoint is not None:
        # Resuming from an older checkpoint than the newest: the newer ones are kept, under a name neither
        # the Trainer's rotation nor our discovery will take for a checkpoint of this run.
        for path in checkpoints.list_checkpoints(output_dir):
            if checkpoints.checkpoint_step(path) > start.step:
                aside = output_dir / f"superseded-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                path.rename(aside)
                print(f"note: {path.name} is newer than {start.checkpoint.name}: moved to {aside.name}")
        outputs.truncate_metrics(output_dir, start.step)
        changed = _recipe_changes(output_dir / outputs.RESOLVED_RECIPE, resolved)
        if changed:
            print(f"note: resuming with a changed recipe ({', '.join(changed[:6])}"
                  f"{' …' if len(changed) > 6 else ''}); the new values apply from step {start.step}")
        outputs.record_resume(output_dir, plan, command, start.checkpoint, changed)
    else:
        outputs.write_manifest(output_dir, outputs.manifest(plan, command, config))
    (output_dir / outputs.RESOLVED_RECIPE).write_text(resolved)


def _recipe_changes(previous_file: Path, resolved: str) -> list[str]:
    try:
        before = yaml.safe_load(previous_file.read_text())
    except (OSError, yaml.YAMLError):
        return []
    old, new = _flat(before), _flat(yaml.safe_load(resolved))
    ignore = {"train.resume_from_checkpoint"}
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _train(plan: Plan, start: checkpoints.Start, guard: guards.RunGuard, overwrite: bool, command: list[str],
           report: bool) -> dict:
    output_dir = plan.output_dir
    spec = plan.recipe["model"]
    try:
        model_path = models.resolve_model_path(spec, plan.base_dir)
    except RecipeError as exc:
        exc.file = exc.file or _written_in(plan, exc.key)
        raise
    _quiet_libraries()
    config = build_config(plan)
    guard.fp16 = bool(config.fp16)

    from transformers import set_seed

    set_seed(config.seed)
    try:
        tokenizer = models.load_tokenizer(model_path, spec, plan.base_dir)
        train_dataset, eval_dataset = load_data(plan, tokenizer)
        extras = trainer_extras(plan, config)
        model = models.load_model(model_path, spec, plan.algorithm.model_head, use_cpu=bool(config.use_cpu))
    except RecipeError as exc:
        exc.file = exc.file or _written_in(plan, exc.key)
        raise
    if plan.algorithm.model_head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.use_cpu:
        _set_cpu_threads(model)

    main = outputs.is_main_process()
    previous = outputs.read_summary(output_dir) if start.checkpoint is not None else {}
    if main:
        _prepare_output_dir(plan, start, overwrite, command, config)
        start_screen(plan, model, config, len(train_dataset), start)

    from align_recipes.evaluate import measure

    before = None
    with sharded.whole_on_every_rank(model):  # ZeRO-3 loads the weights already split over the ranks
        if main:
            before = previous.get("task_metric_before") or measure(plan, model, tokenizer)
    base = {
        "algorithm": plan.algorithm.name,
        "recipe": str(plan.recipe_path),
        "model": spec["name_or_path"],
        "adapter": spec.get("adapter", "full"),
        "profile": plan.profile.name,
        "seed": config.seed,
        "output_dir": str(output_dir),
        "task_metric_before": before,
    }
    if start.checkpoint is not None:
        base["resumed_from"] = [*previous.get("resumed_from", []), str(start.checkpoint)]
    if main:
        outputs.write_summary(output_dir, {**base, "status": "running",
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    trainer_cls = load_class(plan.algorithm.trainer)
    sharded.adopt_fsdp_on_cpu(config)
    trainer = trainer_cls(
        model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, peft_config=models.peft_config(spec, plan.algorithm.model_head),
        callbacks=[outputs.metrics_callback(output_dir), guard.callback()], **extras,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # muted while loading; the training bar is worth seeing
    started = time.time()
    if _already_finished(start, config):
        # The Trainer would train one step past the end when resumed from the final checkpoint: load it instead.
        from transformers import TrainerState

        print(f"note: {start.checkpoint.name} is the last step: nothing left to train")
        trainer._load_from_checkpoint(str(start.checkpoint))
        trainer.state = TrainerState.load_from_json(str(start.checkpoint / "trainer_state.json"))
        training_loss = None
    else:
        result = trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
        training_loss = result.training_loss
    runtime = time.time() - started
    steps = trainer.state.global_step
    records = outputs.read_metrics(output_dir) if main else []
    first, last = outputs.first_and_last(records)
    base.update(distributed=sharded.describe(trainer))
    base.update(steps=steps, max_steps=trainer.state.max_steps, runtime_s=round(runtime, 2),
                train_loss=outputs.whole_run_loss(records, start.step, steps, training_loss),
                metrics_first=first, metrics_last=last)
    resume_cmd = checkpoints.resume_command(command)

    if guard.diverged is not None:
        _stop_diverged(plan, config, tokenizer, guard, base, resume_cmd, main)
    if guard.signum is not None and guard.signal_phase == "training":
        checkpoint = guard.last_good
        if main:
            outputs.write_summary(output_dir, {**base, "status": "interrupted",
                                               "signal": guards.signal_name(guard.signum),
                                               "checkpoint": str(checkpoint) if checkpoint else None,
                                               "resume_command": resume_cmd})
        saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint could be saved"
        raise guards.RunInterrupted(guard.signum, f"{guards.signal_name(guard.signum)}: stopped at step {steps}"
                                    f"/{trainer.state.max_steps}; {saved}; summary in {output_dir / outputs.SUMMARY}"
                                    f"\n  resume with: {resume_cmd}")

    sharded.save_consolidated(trainer, output_dir)
    if not trainer.is_world_process_zero():
        return {}
    after = None
    if guard.signum is None:
        after = measure(plan, sharded.measured_model(trainer, output_dir), tokenizer)
    summary = {**base, "status": "complete", "task_metric": _task_metric(before, after),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    outputs.write_summary(output_dir, summary)
    if guard.signum is not None:
        raise guards.RunInterrupted(guard.signum, f"{guards.signal_name(guard.signum)}: training had finished and the "
                                    f"model is saved in {output_dir}; the final evaluation was skipped")
    print(f"done: {summary['steps']} steps in {runtime:.1f}s · {_headline(summary)}")
    written = f"model, {outputs.SUMMARY}, {outputs.METRICS}, {outputs.RESOLVED_RECIPE}"
    if report:
        from align_recipes.report import write_report

        print(f"wrote {output_dir}/ ({written}, {write_report(output_dir).name} with plots)")
    else:
        print(f"wrote {output_dir}/ ({written}); plots: align-recipes report {output_dir}")
    return summary


def _already_finished(start: checkpoints.Start, config) -> bool:
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


def _written_in(plan: Plan, key: str | None) -> str:
    """Where a key's value came from, for errors found after validation: the command line or a recipe file."""
    source = plan.sources.get(key or "", "")
    if source == "override":
        return "command line"
    return source.split(":", 1)[1] if source.startswith("recipe:") else str(plan.recipe_path)


def _stop_diverged(plan: Plan, config, tokenizer, guard: guards.RunGuard, base: dict, resume_cmd: str,
                   main: bool) -> None:
    """Write the summary of a run whose loss or gradient stopped being finite, and raise."""
    where = guard.diverged
    values = ", ".join(f"{k}={v}" for k, v in where["values"].items())
    good, _ = checkpoints.newest_complete(plan.output_dir,
                                          require_optimizer=not plan.train_args.get("save_only_model", False))
    causes = guards.likely_causes(config, tokenizer, plan.algorithm.name)
    if main:
        outputs.write_summary(plan.output_dir, {**base, "status": "diverged", "diverged_at": where["step"],
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


def _headline(summary: dict) -> str:
    task = summary.get("task_metric")
    if task:
        return f"{task['name']} {task['before']:.3f} → {task['after']:.3f}"
    loss = summary.get("train_loss")
    return f"train loss {loss:.4f}" if isinstance(loss, (int, float)) else "no loss logged"
