"""Pipeline gates: a stage starts only when the earlier stages it reads from reached a minimum held-out
metric (e.g. PPO after a reward model that ranks held-out near misses right). The pipeline rules check a stage's
`gate:` while the pipeline is validated, before anything loads, and `read_gates` fills the stages' gates;
`check_gate` reads the earlier stages' summaries just before the gated stage would start.

The gate decides on the point value (the metric's after-training mean against the minimum); the lines it
prints and its refusal show the value's 95% interval beside it (`after_interval` in the summary), and say
when that interval reaches below the minimum, so a pass that noise could undo is visible."""

from __future__ import annotations

from pathlib import Path

from align_recipes import stats
from align_recipes.errors import RecipeError
from align_recipes.plan.pipeline_rules import gate_entries, measured_by
from align_recipes.run.rundir import SUMMARY, RunDir, task_metrics


def read_gates(stages: list, context) -> None:
    """Fill each stage's `gate` / `gated` from its `gate:` mapping and `STAGE:gate.METRIC=VALUE` overrides, once
    the pipeline rules found them valid (plan/pipeline_rules.py: known metrics, minimums from 0 to 1, measured by
    an earlier stage it reads from). A minimum of 0 turns that gate off."""
    by_name = {s.name: s for s in stages}
    algorithm_of = context.extra["algorithm_of"]
    for name, deps, metric, minimum, _ in gate_entries(context):
        stage = by_name.get(name)
        if stage is None:
            continue
        if minimum > 0:
            stage.gate[metric] = float(minimum)
            stage.gated[metric] = measured_by(metric, deps, algorithm_of)
        else:
            stage.gate.pop(metric, None)
            stage.gated.pop(metric, None)


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
