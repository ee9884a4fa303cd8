"""Turning the many ways people store a chat into TRL's `[{"role", "content"}, …]` lists.

Pure Python on single values: no datasets, no torch. Every function here either returns a clean
message list or raises `RowProblem` with a short reason ("empty 'chosen'"), which the caller turns
into a dropped row in the conversion report.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "humans": "user",
    "question": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "answer": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}
CONVERSATION_ROLES = ("user", "assistant")
PLAIN_ROLES = ("user", "assistant", "system")  # roles that normalize_role leaves as they are


class RowProblem(Exception):
    """One row cannot be converted; the message is the reason shown in the report."""


def is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return len(value) == 0
    return False


TEXT_PARTS = ("text", "input_text", "output_text")


def content_text(value: Any) -> str:
    """The text of a message's content: a string, or a list of text parts. Image, audio and video parts
    never get here (data.content refuses those rows first); any other part type drops the row rather than
    training on what is left of it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        kind = value.get("type", "text")
        if kind not in TEXT_PARTS:
            raise RowProblem(f"content part of type '{kind}'")
        return content_text(value.get("text", value.get("content", "")))
    if isinstance(value, (list, tuple)):
        return "".join(content_text(part) for part in value)
    return str(value)


def message_role(item: dict) -> str | None:
    role = item.get("role", item.get("from"))
    return None if role is None else str(role)


def _message_content(item: dict) -> Any:
    for key in ("content", "value", "text"):
        if key in item and item[key] is not None:
            return item[key]
    return None


def normalize_role(role: str, column: str) -> str:
    mapped = ROLE_ALIASES.get(role.strip().lower())
    if mapped is None:
        raise RowProblem(f"unknown role '{role}' in '{column}'")
    return mapped


def to_messages(
    value: Any, column: str, first_role: str = "user", tools: bool = False
) -> list[dict[str, Any]]:
    """Normalise a chat-ish value into role/content messages.

    Accepts a string (one message of `first_role`), one message dict, or a list of message dicts
    (role/content, ShareGPT from/value, or content only) or strings. Items without a role alternate
    user/assistant by position, starting with `first_role` (MiniMind's rlaif lists carry no roles).
    tools=True keeps tool use for the chat template: an assistant's `tool_calls`, a tool turn's `name` and
    `tool_call_id`, and ShareGPT `function_call` turns holding a JSON call become structured tool calls.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": first_role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RowProblem(f"'{column}' is a {type(value).__name__}, expected text or a list of messages")
    other = {"user": "assistant", "assistant": "user"}
    messages = []
    for position, item in enumerate(value):
        if not tools and isinstance(item, dict):  # the common case, already clean: no work to do
            role, content = item.get("role"), item.get("content")
            if role in PLAIN_ROLES and type(content) is str:
                messages.append({"role": role, "content": content})
                continue
        default = first_role if position % 2 == 0 else other.get(first_role, "assistant")
        if isinstance(item, str):
            role, content = default, item
        elif isinstance(item, dict):
            raw_role = message_role(item)
            role = default if raw_role is None else normalize_role(raw_role, column)
            content = content_text(_message_content(item))
            if tools:
                messages.append(_tool_message(item, role, content, raw_role, column))
                continue
        elif item is None:
            continue
        else:
            raise RowProblem(f"'{column}' holds a {type(item).__name__}, expected messages")
        messages.append({"role": role, "content": content})
    return messages


def _tool_message(item: dict, role: str, content: str, raw_role: str | None, column: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, "content": content}
    calls = item.get("tool_calls")
    if is_blank(calls) and str(raw_role).strip().lower() == "function_call":
        try:
            calls = tool_calls(content, column)
            message["content"] = ""
        except RowProblem:
            calls = None  # not a JSON call: the turn stays text, as it was written
    if not is_blank(calls):
        message["tool_calls"] = tool_calls(calls, column)
    for key in ("name", "tool_call_id"):
        if isinstance(item.get(key), str) and role == "tool":
            message[key] = item[key]
    return message


def _arguments(value: Any) -> Any:
    """Tool call arguments as a mapping, as chat templates expect (`arguments | tojson`)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


def tool_calls(value: Any, column: str) -> list[dict]:
    """Tool calls normalised to [{"type": "function", "function": {"name", "arguments"}}] (OpenAI's layout,
    which transformers' chat templates read); the flat {"name", "arguments"} layout is accepted too."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem(f"tool call in '{column}' is not JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RowProblem(f"tool calls in '{column}' are not a list")
    calls = []
    for call in value:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RowProblem(f"a tool call in '{column}' has no function name")
        out = {
            "type": "function",
            "function": {"name": function["name"], "arguments": _arguments(function.get("arguments", {}))},
        }
        if isinstance(call.get("id"), str):
            out["id"] = call["id"]
        calls.append(out)
    return calls


def clean_messages(messages: list[dict[str, str]], column: str) -> list[dict[str, str]]:
    """Drop empty system messages; refuse empty user/assistant turns."""
    out = []
    for message in messages:
        if not message["content"].strip() and not message.get("tool_calls"):
            if message["role"] == "system":
                continue
            raise RowProblem(f"empty {message['role']} turn in '{column}'")
        out.append(message)
    if not out:
        raise RowProblem(f"empty '{column}'")
    return out


def with_system(system: Any, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Prepend a system message from a separate `system` column unless the chat already has one."""
    if is_blank(system) or not isinstance(system, str):
        return messages
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}] + messages


def split_last_assistant(messages: list[dict[str, str]], column: str):
    """(prompt, [final assistant message]) for a chat that ends with an assistant reply."""
    if not messages or messages[-1]["role"] != "assistant":
        raise RowProblem(f"'{column}' does not end with an assistant turn")
    return messages[:-1], messages[-1:]


def prompt_part(messages: list[dict[str, str]], column: str) -> list[dict[str, str]]:
    """The prompt of a chat: everything before the final assistant turn."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not any(m["role"] == "user" for m in messages):
        raise RowProblem(f"no user turn in '{column}'")
    return messages


def require_assistant(messages: list[dict[str, str]], column: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(f"no assistant turn in '{column}'")


def split_shared_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen rest, rejected rest) of two full texts, as TRL's `extract_prompt` splits plain strings:
    the prompt is their common beginning, and a space just before the first difference goes to the replies.
    (When one text starts with the whole other, TRL stops one character short of its end; so does this.)"""
    index = 0
    for index in range(min(len(chosen), len(rejected))):
        if chosen[index] != rejected[index]:
            if index > 0 and chosen[index - 1] == " ":
                index -= 1
            break
    return chosen[:index], chosen[index:], rejected[index:]


def common_prefix(chosen: list[dict], rejected: list[dict]):
    """Split two full conversations into (shared prompt, chosen rest, rejected rest)."""
    index = 0
    while index < min(len(chosen), len(rejected)) and chosen[index] == rejected[index]:
        index += 1
    return chosen[:index], chosen[index:], rejected[index:]


# Role markers inside plain text: "\n\nHuman: … \n\nAssistant: …" (HH-RLHF), "User:" at line starts,
# "### Human: … ### Assistant: …" anywhere (Guanaco), and ChatML "<|im_start|>user\n…<|im_end|>".
_MARKER = re.compile(
    r"(?:(?:^|\n)[ \t]*(?:#{2,3}[ \t]*)?|#{3}[ \t]*)(human|user|assistant|system)[ \t]*:", re.IGNORECASE
)
_CHATML = re.compile(
    r"<\|im_start\|>[ \t]*(\w+)[ \t]*\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL
)


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """Messages from a text with role markers, or None when the text does not start with one.

    A trailing empty assistant turn ("…\\n\\nAssistant:") is a generation prompt and is dropped.
    """
    if not isinstance(text, str):
        return None
    stripped = text.lstrip()
    if stripped.startswith("<|im_start|>"):
        messages = []
        for role, content in _CHATML.findall(stripped):
            mapped = ROLE_ALIASES.get(role.lower())
            if mapped is None:
                return None
            messages.append({"role": mapped, "content": content.strip()})
    else:
        marks = list(_MARKER.finditer(stripped))
        if not marks or marks[0].start() != 0:
            return None
        messages = []
        for mark, following in zip(marks, marks[1:] + [None]):
            end = following.start() if following is not None else len(stripped)
            role = ROLE_ALIASES[mark.group(1).lower()]
            messages.append({"role": role, "content": stripped[mark.end() : end].strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages or None


def as_prompt(value: Any, column: str, tools: bool = False) -> list[dict[str, str]]:
    """A prompt value (text, text with role markers, or messages) as messages ending in a user turn."""
    if isinstance(value, str):
        parsed = parse_transcript(value)
        messages = parsed if parsed is not None else [{"role": "user", "content": value}]
    else:
        messages = to_messages(value, column, first_role="user", tools=tools)
    if not messages or all(not m["content"].strip() for m in messages):
        raise RowProblem(f"empty '{column}'")
    return clean_messages(messages, column)


def as_reply(value: Any, column: str, tools: bool = False) -> list[dict[str, str]]:
    """A reply value (text, one message, or messages) as assistant messages."""
    messages = to_messages(value, column, first_role="assistant", tools=tools)
    if not messages or all(not m["content"].strip() and not m.get("tool_calls") for m in messages):
        raise RowProblem(f"empty '{column}'")
    return clean_messages(messages, column)


_TRUE = {"true", "1", "yes", "y", "good", "desirable", "positive", "chosen", "thumbs_up", "up", "+"}
_FALSE = {"false", "0", "no", "n", "bad", "undesirable", "negative", "rejected", "thumbs_down", "down", "-"}


def as_label(value: Any, column: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        raise RowProblem(f"empty '{column}'")
    raise RowProblem(f"'{column}' is not true/false")


# ------------------------------------------------------------------------ text of prompts and completions


def completion_text(completion: Any) -> str:
    """The generated text of a completion: a string, a message, or a conversational list (its assistant turns)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        assistant = [
            m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        ]
        return "".join(str(m.get("content") or "") for m in (assistant or completion) if isinstance(m, dict))
    return str(completion)


def prompt_text(prompt: Any) -> str:
    """The user's text of a conversational prompt (list of messages) or a plain-string prompt."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content") or "") for m in prompt if m.get("role") == "user")


def rendered_prompt(tokenizer, prompt: Any) -> str:
    """What the model sees before it answers: the chat template with the generation prompt, or the plain text."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)
