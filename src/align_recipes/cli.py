"""The `align-recipes` command: a few verbs, helpful errors, exit code 2 for anything the user can fix.

argparse (stdlib) rather than a CLI framework: it imports in milliseconds, which keeps `validate`
well under a second, and our verbs need nothing more. Heavy modules (torch, TRL) are imported inside
the verbs that train, never at the top.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from align_recipes.errors import EXIT_USER_ERROR, RecipeError, RecipeErrors

EPILOG = """examples:
  align-recipes train recipes/tiny/dpo.yaml
  align-recipes train recipes/qwen05b/dpo.yaml train.learning_rate=1e-6 --profile t4
  align-recipes validate recipes/qwen05b/dpo.yaml
  align-recipes show recipes/tiny/sft.yaml --profile cpu
  align-recipes list
"""


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML file, e.g. recipes/tiny/dpo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied last, e.g. train.learning_rate=1e-5 data.train.path=my.jsonl")
    parser.add_argument("--profile", help="force a hardware profile (cpu, t4, l4, a100, h100); default: auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align-recipes", description="Reproducible LLM alignment from one YAML recipe.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from align_recipes import __version__

    parser.add_argument("--version", action="version", version=f"align-recipes {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="validate a recipe, then train")
    _add_recipe_args(train)
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in the output directory")
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")

    validate = verbs.add_parser("validate", help="check a recipe (and its data files) without loading a model")
    _add_recipe_args(validate)

    show = verbs.add_parser("show", help="print the resolved recipe and TRL config, with where each value came from")
    _add_recipe_args(show)
    show.add_argument("--all", action="store_true", help="also list TRL config fields left at their defaults")

    verbs.add_parser("list", help="list algorithms, recipe families and profiles")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`show r.yaml --profile t4 train.beta=0.2`): collect the stragglers.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.verb == "list":
            from align_recipes.show import print_list

            return print_list()
        from align_recipes.recipe import load_plan

        plan = load_plan(args.recipe, args.overrides, profile=args.profile)
        if args.verb == "validate":
            print(f"ok: {args.recipe} ({plan.algorithm.name}, {plan.algorithm.config_name}, "
                  f"profile {plan.profile.name}) -> {plan.output_dir}")
            return 0
        if args.verb == "show":
            from align_recipes.show import print_plan

            print_plan(plan, show_all=args.all)
            return 0
        from align_recipes.run import train

        train(plan, overwrite=args.overwrite, resume=args.resume, command=sys.argv)
        return 0
    except (RecipeError, RecipeErrors) as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "Path"]
