"""Task metrics on held-out data, measured before and after training (the recipe's `evaluate:` section)
and by `align-recipes eval`.

- exact_match: greedy answers to held-out prompts compared with their `answer` column.
- preference_accuracy: on held-out pairs, how often the model prefers `chosen` over `rejected`:
  a reward model by its score, a policy by the log-probability it gives each completion.
"""

from __future__ import annotations

import contextlib
from typing import Any

from align_recipes.data.messages import completion_text, rendered_prompt
from align_recipes.errors import RecipeError


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _rows(plan, kind: str) -> list[dict]:
    from align_recipes.data import DataError, load

    section = plan.evaluate
    try:
        dataset, _ = load(section.data, plan.base_dir, kind)
    except DataError as exc:
        exc.file = exc.file or plan.recipe_path
        raise
    rows = list(dataset)
    return rows[: section.limit] if section.limit else rows


def measure(plan, model, tokenizer) -> dict[str, Any] | None:
    """The recipe's task metric for `model` now (None when the recipe has no evaluate: section)."""
    section = plan.evaluate
    if section is None:
        return None
    if section.metric == "exact_match":
        rows = _rows(plan, "prompt_only")
        value = exact_match(model, tokenizer, rows, max_new_tokens=section.max_new_tokens)
    else:
        rows = _rows(plan, "preference")
        value = preference_accuracy(model, tokenizer, rows, reward_head=plan.algorithm.model_head == "reward")
    return {"name": section.metric, "value": value, "n": len(rows)}


def generate(model, tokenizer, prompts: list[Any], max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy completions, decoded without special tokens."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    try:
        with _eval_mode(model), torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                texts = [rendered_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
                batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                # synced_gpus=False: one rank measures alone (under ZeRO-3 generate would wait for the others).
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                new_tokens = out[:, batch["input_ids"].shape[1]:]
                completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return completions


def exact_match(model, tokenizer, rows: list[dict], max_new_tokens: int = 16) -> float:
    if not rows:
        return 0.0
    if "answer" not in rows[0]:
        raise RecipeError("exact_match needs an `answer` column in evaluate.data", key="evaluate.data",
                          fix="add answers, map one with evaluate.data.columns, or use preference_accuracy")
    completions = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens)
    hits = sum(c.strip() == str(r["answer"]).strip() for c, r in zip(completions, rows))
    return hits / len(rows)


def sequence_scores(model, tokenizer, prompts: list[Any], completions: list[Any], reward_head: bool) -> list[float]:
    """Reward-model score, or the policy's summed log-probability of each completion."""
    import torch

    scores = []
    with _eval_mode(model), torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            prompt_text = rendered_prompt(tokenizer, prompt)
            if isinstance(prompt, list) and isinstance(completion, list):
                full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            else:
                full = prompt_text + completion_text(completion)
            ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
            if reward_head:
                scores.append(model(input_ids=ids).logits[0, 0].item())
                continue
            n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
            logits = model(input_ids=ids).logits[0, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
            scores.append(logps[n_prompt - 1:].sum().item())
    return scores


def preference_accuracy(model, tokenizer, rows: list[dict], reward_head: bool) -> float:
    if not rows:
        return 0.0
    prompts = [r["prompt"] for r in rows]
    chosen = sequence_scores(model, tokenizer, prompts, [r["chosen"] for r in rows], reward_head)
    rejected = sequence_scores(model, tokenizer, prompts, [r["rejected"] for r in rows], reward_head)
    return sum(c > r for c, r in zip(chosen, rejected)) / len(rows)
