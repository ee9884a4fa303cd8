"""The inference template: the training template without {% generation %} markers, which plain Jinja2
renders (llama.cpp, Ollama, a GGUF's embedded template), giving the same text transformers renders."""

from __future__ import annotations

from importlib import resources

import jinja2
import pytest

from align_recipes.results.rehearse.tokenizer import chat_template as rehearse_template
from align_recipes.run.chat_templates import shipped_template
from align_recipes.run.inference_template import (
    INFERENCE_TEMPLATE,
    TemplateError,
    inference_template,
    save_inference_template,
)

CHAT = [{"role": "user", "content": "2+3="}]
TURN = [{"role": "user", "content": "2+3="}, {"role": "assistant", "content": "5"}]
SYSTEM = [{"role": "system", "content": "Be brief."}, *CHAT]


def plain(template: str, messages: list[dict], prompt: bool = True) -> str:
    return jinja2.Environment().from_string(template).render(messages=messages, add_generation_prompt=prompt)


def tiny_template() -> str:
    return resources.files("align_recipes").joinpath("assets", "tiny", "chat_template.jinja").read_text()


def test_tiny_inference_template_renders_chatml_in_plain_jinja():
    assert "generation" in tiny_template()
    with pytest.raises(jinja2.TemplateSyntaxError):
        jinja2.Environment().from_string(tiny_template())
    template = inference_template(tiny_template())
    assert "generation %}" not in template and "endgeneration" not in template
    assert plain(template, CHAT) == "<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n"
    assert (
        plain(template, TURN, False)
        == "<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    )


def test_qwen2_training_template_becomes_the_stock_qwen2_template():
    template = inference_template(shipped_template("qwen2_training"))
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert plain(template, CHAT) == default + "<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n"
    for messages in (CHAT, TURN, SYSTEM):
        for prompt in (True, False):
            assert plain(template, messages, prompt) == plain(shipped_template("qwen2"), messages, prompt)


@pytest.mark.parametrize("family", ["qwen2", "qwen2_5"])
def test_rehearsal_templates_have_no_markers_and_stay_unchanged(family):
    stock = rehearse_template(family)
    assert inference_template(stock) == stock
    assert plain(stock, CHAT).endswith("<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n")


def test_trl_qwen2_5_training_template_renders_like_the_stock_one():
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    template = inference_template(qwen2_5_training_chat_template)
    for messages in (CHAT, TURN, SYSTEM):
        assert plain(template, messages) == plain(qwen2_5_chat_template, messages)


def test_markers_with_whitespace_control_become_inert_blocks():
    # `{%-` strips the newline before the marker; deleting the tag would leave it: "a\nb" instead of "ab".
    training = "{{ 'a' }}\n{%- generation %}{{ 'b' }}{% endgeneration %}"
    template = inference_template(training)
    assert plain(template, CHAT) == "ab"
    assert "{%- if true %}" in template and "{% endif %}" in template


def test_a_template_plain_jinja_rejects_is_reported_and_not_saved(tmp_path):
    class Tok:
        chat_template = "{% for m in messages %}{% break %}{% endfor %}"

    with pytest.raises(TemplateError, match="break"):
        inference_template(Tok.chat_template)
    assert save_inference_template(tmp_path, Tok()) is None
    assert not (tmp_path / INFERENCE_TEMPLATE).exists()


def test_end_of_turn_tokens_of_the_tiny_tokenizer():
    from transformers import AutoTokenizer

    from align_recipes import tiny
    from align_recipes.run.inference_template import end_of_turn_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
    template = inference_template(tokenizer.chat_template)
    # eos is <|im_end|> (id 258); the pad token <|endoftext|> (256) given as an eos id is listed too
    assert end_of_turn_tokens(tokenizer, template, [256]) == ["<|im_end|>", "<|endoftext|>"]
