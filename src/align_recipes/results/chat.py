"""Talk to a trained model: `align-recipes chat DIR` (a REPL) or `--prompt "…"` (one answer)."""

from __future__ import annotations

import sys
from pathlib import Path

from align_recipes.errors import RecipeError
from align_recipes.run.saved import load_run


def reply(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    streamer=None,
    chat_template: str | None = None,
) -> str:
    """The assistant's next message for a conversation, through `chat_template` (the run's inference
    template; None: the tokenizer's own)."""
    import torch

    text = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
    )
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            streamer=streamer,
            **sampling,
        )
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _inference_template(info, tokenizer) -> str | None:
    """The run's saved inference template (no generation markers); None leaves the tokenizer's own, which
    transformers renders markers and all (for a template plain Jinja2 cannot parse)."""
    from align_recipes.run.inference_template import TemplateError, load_inference_template

    try:
        return load_inference_template(info.run_dir, tokenizer)
    except TemplateError:
        return None


HELP = "commands: /reset (forget the conversation), /system TEXT (set a system message), /exit (or Ctrl-D)"


def chat(
    run_dir: str | Path,
    prompt: str | None = None,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    stream=None,
    check_stop: bool = False,
) -> int:
    """One answer for `prompt`, or a read-reply loop on stdin until /exit or end of input. `check_stop`:
    first check that the model ends its turn on a few held-out prompts (results.stopcheck)."""
    stream = stream or sys.stdout
    model, tokenizer, info = load_run(run_dir)
    if info.head == "reward":
        raise RecipeError(
            f"'{run_dir}' is a reward model: it scores answers and cannot write them",
            fix="chat with a policy (sft, dpo, grpo, … output); score with `align-recipes eval`",
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise RecipeError(
            f"the tokenizer in '{run_dir}' has no chat template",
            fix="train with model.chat_template set, or add chat_template.jinja to the directory",
        )
    template = _inference_template(info, tokenizer)
    if check_stop:
        from align_recipes.results.stopcheck import check_stop as run_check

        print(run_check(model, tokenizer, info, template, max_new_tokens), file=stream, flush=True)
    settings = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "chat_template": template,
    }
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        print(
            reply(model, tokenizer, [*history, {"role": "user", "content": prompt}], **settings), file=stream
        )
        return 0

    interactive = sys.stdin.isatty()
    name = f"{info.algorithm or 'model'} · {info.model.name_or_path or info.run_dir}"
    print(f"chatting with {info.run_dir} ({name}{', adapter' if info.adapter else ''})", file=stream)
    print(HELP, file=stream, flush=True)
    streamer = None
    if interactive:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            print(file=stream)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = [m for m in history if m["role"] == "system"]
            print("(conversation cleared)", file=stream, flush=True)
            continue
        if line.startswith("/system"):
            history = [{"role": "system", "content": line[len("/system") :].strip()}] + [
                m for m in history if m["role"] != "system"
            ]
            print("(system message set)", file=stream, flush=True)
            continue
        if line.startswith("/"):
            print(HELP, file=stream, flush=True)
            continue
        history.append({"role": "user", "content": line})
        if interactive:
            print("assistant> ", end="", file=stream, flush=True)
        answer = reply(model, tokenizer, history, streamer=streamer, **settings)
        if not interactive:
            print(f"assistant> {answer}", file=stream, flush=True)
        history.append({"role": "assistant", "content": answer})
