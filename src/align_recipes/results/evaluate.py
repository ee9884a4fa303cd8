"""`align-recipes eval DIR`: measure a finished run on held-out data and write eval.json.

- exact_match, preference_accuracy: as measured before and after training (run.measure).
- implicit_reward_accuracy (eval verb, DPO family): how often the policy's implicit reward
  β·(log π/π_ref(chosen) − log π/π_ref(rejected)) is positive; π_ref is the adapter switched off,
  or for a full fine-tune the recipe's `model.name_or_path`.
- win_rate (eval verb, `--reward-model DIR`): greedy answers of the policy and of its reference to
  the same prompts, scored by a reward model; a tie counts one half.
- reward: the mean reward of greedy answers, by the run's own reward functions (run.measure).

With no --metric, `eval DIR` measures the run's algorithm's metrics (its registry `metrics` trait, plus
implicit_reward_accuracy for the DPO family) that its held-out data can serve.

Each value is the mean of per-row scores (1/0 per answer, 1/0.5/0 per pair, a reward per answer); eval.json
records it with n and its 95% interval (align_recipes.stats.mean_interval): one measurement, no before.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from align_recipes import stats
from align_recipes.data.messages import prompt_text
from align_recipes.errors import RecipeError
from align_recipes.plan.sections import EVALUATE, METRIC_KINDS
from align_recipes.registry import ALGORITHMS, IMPLICIT_REWARD_ACCURACY, PREFERENCE_ACCURACY
from align_recipes.run.measure import (
    generate,
    pair_scores,
    pair_wins,
    reward_functions,
    row_scores,
    sequence_scores,
)

# --- the `eval` verb --------------------------------------------------------------------------------

EVAL_FILE = "eval.json"
KIND_OF = {**METRIC_KINDS, "win_rate": "prompt_only"}
METRICS = tuple(KIND_OF)


def default_metrics(info, reward_model: str | None = None, serves=lambda metric: True) -> list[str]:
    """What `eval DIR` measures when no --metric is given: the algorithm's metrics (registry trait),
    implicit_reward_accuracy for the DPO family (`implicit_reward` trait), then the metrics its recipe
    named, those `serves(metric)` says the data can serve; plus win_rate with --reward-model."""
    algorithm = ALGORITHMS.get(info.algorithm)
    named = info.evaluate.metrics if info.evaluate is not None else []
    if info.head == "reward":
        wanted = [PREFERENCE_ACCURACY]
    elif algorithm is not None:
        wanted = [
            *algorithm.metrics,
            *([IMPLICIT_REWARD_ACCURACY] if algorithm.implicit_reward else []),
            *named,
        ]
    else:
        wanted = named
    chosen = [name for name in dict.fromkeys(wanted) if serves(name)]
    if reward_model:
        chosen.append("win_rate")
    if not chosen:
        why = (
            f"its data serves none of {', '.join(wanted)}"
            if wanted
            else "its recipe has no evaluate: section"
        )
        raise RecipeError(
            f"no metric to measure for '{info.run_dir}' ({why})",
            fix=f"name one with --metric ({', '.join(METRICS)}) and the data with --data",
        )
    return chosen


def data_serves(entry: dict | list, base_dirs: list, info):
    """`serves(metric)` for default_metrics: what the held-out data's first rows can feed (the first
    source's, when data.eval mixes several: every source converts to one layout)."""
    from align_recipes.data import DataSpec, peek
    from align_recipes.plan.validate import PEEK_ROWS, metric_problem

    entry = entry[0] if isinstance(entry, list) else entry
    spec = DataSpec.from_dict(entry, section="--data")
    base = next((b for b in base_dirs if (Path(b) / entry["path"]).exists()), base_dirs[-1])
    rows = peek(spec, Path(base), PEEK_ROWS)
    train = info.recipe.get("train") or {}
    has_rewards = bool(info.recipe.get("rewards")) or bool(train.get("reward_model_path"))
    return lambda metric: (
        metric == "win_rate" or metric_problem(metric, rows, spec, has_rewards, info.head) is None
    )


def _data_entry(info, data: str | None) -> tuple[dict | list, list]:
    """The dataset entry (a list of sources when data.eval mixes several) and the folders its relative path
    may be relative to."""
    if data:
        return {"path": str(data)}, [Path.cwd()]
    section = info.recipe.get("evaluate") or {}
    entry = section.get("data") or (info.recipe.get("data") or {}).get("eval")
    if not entry:
        raise RecipeError(
            f"the run in '{info.run_dir}' names no held-out data (evaluate.data or data.eval)",
            fix="pass --data FILE (jsonl/json/parquet/csv) or a hub dataset id",
        )
    return (list(entry) if isinstance(entry, list) else dict(entry)), info.search_dirs


def data_label(entry: dict | list) -> str:
    return ", ".join(e["path"] for e in entry) if isinstance(entry, list) else entry["path"]


def load_rows(
    entry: dict | list, base_dirs: list, kind: str, limit: int | None, metric: str, seed: int = 42
) -> list[dict]:
    """The rows of one entry, or of a list of sources mixed by their weights (with the run's seed)."""
    from align_recipes.data import DataError, DataSpec, load_mixture
    from align_recipes.data.spec import source_entries

    specs = []
    for name, item in source_entries(entry, "--data" if isinstance(entry, dict) else "data.eval"):
        found = next((Path(b) / item["path"] for b in base_dirs if (Path(b) / item["path"]).exists()), None)
        specs.append(DataSpec.from_dict({**item, "path": str(found or item["path"])}, section=name))
    try:
        dataset, _ = load_mixture(specs, None, kind, seed=seed)
    except DataError as exc:
        exc.message = f"{metric} needs {kind.replace('_', '-')} data: {exc.message}"
        raise
    rows = list(dataset)
    return rows[:limit] if limit else rows


class Reference:
    """The model a policy is measured against: its adapter switched off, or the base loaded separately."""

    def __init__(self, policy, info):
        self.policy, self.info, self.model = policy, info, None
        self.is_adapter = hasattr(policy, "disable_adapter") and info.adapter is not None

    @contextlib.contextmanager
    def use(self):
        if self.is_adapter:
            with self.policy.disable_adapter():
                yield self.policy
            return
        if self.model is None:
            self.model = self._load()
        yield self.model

    def _load(self):
        from transformers import AutoModelForCausalLM

        from align_recipes.run import models
        from align_recipes.run.saved import compute_dtype

        spec = self.info.model
        if not spec.name_or_path:
            raise RecipeError(
                f"'{self.info.run_dir}' has no recipe.resolved.yaml naming its reference model",
                fix="evaluate a run directory written by align-recipes",
            )
        path = models.resolve_model_path(spec, self.info.base_dir)
        device = str(self.policy.device)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=compute_dtype(self.info, device.split(":")[0])
        )
        return model.to(device).eval()

    def name(self) -> str:
        return "adapter disabled" if self.is_adapter else str(self.info.model.name_or_path)

    def pair_scores(self, tokenizer, rows: list[dict]) -> tuple[list[float], list[float]]:
        """The reference's (chosen, rejected) log-probabilities of the pairs."""
        with self.use() as ref:
            return pair_scores(ref, tokenizer, rows, False)


def final_beta(beta) -> float:
    """The β a run ended with: a list (one per epoch, the last kept for the rest, as TRL's online DPO
    takes it) gives its last value."""
    return float(beta[-1] if isinstance(beta, (list, tuple)) else beta)


def implicit_details(pairs: tuple[list, list], reference_pairs: tuple[list, list], beta: float) -> dict:
    """eval.json's extras of implicit_reward_accuracy: β and the mean implicit-reward margin
    β·((c − rc) − (r − rr)) over the pairs."""
    (chosen, rejected), (ref_chosen, ref_rejected) = pairs, reference_pairs
    margins = [
        beta * ((c - rc) - (r - rr)) for c, rc, r, rr in zip(chosen, ref_chosen, rejected, ref_rejected)
    ]
    return {"beta": beta, "mean_margin": sum(margins) / max(len(margins), 1)}


def _as_completion(prompt: Any, text: str) -> Any:
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def win_rate(
    model, reference: Reference, tokenizer, rows: list[dict], reward_model_dir: str, max_new_tokens: int
) -> dict:
    from align_recipes.run.saved import load_run

    prompts = [r["prompt"] for r in rows]
    ours = generate(model, tokenizer, prompts, max_new_tokens)
    with reference.use() as ref:
        theirs = generate(ref, tokenizer, prompts, max_new_tokens)
    rm, rm_tokenizer, _ = load_run(reward_model_dir, head="reward", device=str(model.device))

    def score(outs):
        completions = [_as_completion(p, o) for p, o in zip(prompts, outs)]
        return sequence_scores(rm, rm_tokenizer, prompts, completions, True)

    ours_scores, theirs_scores = score(ours), score(theirs)
    wins = sum(a > b for a, b in zip(ours_scores, theirs_scores))
    ties = sum(a == b for a, b in zip(ours_scores, theirs_scores))
    n = max(len(rows), 1)
    return {
        **with_interval(pair_wins(ours_scores, theirs_scores)),
        "wins": wins,
        "ties": ties,
        "reward_policy": sum(ours_scores) / n,
        "reward_reference": sum(theirs_scores) / n,
        "reward_model": str(reward_model_dir),
        "reference": reference.name(),
        "max_new_tokens": max_new_tokens,
        "examples": [
            {"prompt": prompt_text(p), "policy": o, "reference": t}
            for p, o, t in list(zip(prompts, ours, theirs))[:3]
        ],
    }


def with_interval(scores: list[float]) -> dict:
    """{value, n, interval, confidence} of one measurement's per-row scores: the mean and its 95% interval
    (None with fewer than two rows)."""
    interval = stats.mean_interval(scores)
    return {
        "value": sum(scores) / len(scores) if scores else 0.0,
        "n": len(scores),
        "interval": list(interval) if interval else None,
        "confidence": stats.CONFIDENCE,
    }


def result_line(name: str, result: dict) -> str:
    """What `eval` prints per metric: 'exact_match   0.8000  95% interval [0.7202, 0.8798]  (n=100, data …)'."""
    interval = stats.interval_text(result.get("interval"), digits=4)
    shown = f"  95% interval {interval}" if interval else ""
    return f"{name:<26} {result['value']:.4f}{shown}  (n={result.get('n')}, data {result.get('data')})"


def evaluate_run(
    run_dir,
    data: str | None = None,
    metrics: list[str] | None = None,
    reward_model: str | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
) -> dict:
    """Measure a finished run on held-out data and write `eval.json` into its directory."""
    import json
    import time

    from align_recipes.run.saved import inspect_run, load_run

    info = inspect_run(run_dir)
    entry, base_dirs = _data_entry(info, data)
    metrics = list(
        dict.fromkeys(metrics or default_metrics(info, reward_model, data_serves(entry, base_dirs, info)))
    )
    for name in metrics:
        if name not in METRICS:
            raise RecipeError(f"unknown metric '{name}'", key="--metric", fix=f"one of {', '.join(METRICS)}")
    if "win_rate" in metrics and not reward_model:
        raise RecipeError(
            "win_rate needs a reward model to judge the answers",
            key="--metric",
            fix="pass --reward-model DIR (the output of a reward recipe)",
        )
    if info.head == "reward" and set(metrics) - {"preference_accuracy"}:
        raise RecipeError(
            f"'{run_dir}' is a reward model: only preference_accuracy applies",
            key="--metric",
            fix="evaluate a policy for the other metrics; use a reward model with --reward-model",
        )
    if reward_model and "win_rate" in metrics:
        rm_info = inspect_run(reward_model)
        if rm_info.head != "reward":
            raise RecipeError(
                f"--reward-model '{reward_model}' is not a reward model "
                f"({rm_info.algorithm or 'a causal LM'})",
                key="--reward-model",
                fix="pass the output directory of a `reward` recipe",
            )
    section = info.evaluate
    limit = limit or (section.limit if section else None)
    tokens = max_new_tokens or (section.max_new_tokens if section else EVALUATE["max_new_tokens"].default)
    model, tokenizer, info = load_run(info.run_dir)
    reference = Reference(model, info)
    train = info.recipe.get("train") or {}
    beta = final_beta(train.get("beta", 0.1))
    seed = int(train.get("seed", 42))  # a mixed data.eval is sampled as in training
    results, caches = {}, {}
    for name in metrics:
        rows = load_rows(entry, base_dirs, KIND_OF[name], limit, name, seed)
        if name == "win_rate":
            result = win_rate(model, reference, tokenizer, rows, reward_model, max_new_tokens or 64)
        else:
            cache, kept = caches.setdefault(KIND_OF[name], {}), {}
            scores = row_scores(
                name,
                model,
                tokenizer,
                rows,
                max_new_tokens=tokens,
                reward_head=info.head == "reward",
                reward=lambda: reward_functions(
                    info.recipe.get("rewards") or [], info.base_dir, train.get("reward_model_path")
                ),
                reference=lambda pairs, rows=rows, kept=kept: kept.setdefault(
                    "pairs", reference.pair_scores(tokenizer, rows)
                ),
                cache=cache,
            )
            result = with_interval(scores)
            if name == IMPLICIT_REWARD_ACCURACY:
                result.update(
                    implicit_details(cache["pairs"], kept["pairs"], beta), reference=reference.name()
                )
        results[name] = {**result, "data": data_label(entry)}
    path = Path(run_dir) / EVAL_FILE
    try:
        previous = json.loads(path.read_text()).get("metrics", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    payload = {
        "run_dir": str(run_dir),
        "algorithm": info.algorithm,
        "model": info.model.name_or_path,
        "data": data_label(entry),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": {**previous, **results},
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return payload
