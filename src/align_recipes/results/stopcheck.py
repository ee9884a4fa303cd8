"""Does it stop: held-out chats rendered through the saved inference template, answered greedily by every
engine at hand, each answer checked for the model's end-of-turn token within the budget.

A model whose template or stop tokens did not travel with it answers on until the budget runs out; this
names the engine where that happens. `run_prompts` gives the answers too, which export compares across
engines (agreement).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align_recipes.data.messages import prompt_text
from align_recipes.errors import RecipeError
from align_recipes.results.evaluate import _data_entry, load_rows
from align_recipes.run.inference_template import end_of_turn_tokens, load_inference_template


def held_out_chats(info, limit: int | None) -> list[list[dict]]:
    """The run's held-out prompts (evaluate.data, else data.eval) as conversations."""
    entry, base_dirs = _data_entry(info, None)
    rows = load_rows(entry, base_dirs, "prompt_only", limit, "the export check")
    return [
        r["prompt"]
        if isinstance(r["prompt"], list)
        else [{"role": "user", "content": prompt_text(r["prompt"])}]
        for r in rows
    ]


def render_chats(tokenizer, template: str, chats: list[list[dict]]) -> list[str]:
    """Each chat with the generation prompt, through the inference template (the text every engine gets)."""
    return [
        tokenizer.apply_chat_template(
            chat, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        for chat in chats
    ]


def stop_ids(tokenizer, template: str | None, model_dir) -> list[int]:
    """The ids of the end-of-turn tokens (run.inference_template.end_of_turn_tokens)."""
    from align_recipes.paths import read_json

    configured = read_json(model_dir / "generation_config.json").get("eos_token_id")
    eos_ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    tokens = end_of_turn_tokens(tokenizer, template, eos_ids)
    return list(dict.fromkeys(tokenizer.convert_tokens_to_ids(t) for t in tokens))


def inference_template_of(info, tokenizer) -> str:
    template = load_inference_template(info.run_dir, tokenizer)
    if not template:
        raise RecipeError(
            f"the tokenizer in '{info.run_dir}' has no chat template",
            fix="train with model.chat_template set, or add chat_template.jinja to the directory",
        )
    return template


def run_prompts(engines: list, prompts: list[str], max_new_tokens: int) -> dict[str, list[Any]]:
    """{engine name: [Answer per prompt]}"""
    return {engine.name: [engine.greedy(p, max_new_tokens) for p in prompts] for engine in engines}


def stop_summary(answers: dict[str, list], max_new_tokens: int) -> dict:
    """{"engines": {name: {"stopped": k, "n": n}}, "did_not_stop": [names]}"""
    engines = {
        name: {"stopped": sum(a.stopped for a in got), "n": len(got), "budget": max_new_tokens}
        for name, got in answers.items()
    }
    return {"engines": engines, "did_not_stop": [n for n, e in engines.items() if e["stopped"] < e["n"]]}


def stop_line(summary: dict) -> str:
    parts = [f"{name} {e['stopped']}/{e['n']}" for name, e in summary["engines"].items()]
    line = f"does it stop (end-of-turn token within the budget): {', '.join(parts)}"
    if summary["did_not_stop"]:
        budget = next(iter(summary["engines"].values()))["budget"]
        line += f"; did not stop within {budget} tokens on some prompts: {', '.join(summary['did_not_stop'])}"
    return line


CHAT_CHECK_PROMPTS = 4


def check_stop(model, tokenizer, info, template: str | None, budget: int) -> str:
    """`chat --check-stop`: a few held-out chats through the HF model and through every GGUF this run
    exported (manifest.json) that an installed engine reads; the one-line verdict."""
    from align_recipes.paths import read_json
    from align_recipes.results import engines
    from align_recipes.run.rundir import MANIFEST

    template = template or inference_template_of(info, tokenizer)
    ids = stop_ids(tokenizer, template, info.run_dir)
    prompts = render_chats(tokenizer, template, held_out_chats(info, CHAT_CHECK_PROMPTS))
    found = [engines.HFEngine(model, tokenizer, ids)]
    for record in read_json(info.run_dir / MANIFEST).get("exports") or []:
        path = Path(record.get("file") or "")
        if path.is_file():
            engine = engines.gguf_engine(path, ids, tokenizer if record.get("inert_merge") else None)
            if engine is not None:
                engine.name = f"{engine.name} {path.name}"
                found.append(engine)
    return stop_line(stop_summary(run_prompts(found, prompts, budget), budget))
