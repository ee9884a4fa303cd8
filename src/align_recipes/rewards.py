"""Reward functions for the online algorithms (GRPO, PPO, SPO), from a recipe's `rewards:` list.

Each entry is exactly one of:

    - {name: exact_match, column: answer}           a builtin rule (reward_builtins.py), with its parameters
    - {function: "my_pkg.rewards:brevity"}           module:function
    - {function: "rewards/custom.py:score"}          file:function (relative to the recipe's folder, else cwd)
    - {model: outputs/tiny/reward}                   a reward model directory or hub id
                                                     (AutoModelForSequenceClassification, num_labels=1)

plus an optional `weight` (default 1.0). Every callable follows TRL GRPO's contract:
``func(prompts, completions, **kwargs) -> list[float]``, where the keyword arguments are the dataset's
other columns (one list per column) and whatever else the trainer passes (``trainer_state``, ...).
Completions are strings for plain-text prompts and ``[{"role": "assistant", "content": text}]`` for
conversational ones; the builtin rules accept both.

`check_reward_specs` runs at validation time and imports no torch; `build_reward_funcs` makes the
callables (reward models load lazily, on their first call or on `.to(device)`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from align_recipes.paths import candidates as path_candidates
from align_recipes.paths import looks_like_hub_id
from align_recipes.reward_builtins import BUILTINS, is_str
from align_recipes.reward_model import RewardModelFunc

SPEC_KINDS = ("name", "function", "model")
COMMON_KEYS = ("weight",)


class RewardSpecError(ValueError):
    """One or more reward entries cannot be used; the message lists each with its key and fix."""


# ------------------------------------------------------------------------------- function references


def _split_ref(ref: str) -> tuple[str, str]:
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise RewardSpecError(f"'{ref}' is not 'module:function' or 'path/to/file.py:function'")
    return target, attr


def is_file_ref(target: str) -> bool:
    """'rewards.py' or 'lib/rewards' is a file; 'my_pkg.rewards' is a module."""
    return target.endswith(".py") or "/" in target or "\\" in target


def _find_file(target: str, base_dir: Path | None) -> Path:
    candidates = path_candidates(target, base_dir, None)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise RewardSpecError(f"file '{target}' not found (looked at {looked})")


def _import_target(target: str, base_dir: Path | None):
    if is_file_ref(target):
        path = _find_file(target, base_dir)
        name = f"_align_recipes_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))  # lets the file import its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise RewardSpecError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from None
        sys.modules[name] = module
        return module
    for folder in (base_dir, Path.cwd()):  # modules next to the recipe or in the working directory
        if folder is not None and str(folder) not in sys.path:
            sys.path.append(str(folder))
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise RewardSpecError(
            f"cannot import module '{target}' ({exc}); install it or check the name"
        ) from None
    except Exception as exc:
        raise RewardSpecError(f"importing module '{target}' failed: {type(exc).__name__}: {exc}") from None


def signature_problem(func: Callable) -> str | None:
    """Why ``func`` cannot be called as func(prompts=..., completions=..., **columns); None if it can."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None  # builtins and C callables: cannot tell, let the first call decide
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return (
            "must accept **kwargs (the trainer passes dataset columns and trainer_state as keyword arguments)"
        )
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    missing = [n for n in ("prompts", "completions") if n not in names]
    if missing and names:
        return f"its parameters must be named prompts and completions (missing: {', '.join(missing)})"
    return None


# What the trainers pass to every reward function besides the dataset's columns (TRL's GRPOTrainer, our rl/).
TRAINER_KWARGS = (
    "prompts",
    "completions",
    "completion_ids",
    "trainer_state",
    "log_extra",
    "log_metric",
    "environments",
)


def needed_columns(spec: dict, base_dir: str | Path | None = None) -> list[str]:
    """The dataset columns a valid reward entry reads: a builtin's `column` (its default when not given), or
    the named parameters of a function that have no default and that the trainer does not pass itself."""
    if "name" in spec:
        factory, params, _ = BUILTINS[spec["name"]]
        if "column" not in params:
            return []
        return [spec.get("column", inspect.signature(factory).parameters["column"].default)]
    if "function" not in spec:
        return []  # a reward model reads the prompt and the completion only
    func = load_function(spec["function"], Path(base_dir) if base_dir is not None else None)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.name not in TRAINER_KWARGS
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def missing_columns(
    specs: list[dict], carried: list[str], section: str, data_name: str, base_dir: str | Path | None = None
) -> list[tuple[str, str, str]]:
    """(key, message, fix) for every column a valid reward entry reads that the data does not hand over
    (`carried`: the columns besides the prompt)."""
    problems = []
    shown = ", ".join(carried) or "none"
    for index, spec in enumerate(specs):
        kind = "name" if "name" in spec else "function"
        for column in needed_columns(spec, base_dir):
            if column in carried:
                continue
            if kind == "name":
                fix = (
                    f"set `column:` in this entry to the column that holds the reference answer ({shown}), "
                    f"or map one with {section}.columns: {{{column}: your_column}}"
                )
            else:
                fix = (
                    f"add the column '{column}' to the data, map one with {section}.columns: "
                    f"{{{column}: your_column}}, or give the parameter '{column}' a default"
                )
            label = spec[kind]
            target, _, attr = str(label).rpartition(":")
            if kind == "function" and is_file_ref(target):
                label = (
                    f"{Path(target).name}:{attr}"  # written relative, resolved absolute: show the file's name
                )
            problems.append(
                (
                    f"rewards[{index}].{kind}",
                    f"reward '{label}' needs the column '{column}', which "
                    f"{section} ({data_name}) does not have (columns it passes to rewards: {shown})",
                    fix,
                )
            )
    return problems


def load_function(ref: str, base_dir: Path | None = None) -> Callable:
    """Resolve 'module:function' or 'file.py:function' to a callable with a usable signature."""
    target, attr = _split_ref(ref)
    module = _import_target(target, base_dir)
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = (
            f"; did you mean '{close[0]}'?"
            if close
            else (f"; it has {', '.join(names[:8])}" if names else "")
        )
        raise RewardSpecError(f"module '{target}' has no attribute '{attr}'{hint}")
    func = getattr(module, attr)
    if not callable(func):
        raise RewardSpecError(f"'{ref}' is a {type(func).__name__}, not a function")
    problem = signature_problem(func)
    if problem:
        raise RewardSpecError(f"'{ref}' {problem}")
    return func


def resolve_model_ref(ref: str, base_dir: Path | None = None) -> str:
    """A reward model reference as `from_pretrained` takes it: an existing directory (with config.json),
    else a hub id (org/name)."""
    candidates = path_candidates(ref, base_dir, None)
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise RewardSpecError(
                    f"'{candidate}' has no config.json; point to a saved reward model directory"
                )
            return str(candidate)
    if looks_like_hub_id(ref):
        return ref
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise RewardSpecError(
        f"reward model '{ref}' not found (looked at {looked}); train the reward recipe first, "
        "or give a hub id (org/name)"
    )


# ------------------------------------------------------------------------------------- validation


def _spec_problems(spec: Any, base_dir: Path | None) -> list[tuple[str, str]]:
    """(key suffix, message) pairs for one entry."""
    if not isinstance(spec, dict):
        return [("", "must be a mapping like {name: exact_match} or {function: 'pkg.mod:func'}")]
    kinds = [k for k in SPEC_KINDS if k in spec]
    if len(kinds) != 1:
        what = "none of" if not kinds else "more than one of"
        return [("", f"has {what} name / function / model; give exactly one")]
    kind = kinds[0]
    problems: list[tuple[str, str]] = []
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        problems.append((".weight", f"must be a number (got {weight!r})"))
    if kind == "name":
        name = spec["name"]
        if name not in BUILTINS:
            close = difflib.get_close_matches(str(name), list(BUILTINS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"builtins: {', '.join(BUILTINS)}"
            return problems + [
                (".name", f"unknown builtin reward '{name}'; {hint} (or use function: 'module:func')")
            ]
        params = BUILTINS[name][1]
        for key in spec:
            if key in ("name", *COMMON_KEYS):
                continue
            if key not in params:
                allowed = ", ".join([*params, *COMMON_KEYS])
                close = difflib.get_close_matches(key, [*params, *COMMON_KEYS], n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                problems.append(
                    (f".{key}", f"'{name}' takes no parameter '{key}'; {hint}(it takes: {allowed})")
                )
            elif not params[key][1](spec[key]):
                problems.append((f".{key}", f"must be {params[key][2]} (got {spec[key]!r})"))
        for key, (required, _, what) in params.items():
            if required and key not in spec:
                problems.append((f".{key}", f"'{name}' needs `{key}:` ({what})"))
        if name == "regex" and is_str(spec.get("pattern")):
            try:
                re.compile(spec["pattern"])
            except re.error as exc:
                problems.append((".pattern", f"is not a valid regular expression: {exc}"))
        return problems
    extra = [k for k in spec if k not in (kind, *COMMON_KEYS)]
    if extra:
        problems.append(
            (f".{extra[0]}", f"unknown key '{extra[0]}' in a {kind} entry (it takes {kind} and weight)")
        )
    value = spec[kind]
    if not isinstance(value, str) or not value:
        return problems + [(f".{kind}", "must be a non-empty string")]
    try:
        load_function(value, base_dir) if kind == "function" else resolve_model_ref(value, base_dir)
    except RewardSpecError as exc:
        problems.append((f".{kind}", str(exc)))
    return problems


def check_reward_specs(specs: list[dict], base_dir: str | Path | None = None) -> list[str]:
    """Problems with a recipe's `rewards:` entries, each as "rewards[i].key: message"; [] when all is well.
    Imports the referenced reward modules (they must import cleanly) but never torch."""
    base = Path(base_dir) if base_dir is not None else None
    if not isinstance(specs, list):
        return ["rewards: must be a list of entries like {name: exact_match}"]
    return [
        f"rewards[{i}]{suffix}: {message}"
        for i, spec in enumerate(specs)
        for suffix, message in _spec_problems(spec, base)
    ]


# ---------------------------------------------------------------------------------------- building


def build_reward_funcs(
    specs: list[dict], base_dir: str | Path | None = None, device: Any = None
) -> tuple[list[Callable], list[float]]:
    """TRL-GRPO-compatible reward callables and their weights, in the order of ``specs``."""
    problems = check_reward_specs(specs, base_dir)
    if problems:
        raise RewardSpecError("; ".join(problems))
    base = Path(base_dir) if base_dir is not None else None
    funcs: list[Callable] = []
    for spec in specs:
        if "name" in spec:
            params = {k: v for k, v in spec.items() if k not in ("name", *COMMON_KEYS)}
            funcs.append(BUILTINS[spec["name"]][0](**params))
        elif "function" in spec:
            funcs.append(load_function(spec["function"], base))
        else:
            funcs.append(RewardModelFunc(resolve_model_ref(spec["model"], base), device=device))
    return funcs, [float(spec.get("weight", 1.0)) for spec in specs]


def reward_func_name(func: Any) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def as_reward_func(obj: Any, device: Any = None) -> Callable:
    """Accept what TRL's trainers accept as a reward: a callable, a model path / hub id, or a loaded
    sequence-classification model (its tokenizer is loaded from the same name)."""
    if isinstance(obj, (str, Path)):
        return RewardModelFunc(resolve_model_ref(str(obj)), device=device)
    if hasattr(obj, "config") and hasattr(obj, "forward") and not isinstance(obj, RewardModelFunc):
        path = getattr(obj, "name_or_path", "") or getattr(obj.config, "_name_or_path", "")
        from transformers import AutoTokenizer

        return RewardModelFunc(path, device=device, model=obj, tokenizer=AutoTokenizer.from_pretrained(path))
    if callable(obj):
        return obj
    raise TypeError(f"a reward must be a callable, a model path or a loaded model, not {type(obj).__name__}")
