"""Plan → trainer → outputs. The only place that loads models and data and calls `trainer.train()`."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

from align_recipes import models, outputs
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
    try:
        return config_cls(**plan.train_args)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{plan.algorithm.config_name} rejected the train section: {exc}",
                          file=plan.recipe_path, key="train",
                          fix="see the message above; TRL's docs for this config apply as they are") from None


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


def start_screen(plan: Plan, model, config, train_rows: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    effective = config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    spec = plan.recipe["model"]
    precision = "bf16" if config.bf16 else "fp16" if config.fp16 else str(spec.get("dtype", "auto"))
    params = sum(p.numel() for p in model.parameters())
    print("─" * 72)
    print(f"align-recipes · {plan.algorithm.name} · {plan.recipe_path}")
    print(f"  model      {spec['name_or_path']} ({params / 1e6:.2f}M params), adapter {spec.get('adapter', 'full')}")
    print(f"  precision  {precision} · profile {plan.profile.name} · world size {world}")
    print(f"  data       {train_rows} training rows · effective batch {effective}")
    print(f"  steps      {config.max_steps if config.max_steps > 0 else f'{config.num_train_epochs:g} epoch(s)'}")
    print(f"  output     {plan.output_dir}")
    print("─" * 72, flush=True)


def train(plan: Plan, overwrite: bool = False, resume: bool = False, command: list[str] | None = None) -> dict:
    """Run one recipe end to end and return its summary."""
    output_dir = plan.output_dir
    outputs.guard_output_dir(output_dir, overwrite=overwrite, resume=resume)
    _quiet_libraries()
    config = build_config(plan)

    from transformers import set_seed

    set_seed(config.seed)
    spec = plan.recipe["model"]
    model_path = models.resolve_model_path(spec, plan.base_dir)
    tokenizer = models.load_tokenizer(model_path, spec, plan.base_dir)
    train_dataset, eval_dataset = load_data(plan, tokenizer)
    extras = trainer_extras(plan, config)
    model = models.load_model(model_path, spec, plan.algorithm.model_head, use_cpu=bool(config.use_cpu))
    if plan.algorithm.model_head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id

    if outputs.is_main_process():
        if overwrite and output_dir.exists():
            import shutil

            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / outputs.RESOLVED_RECIPE).write_text(resolved_yaml(plan))
        (output_dir / outputs.MANIFEST).write_text(json.dumps(outputs.manifest(plan, command or []), indent=2) + "\n")
        start_screen(plan, model, config, len(train_dataset))

    from align_recipes.evaluate import measure

    before = measure(plan, model, tokenizer) if outputs.is_main_process() else None
    trainer_cls = load_class(plan.algorithm.trainer)
    trainer = trainer_cls(
        model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, peft_config=models.peft_config(spec, plan.algorithm.model_head),
        callbacks=[outputs.metrics_callback(output_dir)], **extras,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # muted while loading; the training bar is worth seeing
    started = time.time()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(str(output_dir))
    runtime = time.time() - started

    if not trainer.is_world_process_zero():
        return {}
    after = measure(plan, trainer.model, tokenizer)
    first, last = outputs.first_and_last(outputs.read_metrics(output_dir))
    summary = {
        "algorithm": plan.algorithm.name,
        "recipe": str(plan.recipe_path),
        "model": spec["name_or_path"],
        "adapter": spec.get("adapter", "full"),
        "profile": plan.profile.name,
        "steps": trainer.state.global_step,
        "runtime_s": round(runtime, 2),
        "train_loss": result.training_loss,
        "metrics_first": first,
        "metrics_last": last,
        "task_metric": _task_metric(plan, before, after),
        "output_dir": str(output_dir),
    }
    outputs.write_summary(output_dir, summary)
    print(f"done: {summary['steps']} steps in {runtime:.1f}s · {_headline(summary)}")
    print(f"wrote {output_dir}/ (model, {outputs.SUMMARY}, {outputs.METRICS}, {outputs.RESOLVED_RECIPE})")
    return summary


def _task_metric(plan: Plan, before: dict | None, after: dict | None) -> dict | None:
    if not before or not after:
        return None
    return {"name": before["name"], "before": before["value"], "after": after["value"], "n": after.get("n")}


def _headline(summary: dict) -> str:
    task = summary.get("task_metric")
    if task:
        return f"{task['name']} {task['before']:.3f} → {task['after']:.3f}"
    return f"train loss {summary['train_loss']:.4f}"
