"""`align-recipes merge DIR --out MERGED`: fold a LoRA/QLoRA adapter into its base model.

The result is a standalone model directory (weights, config, tokenizer, chat template, and the inference
template beside it: run/inference_template.py) that `from_pretrained`, vLLM or a later recipe
(`model.name_or_path: MERGED`) open without PEFT, plus a model card (README.md) naming the recipe, the
base, the adapter settings and the run's metrics.
QLoRA adapters merge into the base loaded un-quantized in the run's compute dtype (merging into
4-bit weights would round the update away).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from align_recipes.errors import RecipeError
from align_recipes.run.card import write_card
from align_recipes.run.inference_template import carry_inference_template
from align_recipes.run.saved import inspect_run, load_run

KEPT_FILES = ("recipe.resolved.yaml", "summary.json", "manifest.json", "eval.json")


def merge(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the merged model to `out` and return it."""
    info = inspect_run(run_dir)
    if info.adapter is None:
        raise RecipeError(
            f"'{run_dir}' is a full fine-tune (no adapter_config.json): nothing to merge",
            fix="use the directory as it is; it is already a standalone model",
        )
    out = Path(out)
    if out.resolve() == info.run_dir.resolve():
        raise RecipeError(
            "--out is the run directory itself", fix="write the merged model to another directory"
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RecipeError(
                f"'{out}' already exists and is not empty",
                fix="pass --overwrite to replace it, or choose another --out",
            )
        shutil.rmtree(out)
    model, tokenizer, info = load_run(info.run_dir, device="cpu")
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(
        str(out)
    )  # its chat_template.jinja keeps the markers a later recipe trains with
    carry_inference_template(info.run_dir, out, tokenizer)
    for name in KEPT_FILES:  # provenance; `eval`/`chat` read the recipe (reference model, head) from here too
        if (info.run_dir / name).is_file():
            shutil.copy2(info.run_dir / name, out / name)
    kind = "qlora" if info.model.adapter == "qlora" else str(info.adapter.get("peft_type", "LORA")).lower()
    write_card(out, merged={"kind": kind, "dtype": str(merged.dtype), "adapter": info.adapter})
    return out
