"""The inference chat template: the training template without `{% generation %}` markers, saved beside the model.

Training needs the markers (TRL's assistant_only_loss finds the assistant's tokens by them), so the
tokenizer's own `chat_template.jinja` keeps them: a later recipe may train from this folder. Every
engine that renders chats with plain Jinja2 (llama.cpp, Ollama, a GGUF's embedded template, the Colab
notebook) rejects the markers, so a finished run also writes `chat_template.inference.jinja`, which chat,
merge and export use. The markers are removed; where that would change the text (whitespace control on
the marker tags, or trim_blocks eating the newline after them) each marker becomes an inert
`{% if true %}` … `{% endif %}` with the same whitespace control, so the rendering stays identical.
"""

from __future__ import annotations

import re
from pathlib import Path

from align_recipes import console

INFERENCE_TEMPLATE = "chat_template.inference.jinja"

_MARKER = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")
_MARKER_LINE = re.compile(r"^[ \t]*\{%-?\s*(?:end)?generation\s*-?%\}[ \t]*\n", re.MULTILINE)

# Conversations the rewritten template must render exactly as the original does (with and without a
# system message, several turns, with and without a generation prompt).
PROBES = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ],
    [{"role": "user", "content": "Name a colour."}],
]


class TemplateError(ValueError):
    """A chat template that plain Jinja2 cannot parse even without generation markers."""


def _default(template) -> str | None:
    return template.get("default") if isinstance(template, dict) else template


def _hf_render(template: str, messages: list[dict], prompt: bool) -> str:
    """The text transformers renders (its own Jinja2 environment, which knows the generation tag)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=prompt)
    return rendered[0]


def _renders_same(original: str, candidate: str) -> bool:
    for messages in PROBES:
        for prompt in (False, True):
            try:
                expected = _hf_render(original, messages, prompt)
            except (
                Exception
            ):  # a probe the original itself cannot render (e.g. no system role) proves nothing
                continue
            if _hf_render(candidate, messages, prompt) != expected:
                return False
    return True


def check_plain_jinja(template: str) -> None:
    """Raise TemplateError when plain `jinja2.Environment()` cannot parse `template`."""
    import jinja2

    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"plain Jinja2 rejects the chat template (line {exc.lineno}): {exc.message}"
        ) from exc


def inference_template(template) -> str | None:
    """The inference version of a chat template (str, or transformers' dict of named templates: the default);
    None for none. Raises TemplateError if plain Jinja2 still cannot parse it."""
    template = _default(template)
    if not template:
        return None
    if not _MARKER.search(template):
        check_plain_jinja(template)
        return template
    stripped = _MARKER.sub("", _MARKER_LINE.sub("", template))
    if not _renders_same(template, stripped):
        stripped = _MARKER.sub(
            lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3] + "%}", template
        )
    check_plain_jinja(stripped)
    return stripped


def write_inference_template(folder: str | Path, tokenizer) -> Path | None:
    """Save the inference template of `tokenizer` beside the model in `folder` (None: no template)."""
    text = inference_template(getattr(tokenizer, "chat_template", None))
    if text is None:
        return None
    path = Path(folder) / INFERENCE_TEMPLATE
    path.write_text(text, encoding="utf-8")
    return path


def save_inference_template(folder: str | Path, tokenizer) -> Path | None:
    """`write_inference_template` at the end of a run: a template plain Jinja2 cannot parse (a tag of an
    extension transformers loads, like `{% break %}`) is reported, never fatal to the finished run."""

    try:
        return write_inference_template(folder, tokenizer)
    except TemplateError as exc:
        console.note(f"no {INFERENCE_TEMPLATE} written: {exc}")
        return None


def load_inference_template(folder: str | Path, tokenizer=None) -> str | None:
    """The saved inference template of a model folder; for folders written before it was saved, the one
    derived from the tokenizer's template."""
    path = Path(folder) / INFERENCE_TEMPLATE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return inference_template(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else None


def carry_inference_template(source: str | Path, target: str | Path, tokenizer) -> Path | None:
    """Write `source`'s inference template into `target` (merge: the merged model keeps it beside it)."""
    try:
        text = load_inference_template(source, tokenizer)
    except TemplateError:
        return None
    if not text:
        return None
    path = Path(target) / INFERENCE_TEMPLATE
    path.write_text(text, encoding="utf-8")
    return path


def end_of_turn_tokens(tokenizer, template: str | None = None, eos_ids=()) -> list[str]:
    """The tokens that end the model's turn: the eos token, the generation config's eos ids (`eos_ids`), and
    the special token that closes an assistant message in the chat template (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>, …)."""
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    found += [tokenizer.convert_ids_to_tokens(int(i)) for i in eos_ids]
    if template:
        try:
            text = _hf_render(
                template, [{"role": "user", "content": "u"}, {"role": "assistant", "content": "\x00"}], False
            )
        except Exception:  # a template that needs more than user/assistant names its stop tokens no other way
            text = ""
        after = text.split("\x00", 1)[1] if "\x00" in text else ""
        specials = sorted(
            tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()), key=len, reverse=True
        )
        for token in specials:
            if token and after.lstrip().startswith(token):
                found.append(token)
                break
    return list(dict.fromkeys(t for t in found if t))
