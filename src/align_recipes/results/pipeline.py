"""Multi-stage runs: `align-recipes pipeline recipes/<family>/pipeline.yaml`.

    description: the classic RLHF flow
    output_dir: outputs/qwen05b/rlhf        # optional; default outputs/<family>/<file name>
    stages:
      - {name: sft, recipe: sft.yaml}
      - {name: reward, recipe: reward.yaml, overrides: {model.name_or_path: "{sft}"}}
      - {name: ppo, recipe: ppo.yaml,
         overrides: {model.name_or_path: "{sft}", train.reward_model_path: "{reward}"}}

Each stage is an ordinary recipe (relative to the pipeline file) plus dotted overrides, written
to `<output_dir>/<name>`. Paths in those overrides resolve against the pipeline file's folder, then
the current directory, as paths in a recipe do. In override values `{stage}` is that earlier stage's
model, ready to load as a base: its output directory for a full fine-tune, or `<dir>/merged` for a
LoRA/QLoRA stage (the pipeline merges the adapter after training). `{stage.output_dir}` is the raw
output directory.

Every stage is validated before anything trains. A stage is skipped when its output is complete
(summary.json says complete), its resolved recipe is unchanged and no stage it reads from is newer;
an interrupted stage is resumed from its checkpoint. `pipeline.json` in the output directory
records what ran. Command-line overrides: `KEY=VALUE` applies to every stage, `STAGE:KEY=VALUE` to one.

A stage may hold a gate: minimum held-out metrics of the earlier stages it reads from, checked
before it starts (and before it loads anything), so PPO never optimises a reward model that cannot
rank held-out answers:

      - {name: ppo, recipe: ppo.yaml, gate: {preference_accuracy: 0.8},
         overrides: {model.name_or_path: "{sft}", train.reward_model_path: "{reward}"}}

Each gate key is a held-out metric name; it applies to every stage the gated stage reads from whose
algorithm measures that metric (a reward stage measures preference_accuracy), and compares the
metric's after-training value in that stage's summary.json. Under the minimum the pipeline stops
with exit 2, naming both stages, the value, the minimum and the fix. `STAGE:gate.METRIC=VALUE` on the
command line replaces a minimum (0 turns it off).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_recipes import console, stats
from align_recipes.errors import RecipeError, RecipeErrors, did_you_mean
from align_recipes.plan import pipeline_rules, rules
from align_recipes.plan.checking import FileContext, locate_in
from align_recipes.plan.pipeline_rules import PLACEHOLDER, stage_of
from align_recipes.plan.yamlio import load_yaml, plain
from align_recipes.results.gates import check_gate, read_gates
from align_recipes.run.rundir import RESOLVED_RECIPE, SUMMARY, RunDir, recipe_changes, task_metrics

STATE_FILE = "pipeline.json"


@dataclass
class Stage:
    name: str
    recipe: Path
    overrides: list[str]  # KEY=VALUE, placeholders expanded
    output_dir: Path
    deps: list[str] = field(default_factory=list)
    gate: dict[str, float] = field(default_factory=dict)  # metric -> minimum, for the stages in `gated`
    gated: dict[str, list[str]] = field(default_factory=dict)  # metric -> the earlier stages checked
    plan: Any = None
    state: str = "pending"  # why it runs or is skipped
    adapter: bool = False

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "merged" if self.adapter else self.output_dir


@dataclass
class Pipeline:
    path: Path
    output_dir: Path
    stages: list[Stage]
    description: str = ""
    profile: str | None = None


def override_text(value: Any) -> str:
    """An override value as text that load_plan reads back (as YAML) to the same value."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    text = yaml.safe_dump(plain(value), default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[:-3].strip() if text.endswith("...") else text


def split_overrides(overrides: list[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    common: list[str] = []
    per_stage: dict[str, list[str]] = {}
    for text in overrides:
        stage = stage_of(text)
        if stage is None:
            common.append(text)
            continue
        if stage not in names:
            raise RecipeError(
                f"override '{text}' names stage '{stage}', which the pipeline does not have",
                key="command line",
                fix=did_you_mean(stage, names),
            )
        per_stage.setdefault(stage, []).append(text.split(":", 1)[1])
    return common, per_stage


def load_pipeline(
    path: str | Path,
    overrides: list[str] = (),
    profile: str | None = None,
    output_dir: str | Path | None = None,
) -> Pipeline:
    """Read the pipeline file and validate it and every stage's recipe (before anything trains): every mistake
    at once, the file's by the pipeline rules (plan/pipeline_rules.py), each stage's by the recipe rules. A
    stage's recipe that reads an earlier stage's output is checked again when that stage has run."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"pipeline file '{path}' not found", fix="e.g. recipes/tiny/pipeline.yaml")
    data = load_yaml(path)
    context = FileContext(data, path, extra={"overrides": list(overrides)})

    def place(key: str) -> tuple:
        return (None, None) if ":" in key or key == "command line" else (path, locate_in(data, key))

    errors = rules.run(rules.PIPELINE, context, place, only=FILE_RULES)
    if any(e.rule == "pipeline-without-stages" for e in errors):
        raise RecipeErrors(errors)
    root = Path(
        output_dir or data.get("output_dir") or Path("outputs") / path.resolve().parent.name / path.stem
    )
    profile = profile or data.get("profile")
    names = [name for _, _, name in pipeline_rules.named_stages(context)]
    known = [t for t in overrides if stage_of(t) in (None, *names)]
    common, per_stage = split_overrides(known, names)
    per_stage = {n: [t for t in texts if not t.startswith("gate.")] for n, texts in per_stage.items()}
    stages: list[Stage] = []
    for index, entry, name in pipeline_rules.named_stages(context):
        if context.has_errors(f"stages[{index}]"):
            continue
        stage = _stage(path, entry, name, stages, root, [*common, *per_stage.get(name, [])])
        errors += _load_stage(stage, stages, profile)
        stages.append(stage)
    by_name = {s.name: s for s in stages}
    context.extra["algorithm_of"] = lambda name: _algorithm_of(by_name[name]) if name in by_name else None
    errors += rules.run(rules.PIPELINE, context, place, only=GATE_RULES)
    if errors:
        raise RecipeErrors(errors)
    read_gates(stages, context)
    return Pipeline(
        path=path,
        output_dir=root,
        stages=stages,
        description=str(data.get("description") or ""),
        profile=profile,
    )


GATE_RULES = frozenset(name for name in rules.RULES if name.startswith("gate-"))
FILE_RULES = (
    frozenset(name for name, rule in rules.RULES.items() if rule.reads == rules.PIPELINE) - GATE_RULES
)


def _stage(path: Path, entry: dict, name: str, earlier: list[Stage], root: Path, extra: list[str]) -> Stage:
    """A stage of the file (its entry checked by the pipeline rules), its overrides' placeholders expanded."""
    texts, deps = [], []
    for key, value in (entry.get("overrides") or {}).items():
        value = _resolve_written_here(str(key), value, path.parent.resolve())
        text, used = _expand(override_text(value), earlier)
        texts.append(f"{key}={text}")
        deps += used
    out = Path(entry.get("output_dir") or root / name)
    return Stage(
        name=name,
        recipe=path.parent / str(entry["recipe"]),
        output_dir=out,
        deps=list(dict.fromkeys(deps)),
        overrides=[*texts, *extra, f"train.output_dir={out}"],
    )


def _load_stage(stage: Stage, earlier: list[Stage], profile: str | None) -> list[RecipeError]:
    """Validate a stage's recipe (the recipe rules); a problem of a waiting rule about an earlier stage's output
    is left for when that stage has run."""
    from align_recipes.plan.load import load_plan

    try:
        stage.plan = load_plan(stage.recipe, stage.overrides, profile=profile)
        stage.adapter = stage.plan.model.adapter != "full"
        return []
    except (RecipeError, RecipeErrors) as exc:
        stage.adapter = _adapter_from_files(stage)
        found = []
        for error in getattr(exc, "errors", [exc]):
            if error.rule in rules.WAITING and _written_by(error.subject, earlier):
                continue  # an earlier stage's output, checked again when that stage has run
            error.message = f"stage '{stage.name}': {error.message}"
            found.append(error)
        return found


def _written_by(subject: str | None, earlier: list[Stage]) -> bool:
    """Whether `subject` (a path a waiting rule found missing) is an earlier stage's output or lies inside one."""
    if not subject:
        return False
    path = Path(subject).resolve()
    outputs = {s.output_dir.resolve() for s in earlier} | {s.model_dir.resolve() for s in earlier}
    return any(path == out or out in path.parents for out in outputs)


def _resolve_written_here(key: str, value: Any, folder: Path) -> Any:
    """A path the pipeline file writes in a stage's overrides resolves against the file's folder (then the
    current directory), as a path in a recipe does; the stage's command line then carries it absolute."""
    from align_recipes.plan.layers import resolve_paths

    parts = key.split(".")
    tree: Any = value
    for part in reversed(parts):
        tree = {part: tree}
    resolve_paths(tree, lambda _dotted: folder)
    for part in parts:
        tree = tree[part]
    return tree


def _adapter_from_files(stage: Stage) -> bool:
    """Whether a stage trains an adapter, read from its recipe chain and overrides (when it cannot be
    validated yet because an earlier stage's output is missing)."""
    return _value_from_files(stage, "model", "adapter", "full") != "full"


def _value_from_files(stage: Stage, section: str, key: str, default: Any) -> Any:
    """`section.key` (or a top-level `key` when section is empty) as the recipe chain and overrides set it."""
    from align_recipes.plan.layers import parse_override, read_chain

    value = default
    for _, data in read_chain(stage.recipe):
        where = data.get(section) if section else data
        value = where.get(key, value) if isinstance(where, dict) else value
    for text in stage.overrides:
        parts, given = parse_override(text)
        if parts == [p for p in (section, key) if p]:
            value = given
    return value


# -------------------------------------------------------------------------------------------- gates


def _algorithm_of(stage: Stage) -> str | None:
    if stage.plan is not None:
        return stage.plan.algorithm.name
    try:
        return _value_from_files(stage, "", "algorithm", None)
    except RecipeError:
        return None


def _expand(text: str, earlier: list[Stage]) -> tuple[str, list[str]]:
    """Placeholders of earlier stages replaced by their folders (one naming no earlier stage is a pipeline
    rule's problem, reported before this runs); and the stages used."""
    by_name = {s.name: s for s in earlier}
    used: list[str] = []

    def replace(match: re.Match) -> str:
        stage = by_name.get(match.group(1))
        if stage is None:
            return match.group(0)
        used.append(stage.name)
        target = stage.output_dir if match.group(2) == ".output_dir" else stage.model_dir
        return str(target.resolve())

    return PLACEHOLDER.sub(replace, text), used


# ------------------------------------------------------------------------------------------- running


def stage_changes(stage: Stage) -> list[str] | None:
    """Keys whose resolved value differs from the run in the stage's directory (None: no run there)."""
    from align_recipes.plan import resolved_yaml
    from align_recipes.redaction import redact_obj

    if not (stage.output_dir / RESOLVED_RECIPE).is_file():
        return None
    # The run writes its recipe with secrets hidden: compare like with like.
    now = redact_obj(yaml.safe_load(resolved_yaml(stage.plan)))
    return recipe_changes(RunDir(stage.output_dir).resolved_recipe(), now)


def stage_state(stage: Stage, by_name: dict[str, Stage], ran: set[str]) -> str:
    """'complete' (skip), or why the stage must run: missing, changed, stale, interrupted, incomplete."""
    summary_path = stage.output_dir / SUMMARY
    if stage.plan is None:  # validation waits for an earlier stage's output
        return "missing" if not summary_path.is_file() else "upstream output pending"
    if not summary_path.is_file():
        return "missing"
    summary = RunDir(stage.output_dir).summary()
    changed = stage_changes(stage)
    if changed is None or changed:
        shown = ", ".join((changed or ["recipe.resolved.yaml missing"])[:4])
        return f"changed: {shown}{' …' if changed and len(changed) > 4 else ''}"
    status = summary.get("status", "complete")
    if status != "complete":
        return "interrupted" if status == "interrupted" else "incomplete"
    for dep in stage.deps:
        upstream = by_name[dep].output_dir / SUMMARY
        if dep in ran or (upstream.is_file() and upstream.stat().st_mtime > summary_path.stat().st_mtime):
            return "stale"
    return "complete"


def run_pipeline(pipeline: Pipeline, force: bool = False, dry_run: bool = False) -> list[dict]:
    """Train the stages in order, skipping complete ones; returns one record per stage."""
    by_name = {s.name: s for s in pipeline.stages}
    ran: set[str] = set()
    records: list[dict] = []
    total = len(pipeline.stages)
    console.info(f"pipeline {pipeline.path}: {total} stages validated -> {pipeline.output_dir}")
    for index, stage in enumerate(pipeline.stages, 1):
        state = "forced" if force else stage_state(stage, by_name, ran)
        merged_ok = not stage.adapter or (stage.model_dir / "config.json").is_file()
        label = f"[{index}/{total}] {stage.name} ({stage.recipe.name})"
        if state == "complete":
            console.info(f"{label}: skipped, complete and unchanged in {stage.output_dir}")
            if not merged_ok and not dry_run:
                _merge(stage)
            records.append(_record(stage, "skipped", 0.0))
            continue
        if stage.gate and not dry_run:
            try:
                passed = check_gate(stage, by_name, pipeline.path)
            except RecipeError:
                records.append({**_record(stage, "stopped by its gate", 0.0), "gate": stage.gate})
                _write_state(pipeline, records)
                raise
            for text in passed:
                console.info(f"{label}: {text}")
        console.info(f"{label}: {'would run' if dry_run else 'running'} ({state})")
        if dry_run:
            ran.add(stage.name)
            records.append(_record(stage, f"would run ({state})", 0.0))
            continue
        records.append(_run_stage(stage, state, pipeline.profile))
        ran.add(stage.name)
        _write_state(pipeline, records)
    if not dry_run:
        _write_state(pipeline, records)
        done = ", ".join(f"{r['stage']} {r['status']}" for r in records)
        console.info(f"pipeline done: {done}")
        for line in held_out_lines(records):
            console.info(line)
    return records


def held_out_lines(records: list[dict]) -> list[str]:
    """The pipeline's summary of what each stage measured: '  reward: preference_accuracy 0.500 → 0.850
    (+0.350 [+0.252, +0.448], n=100, rose)' (stats.before_after), one line per held-out metric."""
    return [
        f"  {record['stage']}: {stats.before_after(task)}"
        for record in records
        for task in record.get("task_metrics") or []
        if isinstance(task.get("before"), (int, float)) and isinstance(task.get("after"), (int, float))
    ]


def _run_stage(stage: Stage, state: str, profile: str | None) -> dict:
    import gc

    from align_recipes import run
    from align_recipes.plan import load_plan
    from align_recipes.results.publish import wrap_up

    # Validated again now that the stages it reads from exist (reward model references, sizes).
    stage.plan = load_plan(stage.recipe, stage.overrides, profile=profile)
    resume = state == "interrupted"  # same recipe, stopped early: continue from its checkpoint
    started = time.time()
    # The manifest records the equivalent single-stage command: it reproduces (and resumes) this stage.
    command = [
        "align-recipes",
        "train",
        str(stage.recipe),
        *stage.overrides,
        *(["--profile", profile] if profile else []),
    ]
    try:
        run.train(
            stage.plan, overwrite=not resume and stage.output_dir.exists(), resume=resume, command=command
        )
    except RecipeError as exc:
        exc.message = f"stage '{stage.name}': {exc.message}"
        raise
    if stage.adapter:
        _merge(stage)
    wrap_up(stage.plan)
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return _record(stage, "resumed" if resume else "ran", time.time() - started)


def _merge(stage: Stage) -> None:
    from align_recipes.results.merge import merge

    console.info(f"  merging the {stage.name} adapter -> {stage.model_dir}")
    merge(stage.output_dir, stage.model_dir, overwrite=True)


def _record(stage: Stage, status: str, seconds: float) -> dict:
    summary = RunDir(stage.output_dir).summary()
    return {
        "stage": stage.name,
        "status": status,
        "recipe": str(stage.recipe),
        "output_dir": str(stage.output_dir),
        "model_dir": str(stage.model_dir),
        "algorithm": stage.plan.algorithm.name if stage.plan else None,
        "seconds": round(seconds, 2),
        "task_metrics": task_metrics(summary),
    }


def _write_state(pipeline: Pipeline, records: list[dict]) -> None:
    pipeline.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "pipeline": str(pipeline.path),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": records,
    }
    (pipeline.output_dir / STATE_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
