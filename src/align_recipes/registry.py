"""The one table of algorithms: name → TRL Config class, trainer class and the dataset kind it needs.

This module is the only place that knows the list of algorithms. It holds import paths as strings so
that reading it (during `validate`, `show`, `list`) never imports torch or TRL; `load_class` imports
on demand when a run starts. Adding an algorithm is one `Algorithm(...)` entry here plus recipes
(and, where TRL lacks the trainer, the trainer itself).
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass

# Dataset kinds, named after what the data layer produces (see docs/data.md).
LANGUAGE_MODELING = "language_modeling"
PREFERENCE = "preference"
UNPAIRED = "unpaired"
PROMPT_ONLY = "prompt_only"
KINDS = (LANGUAGE_MODELING, PREFERENCE, UNPAIRED, PROMPT_ONLY)

# Held-out metrics (what each measures: plan/sections.py METRIC_KINDS, run/measure.py).
EXACT_MATCH = "exact_match"  # greedy answers equal the `answer` column
PREFERENCE_ACCURACY = "preference_accuracy"  # held-out pairs: the chosen answer scores above the rejected one
IMPLICIT_REWARD_ACCURACY = "implicit_reward_accuracy"  # the same, by log π/π_ref against the start model
REWARD = "reward"  # mean reward of greedy answers, by the recipe's reward functions
REWARD_THEN_ANSWERS = (REWARD, EXACT_MATCH)


@dataclass(frozen=True)
class Algorithm:
    """Everything the rest of align-recipes needs to know about one algorithm.

    Attributes:
        name: the value of `algorithm:` in a recipe.
        config: "module:Class" of the config dataclass whose fields the recipe's `train:` section takes.
        trainer: "module:Class" of the trainer; all take TRL's keyword arguments (model, args,
            train_dataset, eval_dataset, processing_class, peft_config, callbacks).
        data_kind: the dataset kind the trainer consumes.
        summary: one line for `align-recipes list` and the README table.
        model_head: "causal_lm" for policies, "reward" for a scalar-head sequence classifier.
        uses_rewards: the trainer takes `reward_funcs` (online RL: the recipe's `rewards:` section).
        generates: the policy samples completions while training (the vLLM seam and its profile
            choices apply; reports plot rewards and KL).
        reference: a frozen reference copy of the policy sits beside it: True, False, or the name of
            the `train:` field that switches it on when above 0 (GRPO's `beta`).
        critic: a value model is trained beside the policy.
        implicit_reward: the policy defines a reward β·log π/π_ref (the DPO family), which `eval`
            measures on held-out pairs as implicit_reward_accuracy.
        truncates: training rows are cut at `train.max_length`, so a batch can hold no trained token.
        liger: the trainer supports Liger kernels (`train.use_liger_kernel`); GPU profiles switch them on
            when liger-kernel is installed.
        shards: the sharding engines the trainer runs under: True for all (FSDP and DeepSpeed: TRL's do), or
            the names of those it does, as `plan.hardware.sharding` reports them ("fsdp", "zero2", ...). A plan
            that needs another is refused before loading (`runs_under`).
        metrics: the held-out metrics that show what it learns, the one it optimises first. A run measures
            them before and after training when its `evaluate:` section names no metric, and `eval DIR`
            measures those its data can serve (names: plan.sections.METRIC_KINDS).
    """

    name: str
    config: str
    trainer: str
    data_kind: str
    summary: str
    model_head: str = "causal_lm"
    uses_rewards: bool = False
    generates: bool = False
    reference: bool | str = False
    critic: bool = False
    implicit_reward: bool = False
    truncates: bool = True
    liger: bool = False
    shards: bool | tuple[str, ...] = True
    metrics: tuple[str, ...] = ("exact_match",)

    @property
    def config_name(self) -> str:
        return self.config.rsplit(":", 1)[1]

    @property
    def trainer_name(self) -> str:
        return self.trainer.rsplit(":", 1)[1]

    def runs_under(self, stage: str) -> bool:
        """Whether the trainer runs under sharding engine `stage` ("" = none: always)."""
        return not stage or self.shards is True or (bool(self.shards) and stage in self.shards)

    def has_reference(self, train: dict) -> bool:
        """Whether this run keeps a frozen reference model, given its `train:` values."""
        if isinstance(self.reference, str):
            return float(train.get(self.reference) or 0) > 0
        return self.reference


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm(
            "sft",
            "trl:SFTConfig",
            "trl:SFTTrainer",
            LANGUAGE_MODELING,
            "supervised fine-tuning on chats or prompt/completion pairs",
            liger=True,
        ),
        Algorithm(
            "reward",
            "trl:RewardConfig",
            "trl:RewardTrainer",
            PREFERENCE,
            "reward model (Bradley-Terry) on chosen/rejected pairs",
            model_head="reward",
            metrics=(PREFERENCE_ACCURACY,),
        ),
        Algorithm(
            "dpo",
            "trl:DPOConfig",
            "trl:DPOTrainer",
            PREFERENCE,
            "direct preference optimisation against a frozen reference",
            reference=True,
            implicit_reward=True,
            liger=True,
            metrics=(IMPLICIT_REWARD_ACCURACY, EXACT_MATCH),
        ),
        Algorithm(
            "orpo",
            "trl.experimental.orpo:ORPOConfig",
            "trl.experimental.orpo:ORPOTrainer",
            PREFERENCE,
            "odds-ratio preference optimisation, no reference model",
            implicit_reward=True,
            metrics=(PREFERENCE_ACCURACY, EXACT_MATCH),
        ),
        Algorithm(
            "cpo",
            "trl.experimental.cpo:CPOConfig",
            "trl.experimental.cpo:CPOTrainer",
            PREFERENCE,
            "contrastive preference optimisation (loss_type: simpo for SimPO), no reference model",
            implicit_reward=True,
            metrics=(PREFERENCE_ACCURACY, EXACT_MATCH),
        ),
        Algorithm(
            "kto",
            "trl:KTOConfig",
            "trl:KTOTrainer",
            UNPAIRED,
            "Kahneman-Tversky optimisation on thumbs-up/down examples",
            reference=True,
            implicit_reward=True,
            liger=True,
            metrics=(IMPLICIT_REWARD_ACCURACY, EXACT_MATCH),
        ),
        Algorithm(
            "grpo",
            "trl:GRPOConfig",
            "trl:GRPOTrainer",
            PROMPT_ONLY,
            "group-relative policy optimisation with reward functions",
            uses_rewards=True,
            generates=True,
            reference="beta",
            truncates=False,
            liger=True,
            metrics=REWARD_THEN_ANSWERS,
        ),
        Algorithm(
            "rloo",
            "trl:RLOOConfig",
            "trl:RLOOTrainer",
            PROMPT_ONLY,
            "REINFORCE leave-one-out: each sample's baseline is its group's other samples",
            uses_rewards=True,
            generates=True,
            reference="beta",
            truncates=False,
            metrics=REWARD_THEN_ANSWERS,
        ),
        Algorithm(
            "online_dpo",
            "trl.experimental.online_dpo:OnlineDPOConfig",
            "trl.experimental.online_dpo:OnlineDPOTrainer",
            PROMPT_ONLY,
            "DPO on pairs the policy samples, ranked by reward functions or a reward model",
            uses_rewards=True,
            generates=True,
            reference=True,
            implicit_reward=True,
            truncates=False,
            metrics=REWARD_THEN_ANSWERS,
        ),
        Algorithm(
            "ppo",
            "align_recipes.rl.config:PPOConfig",
            "align_recipes.rl.trainer:PPOTrainer",
            PROMPT_ONLY,
            "actor-critic RLHF with GAE and clipped losses (ours)",
            uses_rewards=True,
            generates=True,
            reference="kl_coef",
            critic=True,
            truncates=False,
            shards=("fsdp",),
            metrics=REWARD_THEN_ANSWERS,
        ),
        Algorithm(
            "spo",
            "align_recipes.rl.config:SPOConfig",
            "align_recipes.rl.trainer:SPOTrainer",
            PROMPT_ONLY,
            "single-sample RL with a per-prompt value tracker, no critic (ours)",
            uses_rewards=True,
            generates=True,
            reference="beta",
            truncates=False,
            shards=("fsdp",),
            metrics=REWARD_THEN_ANSWERS,
        ),
    ]
}


def names(where=None) -> list[str]:
    """Algorithm names, optionally only those for which `where(algorithm)` is true; in registry order.
    Help texts and error messages build their lists from here."""
    return [a.name for a in ALGORITHMS.values() if where is None or where(a)]


def names_text(where=None) -> str:
    """'grpo, ppo and spo': a list of names for prose."""
    found = names(where)
    return found[0] if len(found) == 1 else ", ".join(found[:-1]) + " and " + found[-1]


def load_class(ref: str) -> type:
    """Import "module:Class". TRL's experimental namespace warns on import; the warning is noise for
    our users (the recipe already chose the algorithm), so it is silenced here and nowhere else."""
    module_name, class_name = ref.split(":", 1)
    if module_name.startswith("trl.experimental"):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        module = importlib.import_module(module_name)
    return getattr(module, class_name)


if __name__ == "__main__":  # `python -m align_recipes.registry`: the names, for the Makefile
    print(" ".join(names()))
