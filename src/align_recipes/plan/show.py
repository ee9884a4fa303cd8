"""Human-readable views of recipes and of what is available: `show` and `list`."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from align_recipes import reproducible
from align_recipes.plan import profiles
from align_recipes.plan.generator import describe, generator_record
from align_recipes.plan.layers import DEFAULT
from align_recipes.plan.load import Plan
from align_recipes.registry import ALGORITHMS, names


def _flatten(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value and not prefix.endswith("columns"):
        rows = []
        for key, sub in value.items():
            rows.extend(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if (
        isinstance(value, list)
        and value
        and prefix.startswith("data.")
        and all(isinstance(v, dict) for v in value)
    ):
        return [row for index, sub in enumerate(value) for row in _flatten(sub, f"{prefix}[{index}]")]
    return [(prefix, value)]


def mixture_lines(plan: Plan) -> list[str]:
    """What each split's sources contribute: source -> weight -> rows, as far as known before loading (local
    files are counted; the rows that convert are known when the run loads them)."""
    from align_recipes.data.sources import count_rows

    lines = []
    for split in ("train", "eval"):
        specs = getattr(plan.data, split)
        if len(specs) < 2 and all(spec.weight == 1 for spec in specs):
            continue
        width = max(len(spec.section) for spec in specs)
        names = max(len(Path(spec.path).name) for spec in specs)
        for spec in specs:
            rows = count_rows(spec, plan.base_dir)
            if spec.count is not None:
                takes = f"{spec.count} rows" + (f" of the {rows} in the file" if rows is not None else "")
            elif rows is None:
                takes = (
                    "all its rows"
                    if spec.weight == 1
                    else f"{spec.weight:g} of its rows (counted when loaded)"
                )
            elif spec.weight == 1:
                takes = f"all {rows} rows in the file"
            else:
                takes = (
                    f"{int(Fraction(str(spec.weight)) * rows)} of the {rows} rows in the file "
                    "(fewer if some do not convert)"
                )
            name = Path(spec.path).name
            lines.append(f"  {spec.section:<{width}}  {name:<{names}}  weight {spec.weight:<4g} -> {takes}")
        if len(specs) > 1:
            lines.append(
                f"  data.{split}: the sources are converted each on its own, concatenated and shuffled "
                f"with train.seed ({plan.effective_config()['seed'][0]})"
            )
    return lines


def print_plan(plan: Plan, show_all: bool = False) -> None:
    print(f"recipe:    {plan.recipe_path}")
    print(
        f"algorithm: {plan.algorithm.name} -> {plan.algorithm.config_name} / {plan.algorithm.trainer.split(':')[1]}"
    )
    detected = f" (auto: {plan.profile.detected})" if plan.profile.detected else ""
    print(f"profile:   {plan.profile.name}{detected} - {plan.profile.description}")
    print(f"reproducible: {reproducible_line(plan)}")
    generator = describe(generator_record(plan))
    if generator:
        print(f"generator: {generator}")
    print("\n# resolved recipe  (value  <- source)")
    rows = [
        r
        for section in ("model", "data", "rewards", "evaluate")
        if section in plan.recipe
        for r in _flatten(plan.recipe[section], section)
    ]
    _print_rows([(k, v, plan.source(k)) for k, v in rows])
    mixture = mixture_lines(plan)
    if mixture:
        print("\n# data mixture  (source  weight -> rows)")
        print("\n".join(mixture))
    print(f"\n# effective {plan.algorithm.config_name}  (value  <- source)")
    effective = plan.effective_config()
    shown = [(f"train.{k}", v, s) for k, (v, s) in effective.items() if show_all or s != DEFAULT]
    _print_rows(shown)
    hidden = len(effective) - len(shown)
    if hidden:
        print(f"  … {hidden} more fields at TRL's defaults (--all lists them)")
    if plan.profile_changes:
        print(f"\n# what profile '{plan.profile.name}' changed")
        for change in plan.profile_changes:
            final = plan.source(change.key)
            note = "" if final.startswith(("profile", "launch")) else f"  (overridden by {final})"
            print(f"  {change.key} = {change.value!r}: {change.why}{note}")


def reproducible_line(plan: Plan) -> str:
    """`show`'s line on reproducible mode: on or off, why, what it pins and costs, and where it cannot hold."""
    if not plan.reproducible:
        return f"off ({plan.reproducible_why})"
    text = (
        f"on ({plan.reproducible_why}): CPU kernels pinned at {reproducible.LEVEL.upper()} (ATen, MKL, oneDNN), "
        f"one thread, deterministic algorithms; the same weights on every CPU of one maker (MKL's path "
        f"here: {reproducible.mkl_path()}; Intel CPUs share one, AMD and others another); "
        f"costs {reproducible.COST}"
    )
    if not reproducible.is_x86_64():
        text += f"; on this {reproducible.platform.machine()} machine only threads and algorithms are pinned"
    return text


def _print_rows(rows: list[tuple[str, Any, str]]) -> None:
    width = max((len(k) for k, _, _ in rows), default=0)
    for key, value, source in rows:
        print(f"  {key:<{width}}  {value!r:<28} <- {source}")


def print_list(names_only: bool = False) -> int:
    if names_only:
        print(" ".join(names()))
        return 0
    print("algorithms:")
    algos = list(ALGORITHMS.values())
    name_w = max(len(a.name) for a in algos)
    config_w = max(len(a.config_name) for a in algos)
    for algo in algos:
        print(
            f"  {algo.name:<{name_w}} {algo.config_name:<{config_w}} data: {algo.data_kind:<18} {algo.summary}"
        )
        print(f"  {'':<{name_w}} held-out metrics: {', '.join(algo.metrics)}")
    recipes_dir = Path("recipes")
    if recipes_dir.is_dir():
        print("\nrecipe families (recipes/<family>/<algorithm>.yaml):")
        for family in sorted(p for p in recipes_dir.iterdir() if p.is_dir()):
            recipes = sorted(p.stem for p in family.glob("*.yaml") if not p.stem.startswith("_"))
            print(f"  {family.name:<8} {' '.join(recipes)}")
    print("\nprofiles (--profile NAME, default auto):")
    for name in profiles.available():
        description = profiles._read(name).description
        print(f"  {name:<6} {description}")
    return 0
