"""An Ollama `Modelfile` for an exported GGUF: FROM the file, TEMPLATE in Ollama's Go-template syntax, and
PARAMETER stop for each end-of-turn token.

Ollama does not run Jinja; its template is written here from the chat format, which is read off the
inference template by rendering conversations with marker contents. ChatML (`<|im_start|>role\\n…<|im_end|>\\n`,
the format of every family the project ships) is recognised, with or without a default system prompt
that the template adds when the conversation has none. The Go template is checked to give the same text
as the Jinja template on probe conversations (`chatml_render`, the Go template's meaning in Python).
"""

from __future__ import annotations

from pathlib import Path

from align_recipes.errors import RecipeError

MODELFILE = "Modelfile"
_S, _U, _A = "\x01system\x01", "\x01user\x01", "\x01assistant\x01"


def _turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def chatml_render(messages: list[dict], default_system: str | None) -> str:
    """What the Go template below renders for `messages` with a generation prompt."""
    text = ""
    if default_system is not None and messages and messages[0]["role"] != "system":
        text += _turn("system", default_system)
    text += "".join(_turn(m["role"], m["content"]) for m in messages)
    return text + "<|im_start|>assistant\n"


def chatml_default_system(render) -> str | None:
    """The default system prompt of a ChatML template ("" when none is added, None when not ChatML).
    `render(messages, add_generation_prompt)` renders the inference template."""
    try:
        full = render([{"role": "system", "content": _S}, {"role": "user", "content": _U}], False)
        alone = render([{"role": "user", "content": _U}], False)
    except Exception:  # a template that cannot render these is no ChatML we know
        return None
    if full != _turn("system", _S) + _turn("user", _U) or not alone.endswith(_turn("user", _U)):
        return None
    before = alone[: -len(_turn("user", _U))]
    if not before:
        return ""
    head, tail = "<|im_start|>system\n", "<|im_end|>\n"
    if before.startswith(head) and before.endswith(tail) and before.count("<|im_start|>") == 1:
        return before[len(head) : -len(tail)]
    return None


PROBES = [
    [{"role": "user", "content": "2+3="}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ],
]


def go_template(render) -> str:
    """Ollama's TEMPLATE for the chat format `render` shows. Raises RecipeError for a format other than ChatML."""
    default = chatml_default_system(render)
    if default is None or any(chatml_render(p, default or None) != render(p, True) for p in PROBES):
        raise RecipeError(
            "--ollama can write a Modelfile TEMPLATE for ChatML chat formats only; this model's differs",
            fix="export without --ollama and write the Modelfile's TEMPLATE by hand (Ollama's Go template syntax)",
        )
    # No {{- -}} trimming: it would also eat the newline that ends each turn.
    text = ""
    if default:
        system = default.replace("{{", '{{ "{{" }}')
        text += (
            '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
            f"<|im_start|>system\n{system}<|im_end|>\n{{{{ end }}}}"
        )
    return (
        text
        + "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    )


def modelfile(gguf_name: str, template: str, stops: list[str]) -> str:
    quoted = template.replace('"""', '\\"\\"\\"')
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{quoted}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, gguf_name: str, render, stops: list[str]) -> Path:
    path = Path(out_dir) / MODELFILE
    path.write_text(modelfile(gguf_name, go_template(render), stops), encoding="utf-8")
    return path
