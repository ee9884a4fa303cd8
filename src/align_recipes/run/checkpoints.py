"""Which checkpoint a run continues from, decided before any model loads, and how to tell a complete
checkpoint from one that was cut short.

Importing this module imports neither torch nor transformers: `RunDir.plan_start` uses it before
any model loads, so a run that cannot resume fails in milliseconds.

Checkpoints. A `checkpoint-<step>` directory is *complete* when the Trainer finished writing it:
its `trainer_state.json` (written last by the Trainer, after the weights, optimizer, scheduler and
RNG state) parses and names the same step, the weights are there and their safetensors headers
match the file sizes, the optimizer and RNG state are there (unless `save_only_model`), and, when
our marker `align_recipes_checkpoint.json` exists (written after the Trainer's save returns, listing
every file with its size), every listed file has that size and the marker says `complete`. A
checkpoint saved while the weights were already non-finite gets a `diverged` marker. Anything
else was cut short (killed mid-save, disk full, copied partially) and is skipped, never loaded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import time
from pathlib import Path

from align_recipes.redaction import redact_argv

MARKER = "align_recipes_checkpoint.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
RESUME_AUTO, RESUME_LATEST = "auto", "latest"


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` directories, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header and the tensor bytes it describes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"{path.name} is truncated (header of {length} bytes in a {size}-byte file)"
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        return f"{path.name} cannot be read ({type(exc).__name__})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + length + end:
        return f"{path.name} is truncated ({size} bytes, its header describes {8 + length + end})"
    return None


def _weights_problem(path: Path) -> str | None:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _safetensors_problem(path / name) if name.endswith(".safetensors") else None
    for name in INDEX_FILES:
        if (path / name).is_file():
            try:
                shards = set(json.loads((path / name).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return f"{name} cannot be read"
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                return f"weight shard {missing[0]} is missing"
            for shard in sorted(shards):
                if shard.endswith(".safetensors") and (problem := _safetensors_problem(path / shard)):
                    return problem
            return None
    if (path / "latest").is_file() or any(p.name.startswith("pytorch_model_fsdp") for p in path.iterdir()):
        return None  # DeepSpeed / FSDP sharded checkpoints: the engine checks its own files
    return "no model weights"


def checkpoint_problem(path: Path, require_optimizer: bool = True) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from; None when it is complete."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    marker = read_marker(path)
    if marker is not None and marker.get("status") != "complete":
        return f"marked {marker.get('status')}: {marker.get('reason', '')}".rstrip(": ")
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (the save was cut short)"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return "trainer_state.json is not valid JSON (the save was cut short)"
    step = checkpoint_step(path)
    if step is not None and state.get("global_step") != step:
        return f"trainer_state.json is for step {state.get('global_step')}, not {step}"
    problem = _weights_problem(path)
    if problem:
        return problem
    if require_optimizer and not (path / "latest").is_file():
        if (
            not any((path / name).is_file() for name in OPTIMIZER_FILES)
            and not (path / "optimizer_0").is_dir()
        ):
            return "no optimizer state (optimizer.pt)"
        if not any(p.name.startswith("rng_state") for p in path.iterdir()):
            return "no RNG state (rng_state.pth)"
    for name, size in (marker or {}).get("files", {}).items():
        target = path / name
        if not target.is_file():
            return f"{name} is missing"
        if target.stat().st_size != size:
            return f"{name} is {target.stat().st_size} bytes, {size} were written"
    return None


def newest_complete(
    output_dir: Path, require_optimizer: bool = True
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint and the newer ones skipped (with why)."""
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path, require_optimizer)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def write_marker(path: Path, status: str = "complete", reason: str = "") -> None:
    """Record that a checkpoint was fully written (every file and its size), atomically."""
    path = Path(path)
    files = {
        str(p.relative_to(path)): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}")
    }
    payload = {
        "status": status,
        "step": checkpoint_step(path),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    if reason:
        payload["reason"] = reason
    tmp = path / f".{MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(payload, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path / MARKER)


# --------------------------------------------------------------------------------------- resuming


def skipped_text(skipped: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{p.name} skipped: {why}" for p, why in skipped[:3]) + (
        f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    )


def command_words(command: list[str] | None) -> list[str]:
    """sys.argv as the user would type it again: `python -m align_recipes` and full paths become align-recipes."""
    words = [str(w) for w in (command or [])]
    if words and (words[0].endswith(("__main__.py", "align_recipes", "align-recipes")) or words[0] == "-m"):
        words[0] = "align-recipes"
    return words


def resume_command(command: list[str] | None) -> str:
    """The exact command that continues an interrupted run: the same words, --resume instead of --overwrite."""
    words = command_words(command)
    if not words:
        return "align-recipes train RECIPE --resume"
    words = [w for w in words if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(redact_argv(words))
