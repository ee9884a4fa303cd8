"""How to reproduce a run: `manifest.json` records the command, recipe, versions, git commit,
hardware, profile, seed and data files, and every later resumption of the run.

Every field is shareable: paths name files relative to the project (the git repository holding the recipe,
else the recipe's folder) or by file name (redaction.share_paths), never /home/<user>/… or /tmp/….
summary.json and recipe.resolved.yaml keep absolute paths: `eval`, `chat` and `merge` re-open the run
from them on this machine."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from align_recipes import reproducible
from align_recipes.paths import find_local, write_atomic
from align_recipes.redaction import redact_argv, redact_obj, share_path, share_paths
from align_recipes.run.checkpoints import command_words

MANIFEST = "manifest.json"
HASH_LIMIT = 256 * 1024 * 1024  # data files up to this size are hashed into the manifest


def manifest(plan, command: list[str], config=None) -> dict:
    """How to reproduce this run: recipe, command, versions, commit, hardware, profile, seed, data."""
    import importlib.metadata as md

    versions = {}
    for package in (
        "align-recipes",
        "trl",
        "transformers",
        "torch",
        "peft",
        "accelerate",
        "datasets",
        "bitsandbytes",
        "vllm",
        "deepspeed",
    ):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    seed = getattr(config, "seed", None) if config is not None else plan.train.get("seed", 42)
    roots = [project_root(plan.recipe_path)]
    payload = {
        "command": [share_paths(word, roots) for word in redact_argv(command_words(command))],
        "recipe": share_path(plan.recipe_path, roots),
        "recipe_sha256": _sha256(plan.recipe_path),
        "algorithm": plan.algorithm.name,
        "profile": plan.profile.name,
        "profile_detected": plan.profile.detected,
        "seed": seed,
        "reproducible": reproducible.describe(plan.reproducible, plan.reproducible_why),
        "data_seed": getattr(config, "data_seed", None) if config is not None else None,
        "git": _git(plan.recipe_path.parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "hardware": hardware(),
        "data": data_files(plan, roots),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumes": [],
    }
    payload["git_commit"] = payload["git"].get("commit")
    return redact_obj(payload)


def write_manifest(output_dir: Path, payload: dict) -> None:
    write_atomic(Path(output_dir) / MANIFEST, json.dumps(redact_obj(payload), indent=2, default=str) + "\n")


def record_resume(
    output_dir: Path, plan, command: list[str], checkpoint: Path, recipe_changed: list[str]
) -> None:
    """Append this resumption to the manifest of the run it continues (or start one if it is missing)."""
    path = Path(output_dir) / MANIFEST
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        payload = manifest(plan, command)
    roots = share_roots(output_dir)
    payload.setdefault("resumes", []).append(
        {
            "from_checkpoint": share_path(checkpoint, roots),
            "command": [share_paths(word, roots) for word in redact_argv(command_words(command))],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git": _git(plan.recipe_path.parent),
            "hardware": hardware(),
            "recipe_changed": recipe_changed,
        }
    )
    write_manifest(output_dir, payload)


def record_export(output_dir: Path, record: dict) -> None:
    """Append an export (`align-recipes export`: file, type, sha256, agreement, engine) to the manifest."""
    path = Path(output_dir) / MANIFEST
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        payload = {}
    payload.setdefault("exports", []).append(record)
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
                    gpus.append(
                        {
                            "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "capability": f"{props.major}.{props.minor}",
                        }
                    )
                info["cuda"] = torch.version.cuda
                info["cudnn"] = torch.backends.cudnn.version()
            info["torch_threads"] = torch.get_num_threads()
        except Exception:  # noqa: BLE001 - a broken driver must not stop the run from recording itself
            pass
    else:
        from align_recipes.plan.hardware import detect_gpus

        gpus = [
            {"name": g.name, "memory_gib": g.memory_gb, "capability": f"{g.compute_capability:.1f}"}
            for g in detect_gpus()
        ]
    info["gpus"] = gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        info["cuda_visible_devices"] = visible
    info["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return info


def data_files(plan, roots: list[Path] = ()) -> dict:
    """Each local dataset the recipe names, by its key (data.train, or data.train[1] in a mixture): resolved
    path (relative to `roots`, the project, or the file's name), size and sha256 (hub ids: id, split,
    source), and its mixture weight."""
    specs = [*plan.data.train, *plan.data.eval, *([plan.evaluate.data] if plan.evaluate else [])]
    found = {}
    for spec in specs:
        section = spec.section
        record: dict[str, Any] = {"path": share_path(spec.path, roots), "split": spec.split}
        if section.startswith("data."):
            record["weight"] = spec.weight
        path = find_local(spec.path, plan.base_dir, None) if spec.source in ("auto", "local") else None
        if path is not None and path.is_file():
            record.update(
                resolved=share_path(path.resolve(), roots), bytes=path.stat().st_size, sha256=_sha256(path)
            )
        elif path is not None and path.is_dir():
            record.update(
                resolved=share_path(path.resolve(), roots),
                files={
                    str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()
                },
            )
        else:
            record["source"] = spec.source
        found[section] = record
    return found


def project_root(recipe_path: Path) -> Path:
    """What a run's published paths are relative to: the git repository holding the recipe, else its folder."""
    folder = Path(recipe_path).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return folder
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else folder


def share_roots(run_dir: str | Path) -> list[Path]:
    """The project a saved run's paths are shown relative to: that of the recipe its summary.json names
    (absolute), when the recipe is still there; [] (file names only) otherwise."""
    try:
        recipe = json.loads((Path(run_dir) / "summary.json").read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(recipe, str) or not Path(recipe).is_absolute() or not Path(recipe).parent.is_dir():
        return []
    return [project_root(Path(recipe))]


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
