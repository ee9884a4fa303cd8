"""Recipe YAML → a validated Plan, with the source of every value. Never imports torch.

Merge order, lowest first: TRL config defaults < our defaults < hardware profile < an SPO `train.preset`
< the recipe's `extends` chain (parents first) < the recipe < command-line overrides (`train.learning_rate=1e-5`).
`load_plan` reads top to bottom: read the layers, pick the algorithm, resolve paths, lay the
profile under the recipe, validate, fit the batch to the profile, check feasibility, build the
typed sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_recipes.errors import RecipeError, RecipeErrors, did_you_mean
from align_recipes.plan import micro_batch, profile_layer, profiles, rules, scaling, trl_fields
from align_recipes.plan.checking import FeasibilityContext
from align_recipes.plan.hardware import sharding
from align_recipes.plan.layers import (
    DEFAULT,
    OURS,
    OVERRIDE,
    Provenance,
    override_layer,
    parse_override,
    read_chain,
    recipe_label,
    resolve_paths,
)
from align_recipes.plan.model_size import estimate_params
from align_recipes.plan.sections import DataSection, EvaluateSection, ModelSection
from align_recipes.plan.validate import validate_recipe
from align_recipes.plan.yamlio import plain
from align_recipes.registry import ALGORITHMS, Algorithm


@dataclass
class Plan:
    """Everything a run needs, resolved, before anything heavy is loaded."""

    recipe_path: Path  # absolute
    algorithm: Algorithm
    model: ModelSection
    data: DataSection
    evaluate: EvaluateSection | None
    rewards: list[dict]  # validated reward entries (align_recipes.rewards builds the functions)
    train: dict[str, Any]  # the TRL config fields the layers set; TRL's defaults fill the rest
    profile: profiles.Profile
    provenance: Provenance
    recipe: dict[
        str, Any
    ]  # the merged sections as written (paths resolved): for `show` and recipe.resolved.yaml
    profile_changes: list[profiles.Change] = field(default_factory=list)
    launch: scaling.Launch | None = (
        None  # how to spread it over this machine's GPUs (None: one process will do)
    )
    reproducible: bool = False  # reproducible mode (align_recipes/reproducible.py): applied by the CLI
    reproducible_why: str = ""  # what decided it, for `show` and the manifest
    pending: list = field(default_factory=list)  # plan.pending.Pending: inputs the family writes first

    @property
    def base_dir(self) -> Path:
        return self.recipe_path.parent

    @property
    def output_dir(self) -> Path:
        return Path(self.train["output_dir"])

    @property
    def rewards_dir(self) -> Path:
        """Where reward references that are still relative are looked up (then the current directory): the
        folder of the file that wrote `rewards:` (modules import from there), else the recipe's."""
        return self.provenance.folder("rewards", self.base_dir)

    @property
    def sources(self) -> dict[str, str]:
        """Every dotted key a layer set -> its label."""
        return self.provenance.sources

    def source(self, dotted: str) -> str:
        """Which layer set a value: 'recipe:<file>', 'profile:<name>', 'override', 'align-recipes'."""
        return self.provenance.source(dotted) or OURS

    def effective_config(self) -> dict[str, tuple[Any, str]]:
        """Every field of the TRL config: (value, source)."""
        result = {}
        for name, info in trl_fields.config_fields(self.algorithm.config_name).items():
            if name in self.train:
                result[name] = (self.train[name], self.source(f"train.{name}"))
            else:
                result[name] = (info.default, DEFAULT)
        return result


def load_plan(
    recipe_path: str | Path,
    overrides: list[str] = (),
    profile: str | None = None,
    allow_pending: bool = False,
) -> Plan:
    """Read, merge and validate a recipe. Raises RecipeError(s); loads no model and no torch. With
    `allow_pending` (validate, show), a model folder an earlier step of the family writes is listed in
    `plan.pending` instead of refused (plan/pending.py)."""
    recipe_path = Path(recipe_path)
    if not recipe_path.exists() and recipe_path.suffix == "" and (Path("recipes") / recipe_path).is_dir():
        raise RecipeError(
            f"'{recipe_path}' is a recipe family, not a recipe file",
            fix=f"name one file, e.g. recipes/{recipe_path}/dpo.yaml",
            file=recipe_path,
        )
    provenance = Provenance()
    recipe: dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    for path, data in read_chain(recipe_path):
        label = recipe_label(path)
        provenance.files[label] = (path, data)
        provenance.merge(recipe, {k: v for k, v in data.items() if k != "extends"}, label)
    for text in overrides:
        provenance.merge(recipe, override_layer(text), OVERRIDE)
    recipe_path = recipe_path.resolve()

    algorithm = _algorithm(recipe, provenance, recipe_path)
    _rename_aliases(recipe, provenance)
    _lay_preset_under(recipe, provenance, algorithm)
    resolve_paths(recipe, provenance.folder)
    ours = {
        "train": {
            "output_dir": f"outputs/{recipe_path.parent.name or 'recipes'}/{algorithm.name}",
            "report_to": "none",
            "logging_steps": 5,
        }
    }
    provenance.merge_under(recipe, ours, OURS)

    chosen = profiles.resolve(str(profile or recipe.get("profile") or "auto"))
    wish = (
        recipe["model"] if isinstance(recipe["model"], dict) else {}
    )  # the recipe's model, before the profile
    params, _ = estimate_params(wish.get("name_or_path"))
    layer, changes = profile_layer.layer_for(chosen, algorithm, wish, params)
    fields = trl_fields.config_fields(algorithm.config_name)
    layer["train"] = {k: v for k, v in layer.get("train", {}).items() if k in fields}
    changes = [c for c in changes if not c.key.startswith("train.") or c.key[6:] in fields]
    provenance.merge_under(recipe, layer, f"profile:{chosen.name}")

    pending: list | None = [] if allow_pending else None
    errors = validate_recipe(
        recipe,
        algorithm,
        provenance.locate,
        base_dir=recipe_path.parent,
        rewards_dir=provenance.folder("rewards", recipe_path.parent),
        recipe_path=recipe_path,
        pending=pending,
        rank=_layer_rank(provenance),
    )
    if errors:
        raise RecipeErrors(errors)
    if isinstance(recipe.get("evaluate"), dict) and "evaluate.metric" not in provenance.sources:
        provenance.sources["evaluate.metric"] = OURS  # validation chose the algorithm's metrics
    model = ModelSection.from_dict(recipe["model"])
    changes += micro_batch.adjust_batch(chosen, recipe, provenance.sources, algorithm, params)
    changes += scaling.keep_effective_batch(recipe, provenance.sources, fields, sharding()[1])
    errors = check_feasible(chosen, model, recipe["train"], algorithm, recipe_path, params)
    if errors:
        raise RecipeErrors(errors)
    launch = scaling.choose_launch(chosen, recipe, algorithm, params)
    if launch is not None:
        provenance.sources["launch"] = f"profile:{chosen.name}"
        changes.append(
            profiles.Change(
                "launch", f"{launch.engine} x {launch.processes}", scaling.explain(launch, recipe, algorithm)
            )
        )
    return Plan(
        recipe_path=recipe_path,
        algorithm=algorithm,
        model=model,
        data=DataSection.from_dict(recipe["data"]),
        evaluate=EvaluateSection.from_dict(recipe.get("evaluate")),
        rewards=list(recipe.get("rewards") or []),
        train=recipe["train"],
        profile=chosen,
        provenance=provenance,
        recipe=recipe,
        profile_changes=changes,
        launch=launch,
        pending=pending or [],
        **_reproducible(recipe, provenance, model),
    )


def check_feasible(
    profile: profiles.Profile,
    model: ModelSection,
    train: dict,
    algorithm: Algorithm,
    file,
    params: float | None,
) -> list:
    """The feasibility rules (plan/feasibility.py): impossible combinations of profile, recipe and installed
    packages, found before anything is loaded; a train value the recipe leaves out is TRL's default."""
    fields = trl_fields.config_fields(algorithm.config_name)
    context = FeasibilityContext(
        gpu=None if train.get("use_cpu") else profile.gpu,
        model=model,
        train=train,
        algorithm=algorithm,
        params=params,
        defaults={name: info.default for name, info in fields.items()},
    )
    return rules.run(rules.FEASIBILITY, context, lambda key: (file, None))


def _reproducible(recipe: dict, provenance: Provenance, model: ModelSection) -> dict[str, Any]:
    """Reproducible mode: as the recipe or `--reproducible` says, else on for the builtin models (their
    results are what README and the tests quote, so they must not depend on the CPU)."""
    wanted = recipe.get("reproducible")
    if wanted is not None:
        return {"reproducible": bool(wanted), "reproducible_why": provenance.source("reproducible") or OURS}
    builtin = str(model.name_or_path).startswith("builtin:")
    why = (
        "builtin model" if builtin else "off by default for hub and local models; --reproducible turns it on"
    )
    return {"reproducible": builtin, "reproducible_why": why}


def _layer_rank(provenance: Provenance):
    """rank(key): how specific the layer that set `key` is: the command line highest, then the recipe files
    from the recipe itself down to its furthest parent; -1 for a profile, our defaults or no layer."""
    files = list(provenance.files)  # parents first

    def rank(key: str) -> int:
        label = provenance.source(key)
        if label == OVERRIDE:
            return len(files)
        return files.index(label) if label in files else -1

    return rank


def _lay_preset_under(recipe: dict, provenance: Provenance, algorithm: Algorithm) -> None:
    """`train.preset` (SPO): its values go under the recipe's own `train:` values, which win; `show` and
    recipe.resolved.yaml name the source `preset:<name>`. An unknown name is left for validation to report."""
    from align_recipes.rl.presets import SPO_PRESETS

    train = recipe.get("train")
    name = train.get("preset") if isinstance(train, dict) else None
    if algorithm.name == "spo" and isinstance(name, str) and name in SPO_PRESETS:
        provenance.merge_under(recipe, {"train": dict(SPO_PRESETS[name])}, f"preset:{name}")


def _algorithm(recipe: dict, provenance: Provenance, recipe_path: Path) -> Algorithm:
    name = recipe.get("algorithm")
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    file, line = provenance.locate("algorithm")
    fix = (
        did_you_mean(str(name), ALGORITHMS)
        if name
        else f"add `algorithm:` with one of {', '.join(ALGORITHMS)}"
    )
    raise RecipeError(
        f"unknown algorithm '{name}'" if name else "no `algorithm:` given",
        fix=fix,
        file=file or recipe_path,
        line=line,
        key="algorithm",
    )


# transformers 5 renamed these; the old names still work, but a recipe's old name must not lose to a
# profile's new one, so the recipe's spelling is read as the new name before the profile is laid under it.
TRAIN_ALIASES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def _rename_aliases(recipe: dict, provenance: Provenance) -> None:
    train = recipe.get("train")
    if not isinstance(train, dict):
        return
    for old, new in TRAIN_ALIASES.items():
        if old in train and new not in train:
            label = provenance.source(f"train.{old}")
            value = train.pop(old)
            provenance.sources.pop(f"train.{old}", None)
            provenance.merge(recipe, {"train": {new: value}}, label)


def resolved_yaml(plan: Plan) -> str:
    """The fully resolved recipe, as written to `recipe.resolved.yaml` in every output dir."""
    body = {
        "algorithm": plan.algorithm.name,
        "profile": plan.profile.name,
        **{k: v for k, v in plan.recipe.items() if k not in ("algorithm", "profile", "extends")},
    }
    return yaml.safe_dump(plain(body), sort_keys=False, allow_unicode=True)


__all__ = ["Plan", "load_plan", "parse_override", "resolved_yaml"]
