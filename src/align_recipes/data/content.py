"""What a row holds besides text: image, audio and video parts (refused until VLM support exists) and
tool calls (kept for the trainers that pass them to the chat template, refused by name elsewhere).

Pure Python on single rows, like messages.py. A refused row is a `Refused` problem whose reason starts
with REFUSED: the conversion report collects it like any dropped row, and `refusal_error` turns it into
an error (exit 2) whatever `max_drop_fraction` says, because dropping those rows would silently train on
something else than the user's data.
"""

from __future__ import annotations

import json
from typing import Any

from ..registry import names_text
from .formats import Binding
from .messages import RowProblem, is_blank
from .spec import LANGUAGE_MODELING, DataError, rows_text

REFUSED = "refused: "

# OpenAI-style content part types (and the Hugging Face processor spellings) -> what they hold.
MEDIA_PARTS = {
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
    "video": "video",
    "video_url": "video",
    "input_video": "video",
}
# Columns that carry media next to the text (LLaMA-Factory `images`, TRL's vision datasets `image`).
MEDIA_COLUMNS = {
    "images": "image",
    "image": "image",
    "audios": "audio",
    "audio": "audio",
    "videos": "video",
    "video": "video",
}
TOOL_ROLES = ("tool", "observation", "function", "ipython", "function_call")
TOOLS_COLUMN = "tools"
# The kinds whose trainer takes tool calls and a `tools` column (TRL 1.16's SFTTrainer renders both with
# the chat template). The others are refused by name rather than flattened.
TOOL_KINDS = (LANGUAGE_MODELING,)
NO_TEMPLATE = (
    ", and these rows become plain text (the tokenizer has no chat template, or the format is plain)"
)


class Refused(RowProblem):
    """A row that must not be trained on as it is (its reason starts with REFUSED)."""

    def __init__(self, reason: str):
        super().__init__(REFUSED + reason)


def media_part(value: Any) -> str | None:
    """The type of the first image/audio/video content part anywhere in `value` ('image_url', …), else None."""
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in MEDIA_PARTS:
            return kind
        values = value.values()
    elif isinstance(value, (list, tuple)):
        values = value
    else:
        return None
    for item in values:
        found = media_part(item)
        if found:
            return found
    return None


def refuse_media(row: dict) -> None:
    """Raise Refused when the row holds an image, audio or video part or a non-empty media column."""
    for column, value in row.items():
        if column in MEDIA_COLUMNS and not is_blank(value):
            raise Refused(f"{MEDIA_COLUMNS[column]} reference (column '{column}')")
        part = media_part(value)
        if part:
            raise Refused(f'{MEDIA_PARTS[part]} content part ({{"type": "{part}"}} in \'{column}\')')


def _is_tool_message(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    role = item.get("role", item.get("from"))
    return not is_blank(item.get("tool_calls")) or (
        isinstance(role, str) and role.strip().lower() in TOOL_ROLES
    )


def tool_use(row: dict, columns: list[str]) -> str | None:
    """What in the row is tool use: "a 'tools' column", "tool calls in 'messages'", or None."""
    if not is_blank(row.get(TOOLS_COLUMN)):
        return f"a '{TOOLS_COLUMN}' column"
    for column in columns:
        value = row.get(column)
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(_is_tool_message(item) for item in items):
            return f"tool calls or tool turns in '{column}'"
    return None


def refuse_tools(row: dict, columns: list[str], kind: str) -> None:
    """Raise Refused when the row uses tools and `kind`'s trainers cannot take them."""
    if kind in TOOL_KINDS:
        return
    found = tool_use(row, columns)
    if found:
        raise Refused(
            f"{found}, which {kind} data does not take here ({names_text(lambda a: a.data_kind == kind)})"
        )


def rows_use_tools(rows: list[dict], columns: list[str]) -> bool:
    return any(tool_use(row, columns) for row in rows)


def features_use_tools(features, columns: list[str]) -> bool:
    """Whether the Arrow schema of the bound columns may hold tool calls: a `tools` column, a `tool_calls`
    key, or JSON values (datasets stores values of differing shapes, such as tool call arguments, as Json;
    a mixed column that holds no tool call only costs the JSON storage)."""
    from datasets import Json

    def walk(feature) -> bool:
        if isinstance(feature, Json):
            return True
        if isinstance(feature, dict):
            return "tool_calls" in feature or any(walk(sub) for sub in feature.values())
        inner = getattr(feature, "feature", None)
        return walk(inner) if inner is not None else False

    return TOOLS_COLUMN in features or any(walk(features[c]) for c in columns if c in features)


def bind_tools(binding: Binding, kind: str, uses_tools: bool, columns: list[str]) -> None:
    """Switch the binding to tool mode when the rows may use tools and `kind`'s trainer takes them: tool calls
    stay structured and the `tools` column goes along. Rows of other kinds are refused row by row, and so
    are tool rows that become plain text (no chat template renders them: `refuse_plain_tools`)."""
    if kind not in TOOL_KINDS or not uses_tools:
        return
    binding.tool_mode = True
    if TOOLS_COLUMN in columns:
        binding.fields[TOOLS_COLUMN] = TOOLS_COLUMN


def refuse_plain_tools(out: dict) -> None:
    """Raise Refused when a row bound for plain text (no chat template) holds tools or tool calls."""
    if not is_blank(out.get(TOOLS_COLUMN)):
        raise Refused(f"a '{TOOLS_COLUMN}' column, which only a chat template renders{NO_TEMPLATE}")
    for value in out.values():
        if isinstance(value, list) and any(isinstance(m, dict) and m.get("tool_calls") for m in value):
            raise Refused(f"tool calls, which only a chat template renders{NO_TEMPLATE}")


def tools_value(value: Any) -> list[dict] | None:
    """A row's `tools` column (a JSON string or a list of schemas) as a list of function schemas."""
    if is_blank(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem(f"'{TOOLS_COLUMN}' is not valid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(tool, dict) for tool in value):
        raise RowProblem(f"'{TOOLS_COLUMN}' is not a list of function schemas")
    return [tool if "function" in tool else {"type": "function", "function": tool} for tool in value]


def refusal_error(
    dropped: dict[str, list[int]], section: str, file: Any = None, line_of=None
) -> DataError | None:
    """The error for refused rows (None when there are none). `line_of(row)` maps a row number to the
    file's line number where that is known (JSON Lines)."""
    refused = {reason[len(REFUSED) :]: rows for reason, rows in dropped.items() if reason.startswith(REFUSED)}
    if not refused:
        return None
    reason, rows = min(refused.items(), key=lambda item: item[1][0])
    line = line_of(rows[0]) if line_of else None
    at = (f" (line {line})" if len(rows) == 1 else f" (the first at line {line})") if line else ""
    holds = "holds" if len(rows) == 1 else "hold"
    media = reason.split(" ", 1)[0]
    if media in ("image", "audio", "video"):
        article = "a" if media == "video" else "an"
        return DataError(
            f"{rows_text(rows)}{at} {holds} {article} {reason}: align-recipes trains text models "
            f"and does not read {media} data yet, so it will not train on the text alone",
            file=file,
            line=line,
            key=section,
            fix=f"remove the {media} parts or those rows, or train a vision/audio model with TRL directly",
        )
    if reason.endswith(NO_TEMPLATE):
        return DataError(
            f"{rows_text(rows)}{at} {holds} {reason}",
            file=file,
            line=line,
            key=section,
            fix="set model.chat_template to a template that renders tools (docs/data.md)",
        )
    return DataError(
        f"{rows_text(rows)}{at} {holds} {reason}",
        file=file,
        line=line,
        key=section,
        fix="remove the tool calls and tool turns (and the tools column), or train the tool use with "
        f"{names_text(lambda a: a.data_kind in TOOL_KINDS)}, whose trainer renders them with the "
        "chat template",
    )
