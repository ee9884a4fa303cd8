"""What every finished run gets after training (report.md with plots), and publishing it (or a merged
model) to the Hugging Face hub, card included.

align-recipes pushes once, when the run is complete and its card and report are written, rather
than letting the Trainer push: the Trainer would replace our model card with its own. Checkpoints,
optimizer states and RNG files stay local. `huggingface_hub` (a transformers dependency) does the
upload; the token comes from `HF_TOKEN` or `huggingface-cli login`.
"""

from __future__ import annotations

from pathlib import Path

from align_recipes import console
from align_recipes.errors import RecipeError
from align_recipes.plan.hardware import hub_token_problem

# What a published model folder leaves out: resumable training state, not the model.
LOCAL_ONLY = [
    "checkpoint-*",
    "checkpoint-*/**",
    "superseded-*",
    "superseded-*/**",
    "*.pt",
    "*.pth",
    "rng_state*",
    "training_args.bin",
    ".*",
]


def push(folder: str | Path, repo_id: str, private: bool | None = None, message: str | None = None) -> str:
    """Upload `folder` to the model repository `repo_id` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    problem = hub_token_problem()
    if problem:
        raise RecipeError(
            f"cannot push to {repo_id}: {problem}",
            fix="export HF_TOKEN=hf_… (a write token) or run `huggingface-cli login`",
        )
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        ignore_patterns=LOCAL_ONLY,
        commit_message=message or f"align-recipes: {Path(folder).name}",
    )
    return str(url)


def wrap_up(plan, report: bool = True) -> None:
    """After a run completes: report.md with its plots (unless `report` is off), then the push the recipe
    asked for (`train.push_to_hub` with `train.hub_model_id`), then one line saying what was written."""
    from align_recipes.run.rundir import METRICS, RESOLVED_RECIPE, SUMMARY

    folder = plan.output_dir
    written = f"model, README.md, {SUMMARY}, {METRICS}, {RESOLVED_RECIPE}"
    if report:
        from align_recipes.results.report import try_write_report

        path = try_write_report(folder)
        console.info(f"wrote {folder}/ ({written}" + (f", {path.name} with plots)" if path else ")"))
    else:
        console.info(f"wrote {folder}/ ({written}); plots: align-recipes report {folder}")
    if plan.train.get("push_to_hub"):
        url = push(folder, plan.train["hub_model_id"], private=plan.train.get("hub_private_repo"))
        console.info(f"pushed {folder} to {url}")
