"""Row conversion: one source row, following a Binding, into the TRL columns of a dataset kind.

`convert_row` never raises for a bad row: it returns the output columns (empty for a dropped row)
plus `_drop`, the reason or None, so that `Dataset.map` keeps a fixed schema and the report can name
the rows. Pure Python: shared by `load` (through datasets) and `convert_rows` (plain lists).
"""

from __future__ import annotations

from typing import Any

from .content import refuse_media, refuse_plain_tools, refuse_tools, tools_value
from .formats import Binding
from .messages import (
    RowProblem,
    as_label,
    as_prompt,
    as_reply,
    clean_messages,
    common_prefix,
    is_blank,
    parse_transcript,
    prompt_part,
    require_assistant,
    split_last_assistant,
    split_shared_text,
    to_messages,
    with_system,
)
from .spec import LANGUAGE_MODELING, PREFERENCE, PROMPT_ONLY, UNPAIRED, ConversionReport

DROP = "_drop"
CHAT_FORMATS = ("messages", "sharegpt", "roleless_conversations")
PAIR_FORMATS = (
    "preference",
    "ultrafeedback_binarized",
    "implicit_preference",
    "hh_rlhf",
    "implicit_preference_text",
)


def _value(row: dict, binding: Binding, name: str) -> Any:
    column = binding.fields.get(name)
    return row.get(column) if column else None


def _need(row: dict, binding: Binding, name: str) -> tuple[Any, str]:
    column = binding.fields[name]
    value = row.get(column)
    if is_blank(value):
        raise RowProblem(f"empty '{column}'")
    return value, column


def _system(row: dict, binding: Binding, messages: list[dict]) -> list[dict]:
    return with_system(_value(row, binding, "system"), messages)


def _chat(row: dict, binding: Binding, prompt_only: bool = False) -> list[dict]:
    value, column = _need(row, binding, "messages")
    messages = to_messages(value, column, tools=binding.tool_mode)
    if prompt_only:  # the final reply is not needed (MiniMind rlaif leaves it empty)
        messages = prompt_part(messages, column)
    return _system(row, binding, clean_messages(messages, column))


def _alpaca(row: dict, binding: Binding, prompt_only: bool = False) -> dict:
    instruction, i_col = _need(row, binding, "instruction")
    extra = _value(row, binding, "input")
    user = f"{instruction}\n{extra}" if isinstance(extra, str) and extra.strip() else str(instruction)
    history, pairs = [], _value(row, binding, "history")
    for pair in pairs if isinstance(pairs, (list, tuple)) else []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            history += [
                {"role": "user", "content": str(pair[0])},
                {"role": "assistant", "content": str(pair[1])},
            ]
    prompt = _system(row, binding, clean_messages(history + [{"role": "user", "content": user}], i_col))
    if prompt_only:
        return {"prompt": prompt}
    output, o_col = _need(row, binding, "output")
    return {"prompt": prompt, "completion": as_reply(output, o_col)}


def _explicit_prompt(row: dict, binding: Binding) -> list[dict]:
    prompt_v, p_col = _need(row, binding, "prompt")
    extra = _value(row, binding, "input")
    if isinstance(prompt_v, str) and isinstance(extra, str) and extra.strip():
        prompt_v = f"{prompt_v}\n{extra}"
    return as_prompt(prompt_v, p_col)


def _pair(row: dict, binding: Binding, prompt_only: bool = False) -> dict:
    if prompt_only and "prompt" in binding.fields:  # the replies are not needed
        return {"prompt": _system(row, binding, _explicit_prompt(row, binding))}
    chosen_v, c_col = _need(row, binding, "chosen")
    rejected_v, r_col = _need(row, binding, "rejected")
    if binding.format == "implicit_preference_text":
        return _shared_text_pair(chosen_v, c_col, rejected_v, r_col, prompt_only)
    if binding.format == "hh_rlhf":
        chosen, rejected = parse_transcript(chosen_v), parse_transcript(rejected_v)
        for parsed, column in ((chosen, c_col), (rejected, r_col)):
            if not parsed:
                raise RowProblem(f"no Human:/Assistant: turns in '{column}'")
    else:
        chosen = to_messages(chosen_v, c_col, first_role="assistant")
        rejected = to_messages(rejected_v, r_col, first_role="assistant")
    if any(m["role"] != "assistant" for m in chosen + rejected):
        # whole conversations: the shared prefix is the prompt (TRL's implicit prompt)
        prompt, chosen, rejected = common_prefix(chosen, rejected)
        if chosen == rejected:  # nothing follows the shared part: the two conversations are the same
            raise RowProblem("identical chosen and rejected")
        if not any(m["role"] == "user" for m in prompt):
            raise RowProblem(f"'{c_col}' and '{r_col}' share no prompt")
        prompt = clean_messages(prompt, c_col)
    elif "prompt" in binding.fields:
        prompt = _explicit_prompt(row, binding)
    else:
        raise RowProblem(f"'{c_col}' is not a conversation and there is no prompt column")
    prompt = _system(row, binding, prompt)
    if prompt_only:
        return {"prompt": prompt}
    if not chosen or all(not m["content"].strip() for m in chosen):
        raise RowProblem(f"empty '{c_col}'")
    if not rejected or all(not m["content"].strip() for m in rejected):
        raise RowProblem(f"empty '{r_col}'")
    chosen, rejected = clean_messages(chosen, c_col), clean_messages(rejected, r_col)
    if chosen == rejected:
        raise RowProblem("identical chosen and rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _shared_text_pair(chosen_v: Any, c_col: str, rejected_v: Any, r_col: str, prompt_only: bool) -> dict:
    """Plain full texts: the shared beginning is the prompt (TRL's implicit prompt); rows stay text."""
    if not isinstance(chosen_v, str) or not isinstance(rejected_v, str):
        raise RowProblem(f"'{c_col}' and '{r_col}' are not both text")
    if chosen_v == rejected_v:
        raise RowProblem("identical chosen and rejected")
    prompt, chosen, rejected = split_shared_text(chosen_v, rejected_v)
    if not prompt.strip():
        raise RowProblem(f"'{c_col}' and '{r_col}' share no beginning (no implicit prompt)")
    if prompt_only:
        return {"prompt": prompt}
    for text, column in ((chosen, c_col), (rejected, r_col)):
        if not text.strip():
            raise RowProblem(f"nothing left of '{column}' after the shared prompt")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _unpaired(row: dict, binding: Binding, prompt_only: bool = False) -> dict:
    label_v, l_col = row.get(binding.fields["label"]), binding.fields["label"]
    if prompt_only and "messages" in binding.fields:
        return {"prompt": _chat(row, binding, prompt_only=True)}
    if prompt_only:
        prompt_v, p_col = _need(row, binding, "prompt")
        return {"prompt": _system(row, binding, as_prompt(prompt_v, p_col))}
    if "messages" in binding.fields:
        prompt, completion = split_last_assistant(_chat(row, binding), binding.fields["messages"])
        if not any(m["role"] == "user" for m in prompt):
            raise RowProblem(f"no user turn in '{binding.fields['messages']}'")
    else:
        prompt_v, p_col = _need(row, binding, "prompt")
        completion_v, c_col = _need(row, binding, "completion")
        prompt, completion = _system(row, binding, as_prompt(prompt_v, p_col)), as_reply(completion_v, c_col)
    return {"prompt": prompt, "completion": completion, "label": as_label(label_v, l_col)}


def unit(row: dict, binding: Binding, kind: str, drop_ties: bool = False) -> dict:
    """The row's parts (messages | prompt+completion | prompt+chosen+rejected | … | text). For
    prompt_only, replies are not needed and not checked."""
    fmt, prompt_only = binding.format, kind == PROMPT_ONLY
    if fmt in CHAT_FORMATS:
        return {"messages": _chat(row, binding, prompt_only)}
    if fmt == "alpaca":
        return _alpaca(row, binding, prompt_only)
    if fmt in ("prompt_completion", "prompt_response"):
        answer = "completion" if fmt == "prompt_completion" else "response"
        prompt_v, p_col = _need(row, binding, "prompt")
        prompt = _system(row, binding, as_prompt(prompt_v, p_col, binding.tool_mode))
        if prompt_only:
            return {"prompt": prompt}
        answer_v, a_col = _need(row, binding, answer)
        return {"prompt": prompt, "completion": as_reply(answer_v, a_col, binding.tool_mode)}
    if fmt == "text":
        text, _ = _need(row, binding, "text")
        return {"text": str(text)}
    if fmt == "prompt_only":
        prompt_v, p_col = _need(row, binding, "prompt")
        return {"prompt": _system(row, binding, as_prompt(prompt_v, p_col))}
    if fmt in PAIR_FORMATS:
        if fmt == "ultrafeedback_binarized" and drop_ties:
            score_c, score_r = _value(row, binding, "score_chosen"), _value(row, binding, "score_rejected")
            if score_c is not None and score_c == score_r:
                raise RowProblem("tied scores")
        return _pair(row, binding, prompt_only)
    if fmt == "unpaired":
        return _unpaired(row, binding, prompt_only)
    raise ValueError(f"no converter for format {fmt!r}")


def lm_shape(binding: Binding) -> str:
    """Which TRL language-modeling layout a format becomes: messages | prompt_completion | text."""
    return (
        "messages"
        if binding.format in CHAT_FORMATS
        else "text"
        if binding.format == "text"
        else "prompt_completion"
    )


def output_columns(binding: Binding, kind: str) -> tuple[str, ...]:
    """The columns convert_row writes (besides `_drop` and, for prompt_only, the kept columns)."""
    if kind == LANGUAGE_MODELING:
        tools = ("tools",) if "tools" in binding.fields else ()
        return {"messages": ("messages",), "text": ("text",)}.get(
            lm_shape(binding), ("prompt", "completion")
        ) + tools
    if kind == PREFERENCE or (kind == UNPAIRED and binding.format in PAIR_FORMATS):
        return ("prompt", "chosen", "rejected")
    if kind == UNPAIRED:
        return ("prompt", "completion", "label")
    return ("prompt",)


def _emit(parts: dict, binding: Binding, kind: str) -> dict:
    if kind == LANGUAGE_MODELING:
        if "messages" in parts:
            require_assistant(parts["messages"], binding.fields["messages"])
        return parts
    if kind == PROMPT_ONLY:
        prompt = (
            parts["prompt"]
            if "prompt" in parts
            else prompt_part(parts["messages"], binding.fields["messages"])
        )
        return {"prompt": prompt}
    return parts


def _empty(binding: Binding, kind: str) -> dict:
    return {
        c: (False if c == "label" else "" if c == "text" else None if c == "tools" else [])
        for c in output_columns(binding, kind)
    }


def _plain(out: dict) -> dict:
    """Single-turn messages -> TRL's standard (string) format, for tokenizers without a chat template."""
    out.pop("tools", None)
    for column in ("prompt", "completion", "chosen", "rejected"):
        messages = out.get(column)
        if isinstance(messages, list):
            if len(messages) != 1 or messages[0]["role"] != ("user" if column == "prompt" else "assistant"):
                raise RowProblem("multi-turn or system messages need a chat template")
            out[column] = messages[0]["content"]
    return out


def convert_row(row: dict, binding: Binding, kind: str, drop_ties: bool = False, plain: bool = False) -> dict:
    """Output columns of `kind` for one source row, plus `_drop` (None, or why the row is dropped).
    plain=True writes strings instead of message lists (single-turn rows only)."""
    try:
        if all(is_blank(value) for value in row.values()):
            raise RowProblem("empty row")
        refuse_media(row)
        refuse_tools(row, list(binding.fields.values()), kind)
        out = _emit(unit(row, binding, kind, drop_ties), binding, kind)
        if "tools" in binding.fields:
            out["tools"] = tools_value(row.get(binding.fields["tools"]))
        if plain or "text" in out:
            refuse_plain_tools(out)
        if plain:
            out = _plain(out)
        out[DROP] = None
    except (RowProblem, TypeError, ValueError, AttributeError) as problem:
        out = _empty(binding, kind)
        if plain:
            out = {c: "" if isinstance(v, list) else v for c, v in out.items() if c != "tools"}
        out[DROP] = (
            str(problem)
            if isinstance(problem, RowProblem)
            else f"unreadable value ({type(problem).__name__})"
        )
    if kind == PROMPT_ONLY:
        for column in binding.keep:
            out[column] = row.get(column)
    return out


def convert_batch(
    batch: dict[str, list], binding: Binding, kind: str, drop_ties: bool = False, plain: bool = False
) -> dict[str, list]:
    """convert_row over a `Dataset.map(batched=True)` batch (far less per-row overhead)."""
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    rows = [
        convert_row({c: batch[c][i] for c in columns}, binding, kind, drop_ties, plain) for i in range(size)
    ]
    names = list(rows[0]) if rows else list(output_columns(binding, kind)) + [DROP]
    return {name: [row[name] for row in rows] for name in names}


def unpair_batch(batch: dict[str, list]) -> dict[str, list]:
    """Preference pairs -> unpaired rows: each pair gives a desirable (chosen) and an undesirable row."""
    out: dict[str, list] = {"prompt": [], "completion": [], "label": []}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        out["prompt"] += [prompt, prompt]
        out["completion"] += [chosen, rejected]
        out["label"] += [True, False]
    return out


def collect_drops(reasons, offset: int = 0) -> dict[str, list[int]]:
    dropped: dict[str, list[int]] = {}
    for index, reason in enumerate(reasons):
        if reason is not None:
            dropped.setdefault(reason, []).append(index + 1 + offset)
    return dropped


def convert_rows(
    rows: list[dict],
    binding: Binding,
    kind: str,
    drop_ties: bool = False,
    section: str = "data.train",
    offset: int = 0,
    plain: bool = False,
) -> tuple[list[dict], ConversionReport]:
    """Convert plain rows (already renamed by `columns:`), for previews and tests; no datasets."""
    converted = [convert_row(row, binding, kind, drop_ties, plain) for row in rows]
    dropped = collect_drops([r[DROP] for r in converted], offset)
    kept = [{k: v for k, v in r.items() if k != DROP} for r in converted if r[DROP] is None]
    if kind == UNPAIRED and binding.format in PAIR_FORMATS:
        batch = unpair_batch({c: [r[c] for r in kept] for c in ("prompt", "chosen", "rejected")})
        kept = [dict(zip(batch, values)) for values in zip(*batch.values())]
    report = ConversionReport(
        binding.format,
        len(rows),
        len(rows) - sum(map(len, dropped.values())),
        dropped,
        section=section,
        kind=kind,
        rows_out=len(kept),
    )
    return kept, report
