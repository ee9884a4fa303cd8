"""Chat templates for assistant-only loss: real chat models ship templates without `{% generation %}` markers.

TRL's `assistant_only_loss=True` needs those markers to tell the assistant's tokens from the rest, and only
patches the templates it knows, after the model has loaded. Before any weights load, `use_training_template`
swaps in a training version of the tokenizer's template: TRL's own for the families it ships
(`trl.chat_template_utils.get_training_chat_template`, e.g. Qwen2.5), else one shipped here
(`assets/chat_templates/*_training.jinja`: Qwen2's ChatML, keeping Qwen2's own default system prompt).
A replacement is used only when it renders exactly the same text as the original on probe conversations
(with and without a system message, several turns, with a generation prompt), so training sees the
same tokens and only the loss mask changes.
"""

from __future__ import annotations

from importlib import resources

from align_recipes.errors import RecipeError

SHIPPED_TRAINING_TEMPLATES = ("qwen2_training",)

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


def has_generation_markers(template) -> bool:
    from trl.chat_template_utils import has_generation_markers as trl_has_markers

    return bool(template) and trl_has_markers(template)


def shipped_template(name: str) -> str:
    return (
        resources.files("align_recipes")
        .joinpath("assets", "chat_templates", f"{name}.jinja")
        .read_text("utf-8")
    )


def _render(tokenizer, template: str, messages: list[dict], prompt: bool) -> str | None:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, chat_template=template
        )
    except Exception:  # a template that cannot render a probe is not a match
        return None


def renders_same(tokenizer, original: str, candidate: str) -> bool:
    for messages in PROBES:
        for prompt in (False, True):
            first = _render(tokenizer, original, messages, prompt)
            if first is None or first != _render(tokenizer, candidate, messages, prompt):
                return False
    return True


def training_template(tokenizer) -> tuple[str, str] | None:
    """(template with generation markers rendering the same text, where it comes from), or None."""
    original = tokenizer.chat_template
    if isinstance(original, dict):
        original = original.get("default")
    if not original:
        return None
    candidates = []
    try:
        from trl.chat_template_utils import get_training_chat_template

        found = get_training_chat_template(tokenizer)
        if found:
            candidates.append((found, "TRL's training version of this template"))
    except (ValueError, TypeError):
        pass  # TRL does not know this template
    candidates += [
        (shipped_template(name), f"align-recipes' {name}.jinja") for name in SHIPPED_TRAINING_TEMPLATES
    ]
    for template, origin in candidates:
        if has_generation_markers(template) and renders_same(tokenizer, original, template):
            return template, origin
    return None


def use_training_template(tokenizer, file=None) -> str | None:
    """Make `tokenizer` fit for assistant_only_loss; returns a note when its template was replaced. Raises
    RecipeError (before any weights load) when no training version renders the same text."""
    if has_generation_markers(tokenizer.chat_template):
        return None
    found = training_template(tokenizer)
    if found is None:
        raise RecipeError(
            "train.assistant_only_loss needs a chat template with {% generation %} markers; this "
            "model's template has none and no known training version of it renders the same text",
            file=file,
            key="train.assistant_only_loss",
            fix="set model.chat_template to a copy of the template with {% generation %} … "
            "{% endgeneration %} around each assistant reply, or assistant_only_loss: false",
        )
    tokenizer.chat_template, origin = found
    return f"assistant_only_loss: using {origin} (same text, with {{% generation %}} markers)"
