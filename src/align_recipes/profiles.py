"""Hardware profiles: named YAML layers (configs/profiles/*.yaml) between TRL's defaults and the recipe.

A profile is a partial recipe (`model:` and `train:` keys) plus rules that depend on the model
size. `auto` picks one from the GPU that `nvidia-smi` reports, without importing torch.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError, did_you_mean
from align_recipes.yamlio import load_yaml

PROFILE_KEYS = {"description", "model", "train", "gpu"}


def profile_dirs() -> list[Path]:
    """Where profiles are looked up: $ALIGN_RECIPES_PROFILES, then the repository's configs/profiles."""
    dirs = []
    if os.environ.get("ALIGN_RECIPES_PROFILES"):
        dirs.append(Path(os.environ["ALIGN_RECIPES_PROFILES"]))
    dirs.append(Path(__file__).resolve().parents[2] / "configs" / "profiles")
    dirs.append(Path.cwd() / "configs" / "profiles")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


@dataclass
class Profile:
    name: str
    path: Path | None
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    detected: str = ""  # for `auto`: what was detected and why this profile


@dataclass
class Change:
    key: str
    value: Any
    why: str


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


@functools.lru_cache(maxsize=None)
def _read(name: str) -> Profile:
    paths = available()
    if name not in paths:
        raise RecipeError(f"unknown profile '{name}'", key="profile",
                          fix=did_you_mean(name, [*paths, "auto"]) + f" (profiles: {', '.join(['auto', *paths])})")
    data = load_yaml(paths[name]) or {}
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise RecipeError(f"unknown key '{key}' in a profile", fix=did_you_mean(key, PROFILE_KEYS), file=paths[name])
    return Profile(name=name, path=paths[name], description=data.get("description", ""),
                   model=dict(data.get("model") or {}), train=dict(data.get("train") or {}))


def detect_gpu() -> tuple[str, float, int] | None:
    """(name, memory GiB, count) of the first GPU per nvidia-smi, or None when there is none."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [r.split(",") for r in out.strip().splitlines() if r.strip()]
    if not rows:
        return None
    return rows[0][0].strip(), float(rows[0][1]) / 1024, len(rows)


def choose_for_gpu(gpu: tuple[str, float, int] | None) -> tuple[str, str]:
    """Profile name for a detected GPU, and the reason."""
    if gpu is None:
        return "cpu", "no NVIDIA GPU found (nvidia-smi absent or silent)"
    name, memory, count = gpu
    lowered = name.lower()
    for needle, profile in (("t4", "t4"), ("l4", "l4"), ("a10", "l4"), ("a100", "a100"), ("h100", "h100"),
                            ("h200", "h100"), ("h800", "h100")):
        if needle in lowered:
            return profile, f"{count}x {name} ({memory:.0f} GiB)"
    fallback = "h100" if memory >= 70 else "a100" if memory >= 35 else "l4" if memory >= 20 else "t4"
    return fallback, f"{count}x {name} ({memory:.0f} GiB), matched by memory"


def resolve(name: str) -> Profile:
    if name != "auto":
        return _read(name)
    picked, why = choose_for_gpu(detect_gpu())
    profile = _read(picked)
    return Profile(**{**profile.__dict__, "detected": why})


def layer_for(profile: Profile, algorithm, model_wish: dict) -> tuple[dict, list[Change]]:
    """The profile's values as a recipe layer, and a list of what it sets and why."""
    layer = {"model": dict(profile.model), "train": dict(profile.train)}
    why = f"profile {profile.name}" + (f" (auto: {profile.detected})" if profile.detected else "")
    changes = [Change(f"{section}.{key}", value, why) for section in ("model", "train")
               for key, value in layer[section].items()]
    return layer, changes


def check_compatible(profile: Profile, recipe: dict, algorithm, file) -> list[RecipeError]:
    """Impossible combinations of profile and recipe, found before anything is loaded."""
    errors = []
    train, model = recipe.get("train", {}), recipe.get("model", {})
    if profile.name == "cpu" and (train.get("bf16") is True and train.get("fp16") is True):
        errors.append(RecipeError("bf16 and fp16 both on", file=file, key="train.fp16", fix="keep one"))
    if profile.name == "cpu" and (model.get("attn_implementation") or "").startswith("flash_attention"):
        errors.append(RecipeError("flash attention needs a CUDA GPU", file=file, key="model.attn_implementation",
                                  fix="use sdpa on CPU"))
    return errors
