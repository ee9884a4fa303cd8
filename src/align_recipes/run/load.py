"""Load: the TRL config, tokenizer, datasets, reward functions and model one run needs (`Parts`).

Everything the user can fix stops here as a RecipeError naming its key and the recipe file that wrote
it, before the model's weights load (run/training.py calls `load` first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align_recipes import console, reproducible
from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan import Plan
from align_recipes.redaction import redact
from align_recipes.registry import load_class
from align_recipes.run import data_audit, models, sharded
from align_recipes.run.chat_templates import use_training_template
from align_recipes.run.measure import StartScores
from align_recipes.run.rundir import is_main_process

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
