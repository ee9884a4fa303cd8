"""General ability next to the task: the recipe's lm-evaluation-harness tasks (`evaluate.harness:`) on the
start model and on the result, compared document by document.

"DPO made my model worse" is only answerable with a measurement of the start model taken the same way as
the result's. The run measures both in its own process, on the model objects it already holds (lm-eval's
`HFLM` wraps them; nothing is loaded twice), right beside the held-out task metrics (run/measure.py):
before training in `begin`, after it in `finish`.

- **Paired, per document.** lm-eval's `log_samples` gives each document's score. Before and after score
  the same documents, so the change is measured document by document with `stats.compare`: n, the mean
  difference, its 95% interval and a verdict, as the task metrics have them. That holds where lm-eval's
  score is the mean of its per-document scores (accuracy, exact match); a corpus-level score (BLEU,
  perplexity) keeps its two values and no interval.
- **The start's scores are kept** in `harness_before.json` in the run folder (per document, with the
  settings that produced them), so a resumed run compares against the model it started from; a changed
  harness section is measured again (a resumed run's model is the start until the Trainer applies the
  checkpoint).
- **Training is left as it was.** lm-eval reseeds python, numpy and torch unless told not to, and draws
  from python's stream even then: the three streams are saved and restored around it, so a recipe with a
  harness trains the same weights as without. The model's train/eval mode is restored.

The summary's `harness` key holds one row per task and metric:
{task, metric, before, after, n, difference, interval, verdict, higher_is_better}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
from pathlib import Path
from typing import Any

from align_recipes import console
from align_recipes.errors import RecipeError, RecipeErrors, did_you_mean
from align_recipes.plan.harness import INSTALL_FIX, absolute_data_files, is_task_file, lm_eval_problem
from align_recipes.stats import compare

BEFORE_FILE = "harness_before.json"
SECTION_TITLE = "General ability (lm-evaluation-harness)"


def settings(section) -> dict:
    """What decides the scores besides the model: a stored measurement is reused only under the same."""
    return {
        "tasks": list(section.tasks),
        "limit": section.limit,
        "num_fewshot": section.num_fewshot,
        "apply_chat_template": section.apply_chat_template,
    }


# --- measuring ----------------------------------------------------------------------------------------


def measure_before(plan, run_dir: Path, model, tokenizer, resuming: bool) -> list[dict] | None:
    """The start model's scores, written to harness_before.json; a resumed run reuses the stored ones when
    the harness section is unchanged. Returns the rows without per-document scores (for the summary)."""
    section = plan.evaluate.harness if plan.evaluate is not None else None
    if section is None:
        return None
    stored = read_before(run_dir) if resuming else None
    if stored is None or stored.get("settings") != settings(section):
        stored = {"settings": settings(section), "results": evaluate(plan, model, tokenizer)}
        (Path(run_dir) / BEFORE_FILE).write_text(json.dumps(stored) + "\n")
    for row in stored["results"]:
        console.info(f"harness before: {row['task']} {row['metric']} {_number(row['value'])} (n={row['n']})")
    return [_brief(r) for r in stored["results"]]


def measure_after(plan, run_dir: Path, model, tokenizer) -> list[dict] | None:
    """The result's scores compared with the start's: the summary's `harness` rows."""
    section = plan.evaluate.harness if plan.evaluate is not None else None
    if section is None:
        return None
    stored = read_before(run_dir)
    if stored is None:
        return None  # no start measurement survived (the folder was cleared): nothing to compare with
    rows = compare_results(stored["results"], evaluate(plan, model, tokenizer))
    for row in rows:
        console.info(
            f"harness: {row['task']} {row['metric']} {_number(row['before'])} → {_number(row['after'])}"
            f" ({change_text(row) or 'no start value'}, n={row['n']}{', ' + row['verdict'] if row['verdict'] else ''})"
        )
    return rows


def read_before(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / BEFORE_FILE).read_text())
    except (OSError, ValueError):
        return None


def evaluate(plan, model, tokenizer) -> list[dict]:
    """The harness section's tasks on `model` now: lm-eval's results as `results_rows` reads them."""
    problem = lm_eval_problem()
    if problem:
        raise RecipeError(problem, key="evaluate.harness", fix=INSTALL_FIX, file=plan.recipe_path)
    section = plan.evaluate.harness
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    specs = [task_config(task) if is_task_file(task) else task for task in section.tasks]
    names = [s for s in specs if isinstance(s, str)]
    manager = TaskManager(include_defaults=bool(names))  # indexing lm-eval's catalogue takes a while
    unknown = unknown_tasks(names, manager.all_tasks)
    if unknown:
        raise RecipeErrors(
            [
                RecipeError(
                    message,
                    key="evaluate.harness.tasks",
                    file=plan.provenance.where("evaluate.harness.tasks") or plan.recipe_path,
                    fix=fix,
                )
                for message, fix in unknown
            ]
        )
    was_training = model.training
    try:
        with _quiet(), _random_state_kept():
            results = simple_evaluate(
                model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=section.batch_size),
                tasks=specs,
                task_manager=manager,
                limit=section.limit,
                num_fewshot=section.num_fewshot,
                apply_chat_template=section.apply_chat_template,
                log_samples=True,
                bootstrap_iters=0,  # the paired intervals come from stats.compare
                random_seed=None,  # None: leave the training's random streams as they are
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    except ConnectionError as exc:  # a catalogue task's data, offline (datasets' OfflineModeIsEnabled)
        raise RecipeError(
            f"a harness task could not fetch its data: {str(exc).splitlines()[0][:200]}",
            key="evaluate.harness.tasks",
            file=plan.provenance.where("evaluate.harness.tasks") or plan.recipe_path,
            fix="catalogue tasks download their data from the hub: run once online (datasets caches it), "
            "or use a local task file with `dataset_path: json`",
        ) from None
    finally:
        model.train(was_training)
    return results_rows(results)


def unknown_tasks(names: list[str], known: list[str]) -> list[tuple[str, str]]:
    """(message, fix) for each name that is no task, group or tag of lm-eval's catalogue (`known`)."""
    problems = []
    for name in names:
        if name in known:
            continue
        hint = did_you_mean(name, known)
        problems.append(
            (
                f"'{name}' is neither a task file nor a task, group or tag of lm-eval's catalogue",
                (hint + " " if hint.startswith("did you mean") else "")
                + "task files end in .yaml; `lm-eval ls tasks` lists the catalogue",
            )
        )
    return problems


def task_config(path: str) -> dict:
    """A local task file as lm-eval's loader reads it (includes, !function), its data files made absolute
    against the task file's folder (plan/harness.py)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return absolute_data_files(load_yaml(path, resolve_func=True), Path(path).resolve().parent)


@contextlib.contextmanager
def _random_state_kept():
    """Python's, numpy's and torch's random streams as they were: lm-eval draws from python's even with its
    seeding off, and the Trainer draws after the measurement before training."""
    import random

    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _quiet():
    """lm-eval logs every setting at INFO/WARNING (a pre-built model 'may ignore arguments'): keep errors."""
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# --- lm-eval's results → rows ---------------------------------------------------------------------------


def results_rows(results: dict) -> list[dict]:
    """[{task, metric, value, n, higher_is_better, doc_ids, scores}] from simple_evaluate's results: one
    row per task and metric (a filter other than lm-eval's `none` joins the metric name). `scores` are the
    per-document scores in `doc_ids` order when the documents were logged and each score is a number,
    else None."""
    rows = []
    better = results.get("higher_is_better") or {}
    counts = results.get("n-samples") or {}
    for task, values in (results.get("results") or {}).items():
        samples = (results.get("samples") or {}).get(task) or []
        for key, value in values.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr") or not isinstance(value, numbers.Real):
                continue
            doc_ids, scores = _document_scores(samples, metric, filter_name)
            n = len(scores) if scores is not None else (counts.get(task) or {}).get("effective")
            rows.append(
                {
                    "task": task,
                    "metric": metric if filter_name == "none" else f"{metric} ({filter_name})",
                    "value": float(value),
                    "n": n,
                    "higher_is_better": (better.get(task) or {}).get(metric),
                    "doc_ids": doc_ids,
                    "scores": scores,
                }
            )
    return rows


def _document_scores(samples: list[dict], metric: str, filter_name: str):
    """(doc_ids, scores) of one metric under one filter, or (None, None) where a score is not a number."""
    chosen = [s for s in samples if s.get("filter", "none") == filter_name and metric in s]
    if not chosen or not all(isinstance(s[metric], numbers.Real) for s in chosen):
        return None, None
    chosen.sort(key=lambda s: s["doc_id"])
    return [int(s["doc_id"]) for s in chosen], [float(s[metric]) for s in chosen]


def _brief(row: dict) -> dict:
    return {k: row.get(k) for k in ("task", "metric", "value", "n")}


def compare_results(before: list[dict], after: list[dict]) -> list[dict]:
    """The summary's rows: each metric after training with its value before, paired per document where
    both runs scored the same documents and lm-eval's value is their mean."""
    earlier = {(r["task"], r["metric"]): r for r in before}
    rows = []
    for now in after:
        then = earlier.get((now["task"], now["metric"]))
        row = {
            "task": now["task"],
            "metric": now["metric"],
            "before": then["value"] if then else None,
            "after": now["value"],
            "n": now["n"],
            "difference": now["value"] - then["value"] if then else None,
            "interval": None,
            "verdict": None,
            "higher_is_better": now.get("higher_is_better"),
        }
        if then and _paired(then, now):
            paired = compare(then["scores"], now["scores"])
            row.update({k: paired[k] for k in ("before", "after", "n", "difference", "interval", "verdict")})
        rows.append(row)
    return rows


def _paired(before: dict, after: dict) -> bool:
    """Same documents on both sides, and each side's value the mean of its scores (not a corpus score)."""
    if not before.get("scores") or not after.get("scores") or before["doc_ids"] != after["doc_ids"]:
        return False
    return all(_is_mean(r["value"], r["scores"]) for r in (before, after))


def _is_mean(value: float, scores: list[float]) -> bool:
    return abs(sum(scores) / len(scores) - value) <= 1e-9 * max(1.0, abs(value))


# --- showing them ---------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def change_text(row: dict) -> str:
    """'+0.040 [+0.002, +0.078]' (the interval where the comparison is paired)."""
    if not isinstance(row.get("difference"), (int, float)):
        return ""
    text = f"{row['difference']:+.3f}"
    if row.get("interval"):
        low, high = row["interval"]
        text += f" [{low:+.3f}, {high:+.3f}]"
    return text


def table_lines(rows: list[dict] | None) -> list[str]:
    """The report's and the card's section: one table row per task and metric (empty without rows)."""
    if not rows:
        return []
    lines = [
        f"## {SECTION_TITLE}",
        "",
        "The start model and the result on the recipe's `evaluate.harness` tasks; the change with its 95% "
        "interval, paired per document (↑: higher is better).",
        "",
        "| task | metric | before | after | change [95% interval] | n | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        direction = {True: " ↑", False: " ↓"}.get(row.get("higher_is_better"), "")
        lines.append(
            f"| {row.get('task')} | {row.get('metric')}{direction} | {_number(row.get('before'))} | "
            f"{_number(row.get('after'))} | {change_text(row)} | {row.get('n') if row.get('n') is not None else ''}"
            f" | {row.get('verdict') or ''} |"
        )
    return [*lines, ""]
