"""Format detection: which layout a dataset uses, and which columns play which part.

Works on a handful of plain rows (dicts), so it runs at validation time with the stdlib only. The
result is a *binding*: the format name plus its canonical fields (prompt, chosen, …) bound to the
dataset's own column names. The converter (convert.py) follows the binding row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .messages import parse_transcript
from .spec import KINDS, LANGUAGE_MODELING, PREFERENCE, PROMPT_ONLY, UNPAIRED, DataError, DataSpec

# Column names each canonical field is looked up under, in order of preference.
ALIASES: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations", "conversation", "dialog", "dialogue"),
    "prompt": ("prompt", "instruction", "question", "query", "problem", "input"),
    "completion": ("completion",),
    "response": ("response", "answer", "output", "solution", "target"),
    "chosen": (
        "chosen",
        "chosen_response",
        "response_chosen",
        "better_response",
        "positive",
        "pos",
        "response_j",
    ),
    "rejected": (
        "rejected",
        "rejected_response",
        "response_rejected",
        "worse_response",
        "negative",
        "neg",
        "response_k",
    ),
    "label": ("label", "kto_tag"),
    "system": ("system", "system_prompt"),
    "instruction": ("instruction",),
    "input": ("input",),
    "output": ("output",),
    "history": ("history",),
    "text": ("text",),
    "score_chosen": ("score_chosen",),
    "score_rejected": ("score_rejected",),
}
PREFERENCE_PROMPTS = ("prompt", "instruction", "question", "query", "problem", "conversations", "input")


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # the kind the format is natively
    serves: tuple[str, ...]  # kinds it can be converted to
    needs: str  # columns, for messages
    example: str  # one row, for docs/data.md and messages
    plain: bool = False  # rows stay plain text (TRL's standard format), never chat messages


_LM = (LANGUAGE_MODELING, PROMPT_ONLY)
_PREF = (PREFERENCE, UNPAIRED, PROMPT_ONLY)
FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format(
            "messages",
            LANGUAGE_MODELING,
            _LM,
            "messages (or conversations) with role/content",
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
        ),
        Format(
            "sharegpt",
            LANGUAGE_MODELING,
            _LM,
            "conversations with from/value",
            '{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}',
        ),
        Format(
            "roleless_conversations",
            LANGUAGE_MODELING,
            _LM,
            "conversations with content only",
            '{"conversations": [{"content": "Hi"}, {"content": "Hello!"}]}',
        ),
        Format(
            "alpaca",
            LANGUAGE_MODELING,
            _LM,
            "instruction+output (input, system, history optional)",
            '{"instruction": "Translate", "input": "bonjour", "output": "hello"}',
        ),
        Format(
            "prompt_completion",
            LANGUAGE_MODELING,
            _LM,
            "prompt+completion",
            '{"prompt": "The sky is", "completion": " blue."}',
        ),
        Format(
            "prompt_response",
            LANGUAGE_MODELING,
            _LM,
            "prompt+response (or question+answer, problem+solution)",
            '{"question": "2+2?", "answer": "4"}',
        ),
        Format(
            "text",
            LANGUAGE_MODELING,
            (LANGUAGE_MODELING,),
            "text",
            '{"text": "### Human: Hi ### Assistant: Hello!"}',
        ),
        Format(
            "prompt_only",
            PROMPT_ONLY,
            (PROMPT_ONLY,),
            "prompt (or question, instruction, problem)",
            '{"prompt": "Solve 3*7", "answer": "21"}',
        ),
        Format(
            "preference",
            PREFERENCE,
            _PREF,
            "prompt+chosen+rejected (or their variants)",
            '{"prompt": "2+2?", "chosen": "4", "rejected": "5"}',
        ),
        Format(
            "ultrafeedback_binarized",
            PREFERENCE,
            _PREF,
            "prompt+chosen+rejected+score_chosen+score_rejected",
            '{"prompt": "Hi", "chosen": [{"role": "user", …}, {"role": "assistant", …}], "rejected": […], '
            '"score_chosen": 8.0, "score_rejected": 5.0}',
        ),
        Format(
            "implicit_preference",
            PREFERENCE,
            _PREF,
            "chosen+rejected conversations sharing the prompt",
            '{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], '
            '"rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}',
        ),
        Format(
            "hh_rlhf",
            PREFERENCE,
            _PREF,
            "chosen+rejected transcripts with Human:/Assistant: markers",
            '{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: No."}',
        ),
        Format(
            "implicit_preference_text",
            PREFERENCE,
            _PREF,
            "chosen+rejected full texts sharing their beginning (TRL's implicit prompt)",
            '{"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"}',
            plain=True,
        ),
        Format(
            "unpaired",
            UNPAIRED,
            (UNPAIRED, PROMPT_ONLY),
            "prompt+completion+label (or messages+label)",
            '{"prompt": "2+2?", "completion": "4", "label": true}',
        ),
    ]
}

EXPECTED: dict[str, str] = {
    LANGUAGE_MODELING: "messages (or conversations), instruction+output, prompt+completion, "
    "prompt+response (or question+answer), or text",
    PREFERENCE: "prompt+chosen+rejected (or variants such as instruction+chosen_response+rejected_response, "
    "question+response_chosen+response_rejected), or chosen+rejected full conversations or texts",
    UNPAIRED: "prompt+completion+label, or any preference columns (prompt+chosen+rejected)",
    PROMPT_ONLY: "prompt (or question, instruction, problem), or any chat or preference columns",
}


@dataclass
class Binding:
    """A format and the dataset columns bound to its fields (canonical name -> column)."""

    format: str
    fields: dict[str, str]
    keep: list[str] = field(default_factory=list)  # scalar columns carried into prompt-only rows
    tool_mode: bool = False  # tool calls and a tools column go to the trainer (data.content.bind_tools)

    def as_key(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "fields": dict(sorted(self.fields.items())),
            "keep": list(self.keep),
            "tool_mode": self.tool_mode,
        }


def value_type(rows: list[dict], column: str) -> str:
    """'str' | 'msgs' (list of dicts) | 'strlist' | 'dict' | 'scalar' | 'none' from the first non-empty value."""
    for row in rows:
        value = row.get(column)
        if value is None or (isinstance(value, (str, list)) and not value):
            continue
        if isinstance(value, str):
            return "str"
        if isinstance(value, dict):
            return "dict"
        if isinstance(value, (list, tuple)):
            first = next((v for v in value if v is not None), None)
            return "msgs" if isinstance(first, dict) else "strlist" if isinstance(first, str) else "list"
        return "scalar"
    return "none"


def chat_style(rows: list[dict], column: str) -> str:
    """messages | sharegpt | roleless_conversations for a column of message lists."""
    for row in rows:
        value = row.get(column)
        for item in value if isinstance(value, (list, tuple)) else []:
            if isinstance(item, dict):
                if "role" in item:
                    return "messages"
                if "from" in item:
                    return "sharegpt"
    return "roleless_conversations"


def columns_of(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _first(columns, names) -> str | None:
    return next((n for n in names if n in columns), None)


def _scalar_columns(rows: list[dict], columns: list[str], prompt_column: str | None) -> list[str]:
    """Columns carried into prompt-only rows (reward functions get them as keyword arguments): the
    scalar ones of one type (as Arrow stores them), except the prompt's own column."""

    def scalar_type(value):
        if isinstance(value, bool):
            return bool
        return (
            float
            if isinstance(value, (int, float))
            else str
            if isinstance(value, str)
            else None
            if value is None
            else list
        )

    keep = []
    for column in columns:
        kinds = {scalar_type(r.get(column)) for r in rows} - {None}
        if (
            column not in (prompt_column, "prompt")
            and not column.startswith("_")
            and len(kinds) <= 1
            and list not in kinds
        ):
            keep.append(column)
    return keep


def _optional(fields: dict, columns, rows, *names) -> None:
    for name in names:
        column = _first(columns, ALIASES[name])
        if column and (name != "system" or value_type(rows, column) in ("str", "none")):
            fields[name] = column


def candidates(rows: list[dict]) -> list[Binding]:
    """Every format the rows fit, most specific first."""
    columns = columns_of(rows)
    bindings: list[Binding] = []

    def add(fmt: str, fields: dict[str, str]) -> None:
        prompt = fields.get("prompt", fields.get("instruction"))
        bindings.append(Binding(fmt, fields, _scalar_columns(rows, columns, prompt)))

    chosen, rejected = _first(columns, ALIASES["chosen"]), _first(columns, ALIASES["rejected"])
    label = _first(columns, ALIASES["label"])
    chat = next(
        (c for c in ALIASES["messages"] if c in columns and value_type(rows, c) in ("msgs", "strlist")), None
    )
    prompt = _first(columns, ALIASES["prompt"])
    answer = _first(columns, ALIASES["completion"] + ALIASES["response"])

    if label and (chat or (prompt and answer)):
        add(
            "unpaired",
            {"label": label, "messages": chat}
            if chat and not (prompt and answer)
            else {"label": label, "prompt": prompt, "completion": answer},
        )
    if chosen and rejected:
        fields = {"chosen": chosen, "rejected": rejected}
        pref_prompt = _first(columns, PREFERENCE_PROMPTS)
        if pref_prompt:
            fields["prompt"] = pref_prompt
            if pref_prompt == "instruction" and "input" in columns:
                fields["input"] = "input"
        _optional(fields, columns, rows, "system")
        if "score_chosen" in columns and "score_rejected" in columns:
            add(
                "ultrafeedback_binarized",
                {**fields, "score_chosen": "score_chosen", "score_rejected": "score_rejected"},
            )
        elif pref_prompt:
            add("preference", fields)
        elif value_type(rows, chosen) in ("msgs", "strlist"):
            add("implicit_preference", fields)
        elif value_type(rows, chosen) == "str" and any(
            parse_transcript(r.get(chosen)) for r in rows if isinstance(r.get(chosen), str)
        ):
            add("hh_rlhf", fields)
        elif value_type(rows, chosen) == "str":
            add("implicit_preference_text", fields)  # TRL's implicit prompt: the texts' shared beginning
    if chat and not any(binding.fields.get("prompt") == chat for binding in bindings):
        fields = {"messages": chat}
        _optional(fields, columns, rows, "system")
        add(chat_style(rows, chat), fields)
    if not label:
        if "instruction" in columns and "output" in columns:
            fields = {"instruction": "instruction", "output": "output"}
            _optional(fields, columns, rows, "input", "system", "history")
            add("alpaca", fields)
        if "prompt" in columns and "completion" in columns:
            fields = {"prompt": "prompt", "completion": "completion"}
            _optional(fields, columns, rows, "system")
            add("prompt_completion", fields)
        response = _first(columns, ALIASES["response"])
        if prompt and response and (prompt, response) != ("instruction", "output"):
            fields = {"prompt": prompt, "response": response}
            _optional(fields, columns, rows, "system")
            add("prompt_response", fields)
        if "text" in columns and value_type(rows, "text") == "str":
            add("text", {"text": "text"})
    if prompt:
        fields = {"prompt": prompt}
        _optional(fields, columns, rows, "system")
        add("prompt_only", fields)
    return bindings


# Columns each format cannot do without, for a forced `format:`.
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("messages",),
    "roleless_conversations": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_response": ("prompt", "response"),
    "text": ("text",),
    "prompt_only": ("prompt",),
    "preference": ("prompt", "chosen", "rejected"),
    "ultrafeedback_binarized": ("chosen", "rejected", "score_chosen", "score_rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "implicit_preference_text": ("chosen", "rejected"),
    "unpaired": ("label",),
}


def forced_plan(rows: list[dict], fmt: str, spec: DataSpec) -> Binding:
    """The binding for a format named in the recipe; columns bound by alias."""
    if fmt not in FORMATS:
        from ..errors import did_you_mean

        raise DataError(
            f"unknown format '{fmt}'",
            key=f"{spec.section}.format",
            fix=did_you_mean(fmt, list(FORMATS) + ["auto"]),
        )
    for binding in candidates(rows):
        if binding.format == fmt:
            return binding
    columns = columns_of(rows)
    fields: dict[str, str] = {}
    for name in REQUIRED[fmt] + ("system",):
        names = (
            PREFERENCE_PROMPTS if (name == "prompt" and FORMATS[fmt].kind == PREFERENCE) else ALIASES[name]
        )
        column = _first(columns, names)
        if column:
            fields[name] = column
    if fmt == "unpaired":
        fields.update(
            {
                k: v
                for k, v in (
                    ("prompt", _first(columns, ALIASES["prompt"])),
                    ("completion", _first(columns, ALIASES["completion"] + ALIASES["response"])),
                    ("messages", _first(columns, ALIASES["messages"])),
                )
                if v
            }
        )
    missing = [n for n in REQUIRED[fmt] if n not in fields]
    if fmt == "unpaired" and "messages" not in fields and not ("prompt" in fields and "completion" in fields):
        missing.append("prompt+completion or messages")
    if missing:
        raise DataError(
            f"format '{fmt}' needs {FORMATS[fmt].needs}: missing {', '.join(missing)}; "
            f"columns found: {', '.join(columns) or 'none'}",
            file=spec.path,
            key=f"{spec.section}.format",
            fix="map your columns with columns: {target: your_column}, or use format: auto",
        )
    return Binding(
        fmt, fields, _scalar_columns(rows, columns, fields.get("prompt", fields.get("instruction")))
    )


def rename_rows(rows: list[dict], spec: DataSpec) -> list[dict]:
    """Apply `columns: {target: source}` to plain rows."""
    if not spec.columns:
        return rows
    present = columns_of(rows)
    missing = [source for source in spec.columns.values() if source not in present]
    if missing and rows:
        raise DataError(
            f"columns: {', '.join(repr(m) for m in missing)} not in the data; "
            f"columns found: {', '.join(present)}",
            file=spec.path,
            key=f"{spec.section}.columns",
            fix="columns maps target names to your column names, e.g. {prompt: question}",
        )
    sources = set(spec.columns.values())
    out = []
    for row in rows:
        renamed = {k: v for k, v in row.items() if k not in sources and k not in spec.columns}
        renamed.update({target: row.get(source) for target, source in spec.columns.items()})
        out.append(renamed)
    return out


def _no_format(rows: list[dict], spec: DataSpec, kind: str | None) -> DataError:
    columns = columns_of(rows)
    expected = (
        EXPECTED[kind]
        if kind
        else (
            "messages (or conversations), instruction+output, prompt+completion, prompt+response (or question+answer), "
            "text, prompt, prompt+chosen+rejected (or variants), chosen+rejected conversations, prompt+completion+label"
        )
    )
    return DataError(
        f"cannot tell the dataset format: columns found: {', '.join(columns) or 'none'}; "
        f"columns expected: {expected}",
        file=spec.path,
        key=spec.section,
        fix="rename with columns: {prompt: your_prompt_column, …} or set format: (docs/data.md)",
    )


def binding_for(rows: list[dict], spec: DataSpec, kind: str | None = None) -> Binding:
    """The binding for already-renamed rows: forced format, or the first candidate that serves `kind`."""
    if not rows:
        raise DataError(
            "the dataset has no rows",
            file=spec.path,
            key=spec.section,
            fix="check the file and the split slice",
        )
    if spec.format not in ("auto", "", None):
        binding = forced_plan(rows, spec.format, spec)
        if kind and kind not in FORMATS[binding.format].serves:
            raise _cannot_serve(rows, spec, binding.format, kind)
        return binding
    bindings = candidates(rows)
    if not bindings:
        raise _no_format(rows, spec, kind)
    if kind is None:
        return bindings[0]
    for binding in bindings:
        if kind in FORMATS[binding.format].serves:
            return binding
    raise _cannot_serve(rows, spec, bindings[0].format, kind)


def _cannot_serve(rows, spec: DataSpec, fmt: str, kind: str) -> DataError:
    native = FORMATS[fmt].kind
    return DataError(
        f"dataset kind {native} (format {fmt}) cannot serve an algorithm needing {kind}: "
        f"columns found: {', '.join(columns_of(rows)) or 'none'}; columns expected: {EXPECTED[kind]}",
        file=spec.path,
        key=spec.section,
        fix="point data at a dataset of the right kind, or map columns with columns:",
    )


def reward_columns(rows: list[dict], spec: DataSpec) -> list[str]:
    """The columns prompt-only rows carry to reward functions (as keyword arguments): the scalar columns
    besides the prompt, after `columns:` renaming."""
    return list(binding_for(rename_rows(rows, spec), spec, PROMPT_ONLY).keep)


def detect_format(rows: list[dict], spec: DataSpec) -> str:
    """The format name of the rows (after `columns:` renaming); DataError if none fits."""
    return binding_for(rename_rows(rows, spec), spec).format


def check_serves(rows: list[dict], spec: DataSpec, kind: str) -> str:
    """Validation-time check that the data can feed an algorithm needing `kind`; returns the format
    name that will be used ('auto' when rows is empty, as for hub datasets that cannot be read offline)."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}")
    if not rows:
        if spec.format not in ("auto", "", None):
            if spec.format not in FORMATS:
                forced_plan([], spec.format, spec)  # raises the unknown-format error
            if kind not in FORMATS[spec.format].serves:
                raise _cannot_serve([], spec, spec.format, kind)
            return spec.format
        return "auto"
    return binding_for(rename_rows(rows, spec), spec, kind).format
