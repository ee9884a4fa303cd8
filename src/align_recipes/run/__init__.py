"""The run layer: load the model and data, build the trainer, fit, finish. Imports torch on demand.

from align_recipes.plan import load_plan
from align_recipes.run import train
summary = train(load_plan("recipes/tiny/dpo.yaml"))
"""

from align_recipes.run.training import train

__all__ = ["train"]
