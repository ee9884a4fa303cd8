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
  align-recipes rehearse recipes/qwen05b/dpo.yaml model.adapter=qlora --profile t4   # before renting a GPU
  align-recipes show recipes/tiny/sft.yaml --profile cpu
  align-recipes list
  align-recipes report outputs/tiny/dpo            # report.md + plots; several dirs: a comparison
  align-recipes chat outputs/tiny/sft --prompt "2+3="
  align-recipes merge outputs/qwen05b/sft --out outputs/qwen05b/sft-merged
  align-recipes export outputs/tiny/dpo --gguf q8_0 --ollama   # verified GGUF + Ollama Modelfile
  align-recipes eval outputs/tiny/dpo --metric implicit_reward_accuracy
  align-recipes audit recipes/tiny/data/prefs.jsonl --max-length 64   # 0 clean, 1 findings; --json: the report
  align-recipes pipeline recipes/qwen05b/pipeline.yaml
"""


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML file, e.g. recipes/tiny/dpo.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied last, e.g. train.learning_rate=1e-5 data.train.path=my.jsonl",
    )
    parser.add_argument("--profile", help="force a hardware profile (cpu, t4, l4, a100, h100); default: auto")
    _add_reproducible_arg(parser)


def _add_reproducible_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reproducible",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin CPU kernels, threads and deterministic algorithms: the same seed gives the same weights on "
        "any x86-64 CPU of one maker (default: on for the builtin models; the recipe key `reproducible:`)",
    )


def _with_reproducible(args) -> list[str]:
    """--reproducible / --no-reproducible become the top-level override the plan reads."""
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "reproducible", None) is not None:
        overrides.append(f"reproducible={str(args.reproducible).lower()}")
    return overrides


def _apply_reproducible(wanted: bool) -> None:
    """Pin the kernels before anything imports torch; say where the mode cannot hold."""
    from align_recipes import reproducible

    for problem in reproducible.apply(wanted):
        print(f"note: reproducible mode does not hold here: {problem}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align-recipes",
        description="Reproducible LLM alignment from one YAML recipe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from align_recipes import __version__

    parser.add_argument("--version", action="version", version=f"align-recipes {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="validate a recipe, then train")
    _add_recipe_args(train)
    train.add_argument(
        "--overwrite", action="store_true", help="replace an existing run in the output directory"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint (recipes: train.resume_from_checkpoint: auto)",
    )
    train.add_argument(
        "--no-report",
        action="store_true",
        help="skip report.md and its plots (about a second of matplotlib); `align-recipes report DIR` "
        "writes them later",
    )

    validate = verbs.add_parser(
        "validate", help="check a recipe (and its data files) without loading a model"
    )
    _add_recipe_args(validate)

    rehearse = verbs.add_parser(
        "rehearse",
        help="run the recipe end to end at its real shape on CPU (2 layers, "
        "random weights, 2 steps), and estimate the full model's GPU memory",
    )
    _add_recipe_args(rehearse)
    rehearse.add_argument("--out", help="working folder (default: outputs/rehearse/<family>/<recipe>)")
    rehearse.add_argument(
        "--offline",
        action="store_true",
        help="never try the hub (also: HF_HUB_OFFLINE=1); shipped configs and stand-ins are used",
    )

    show = verbs.add_parser(
        "show", help="print the resolved recipe and TRL config, with where each value came from"
    )
    _add_recipe_args(show)
    show.add_argument("--all", action="store_true", help="also list TRL config fields left at their defaults")

    listing = verbs.add_parser("list", help="list algorithms, recipe families and profiles")
    listing.add_argument(
        "--names", action="store_true", help="only the algorithm names, one line (for scripts)"
    )
    _add_result_verbs(verbs)
    return parser


RESULT_VERBS = ("report", "chat", "merge", "export", "eval", "pipeline", "audit")


def _add_result_verbs(verbs) -> None:
    """Verbs that use a finished run (report, chat, merge, eval) or chain recipes (pipeline)."""
    report = verbs.add_parser(
        "report", help="write report.md and plots for a run; several runs: a comparison"
    )
    report.add_argument("run_dirs", nargs="+", metavar="DIR", help="run output directories")
    report.add_argument("--out", help="where to write (default: the run itself; with several runs ./report)")

    chat = verbs.add_parser("chat", help="talk to a trained model (REPL, or one answer with --prompt)")
    chat.add_argument("run_dir", metavar="DIR", help="a run's output directory (full model or adapter)")
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument(
        "--check-stop",
        action="store_true",
        help="first check that the model ends its turn on a few held-out prompts (HF and exported GGUFs)",
    )

    merge = verbs.add_parser("merge", help="merge a LoRA/QLoRA adapter into its base: a standalone model")
    merge.add_argument("run_dir", metavar="DIR", help="a run's output directory holding an adapter")
    merge.add_argument("--out", required=True, metavar="MERGED", help="directory for the merged model")
    merge.add_argument("--overwrite", action="store_true", help="replace MERGED if it exists")
    merge.add_argument(
        "--push", metavar="REPO", help="then upload MERGED (with its model card) to this hub repository"
    )
    merge.add_argument("--private", action="store_true", help="with --push: create the repository private")

    export = verbs.add_parser(
        "export", help="write a GGUF (llama.cpp, Ollama) of a run, verified against the HF model"
    )
    export.add_argument("run_dir", metavar="RUN", help="a run's output directory (full model or adapter)")
    export.add_argument("--gguf", required=True, choices=("f16", "q8_0", "bf16", "f32"), help="GGUF type")
    export.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile beside it")
    export.add_argument("--out", metavar="DIR", help="where to write (default: RUN/gguf)")
    export.add_argument("--limit", type=int, default=100, help="held-out prompts to verify on (default 100)")
    export.add_argument(
        "--max-new-tokens",
        type=int,
        help="answer budget (default: the recipe's evaluate.max_new_tokens, or 64)",
    )

    evaluate = verbs.add_parser("eval", help="measure a run on held-out data; writes eval.json")
    evaluate.add_argument("run_dir", metavar="DIR", help="a run's output directory")
    evaluate.add_argument("--data", help="held-out data file or hub id (default: the recipe's evaluate.data)")
    evaluate.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="exact_match, preference_accuracy, reward, implicit_reward_accuracy, win_rate "
        "(repeatable; default: the algorithm's metrics its data serves)",
    )
    evaluate.add_argument(
        "--reward-model", metavar="DIR", help="reward model judging win_rate against the reference"
    )
    evaluate.add_argument("--limit", type=int, help="evaluate at most this many rows")
    evaluate.add_argument("--max-new-tokens", type=int, help="generation budget (exact_match, win_rate)")

    audit = verbs.add_parser(
        "audit",
        help="audit preference, KTO or reward data: identical and duplicate pairs, contradictions, empty "
        "answers, length bias, one-sided truncation (exit 1 when something is found)",
    )
    audit.add_argument(
        "data", nargs="?", metavar="DATA", help="data file, folder or hub id (default: --recipe's data.train)"
    )
    audit.add_argument(
        "--recipe", metavar="R", help="a recipe: its algorithm's data kind, tokenizer and max_length"
    )
    audit.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="check one-sided truncation at N (tokens with --recipe, else characters)",
    )
    audit.add_argument("--split", default="train", help="split, with optional slicing (default: train)")
    audit.add_argument("--json", action="store_true", help="print the full report as JSON")

    pipe = verbs.add_parser(
        "pipeline", help="validate every stage of a pipeline file, then run them in order"
    )
    pipe.add_argument("pipeline", help="e.g. recipes/qwen05b/pipeline.yaml")
    pipe.add_argument(
        "overrides",
        nargs="*",
        metavar="[STAGE:]KEY=VALUE",
        help="overrides for every stage, or for one with a STAGE: prefix",
    )
    pipe.add_argument("--profile", help="force a hardware profile for every stage")
    _add_reproducible_arg(pipe)
    pipe.add_argument(
        "--output-dir", help="root directory of the stages' outputs (default: the file's output_dir)"
    )
    pipe.add_argument("--force", action="store_true", help="re-run complete stages too")
    pipe.add_argument("--dry-run", action="store_true", help="validate and say which stages would run")


def _is_pipeline_file(path: str) -> bool:
    """A pipeline file has a top-level `stages:` list (recipes never do)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return any(line.startswith("stages:") for line in handle)
    except OSError:
        return False


def _run_result_verb(args) -> int:
    if args.verb == "report":
        from align_recipes.results.report import report

        print(f"wrote {report(args.run_dirs, args.out)}")
    elif args.verb == "chat":
        from align_recipes.results.chat import chat

        return chat(
            args.run_dir,
            prompt=args.prompt,
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            check_stop=args.check_stop,
        )
    elif args.verb == "export":
        from align_recipes.results.export import export

        export(
            args.run_dir,
            args.gguf,
            ollama_file=args.ollama,
            out=args.out,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
        )
    elif args.verb == "merge":
        from align_recipes.results.merge import merge

        out = merge(args.run_dir, args.out, overwrite=args.overwrite)
        print(f"wrote {out}")
        if args.push:
            from align_recipes.results.publish import push

            print(f"pushed {out} to {push(out, args.push, private=args.private or None)}")
    elif args.verb == "eval":
        from align_recipes.results.evaluate import EVAL_FILE, evaluate_run, result_line

        result = evaluate_run(
            args.run_dir,
            data=args.data,
            metrics=args.metric,
            reward_model=args.reward_model,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
        )
        for name, value in result["metrics"].items():
            print(result_line(name, value))
        print(f"wrote {Path(args.run_dir) / EVAL_FILE}")
    elif args.verb == "audit":
        from align_recipes.results.audit import audit_command

        return audit_command(args.data, args.recipe, args.max_length, args.split, args.json)
    else:
        from align_recipes.results.pipeline import load_pipeline, run_pipeline

        pipeline = load_pipeline(
            args.pipeline, args.overrides, profile=args.profile, output_dir=args.output_dir
        )
        if not args.dry_run:
            _apply_reproducible(any(stage.plan and stage.plan.reproducible for stage in pipeline.stages))
        run_pipeline(pipeline, force=args.force, dry_run=args.dry_run)
    return 0


def _rehearse(args) -> int:
    import os

    from align_recipes.results.rehearse import rehearse, render

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = os.environ["ALIGN_RECIPES_OFFLINE"] = "1"
    if _is_pipeline_file(args.recipe):
        from align_recipes.results.rehearse import rehearse_pipeline

        results = rehearse_pipeline(args.recipe, args.overrides, profile=args.profile, workdir=args.out)
        for result in results:
            print(render(result))
        return max((r.exit_code for r in results), default=2)
    result = rehearse(args.recipe, args.overrides, profile=args.profile, workdir=args.out)
    print(render(result))
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`show r.yaml --profile t4 train.beta=0.2`): collect the stragglers.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if hasattr(args, "overrides"):
        args.overrides = _with_reproducible(args)
    try:
        if args.verb == "list":
            from align_recipes.plan.show import print_list

            return print_list(names_only=args.names)
        if args.verb in RESULT_VERBS:
            return _run_result_verb(args)
        if args.verb == "validate" and _is_pipeline_file(args.recipe):
            from align_recipes.results.pipeline import load_pipeline

            pipeline = load_pipeline(args.recipe, args.overrides, profile=args.profile)
            print(
                f"ok: {args.recipe} (pipeline: {' -> '.join(s.name for s in pipeline.stages)}) -> "
                f"{pipeline.output_dir}"
            )
            return 0
        if args.verb == "rehearse":
            return _rehearse(args)
        from align_recipes.plan import load_plan

        plan = load_plan(
            args.recipe, args.overrides, profile=args.profile, allow_pending=args.verb == "validate"
        )
        if args.verb == "validate":
            print(
                f"ok: {args.recipe} ({plan.algorithm.name}, {plan.algorithm.config_name}, "
                f"profile {plan.profile.name}) -> {plan.output_dir}"
            )
            for pending in plan.pending:  # written by an earlier step of the family: not an error
                print(f"  pending: {pending.line}")
            return 0
        if args.verb == "show":
            from align_recipes.plan.show import print_plan

            print_plan(plan, show_all=args.all)
            return 0
        from align_recipes.plan.scaling import refuse_unlaunched

        refuse_unlaunched(plan.launch, plan.recipe_path)
        _apply_reproducible(plan.reproducible)  # before the import below loads torch
        from align_recipes.run import train

        summary = train(
            plan,
            overwrite=args.overwrite,
            resume=args.resume,
            command=sys.argv if argv is None else ["align-recipes", *argv],
        )
        if summary:  # the main process
            from align_recipes.results.publish import wrap_up

            wrap_up(plan, report=not args.no_report)
        return 0
    except (RecipeError, RecipeErrors) as exc:
        from align_recipes.redaction import redact

        print(redact(exc.render()), file=sys.stderr)
        return EXIT_USER_ERROR
    except (
        KeyboardInterrupt
    ) as exc:  # guards.RunInterrupted: Ctrl-C (130) or SIGTERM (143), with how to resume
        print(getattr(exc, "message", None) or "interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "Path"]
