"""The model card: a README.md in every finished run folder (and merged model) that the Hugging Face
hub renders: what was trained from what, on which data, with which recipe and command, and the
metrics before and after. Written from the folder's own files (summary.json, manifest.json,
recipe.resolved.yaml, adapter_config.json), so a card can be rewritten for any run later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from align_recipes import stats
from align_recipes.data.spec import source_entries
from align_recipes.paths import looks_like_hub_id, read_json
from align_recipes.redaction import share_paths
from align_recipes.run import harness
from align_recipes.run.hacking import warning_line
from align_recipes.run.manifest import MANIFEST, share_roots
from align_recipes.run.rundir import SUMMARY, RunDir, task_metrics

CARD = "README.md"
REPORT = "report.md"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _hub_id(name: Any) -> str | None:
    """A name the hub knows (not a local folder, not builtin:)."""
    text = str(name or "")
    return text if looks_like_hub_id(text) and not Path(text).exists() else None


def _data_sources(recipe: dict) -> list[tuple[str, dict]]:
    """(where, entry) for every dataset of the recipe: each source of a mixture on its own (train[1])."""
    data = recipe.get("data") or {}
    sources = [
        (name.removeprefix("data."), entry)
        for split in ("train", "eval")
        for name, entry in source_entries(data.get(split), f"data.{split}")
    ]
    sources.append(("evaluate", (recipe.get("evaluate") or {}).get("data")))
    return [(where, entry) for where, entry in sources if isinstance(entry, dict) and entry.get("path")]


def _kept_rows(summary: dict) -> dict[str, dict]:
    """summary.json's rows per source, by where the card names it (train, train[1], …)."""
    return {
        record["section"].removeprefix("data."): record
        for records in (summary.get("data") or {}).values()
        for record in records
        if isinstance(record, dict) and "section" in record
    }


def model_card(folder: str | Path, merged: dict | None = None) -> str:
    """The card of the run in `folder`. `merged` describes an adapter folded into its base
    ({"kind": "lora", "dtype": "torch.float32", "adapter": <adapter_config>}) for `align-recipes merge`."""
    run = RunDir(folder)
    summary, manifest, recipe = run.summary(), read_json(run / MANIFEST), run.resolved_recipe()
    adapter = (merged or {}).get("adapter") or read_json(run / "adapter_config.json")
    model = recipe.get("model") or {}
    base = (
        model.get("name_or_path")
        or adapter.get("base_model_name_or_path")
        or summary.get("model")
        or "unknown"
    )
    algorithm = recipe.get("algorithm") or summary.get("algorithm") or "unknown"
    kind = (merged or {}).get("kind") or model.get("adapter") or ("lora" if adapter else "full")
    head = (
        "AutoModelForSequenceClassification"
        if summary.get("algorithm") == "reward" or adapter.get("task_type") == "SEQ_CLS"
        else "AutoModelForCausalLM"
    )

    front: dict[str, Any] = {
        "library_name": "transformers",
        "tags": ["align-recipes", "trl", algorithm, kind] + (["merged"] if merged else []),
    }
    if _hub_id(base):
        front["base_model"] = str(base)
    datasets = sorted({entry["path"] for _, entry in _data_sources(recipe) if _hub_id(entry["path"])})
    if datasets:
        front["datasets"] = datasets
    front["pipeline_tag"] = "text-classification" if head.endswith("Classification") else "text-generation"

    how = f"`{algorithm}` from the recipe `{summary.get('recipe') or manifest.get('recipe', 'unknown')}`"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {algorithm} of {base}" + (" (adapter merged)" if merged else ""),
        "",
        f"Trained with align-recipes on TRL: {how}.",
    ]
    if merged:
        lines[-1] += (
            f" The {kind} adapter was then merged into the base model with PEFT's `merge_and_unload`: "
            "the weights are standalone, no PEFT needed to load them."
        )
    lines += [
        "",
        "## Provenance",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| algorithm | {algorithm} |",
    ]
    if adapter:
        targets = adapter.get("target_modules")
        if isinstance(targets, list):  # PEFT expands all-linear to full module paths: show the layer kinds
            targets = ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets}))
        lines += [
            f"| adapter | {kind}: r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, "
            f"dropout={adapter.get('lora_dropout')}, targets={targets} |",
            f"| modules trained in full | {adapter.get('modules_to_save') or 'none'} |",
        ]
    else:
        lines.append(f"| adapter | {kind} |")
    if merged:
        lines.append(f"| merged dtype | {merged.get('dtype', '')} |")
    lines += [
        f"| steps | {summary.get('steps', '')} |",
        f"| profile | {summary.get('profile', '')} |",
        f"| seed | {summary.get('seed', '')} |",
    ]
    kept = _kept_rows(summary)
    for where, entry in _data_sources(recipe):
        line = f"| data ({where}) | `{entry['path']}` split `{entry.get('split', 'train')}`"
        if where in kept:
            line += (
                f", weight {kept[where]['weight']:g}: {kept[where]['rows_kept']} of "
                f"{kept[where]['rows_converted']} converted rows"
            )
        lines.append(line + " |")
    lines.append("")
    lines += _metrics(summary)
    lines += _exports(manifest.get("exports") or [])
    lines += _use(head, merged is None and bool(adapter))
    command = manifest.get("command")
    if command:
        lines += ["## Reproduce", "", "```bash", " ".join(str(w) for w in command), "```", ""]
    versions = {k: v for k, v in (manifest.get("versions") or {}).items() if v}
    if versions:
        lines += [
            "Versions: "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + (f"; git commit `{manifest['git_commit']}`" if manifest.get("git_commit") else "")
            + ".",
            "",
        ]
    lines += [
        f"Plots and every logged metric: [{REPORT}]({REPORT}) (`align-recipes report DIR` writes it).",
        "",
    ]
    if recipe:
        lines += [
            "## Resolved recipe",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False).strip(),
            "```",
            "",
        ]
    if merged and adapter:
        lines += [
            "## Adapter configuration",
            "",
            "```json",
            json.dumps(
                {k: v for k, v in adapter.items() if v not in (None, {}, [], False)},
                indent=2,
                sort_keys=True,
                default=str,
            ),
            "```",
            "",
        ]
    return share_paths("\n".join(lines), share_roots(folder))  # no /home/<user>/… in what --push publishes


def _metrics(summary: dict) -> list[str]:
    lines = ["## Metrics", ""]
    tasks = task_metrics(summary)
    if tasks:
        lines += [
            "| held-out metric | before | after | n | change [95% interval] | verdict |",
            "|---|---:|---:|---:|---:|---|",
            *[
                f"| {t.get('name')} | {_fmt(t.get('before'))} | {_fmt(t.get('after'))} | {t.get('n')} "
                f"| {stats.change_text(t)} | {t.get('verdict') or ''} |"
                for t in tasks
            ],
            "",
        ]
        if any(t.get("interval") for t in tasks):
            lines += [
                "Change: after − before, scored row by row on the same held-out rows; the verdict reads its "
                "95% interval (rose or fell only when the interval excludes zero).",
                "",
            ]
    lines += harness.table_lines(summary.get("harness"))
    warning = summary.get("reward_hacking")
    if isinstance(warning, dict):
        lines += [
            f"**Warning: {warning_line(warning)}.** Likely fixes: {'; '.join(warning.get('fixes') or [])}.",
            "",
        ]
    last = summary.get("metrics_last") or {}
    if last:
        first = summary.get("metrics_first") or {}
        lines += ["| training metric | first | last |", "|---|---:|---:|"]
        lines += [f"| {k} | {_fmt(first.get(k, ''))} | {_fmt(v)} |" for k, v in last.items()]
        lines.append("")
    if not tasks and not last:
        lines += [f"No metrics: the folder has no {SUMMARY}.", ""]
    return lines


def _exports(exports: list[dict]) -> list[str]:
    """`align-recipes export` records: what was written and how well it agrees with the HF model."""
    if not exports:
        return []
    lines = [
        "## Exports",
        "",
        "| file | type | sha256 | agreement with HF (greedy, held-out) | engine |",
        "|---|---|---|---:|---|",
    ]
    for e in exports:
        agree = f"{e['agreement']:.1%} (n={e.get('n')})" if e.get("agreement") is not None else "not verified"
        lines.append(
            f"| `{Path(e.get('file', '')).name}` | {e.get('type')} | `{str(e.get('sha256', ''))[:16]}…` "
            f"| {agree} | {e.get('engine') or ''} |"
        )
    return [*lines, ""]


def _use(head: str, adapter: bool) -> list[str]:
    if adapter:
        peft_head = head.replace("AutoModel", "AutoPeftModel")
        load = [
            f"from peft import {peft_head}",
            "from transformers import AutoTokenizer",
            "",
            f'model = {peft_head}.from_pretrained("PATH/OR/REPO")  # loads the base model too',
        ]
    else:
        load = [
            f"from transformers import {head}, AutoTokenizer",
            "",
            f'model = {head}.from_pretrained("PATH/OR/REPO")',
        ]
    tokenizer = 'tokenizer = AutoTokenizer.from_pretrained("PATH/OR/REPO")'
    return ["## Use", "", "```python", *load, tokenizer, "```", "", "or `align-recipes chat PATH`.", ""]


def write_card(folder: str | Path, merged: dict | None = None) -> Path:
    path = Path(folder) / CARD
    path.write_text(model_card(folder, merged), encoding="utf-8")
    return path
