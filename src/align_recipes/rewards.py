"""Reward functions for the online algorithms (GRPO, PPO, SPO), from a recipe's `rewards:` list.

Each entry is exactly one of:

    - {name: exact_match, column: answer}           a builtin rule (see BUILTINS), with its parameters
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

from align_recipes.data.messages import completion_text
from align_recipes.paths import candidates as path_candidates
from align_recipes.paths import looks_like_hub_id

SPEC_KINDS = ("name", "function", "model")
COMMON_KEYS = ("weight",)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


class RewardSpecError(ValueError):
    """One or more reward entries cannot be used; the message lists each with its key and fix."""


# ----------------------------------------------------------------------------------- text helpers


def last_number(text: Any) -> float | None:
    """The last number written in ``text`` ("#### 1,234" -> 1234.0); None when there is none."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def _column(kwargs: dict, column: str, reward: str, n: int) -> list:
    if column not in kwargs:
        available = sorted(k for k, v in kwargs.items() if isinstance(v, list) and len(v) == n)
        raise KeyError(
            f"reward '{reward}' needs the dataset column '{column}', which the batch does not have "
            f"(columns: {', '.join(available) or 'none'}); set `column:` in its rewards entry"
        )
    return kwargs[column]


# ---------------------------------------------------------------------------------------- builtins


def _exact_match(column: str = "answer") -> Callable:
    def exact_match(prompts, completions, **kwargs):
        answers = _column(kwargs, column, "exact_match", len(completions))
        return [float(completion_text(c).strip() == str(a).strip()) for c, a in zip(completions, answers)]

    exact_match.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return exact_match


def _numeric_match(column: str = "answer", tolerance: float = 1e-6) -> Callable:
    def numeric_match(prompts, completions, **kwargs):
        answers = _column(kwargs, column, "numeric_match", len(completions))
        scores = []
        for c, a in zip(completions, answers):
            got, want = last_number(completion_text(c)), last_number(a)
            scores.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
        return scores

    numeric_match.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return numeric_match


def _regex(pattern: str) -> Callable:
    compiled = re.compile(pattern)

    def regex(prompts, completions, **kwargs):
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    regex.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return regex


def _length_penalty(max_length: int) -> Callable:
    def length_penalty(prompts, completions, **kwargs):
        lengths = [len(completion_text(c)) for c in completions]
        return [0.0 if n <= max_length else -min(1.0, (n - max_length) / max_length) for n in lengths]

    length_penalty.reward_range = (-1.0, 0.0)
    return length_penalty


_THINK = re.compile(r"\s*<think>.*?</think>\s*\S", re.DOTALL)


def _think_format() -> Callable:
    def think_format(prompts, completions, **kwargs):
        return [float(_THINK.match(completion_text(c)) is not None) for c in completions]

    think_format.reward_range = (0.0, 1.0)  # SPO's tracker maps this range onto [0, 1]
    return think_format


def _is_str(v):
    return isinstance(v, str) and v != ""


def _is_pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_nonneg_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


# name -> (factory, {param: (required, check, "what it must be")}, one-line description)
BUILTINS: dict[str, tuple[Callable, dict[str, tuple[bool, Callable, str]], str]] = {
    "exact_match": (
        _exact_match,
        {"column": (False, _is_str, "a column name")},
        "1.0 when the completion equals the answer column (whitespace-trimmed), else 0.0",
    ),
    "numeric_match": (
        _numeric_match,
        {"column": (False, _is_str, "a column name"), "tolerance": (False, _is_nonneg_num, "a number >= 0")},
        "1.0 when the last number in the completion equals the answer's last number",
    ),
    "regex": (
        _regex,
        {"pattern": (True, _is_str, "a regular expression")},
        "1.0 when the pattern is found in the completion (use ^...$ to match all of it)",
    ),
    "length_penalty": (
        _length_penalty,
        {"max_length": (True, _is_pos_int, "an integer > 0 (characters)")},
        "0 up to max_length characters, then down to -1.0 at twice that length",
    ),
    "think_format": (_think_format, {}, "1.0 for '<think>...</think>' followed by a non-empty answer"),
}


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
        if name == "regex" and _is_str(spec.get("pattern")):
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


class RewardModelFunc:
    """A reward model as a reward function: scores chat-templated prompt + completion with a sequence
    classifier (num_labels=1). The model loads on first use, on ``device`` (default: the current CUDA
    device, else CPU); ``.to(device)`` moves it. ``batch_size=None`` scores a whole call in one forward pass.

    Online trainers whose policy shares this model's tokenizer skip the text round trip: `shares_tokenizer`
    tells them so, `completion_suffix` gives the tokens the chat template puts after an answer, and `score_ids`
    scores ready-made token sequences (prompt ids + answer ids + suffix) in one forward pass."""

    _PROBE = "\u2063probe\u2063"  # a completion no template changes, to find what comes after an answer

    def __init__(
        self,
        path: str,
        device: Any = None,
        batch_size: int | None = None,
        model: Any = None,
        tokenizer: Any = None,
        max_length: int | None = None,
    ):
        self.path, self.device, self.batch_size, self.max_length = str(path), device, batch_size, max_length
        self._model, self._tokenizer = model, tokenizer
        self._suffixes: dict[str, list[int] | None] = {}
        self.__name__ = "reward_model_" + (Path(self.path.rstrip("/")).name or "model")

    def _resolve_device(self):
        import torch

        if self.device is not None:
            return torch.device(self.device)
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            self._model = AutoModelForSequenceClassification.from_pretrained(
                self.path, num_labels=1, dtype="auto"
            )
        if not getattr(self, "_prepared", False):
            if self._model.config.pad_token_id is None:
                self._model.config.pad_token_id = self.tokenizer.pad_token_id
            self._model.eval().requires_grad_(False)
            self._model.to(self._resolve_device())
            self._prepared = True
        return self._model

    def to(self, device: Any) -> RewardModelFunc:
        self.device = device
        if self._model is not None:
            self._model.to(device)
        return self

    def texts(self, prompts: list, completions: list) -> list[str]:
        out = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, list):
                messages = list(prompt) + (
                    completion
                    if isinstance(completion, list)
                    else [{"role": "assistant", "content": completion_text(completion)}]
                )
                if getattr(self.tokenizer, "chat_template", None):
                    out.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
                else:
                    out.append("\n".join(completion_text([m]) for m in messages))
            else:
                out.append(str(prompt) + completion_text(completion))
        return out

    # --- scoring token ids directly (online RL with a shared tokenizer)
    def shares_tokenizer(self, tokenizer) -> bool:
        """Whether ``tokenizer`` (the policy's) is this model's: same class, vocabulary, special tokens and chat
        template, so the policy's token ids mean the same here."""
        mine = self.tokenizer
        return (
            type(mine).__name__ == type(tokenizer).__name__
            and getattr(mine, "chat_template", None) == getattr(tokenizer, "chat_template", None)
            and mine.all_special_tokens == tokenizer.all_special_tokens
            and mine.get_vocab() == tokenizer.get_vocab()
        )

    def completion_suffix(self, prompt: Any, prompt_text: str) -> list[int] | None:
        """Token ids this model's text layout puts after an answer to ``prompt`` (e.g. the end-of-turn tokens),
        given ``prompt_text``, the prompt as the policy saw it (chat template with the generation prompt). None
        when the layout is not ``prompt_text + answer + suffix`` (then only the text path is right)."""
        if prompt_text not in self._suffixes:
            full = self.texts([prompt], [self._PROBE])[0]
            head = prompt_text + self._PROBE
            suffix = full[len(head) :] if full.startswith(head) else None
            self._suffixes[prompt_text] = (
                None if suffix is None else self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
            )
        return self._suffixes[prompt_text]

    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        """Scores of ready-made token sequences, padded on the tokenizer's side, in one forward pass (or chunks
        of ``batch_size``)."""
        import torch

        model, tokenizer = self.model, self.tokenizer
        pad, left = tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right") == "left"
        size = self.batch_size or max(len(sequences), 1)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), size):
                chunk = sequences[start : start + size]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, seq in enumerate(chunk):
                    cols = slice(width - len(seq), width) if left else slice(0, len(seq))
                    ids[i, cols] = torch.tensor(seq, dtype=torch.long)
                    mask[i, cols] = 1
                logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
                scores.extend(logits[:, 0].float().tolist())
        return scores

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        import torch

        model, tokenizer, texts, scores = self.model, self.tokenizer, self.texts(prompts, completions), []
        max_length = self.max_length or min(getattr(tokenizer, "model_max_length", 4096) or 4096, 32768)
        size = self.batch_size or max(len(texts), 1)
        with torch.no_grad():
            for start in range(0, len(texts), size):
                batch = tokenizer(
                    texts[start : start + size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    add_special_tokens=False,
                )
                logits = model(**batch.to(model.device)).logits
                scores.extend(logits[:, 0].float().tolist())
        return scores


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
