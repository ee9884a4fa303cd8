"""Pipeline gates: a stage starts only when the earlier stages it reads from reached a minimum held-out
metric (e.g. PPO after a reward model that ranks held-out near misses right). `read_gate` checks a stage's
`gate:` while the pipeline is validated, before anything loads; `check_gate` reads the earlier stages'
summaries just before the gated stage would start.

The gate decides on the point value (the metric's after-training mean against the minimum); the lines it
prints and its refusal show the value's 95% interval beside it (`after_interval` in the summary), and say
when that interval reaches below the minimum, so a pass that noise could undo is visible."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from align_recipes import registry, stats
from align_recipes.errors import RecipeError, did_you_mean
from align_recipes.plan.layers import parse_override
from align_recipes.plan.sections import METRICS
from align_recipes.run.rundir import SUMMARY, RunDir, task_metrics


def read_gate(
    stage,
    raw: Any,
    overrides: list[str],
    earlier: list,
    path: Path,
    where: str,
    line: int | None,
    algorithm_of: Callable[[Any], str | None],
) -> list[RecipeError]:
    """Fill stage.gate / stage.gated from the stage's `gate:` mapping (`raw`) and `STAGE:gate.METRIC=VALUE`
    overrides. `algorithm_of(stage)` names an earlier stage's algorithm (from its plan or its run folder)."""
    example = "gate: {preference_accuracy: 0.8}"
    if raw is None and not overrides:
        return []
    if raw is not None and not isinstance(raw, dict):
        return [
            RecipeError(
                f"stage '{stage.name}': gate must map held-out metrics to minimums",
                file=path,
                line=line,
                key=f"{where}.gate",
                fix=example,
            )
        ]
    written = [(str(k), v, f"{where}.gate.{k}", path) for k, v in (raw or {}).items()]
    for text in overrides:
        parts, value = parse_override(text)
        written.append((".".join(parts[1:]), value, f"{stage.name}:{text.split('=', 1)[0]}", "command line"))
    errors: list[RecipeError] = []
    for metric, minimum, key, source in written:
        file = path if source == path else None
        if metric not in METRICS:
            errors.append(
                RecipeError(
                    f"stage '{stage.name}': unknown gate metric '{metric}'",
                    file=file,
                    line=line,
                    key=key,
                    fix=did_you_mean(metric, METRICS),
                )
            )
            continue
        if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or not 0 <= minimum <= 1:
            errors.append(
                RecipeError(
                    f"stage '{stage.name}': gate minimum {minimum!r} must be a number from 0 to 1",
                    file=file,
                    line=line,
                    key=key,
                    fix=f"e.g. {metric}: 0.8",
                )
            )
            continue
        by_name = {s.name: s for s in earlier}
        measured = [
            d
            for d in stage.deps
            if metric in getattr(registry.ALGORITHMS.get(algorithm_of(by_name[d]) or ""), "metrics", ())
        ]
        if not measured:
            reads = ", ".join(stage.deps) or "no earlier stage"
            errors.append(
                RecipeError(
                    f"stage '{stage.name}': gate on {metric}, but none of the stages it reads from "
                    f"({reads}) measures it",
                    file=file,
                    line=line,
                    key=key,
                    fix=f"gate the stage that reads the model to check, e.g. train.reward_model_path: '{{reward}}' "
                    f"({metric} is measured by {registry.names_text(lambda a, m=metric: m in a.metrics)})",
                )
            )
            continue
        if minimum > 0:  # 0: off
            stage.gate[metric] = float(minimum)
            stage.gated[metric] = measured
        else:
            stage.gate.pop(metric, None)
            stage.gated.pop(metric, None)
    return errors


def check_gate(stage, by_name: dict, pipeline_path: Path) -> list[str]:
    """Lines saying what passed the stage's gate; raises RecipeError (exit 2) when an earlier stage is under it."""
    passed = []
    for metric, minimum in stage.gate.items():
        for name in stage.gated[metric]:
            upstream = by_name[name]
            summary = (
                RunDir(upstream.output_dir).summary() if (upstream.output_dir / SUMMARY).is_file() else {}
            )
            found = {m["name"]: m for m in task_metrics(summary)}.get(metric)
            key = f"gate.{metric}"
            if found is None or found.get("after") is None:
                raise RecipeError(
                    f"stage '{stage.name}' not started: its gate needs {metric} of stage '{name}', but "
                    f"{upstream.output_dir / SUMMARY} records no held-out {metric} after training",
                    file=pipeline_path,
                    key=key,
                    fix=f"let stage '{name}' measure it (evaluate.data with prompt/chosen/rejected pairs) and run the "
                    f"pipeline again, or turn the gate off: {stage.name}:gate.{metric}=0",
                )
            value = float(found["after"])
            n = f", n={found['n']}" if found.get("n") else ""
            interval = found.get("after_interval")
            if value < minimum:
                spread = f" (95% interval {stats.interval_text(interval)})" if interval else ""
                raise RecipeError(
                    f"stage '{stage.name}' not started: stage '{name}' reached held-out {metric} {value:.3f}{n}"
                    f"{spread}, under this gate's minimum {minimum:.3f} (the gate reads the point value); "
                    f"{stage.name} would optimise what '{name}' gets wrong",
                    file=pipeline_path,
                    key=key,
                    fix=f"improve stage '{name}' (for a reward model: preference pairs whose rejected answers "
                    f"are the near misses a policy drifts to, more epochs; docs/usage.md, 'The classic RLHF flow "
                    f"and its gate') and run the pipeline again (complete stages are skipped), or lower the minimum "
                    f"on the command "
                    f"line: {stage.name}:gate.{metric}={value:.2f}",
                )
            passed.append(
                f"gate: stage '{name}' {metric} {value:.3f}{n} >= {minimum:.3f}{_spread(interval, minimum)}"
            )
    return passed


def _spread(interval: list[float] | None, minimum: float) -> str:
    """What a passed gate adds about noise: the value's 95% interval, and whether it reaches below the minimum."""
    if not interval:
        return ""
    below = "; it reaches below the minimum" if interval[0] < minimum else ""
    return f" (point value; 95% interval {stats.interval_text(interval)}{below})"
