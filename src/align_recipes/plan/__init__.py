"""The plan layer: a recipe file becomes a validated `Plan`, before torch is imported.

plan = load_plan("recipes/tiny/dpo.yaml", ["train.beta=0.2"], profile="cpu")
"""

from align_recipes.plan.load import Plan, load_plan, parse_override, resolved_yaml

__all__ = ["Plan", "load_plan", "parse_override", "resolved_yaml"]
