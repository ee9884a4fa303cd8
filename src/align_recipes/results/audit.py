"""`align-recipes audit DATA`: the data audit on its own, before any run (data/audit.py does the auditing;
every preference, KTO and reward run also starts with it, run/data_audit.py).

Exit codes: 0 nothing found, 1 findings (the length bias is a statistic, never a finding), 2 data or a
recipe that cannot be read.
"""

from __future__ import annotations

import dataclasses
import json

from align_recipes.data import DataSpec
from align_recipes.data.audit import AUDITED_KINDS, audit, found, summary_lines
from align_recipes.errors import RecipeError
from align_recipes.registry import names_text

EXIT_CLEAN, EXIT_FOUND = 0, 1


def audit_command(
    data: str | None,
    recipe: str | None = None,
    max_length: int | None = None,
    split: str = "train",
    as_json: bool = False,
    profile: str | None = None,
) -> int:
    """Audit DATA (or, with only a recipe, the recipe's training sources) and print the summary or the
    JSON report. A recipe gives the data kind, the tokenizer lengths are counted in and `max_length`."""
    kind = tokenizer = tokenizer_name = None
    base_dir = None
    specs = [DataSpec.from_dict({"path": data, "split": split}, section="DATA")] if data else []
    if recipe:
        from align_recipes.plan import load_plan

        plan = load_plan(recipe, [], profile=profile)
        kind = plan.algorithm.data_kind
        if kind not in AUDITED_KINDS:
            raise RecipeError(
                f"{plan.algorithm.name} trains on {kind.replace('_', ' ')} data, which the audit does not read",
                file=recipe,
                key="algorithm",
                fix=f"give a recipe of {names_text(lambda a: a.data_kind in AUDITED_KINDS)}, or leave --recipe out",
            )
        if max_length is None:
            max_length = plan.train.get("max_length", _default_max_length(plan))
        tokenizer, tokenizer_name = _tokenizer(plan), plan.model.name_or_path
        if not specs:
            specs, base_dir = plan.data.train, plan.base_dir
    if not specs:
        raise RecipeError(
            "nothing to audit",
            key="DATA",
            fix="give a data file or hub id, or --recipe R to audit its data.train",
        )
    reports = [
        audit(
            spec,
            base_dir,
            kind=kind,
            max_length=max_length,
            tokenizer=tokenizer,
            tokenizer_name=tokenizer_name,
        )
        for spec in specs
    ]
    if as_json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"sources": reports}, indent=2))
    else:
        for report in reports:
            print("\n".join(summary_lines(report)))
    return EXIT_FOUND if any(found(report) for report in reports) else EXIT_CLEAN


def _default_max_length(plan) -> int | None:
    """The trainer config's own default, as the run would use it (from the TRL field snapshot: no TRL import)."""
    from align_recipes.plan import trl_fields

    info = trl_fields.config_fields(plan.algorithm.config_name).get("max_length")
    return info.default if info is not None else None


def _tokenizer(plan):
    """The recipe's tokenizer. The builtin models share the tiny model's tokenizer: reading it needs no build
    of the tiny SFT policy."""
    from align_recipes.run.models import load_tokenizer, resolve_model_path
    from align_recipes.tiny import BUILTIN_MODELS, TINY_MODEL_ID

    spec = plan.model
    if spec.name_or_path in BUILTIN_MODELS:
        spec = dataclasses.replace(spec, name_or_path=TINY_MODEL_ID)
    return load_tokenizer(resolve_model_path(spec, plan.base_dir), spec, plan.base_dir)
