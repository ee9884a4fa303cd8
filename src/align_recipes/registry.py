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


@dataclass(frozen=True)
class Algorithm:
    """How one algorithm is run.

    Attributes:
        name: the value of `algorithm:` in a recipe.
        config: "module:Class" of the config dataclass whose fields the recipe's `train:` section takes.
        trainer: "module:Class" of the trainer; all take TRL's keyword arguments (model, args,
            train_dataset, eval_dataset, processing_class, peft_config, callbacks).
        data_kind: the dataset kind the trainer consumes.
        model_head: "causal_lm" for policies, "reward" for a scalar-head sequence classifier.
        uses_rewards: the trainer takes `reward_funcs` (online RL: the recipe's `rewards:` section).
        summary: one line for `align-recipes list` and the README table.
    """

    name: str
    config: str
    trainer: str
    data_kind: str
    summary: str
    model_head: str = "causal_lm"
    uses_rewards: bool = False

    @property
    def config_name(self) -> str:
        return self.config.rsplit(":", 1)[1]

    @property
    def generates(self) -> bool:
        """Online algorithms sample from the policy while training (the vLLM seam applies)."""
        return self.data_kind == PROMPT_ONLY


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("sft", "trl:SFTConfig", "trl:SFTTrainer", LANGUAGE_MODELING,
                  "supervised fine-tuning on chats or prompt/completion pairs"),
        Algorithm("reward", "trl:RewardConfig", "trl:RewardTrainer", PREFERENCE,
                  "reward model (Bradley-Terry) on chosen/rejected pairs", model_head="reward"),
        Algorithm("dpo", "trl:DPOConfig", "trl:DPOTrainer", PREFERENCE,
                  "direct preference optimisation against a frozen reference"),
        Algorithm("orpo", "trl.experimental.orpo:ORPOConfig", "trl.experimental.orpo:ORPOTrainer", PREFERENCE,
                  "odds-ratio preference optimisation, no reference model"),
        Algorithm("kto", "trl:KTOConfig", "trl:KTOTrainer", UNPAIRED,
                  "Kahneman-Tversky optimisation on thumbs-up/down examples"),
        Algorithm("grpo", "trl:GRPOConfig", "trl:GRPOTrainer", PROMPT_ONLY,
                  "group-relative policy optimisation with reward functions", uses_rewards=True),
        Algorithm("ppo", "align_recipes.rl.config:PPOConfig", "align_recipes.rl.trainer:PPOTrainer", PROMPT_ONLY,
                  "actor-critic RLHF with GAE and clipped losses (ours)", uses_rewards=True),
        Algorithm("spo", "align_recipes.rl.config:SPOConfig", "align_recipes.rl.trainer:SPOTrainer", PROMPT_ONLY,
                  "single-sample RL with a per-prompt value tracker, no critic (ours)", uses_rewards=True),
    ]
}


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
