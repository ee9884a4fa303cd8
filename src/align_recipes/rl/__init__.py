"""Online RL trainers that TRL no longer ships (PPO) or never did (SPO), as one family.

- `core`: the math (GAE, whitening, clipped losses, KL estimators, entropy), pure torch functions.
- `control`: KL controllers (fixed, adaptive) and SPO's Beta baseline tracker.
- `baselines`, `spo_tracking`, `tracker_io`: SPO's per-prompt tracker (tensors, sharded by prompt), how a step
  uses it (advantages, D, prioritised sampling, offline start), and its safetensors checkpoint files.
- `config`, `presets`: `PPOConfig`, `SPOConfig` (TrainingArguments subclasses, TRL style); SPO's presets as
  plain data (the plan layer reads them without torch).
- `rollout`, `generation`, `value`: prompt sampling and scoring, the generation seam, the critic.
- `base`, `trainer`: `OnlineRLTrainer` and its two algorithms, `PPOTrainer` and `SPOTrainer`.

Names are imported lazily: ``from align_recipes.rl import PPOTrainer`` loads torch and transformers then.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PPOConfig": "align_recipes.rl.config",
    "SPOConfig": "align_recipes.rl.config",
    "OnlineRLConfig": "align_recipes.rl.config",
    "PPOTrainer": "align_recipes.rl.trainer",
    "SPOTrainer": "align_recipes.rl.trainer",
    "ValueHead": "align_recipes.rl.value",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'align_recipes.rl' has no attribute {name!r}")
