"""`align-recipes merge DIR --out MERGED`: fold a LoRA/QLoRA adapter into its base model.

The result is a standalone model directory (weights, config, tokenizer, chat template) that
`from_pretrained`, vLLM or a later recipe (`model.name_or_path: MERGED`) open without PEFT, plus a
model card (README.md) naming the recipe, the base, the adapter settings and the run's metrics.
QLoRA adapters merge into the base loaded un-quantized in the run's compute dtype (merging into
4-bit weights would round the update away).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from align_recipes.results.runs import RunInfo, inspect_run, load_run
from align_recipes.errors import RecipeError
from align_recipes.run.rundir import task_metrics

CARD = "README.md"
KEPT_FILES = ("recipe.resolved.yaml", "summary.json", "manifest.json", "eval.json")


def merge(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the merged model to `out` and return it."""
    info = inspect_run(run_dir)
    if info.adapter is None:
        raise RecipeError(f"'{run_dir}' is a full fine-tune (no adapter_config.json): nothing to merge",
                          fix="use the directory as it is; it is already a standalone model")
    out = Path(out)
    if out.resolve() == info.run_dir.resolve():
        raise RecipeError("--out is the run directory itself", fix="write the merged model to another directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RecipeError(f"'{out}' already exists and is not empty",
                              fix="pass --overwrite to replace it, or choose another --out")
        shutil.rmtree(out)
    model, tokenizer, info = load_run(info.run_dir, device="cpu")
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    for name in KEPT_FILES:  # provenance; `eval`/`chat` read the recipe (reference model, head) from here too
        if (info.run_dir / name).is_file():
            shutil.copy2(info.run_dir / name, out / name)
    (out / CARD).write_text(model_card(info, merged))
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(info: RunInfo, model=None) -> str:
    """A Hugging Face model card: front matter, how the model was made, its metrics, the recipe."""
    adapter = info.adapter or {}
    spec = info.model
    base = spec.name_or_path or adapter.get("base_model_name_or_path", "unknown")
    summary = info.summary
    algorithm = info.algorithm or "unknown"
    peft_type = adapter.get("peft_type", "LORA").lower()
    kind = "qlora" if spec.adapter == "qlora" else peft_type
    front = {"library_name": "transformers", "tags": ["align-recipes", "trl", algorithm, kind, "merged"]}
    if not str(base).startswith("builtin:") and "/" in str(base) and not Path(str(base)).exists():
        front["base_model"] = str(base)
    targets = adapter.get("target_modules")
    if isinstance(targets, list):  # PEFT expands all-linear to full module paths: show the layer kinds
        targets = ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets}))
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {algorithm} of {base} (adapter merged)", "",
             f"Trained with align-recipes on TRL: `{algorithm}` from the recipe "
             f"`{summary.get('recipe', 'unknown')}`, then the {kind} adapter was merged into the base model "
             f"with PEFT's `merge_and_unload`. The weights are standalone: no PEFT needed to load them.", "",
             "## Provenance", "", "| | |", "|---|---|",
             f"| base model | `{base}` |", f"| algorithm | {algorithm} |",
             f"| adapter | {kind}: r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, "
             f"dropout={adapter.get('lora_dropout')}, targets={targets} |",
             f"| modules trained in full | {adapter.get('modules_to_save') or 'none'} |",
             f"| merged dtype | {getattr(model, 'dtype', '') if model is not None else ''} |",
             f"| steps | {summary.get('steps', '')} |", f"| profile | {summary.get('profile', '')} |", ""]
    tasks = task_metrics(summary)
    lines += ["## Metrics", ""]
    if tasks:
        lines += ["| held-out metric | before | after | n |", "|---|---:|---:|---:|",
                  *[f"| {t.get('name')} | {_fmt(t.get('before'))} | {_fmt(t.get('after'))} | {t.get('n')} |"
                    for t in tasks], ""]
    last = summary.get("metrics_last") or {}
    if last:
        first = summary.get("metrics_first") or {}
        lines += ["| training metric | first | last |", "|---|---:|---:|"]
        lines += [f"| {k} | {_fmt(first.get(k, ''))} | {_fmt(v)} |" for k, v in last.items()]
        lines.append("")
    if not tasks and not last:
        lines += ["No summary.json was found in the run directory.", ""]
    head = "AutoModelForSequenceClassification" if info.head == "reward" else "AutoModelForCausalLM"
    lines += ["## Use", "", "```python", f"from transformers import {head}, AutoTokenizer", "",
              f'model = {head}.from_pretrained("PATH/TO/THIS/DIR")',
              'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/DIR")', "```", "",
              "or `align-recipes chat PATH/TO/THIS/DIR`.", ""]
    if info.recipe:
        lines += ["## Resolved recipe", "", "```yaml", yaml.safe_dump(info.recipe, sort_keys=False).strip(), "```", ""]
    lines += ["## Adapter configuration", "", "```json",
              json.dumps({k: v for k, v in adapter.items() if v not in (None, {}, [], False)}, indent=2,
                         sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)
