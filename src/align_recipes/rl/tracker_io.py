"""The SPO per-prompt tracker in checkpoints: one safetensors file per process, each holding the prompts that
process owns (`PromptValueTracker.state_tensors`).

Why safetensors and not JSON: the tracker keeps every prompt's last completion (token ids and log-probs). As
indented JSON lists that was about 70 bytes a token in memory and more on disk (a DAPO-17k-sized prompt set with
4k-token answers wrote 3.3 GB per checkpoint); as flat int32/float32 tensors it is 8 bytes a token, written
without a Python object per number, and read back without parsing. Why one file per process: the tracker is
sharded by prompt, so each process writes what it holds and nothing is gathered onto one rank. Every file names
its prompts, so a run resumed on a different number of processes reads every file and keeps its own prompts.
A checkpoint written before (the tracker inside rl_state.json) still loads (`PromptValueTracker.load_json_state`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FORMAT = "align-recipes spo-tracker 1"
PATTERN = re.compile(r"spo_tracker-(\d{5})-of-(\d{5})\.safetensors")


def shard_name(shard: int, num_shards: int) -> str:
    return f"spo_tracker-{shard:05d}-of-{num_shards:05d}.safetensors"


def save(tracker, folder: str | os.PathLike) -> Path:
    """Write this process's shard into `folder` (atomically: a cut-short save leaves no half file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / shard_name(tracker.shard, tracker.num_shards)
    partial = path.with_suffix(".partial")
    metadata = {"format": FORMAT, "num_prompts": str(tracker.num_prompts)}
    save_file({k: v.contiguous() for k, v in tracker.state_tensors().items()}, str(partial), metadata)
    os.replace(partial, path)
    return path


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The tracker files in a checkpoint, checked complete: every shard of the run that wrote them."""
    found = sorted(p for p in Path(folder).iterdir() if PATTERN.fullmatch(p.name))
    if not found:
        return []
    totals = {int(PATTERN.fullmatch(p.name).group(2)) for p in found}
    if len(totals) != 1 or len(found) != next(iter(totals)):
        raise ValueError(
            f"{folder} holds {len(found)} SPO tracker file(s) of {sorted(totals)} shards; the checkpoint is "
            "incomplete (every process writes one): resume from an earlier checkpoint"
        )
    return found


def load(tracker, folder: str | os.PathLike) -> bool:
    """Fill `tracker` with its prompts from every shard file in `folder`; False when there is none."""
    from safetensors import safe_open

    files = shard_files(folder)
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path} is not an SPO tracker file this version can read ({metadata})")
            if int(metadata["num_prompts"]) != tracker.num_prompts:
                raise ValueError(
                    f"{path} tracks {metadata['num_prompts']} prompts but this run's training set has "
                    f"{tracker.num_prompts}: resume with the same training data"
                )
            tracker.load_state_tensors({k: handle.get_tensor(k) for k in handle.keys()})
    return bool(files)
