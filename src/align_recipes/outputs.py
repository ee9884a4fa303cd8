"""What a run leaves in its output directory, besides the model: the resolved recipe, the metrics
log, the summary and a reproducibility manifest. Only the main process writes.

    recipe.resolved.yaml   every value the run used (secrets hidden)
    metrics.jsonl          one JSON object per Trainer log (step, epoch, loss, …)
    summary.json           status (running | interrupted | diverged | failed | complete), steps, losses, task metric
    manifest.json          command, recipe, versions, git commit, hardware, profile, seed, data files, resumes
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError
from align_recipes.checkpoints import command_words
from align_recipes.redaction import redact_argv, redact_obj

RESOLVED_RECIPE = "recipe.resolved.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD")
OWN_FILES = (RESOLVED_RECIPE, MANIFEST)  # written before training: a directory holding only these holds no run
HASH_LIMIT = 256 * 1024 * 1024  # data files up to this size are hashed into the manifest


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def guard_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to write over another run's results unless told to (checked before any model loads)."""
    output_dir = Path(output_dir)
    if not output_dir.exists() or overwrite or resume:
        return
    if not output_dir.is_dir():
        raise RecipeError(f"output_dir '{output_dir}' exists and is not a directory", key="train.output_dir",
                          fix="choose another train.output_dir")
    leftovers = [p.name for p in output_dir.iterdir() if p.name not in OWN_FILES]
    if leftovers:
        shown = ", ".join(sorted(leftovers)[:4]) + (" …" if len(leftovers) > 4 else "")
        raise RecipeError(f"output_dir '{output_dir}' already holds a run ({shown})", key="train.output_dir",
                          fix="pass --resume to continue it, --overwrite to replace it, "
                              "or train.output_dir=… to write elsewhere")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def metrics_callback(output_dir: Path):
    """A TrainerCallback that appends every logged dict to metrics.jsonl, one JSON object per line."""
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, **{k: _clean(v) for k, v in logs.items()}}
            with open(Path(output_dir) / METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    return MetricsJsonl()


def read_metrics(output_dir: Path) -> list[dict]:
    """The records of metrics.jsonl; a last line cut short by a killed process is ignored."""
    path = Path(output_dir) / METRICS
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


def truncate_metrics(output_dir: Path, step: int) -> int:
    """Keep only the records up to `step` (a resumed run logs the later steps again); returns how many went."""
    path = Path(output_dir) / METRICS
    if not path.exists():
        return 0
    records = read_metrics(output_dir)
    kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step and "train_runtime" not in r]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


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


def whole_run_loss(records: list[dict], resumed_from: int | None, final_step: int,
                   trainer_loss: float | None) -> float | None:
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


def write_summary(output_dir: Path, payload: dict) -> Path:
    path = Path(output_dir) / SUMMARY
    _write_atomic(path, json.dumps(redact_obj(payload), indent=2, default=str) + "\n")
    return path


def mark_failed(output_dir: Path, error: BaseException) -> None:
    """A run that stopped on an error says so in summary.json (status failed, the error), where the run had
    started writing one; a run that failed before that leaves the output directory as it was."""
    summary = read_summary(output_dir)
    if not summary or summary.get("status") != "running":
        return
    from align_recipes.redaction import redact

    message = getattr(error, "message", None) or str(error) or type(error).__name__
    write_summary(output_dir, {**summary, "status": "failed", "error": f"{type(error).__name__}: {redact(message)}"[:2000],
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_summary(output_dir: Path) -> dict:
    try:
        return json.loads((Path(output_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ manifest

def manifest(plan, command: list[str], config=None) -> dict:
    """How to reproduce this run: recipe, command, versions, commit, hardware, profile, seed, data."""
    import importlib.metadata as md

    versions = {}
    for package in ("align-recipes", "trl", "transformers", "torch", "peft", "accelerate", "datasets", "bitsandbytes",
                    "vllm", "deepspeed"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    seed = getattr(config, "seed", None) if config is not None else plan.train_args.get("seed", 42)
    payload = {
        "command": redact_argv(command_words(command)),
        "cwd": os.getcwd(),
        "recipe": str(plan.recipe_path),
        "recipe_sha256": _sha256(plan.recipe_path),
        "algorithm": plan.algorithm.name,
        "profile": plan.profile.name,
        "profile_detected": plan.profile.detected,
        "seed": seed,
        "data_seed": getattr(config, "data_seed", None) if config is not None else None,
        "git": _git(plan.recipe_path.parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "hardware": hardware(),
        "data": data_files(plan),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumes": [],
    }
    payload["git_commit"] = payload["git"].get("commit")
    return redact_obj(payload)


def write_manifest(output_dir: Path, payload: dict) -> None:
    _write_atomic(Path(output_dir) / MANIFEST, json.dumps(redact_obj(payload), indent=2, default=str) + "\n")


def record_resume(output_dir: Path, plan, command: list[str], checkpoint: Path, recipe_changed: list[str]) -> None:
    """Append this resumption to the manifest of the run it continues (or start one if it is missing)."""
    path = Path(output_dir) / MANIFEST
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        payload = manifest(plan, command)
    payload.setdefault("resumes", []).append({
        "from_checkpoint": str(checkpoint),
        "command": redact_argv(command_words(command)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git(plan.recipe_path.parent),
        "hardware": hardware(),
        "recipe_changed": recipe_changed,
    })
    write_manifest(output_dir, payload)


def hardware() -> dict:
    """CPU count, memory, GPUs (through torch when it is already imported, else nvidia-smi), world size."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "machine": platform.machine()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    gpus = []
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                for index in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(index)
                    gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                 "capability": f"{props.major}.{props.minor}"})
                info["cuda"] = torch.version.cuda
                info["cudnn"] = torch.backends.cudnn.version()
            info["torch_threads"] = torch.get_num_threads()
        except Exception:  # noqa: BLE001 - a broken driver must not stop the run from recording itself
            pass
    else:
        from align_recipes.hardware import detect_gpus

        gpus = [{"name": g.name, "memory_gib": g.memory_gb, "capability": f"{g.compute_capability:.1f}"}
                for g in detect_gpus()]
    info["gpus"] = gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        info["cuda_visible_devices"] = visible
    info["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return info


def data_files(plan) -> dict:
    """Each local dataset the recipe names: resolved path, size and sha256 (hub ids: id, split, revision)."""
    from align_recipes.data import DataError, DataSpec
    from align_recipes.data.spec import resolve_local

    entries = {f"data.{s}": plan.recipe.get("data", {}).get(s) for s in ("train", "eval")}
    entries["evaluate.data"] = (plan.recipe.get("evaluate") or {}).get("data")
    found = {}
    for section, entry in entries.items():
        if not isinstance(entry, dict) or not entry.get("path"):
            continue
        record: dict[str, Any] = {"path": entry["path"], "split": entry.get("split", "train")}
        try:
            path, _ = resolve_local(DataSpec.from_dict(dict(entry), section=section), plan.base_dir)
        except (DataError, TypeError):
            path = None
        if path is not None and path.is_file():
            record.update(resolved=str(path.resolve()), bytes=path.stat().st_size, sha256=_sha256(path))
        elif path is not None and path.is_dir():
            record.update(resolved=str(path.resolve()),
                          files={str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))
                                 if p.is_file()})
        else:
            record["source"] = entry.get("source", "auto")
        found[section] = record
    return found


def _sha256(path: Path) -> str | None:
    try:
        path = Path(path)
        if path.stat().st_size > HASH_LIMIT:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def _redact(text: str) -> str:
    """Kept for callers of the old name: one command-line word with secrets hidden."""
    return redact_argv([text])[0]


def _git(where: Path) -> dict:
    """The commit of the repository holding the recipe, and whether it had uncommitted changes."""
    def run(*args):
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if not commit:
        return {"commit": None}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _git_commit(where: Path) -> str | None:
    return _git(where).get("commit")
