"""Held-out metrics, measured before and after training (the recipe's `evaluate:` section) and by
`align-recipes eval`. Which ones a run measures: `evaluate.metric`, else the algorithm's `metrics`
trait (registry.py), those its data can serve.

- exact_match: greedy answers to held-out prompts compared with their `answer` column.
- preference_accuracy: on held-out pairs, how often the model prefers `chosen` over `rejected`:
  a reward model by its score, a policy by the log-probability it gives each completion (a tie
  counts one half).
- implicit_reward_accuracy: on held-out pairs, how often the implicit reward β·log π/π_ref of the
  DPO family ranks `chosen` above `rejected` (a tie counts one half). π_ref is the model the run
  started from, as TRL's reference is: its log-probabilities are kept from the first measurement
  (`StartScores`), so no second model is loaded. Before training every margin is 0: 0.5, chance.
  Preference accuracy of an SFT policy is already near 1 on the toy task; this is what DPO and KTO
  move.
- reward: the mean reward of greedy answers to held-out prompts, scored by the recipe's reward
  functions (and `train.reward_model_path`) with their weights, as the trainer scores samples.

Every metric is the mean of per-row scores (1/0 per answer, 1/0.5/0 per pair, a reward per answer),
kept with the value (`scores`): before and after training score the same rows in the same order,
so `compare_metrics` measures the change row by row, with its interval (align_recipes.stats).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from align_recipes import stats
from align_recipes.data.messages import completion_text, rendered_prompt
from align_recipes.errors import RecipeError
from align_recipes.plan.sections import METRIC_KINDS
from align_recipes.registry import EXACT_MATCH, IMPLICIT_REWARD_ACCURACY, PREFERENCE_ACCURACY


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def held_out_rows(plan, kind: str) -> list[dict]:
    """evaluate.data read as `kind`, at most evaluate.limit rows, in file order."""
    from align_recipes.data import DataError, load

    section = plan.evaluate
    try:
        dataset, _ = load(section.data, plan.base_dir, kind)
    except DataError as exc:
        exc.file = exc.file or plan.recipe_path
        raise
    rows = list(dataset)
    return rows[: section.limit] if section.limit else rows


class StartScores(dict):
    """The held-out pairs' log-probabilities under the model a run starts from, kept between the
    measurement before training and the one after: the reference of implicit_reward_accuracy."""


def measure(
    plan, model, tokenizer, start: StartScores | None = None, reward: tuple[list, list[float]] | None = None
) -> list[dict[str, Any]] | None:
    """The recipe's held-out metrics for `model` now: [{name, value, n, scores}] (None without an evaluate:
    section); `scores` are the per-row scores whose mean is `value`, in the rows' file order.
    `start` keeps the first call's pair scores as the reference of implicit_reward_accuracy; `reward` is the
    run's reward (`run_reward`), built from the recipe when not given."""
    section = plan.evaluate
    if section is None:
        return None
    start = StartScores() if start is None else start
    reward_head = plan.algorithm.model_head == "reward"
    results, cache = [], {}
    for name in section.metrics:
        rows = held_out_rows(plan, METRIC_KINDS[name])
        if name in (PREFERENCE_ACCURACY, IMPLICIT_REWARD_ACCURACY):
            if "pairs" not in cache:  # both metrics compare the same two scores per pair
                cache["pairs"] = pair_scores(model, tokenizer, rows, reward_head)
            chosen, rejected = cache["pairs"]
            if name == PREFERENCE_ACCURACY:
                scores = pair_wins(chosen, rejected)
            else:
                start.setdefault("pairs", cache["pairs"])
                scores = implicit_wins(chosen, rejected, *start["pairs"])
        else:  # exact_match and reward score the same greedy answers: generate them once
            if "completions" not in cache:
                cache["completions"] = generate(
                    model, tokenizer, [r["prompt"] for r in rows], section.max_new_tokens
                )
            completions = cache["completions"]
            if name == EXACT_MATCH:
                scores = answer_matches(completions, rows)
            else:
                reward = reward or reward_functions(
                    plan.rewards, plan.base_dir, plan.train.get("reward_model_path")
                )
                scores = row_rewards(reward, rows, completions)
        value = sum(scores) / len(scores) if scores else 0.0
        results.append({"name": name, "value": value, "n": len(rows), SCORES: scores})
    return results


SCORES = "scores"


def without_scores(results: list[dict] | None) -> list[dict] | None:
    """`measure`'s results as summary.json records them: [{name, value, n}], the per-row scores left out."""
    if results is None:
        return None
    return [{k: v for k, v in r.items() if k != SCORES} for r in results]


def scores_by_name(results: list[dict] | None) -> dict[str, list[float]]:
    """{metric name: per-row scores} of `measure`'s results (what heldout_scores.json keeps)."""
    return {r["name"]: list(r[SCORES]) for r in results or [] if isinstance(r.get(SCORES), list)}


def compare_metrics(
    before: list[dict] | None, after: list[dict] | None, before_scores: dict[str, list[float]] | None = None
) -> list[dict] | None:
    """summary.json's `task_metrics`: per metric {name, before, after, n, difference, interval, confidence,
    verdict, after_interval}. The difference, its interval and the verdict are paired (stats.compare) when the
    per-row scores of both measurements are at hand and score the same number of rows; otherwise (a run
    resumed from a folder written before per-row scores were kept) the difference alone, with no interval and
    no verdict. `after_interval` is the interval of the after value itself (what a pipeline gate reads)."""
    if not before or not after:
        return None
    earlier = {m["name"]: m["value"] for m in before}
    before_scores = before_scores or {}
    entries = []
    for m in after:
        name, value, scores = m["name"], m["value"], m.get(SCORES)
        entry = {"name": name, "before": earlier.get(name), "after": value, "n": m.get("n")}
        paired = before_scores.get(name)
        if scores is not None and paired is not None and len(paired) == len(scores):
            comparison = stats.compare(paired, scores)
            entry.update({k: comparison[k] for k in ("difference", "interval", "confidence", "verdict")})
        else:
            known = isinstance(entry["before"], (int, float))
            entry.update(
                difference=value - entry["before"] if known else None,
                interval=None,
                confidence=stats.CONFIDENCE,
                verdict=None,
            )
        interval = stats.mean_interval(scores) if scores else None
        entry["after_interval"] = list(interval) if interval else None
        entries.append(entry)
    return entries


def remember_start(plan, model, tokenizer, start: StartScores) -> None:
    """Keep the start model's pair scores without measuring the rest (a resumed run: its 'before' values
    are in the summary, but its reference is the model as loaded, before the checkpoint is applied)."""
    if plan.evaluate is not None and IMPLICIT_REWARD_ACCURACY in plan.evaluate.metrics:
        rows = held_out_rows(plan, METRIC_KINDS[IMPLICIT_REWARD_ACCURACY])
        start.setdefault("pairs", pair_scores(model, tokenizer, rows, plan.algorithm.model_head == "reward"))


def implicit_accuracy(
    chosen: list[float], rejected: list[float], ref_chosen: list[float], ref_rejected: list[float]
) -> float:
    """The share of pairs whose margin (chosen − ref_chosen) − (rejected − ref_rejected) is positive; a tie
    (an unchanged model) counts one half. β > 0 scales every margin alike, so it cannot change the share."""
    wins = implicit_wins(chosen, rejected, ref_chosen, ref_rejected)
    return sum(wins) / len(wins) if wins else 0.0


def implicit_wins(
    chosen: list[float], rejected: list[float], ref_chosen: list[float], ref_rejected: list[float]
) -> list[float]:
    """Per pair: 1 where the implicit-reward margin is positive, 0.5 where it is zero, 0 below."""
    margins = [(c - rc) - (r - rr) for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    return [_win(m, 0.0) for m in margins]


def pair_wins(chosen: list[float], rejected: list[float]) -> list[float]:
    """Per pair: 1 where `chosen` scores above `rejected`, 0.5 on a tie, 0 below (preference accuracy's rows)."""
    return [_win(c, r) for c, r in zip(chosen, rejected)]


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def reward_functions(
    specs: list[dict], base_dir, reward_model_path: str | None = None
) -> tuple[list, list[float]]:
    """A recipe's reward functions and weights (plus `train.reward_model_path`), as its trainer gets them."""
    from align_recipes.rewards import as_reward_func, build_reward_funcs

    funcs, weights = build_reward_funcs(list(specs or []), base_dir)
    if reward_model_path:
        funcs, weights = [*funcs, as_reward_func(reward_model_path)], [*weights, 1.0]
    return funcs, weights


def run_reward(plan, trainer) -> tuple[list, list[float]]:
    """The run's reward functions and weights as held-out measurements score with them: the trainer's own when
    they follow the reward-function contract (a reward model it already holds is not loaded twice), else built
    from the recipe (TRL keeps a reward model as a bare nn.Module)."""
    import torch

    funcs, weights = getattr(trainer, "reward_funcs", None), getattr(trainer, "reward_weights", None)
    if (
        funcs
        and weights is not None
        and len(weights) == len(funcs)
        and not any(isinstance(f, torch.nn.Module) for f in funcs)
    ):
        return list(funcs), [float(w) for w in weights]
    return reward_functions(plan.rewards, plan.base_dir, plan.train.get("reward_model_path"))


def mean_reward(reward: tuple[list, list[float]], rows: list[dict], completions: list[str]) -> float:
    """Mean over rows of the weighted sum of each function's reward (a None reward is skipped, as in TRL)."""
    return sum(row_rewards(reward, rows, completions)) / len(rows) if rows else 0.0


def row_rewards(reward: tuple[list, list[float]], rows: list[dict], completions: list[str]) -> list[float]:
    """Each row's weighted sum of its rewards (a None or NaN reward is skipped, as in TRL)."""
    funcs, weights = reward
    if not rows:
        return []
    prompts = [r["prompt"] for r in rows]
    shaped = [
        [{"role": "assistant", "content": c}] if isinstance(p, list) else c
        for p, c in zip(prompts, completions)
    ]
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    totals = [0.0] * len(rows)
    for func, weight in zip(funcs, weights):
        for i, value in enumerate(func(prompts=prompts, completions=shaped, **columns)):
            if value is not None and not math.isnan(float(value)):
                totals[i] += weight * float(value)
    return totals


def generate(
    model, tokenizer, prompts: list[Any], max_new_tokens: int = 16, batch_size: int = 32
) -> list[str]:
    """Greedy completions, decoded without special tokens."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    try:
        with _eval_mode(model), torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                texts = [rendered_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
                batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                    model.device
                )
                # synced_gpus=False: one rank measures alone (under ZeRO-3 generate would wait for the others).
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    synced_gpus=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return completions


def exact_match_scores(model, tokenizer, rows: list[dict], max_new_tokens: int = 16) -> list[float]:
    """Per row: 1.0 where the greedy answer equals the row's `answer`, else 0.0 (`align-recipes eval`)."""
    if not rows:
        return []
    _require_answers(rows)
    return answer_matches(generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens), rows)


def exact_match_of(completions: list[str], rows: list[dict]) -> float:
    """The share of completions that equal their row's `answer` (whitespace around either ignored)."""
    if not rows:
        return 0.0
    return sum(answer_matches(completions, rows)) / len(rows)


def answer_matches(completions: list[str], rows: list[dict]) -> list[float]:
    """1.0 where a completion equals its row's `answer` (whitespace around either ignored), else 0.0."""
    if not rows:
        return []
    _require_answers(rows)
    return [float(c.strip() == str(r["answer"]).strip()) for c, r in zip(completions, rows)]


def _require_answers(rows: list[dict]) -> None:
    if "answer" not in rows[0]:
        raise RecipeError(
            "exact_match needs an `answer` column in evaluate.data",
            key="evaluate.data",
            fix="add answers, map one with evaluate.data.columns, or use preference_accuracy",
        )


def sequence_scores(
    model, tokenizer, prompts: list[Any], completions: list[Any], reward_head: bool
) -> list[float]:
    """Reward-model score, or the policy's summed log-probability of each completion."""
    import torch

    from align_recipes.rl.logprobs import token_logprobs  # chunked: no [length, vocab] float32 copy

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
            logps = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0]
            scores.append(logps[n_prompt - 1 :].sum().item())
    return scores


def pair_scores(model, tokenizer, rows: list[dict], reward_head: bool) -> tuple[list[float], list[float]]:
    """(chosen scores, rejected scores) of held-out pairs: reward-model scores or policy log-probabilities."""
    prompts = [r["prompt"] for r in rows]
    return (
        sequence_scores(model, tokenizer, prompts, [r["chosen"] for r in rows], reward_head),
        sequence_scores(model, tokenizer, prompts, [r["rejected"] for r in rows], reward_head),
    )


def preference_scores(model, tokenizer, rows: list[dict], reward_head: bool) -> list[float]:
    """Per pair: 1/0.5/0 as the model ranks `chosen` above, level with or below `rejected` (`align-recipes eval`)."""
    if not rows:
        return []
    return pair_wins(*pair_scores(model, tokenizer, rows, reward_head))
