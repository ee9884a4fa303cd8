"""`align-recipes export RUN --gguf f16|q8_0 [--ollama] [--out DIR]`: a verified GGUF (and Ollama Modelfile).

1. Stage an HF folder: the adapter merged into its base (results.merge) or the run's own files, with the
   inference template (no generation markers) as its chat template, so the GGUF embeds one that plain
   Jinja2 engines can render.
2. Convert it with llama.cpp's converter from PyPI, isolated (results.gguf_converter).
3. `--ollama`: a Modelfile beside the file (results.ollama).
4. Verify: the held-out prompts (the recipe's evaluate data) rendered through the inference template,
   answered greedily by the HF model and by the exported file (results.engines); report the share of
   identical answers and whether each engine stopped (results.stopcheck).
5. Record the export (file, type, sha256, agreement, engine) in the run's manifest.json and model card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from align_recipes.errors import RecipeError
from align_recipes.results import engines, gguf_converter, ollama, stopcheck
from align_recipes.run.card import write_card
from align_recipes.run.inference_template import end_of_turn_tokens
from align_recipes.run.manifest import record_export
from align_recipes.run.saved import inspect_run, load_run

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
DEFAULT_LIMIT = 100
DEFAULT_BUDGET = 64


def _stage(info, stage: Path) -> None:
    """An HF folder of the model to convert: merged when the run is an adapter; weights linked, not copied."""
    if info.adapter is not None:
        from align_recipes.results.merge import merge

        merge(info.run_dir, stage)
        return
    stage.mkdir(parents=True)
    for name in MODEL_FILES:
        if (info.run_dir / name).is_file():
            shutil.copy2(info.run_dir / name, stage / name)
    for weights in [*info.run_dir.glob("*.safetensors"), *info.run_dir.glob("*.safetensors.index.json")]:
        os.symlink(weights.resolve(), stage / weights.name)


def _use_template(stage: Path, template: str) -> None:
    """Make `template` the staged folder's only chat template (the converter embeds it in the GGUF)."""
    (stage / "chat_template.jinja").write_text(template, encoding="utf-8")
    (stage / "chat_template.json").unlink(missing_ok=True)
    shutil.rmtree(stage / "additional_chat_templates", ignore_errors=True)
    config = stage / "tokenizer_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.pop("chat_template", None) is not None:
            config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def agreement(reference: list, other: list) -> float:
    """The share of prompts whose greedy answers are identical (same text, both stopped or both not)."""
    same = sum(a.text == b.text and a.stopped == b.stopped for a, b in zip(reference, other))
    return same / len(reference) if reference else 0.0


def export(
    run_dir: str | Path,
    gguf_type: str = "q8_0",
    ollama_file: bool = False,
    out: str | Path | None = None,
    limit: int | None = DEFAULT_LIMIT,
    max_new_tokens: int | None = None,
    say=print,
) -> dict:
    """Export, verify and record; returns the record written into the manifest."""
    info = inspect_run(run_dir)
    if info.head == "reward":
        raise RecipeError(
            f"'{run_dir}' is a reward model: GGUF engines serve text generators",
            fix="export a policy (sft, dpo, grpo, … output)",
        )
    if gguf_type not in gguf_converter.GGUF_TYPES:
        raise RecipeError(
            f"unknown GGUF type {gguf_type!r}", fix=f"use one of {', '.join(gguf_converter.GGUF_TYPES)}"
        )
    tool = gguf_converter.require_converter()  # before any model loads
    out = Path(out) if out else info.run_dir / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    outfile = out / f"{info.run_dir.resolve().name}-{gguf_type}.gguf"
    budget = max_new_tokens or (info.recipe.get("evaluate") or {}).get("max_new_tokens") or DEFAULT_BUDGET

    model, tokenizer, info = load_run(info.run_dir, device="cpu")
    template = stopcheck.inference_template_of(info, tokenizer)
    with tempfile.TemporaryDirectory(dir=out, prefix=".stage-") as tmp:
        stage = Path(tmp) / "model"
        _stage(info, stage)
        _use_template(stage, template)
        say(f"converting to GGUF {gguf_type} with {gguf_converter.CONVERTER_PACKAGE} ({tool}) …")
        told = gguf_converter.convert(stage, outfile, gguf_type, tool)
        eos_ids = stopcheck.stop_ids(tokenizer, template, stage)
    stops = end_of_turn_tokens(tokenizer, template, [])
    stops = list(dict.fromkeys([*stops, *tokenizer.convert_ids_to_tokens(eos_ids)]))
    record: dict = {
        "file": str(outfile.resolve()),
        "type": gguf_type,
        "bytes": outfile.stat().st_size,
        "sha256": sha256(outfile),
        "converter": gguf_converter.CONVERTER_PIN,
        "declared_pre_tokenizer": told.get("pre"),
        "inert_merge": told.get("inert_merge"),
        "end_of_turn_tokens": stops,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    say(f"wrote {outfile} ({record['bytes'] / 2**20:.1f} MiB, sha256 {record['sha256'][:12]}…)")
    if ollama_file:

        def render(messages, prompt):
            return tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
            )

        record["modelfile"] = str(ollama.write_modelfile(out, outfile.name, render, stops).resolve())
        say(f"wrote {record['modelfile']} (ollama create NAME -f {record['modelfile']})")
    record.update(verify(info, model, tokenizer, template, outfile, eos_ids, told, limit, budget, say))
    record_export(info.run_dir, record)
    write_card(info.run_dir)
    return record


def verify(info, model, tokenizer, template, outfile, eos_ids, told, limit, budget, say) -> dict:
    """Greedy answers of the HF model and of the exported file on the held-out prompts."""
    gguf = engines.gguf_engine(outfile, eos_ids, tokenizer if told.get("inert_merge") else None)
    if gguf is None:
        say(f"not verified: no engine reads GGUF here; install {engines.GGUF_ENGINE_PACKAGES}")
        return {"agreement": None, "engine": None}
    chats = stopcheck.held_out_chats(info, limit)
    prompts = stopcheck.render_chats(tokenizer, template, chats)
    hf = engines.HFEngine(model, tokenizer, eos_ids)
    answers = stopcheck.run_prompts([hf, gguf], prompts, budget)
    share = agreement(answers[hf.name], answers[gguf.name])
    same = round(share * len(prompts))
    say(
        f"agreement: {gguf.name} gives the HF model's greedy answer on {same}/{len(prompts)} held-out prompts "
        f"({share:.1%}, budget {budget} tokens)"
    )
    stops = stopcheck.stop_summary(answers, budget)
    say(stopcheck.stop_line(stops))
    return {"agreement": share, "n": len(prompts), "engine": gguf.name, "budget": budget, "stops": stops}
