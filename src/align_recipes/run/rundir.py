"""`RunDir`: the one owner of a run's output folder, its layout, its status and where a run resumes.

    recipe.resolved.yaml   every value the run used (secrets hidden, paths absolute)
    metrics.jsonl          one JSON object per Trainer log (step, epoch, loss, …)
    summary.json           status (running | interrupted | diverged | failed | stopped_hacking | complete), steps…
    heldout_scores.json    the held-out metrics' per-row scores before and after training (paired statistics)
    manifest.json          how to reproduce it (run.manifest)
    checkpoint-<step>/     complete or cut short (run.checkpoints)

Only the main process writes. Importing this module imports neither torch nor transformers, so
`plan_start` decides how a run starts before any model loads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_recipes import console
from align_recipes.errors import RecipeError
from align_recipes.paths import read_json, write_atomic
from align_recipes.redaction import redact_obj
from align_recipes.run import checkpoints, manifest
from align_recipes.run.checkpoints import RESUME_AUTO, RESUME_LATEST

RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
HELDOUT_SCORES = "heldout_scores.json"
MANIFEST = manifest.MANIFEST
OWN_FILES = (
    RESOLVED_RECIPE,
    MANIFEST,
)  # written before training: a directory holding only these holds no run


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Start:
    """Where a run starts: from scratch (checkpoint None) or from a complete checkpoint."""

    checkpoint: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    mode: str | None = None  # None | auto | latest | a path
    fresh_over_leftovers: bool = False  # nothing to resume in a directory a crashed or failed run left

    @property
    def step(self) -> int | None:
        return checkpoints.checkpoint_step(self.checkpoint) if self.checkpoint else None


def clear_folder(path: Path, keep: set[str] = frozenset()) -> None:
    """Remove everything in `path` but the top-level names in `keep` (--overwrite, while this run's own files
    are already being written)."""
    for child in path.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


class RunDir:
    """A run's output folder. Reading works anywhere (report, eval, pipeline); writing is the run's."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.prepared = False  # set by `prepare`: from then on the folder holds this run, whatever happens
        # Files this run writes before `prepare` (its own vLLM server's log): --overwrite clears around them.
        self.live: set[str] = set()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- reading ------------------------------------------------------------------------------------
    def summary(self) -> dict:
        return read_json(self.path / SUMMARY)

    def status(self) -> str | None:
        """The `status` in summary.json (None when there is none)."""
        summary = self.summary()
        return summary.get("status", "complete") if (self.path / SUMMARY).is_file() and summary else None

    def heldout_scores(self, which: str) -> dict[str, list[float]]:
        """{metric: per-row scores} measured `which` ("before" or "after") training; {} when none were kept."""
        kept = read_json(self.path / HELDOUT_SCORES).get(which)
        return kept if isinstance(kept, dict) else {}

    def metrics(self) -> list[dict]:
        """The records of metrics.jsonl; a last line cut short by a killed process is ignored."""
        path = self.path / METRICS
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def resolved_recipe(self) -> dict:
        try:
            return yaml.safe_load((self.path / RESOLVED_RECIPE).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    # --- deciding how a run starts (before anything heavy is imported) ------------------------------
    def plan_start(
        self, mode: str | None, overwrite: bool, require_optimizer: bool = True, base_dir: Path | None = None
    ) -> Start:
        """Whether a run starts fresh or from a checkpoint.

        mode: None (start fresh; a folder holding a run is refused unless overwrite), "auto" (the newest
        complete checkpoint if there is one, else fresh), "latest" (`--resume`: the newest complete
        checkpoint, an error if there is none) or the path of one checkpoint directory. A run that failed
        before writing any checkpoint holds nothing worth keeping: it is started over without --overwrite.
        """
        key = "train.resume_from_checkpoint"
        if mode in ("", "none", "null", "no", "false"):
            mode = None
        if overwrite and mode:
            raise RecipeError(
                "--overwrite and resuming contradict each other",
                key=key,
                fix="drop --overwrite to continue the run, or drop --resume / resume_from_checkpoint "
                "to replace it",
            )
        if overwrite or mode is None:
            return self._fresh(overwrite, mode)
        if mode not in (RESUME_AUTO, RESUME_LATEST):
            return self._named_checkpoint(mode, require_optimizer, base_dir, key)
        checkpoint, skipped = checkpoints.newest_complete(self.path, require_optimizer)
        if checkpoint is not None:
            return Start(checkpoint=checkpoint, skipped=skipped, mode=mode)
        why = f" ({checkpoints.skipped_text(skipped)})" if skipped else ""
        if mode == RESUME_LATEST:
            where = "does not exist" if not self.path.exists() else "holds no complete checkpoint" + why
            raise RecipeError(
                f"nothing to resume: {self.path} {where}",
                key="--resume",
                fix="checkpoints are written every train.save_steps (with train.save_strategy: steps) "
                "and when a run is stopped with Ctrl-C; run without --resume to start over "
                "(add --overwrite if the directory holds a run)",
            )
        # auto: nothing to resume. A finished run is never replaced silently; a crashed one is restarted.
        if self.status() == "complete":
            raise RecipeError(
                f"output_dir '{self.path}' holds a finished run and no checkpoint to continue from",
                key="train.output_dir",
                fix="pass --overwrite to replace it, or train.output_dir=… to write elsewhere",
            )
        return Start(mode=mode, skipped=skipped, fresh_over_leftovers=self.path.exists())

    def _fresh(self, overwrite: bool, mode: str | None) -> Start:
        """A fresh start: refused over another run's results unless told to."""
        if not self.path.exists() or overwrite:
            return Start(mode=mode)
        if not self.path.is_dir():
            raise RecipeError(
                f"output_dir '{self.path}' exists and is not a directory",
                key="train.output_dir",
                fix="choose another train.output_dir",
            )
        if self.status() == "failed" and not checkpoints.list_checkpoints(self.path):
            return Start(mode=mode, fresh_over_leftovers=True)
        leftovers = [p.name for p in self.path.iterdir() if p.name not in OWN_FILES]
        if leftovers:
            shown = ", ".join(sorted(leftovers)[:4]) + (" …" if len(leftovers) > 4 else "")
            raise RecipeError(
                f"output_dir '{self.path}' already holds a run ({shown})",
                key="train.output_dir",
                fix="pass --resume to continue it, --overwrite to replace it, "
                "or train.output_dir=… to write elsewhere",
            )
        return Start(mode=mode)

    def _named_checkpoint(self, mode: str, require_optimizer: bool, base_dir: Path | None, key: str) -> Start:
        candidates = [Path(mode).expanduser()]
        if not candidates[0].is_absolute():
            candidates += [self.path / mode, *([Path(base_dir) / mode] if base_dir else [])]
        path = next((c for c in candidates if c.is_dir()), None)
        newest, _ = checkpoints.newest_complete(self.path, require_optimizer)
        other = (
            f"the newest complete one is {newest}" if newest else f"{self.path} has no complete checkpoint"
        )
        if path is None:
            raise RecipeError(
                f"checkpoint '{mode}' not found",
                key=key,
                fix=f"give a checkpoint-<step> directory, or `auto` / --resume; {other}",
            )
        problem = checkpoints.checkpoint_problem(path, require_optimizer)
        if problem:
            raise RecipeError(
                f"checkpoint {path} is incomplete: {problem}",
                key=key,
                fix=f"it was cut short and cannot be loaded; {other}",
            )
        return Start(checkpoint=path, mode=mode)

    # --- writing (main process) ---------------------------------------------------------------------
    def remove_if_empty(self) -> None:
        """Remove the folder when it holds nothing (created for a run that was refused before it began)."""
        try:
            self.path.rmdir()
        except OSError:
            pass

    def prepare(
        self, plan, start: Start, overwrite: bool, command: list[str], resolved_yaml: str, config
    ) -> None:
        """Clear, continue or create the folder, and record how to reproduce the run."""
        resolved = yaml.safe_dump(
            redact_obj(yaml.safe_load(resolved_yaml)), sort_keys=False, allow_unicode=True
        )
        self.prepared = True
        if overwrite and self.path.exists():
            clear_folder(self.path, keep=self.live)
        if start.checkpoint is not None or start.fresh_over_leftovers:
            # Checkpoints cut short after the one we continue from would be overwritten half-way: remove them.
            for path, _why in start.skipped:
                shutil.rmtree(path, ignore_errors=True)
        if start.fresh_over_leftovers:
            for name in (METRICS, SUMMARY, HELDOUT_SCORES):
                (self.path / name).unlink(missing_ok=True)
            console.note(f"nothing to resume in {self.path} (no complete checkpoint): starting over")
        self.path.mkdir(parents=True, exist_ok=True)
        if start.checkpoint is not None:
            self._set_aside_newer_than(start)
            self.truncate_metrics(start.step)
            changed = recipe_changes(self.resolved_recipe(), yaml.safe_load(resolved))
            if changed:
                console.note(
                    f"resuming with a changed recipe ({', '.join(changed[:6])}"
                    f"{' …' if len(changed) > 6 else ''}); the new values apply from step {start.step}"
                )
            manifest.record_resume(self.path, plan, command, start.checkpoint, changed)
        else:
            manifest.write_manifest(self.path, manifest.manifest(plan, command, config))
        (self.path / RESOLVED_RECIPE).write_text(resolved)

    def _set_aside_newer_than(self, start: Start) -> None:
        """Resuming from an older checkpoint than the newest: the newer ones are kept, under a name neither
        the Trainer's rotation nor our discovery takes for a checkpoint of this run."""
        for path in checkpoints.list_checkpoints(self.path):
            if checkpoints.checkpoint_step(path) > start.step:
                aside = self.path / f"superseded-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                path.rename(aside)
                console.note(f"{path.name} is newer than {start.checkpoint.name}: moved to {aside.name}")

    def write_summary(self, payload: dict) -> Path:
        path = self.path / SUMMARY
        write_atomic(path, json.dumps(redact_obj(payload), indent=2, default=str) + "\n")
        return path

    def write_heldout_scores(self, which: str, scores: dict[str, list[float]]) -> Path:
        """Keep the per-row held-out scores measured `which` ("before"/"after") training, beside the other's.
        Out of summary.json: a thousand numbers per metric would bury it."""
        path = self.path / HELDOUT_SCORES
        kept = {**read_json(path), which: scores}
        write_atomic(path, json.dumps(kept, separators=(",", ":")) + "\n")
        return path

    def truncate_metrics(self, step: int) -> int:
        """Keep only the records up to `step` (a resumed run logs the later steps again); returns how many went."""
        path = self.path / METRICS
        if not path.exists():
            return 0
        records = self.metrics()
        kept = [
            r
            for r in records
            if isinstance(r.get("step"), int) and r["step"] <= step and "train_runtime" not in r
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return len(records) - len(kept)

    def metrics_callback(self):
        """The Trainer callback that appends every logged dict to metrics.jsonl (this imports torch)."""
        from align_recipes.run.callbacks import MetricsHooks

        return MetricsHooks(MetricsJsonl(self.path / METRICS))


def append_metrics(path: Path, record: dict) -> None:
    """One record at the end of metrics.jsonl: the one way anything writes there (non-finite values as text)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


class MetricsJsonl:
    """Every dict the Trainer logs, with its step and epoch, as one line of metrics.jsonl (main process only)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            append_metrics(self.path, {"step": state.global_step, "epoch": state.epoch, **logs})


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def flatten(value: Any, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}; empty mappings and other values are leaves."""
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def recipe_changes(before: dict | None, after: dict | None) -> list[str]:
    """The dotted keys whose values differ between two resolved recipes (where to resume from aside)."""
    old, new = flatten(before or {}), flatten(after or {})
    ignore = {"train.resume_from_checkpoint"}
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def metrics_before(summary: dict) -> list[dict] | None:
    """The held-out metrics measured before training, [{name, value, n}], as a summary records them
    (`task_metric_before`, one dict, in run folders written before metrics became a list)."""
    before = summary.get("task_metrics_before")
    if isinstance(before, list):
        return before
    old = summary.get("task_metric_before")
    return [old] if isinstance(old, dict) else None


def task_metrics(summary: dict) -> list[dict]:
    """A run's held-out metrics, [{name, before, after, n}] (after is None when the run did not finish),
    with the paired comparison where the run recorded it (difference, interval, confidence, verdict,
    after_interval: run.measure.compare_metrics). Reads every summary.json align-recipes wrote:
    `task_metrics` (a list), or the single `task_metric` of older run folders."""
    if isinstance(summary.get("task_metrics"), list):
        return [t for t in summary["task_metrics"] if isinstance(t, dict)]
    if isinstance(summary.get("task_metric"), dict):
        return [summary["task_metric"]]
    return [
        {"name": b.get("name"), "before": b.get("value"), "after": None, "n": b.get("n")}
        for b in metrics_before(summary) or []
        if isinstance(b, dict)
    ]


def first_and_last(records: list[dict]) -> tuple[dict, dict]:
    """The first and last value of every numeric training metric (eval/summary rows excluded)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for record in records:
        if "train_runtime" in record:
            continue
        for key, value in record.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            first.setdefault(key, value)
            last[key] = value
    return first, last


def whole_run_loss(
    records: list[dict], resumed_from: int | None, final_step: int, trainer_loss: float | None
) -> float | None:
    """The mean training loss over the whole run, also when it was resumed.

    The Trainer's `training_loss` averages the steps of its own `train()` call only; for a resumed
    run the steps before the checkpoint come from the logged losses (each the mean over its logging
    interval), weighted by the steps they cover."""
    if not resumed_from:
        return trainer_loss
    total, covered, previous = 0.0, 0, 0
    for record in records:
        step, loss = record.get("step"), record.get("loss")
        if not isinstance(step, int) or step > resumed_from or "train_runtime" in record:
            continue
        if isinstance(loss, (int, float)) and math.isfinite(loss) and step > previous:
            total += loss * (step - previous)
            covered += step - previous
            previous = step
    resumed_steps = final_step - resumed_from
    if trainer_loss is not None and resumed_steps > 0:
        total += trainer_loss * resumed_steps
        covered += resumed_steps
    return total / covered if covered else trainer_loss
