"""Talk to a trained model: `align-recipes chat DIR` (a REPL) or `--prompt "…"` (one answer).

`load_run` is shared with `merge` and `eval`: it opens a run's output directory as a model plus
tokenizer. A full fine-tune is loaded as it is; a LoRA/QLoRA adapter is loaded on its base model
(adapter_config.json's `base_model_name_or_path`, or the resolved recipe's `model.name_or_path`,
`builtin:tiny-qwen2` included), un-quantized in the run's compute dtype.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align_recipes.errors import RecipeError

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class RunInfo:
    """What a run directory holds, read from its files without loading weights."""

    run_dir: Path
    recipe: dict[str, Any] = field(default_factory=dict)  # recipe.resolved.yaml (empty for a plain model dir)
    summary: dict[str, Any] = field(default_factory=dict)
    adapter: dict[str, Any] | None = None  # adapter_config.json
    head: str = "causal_lm"  # or "reward"

    @property
    def algorithm(self) -> str | None:
        return self.recipe.get("algorithm") or self.summary.get("algorithm")

    @property
    def model_spec(self) -> dict[str, Any]:
        return dict(self.recipe.get("model") or {})

    @property
    def base_dir(self) -> Path:
        """The folder the run's recipe lived in (relative data and model paths resolve against it)."""
        recipe = self.summary.get("recipe")
        if not recipe:
            manifest = _json(self.run_dir / "manifest.json")
            recipe = manifest.get("recipe")
        return Path(recipe).parent if recipe else Path.cwd()


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def inspect_run(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecipeError(f"model directory '{run_dir}' not found", fix="pass a run's train.output_dir")
    adapter = _json(run_dir / ADAPTER_CONFIG) if (run_dir / ADAPTER_CONFIG).is_file() else None
    if adapter is None and not (run_dir / "config.json").is_file():
        raise RecipeError(f"'{run_dir}' holds no model (no config.json, no {ADAPTER_CONFIG})",
                          fix="pass the output directory of a finished run (summary.json says status: complete)")
    try:
        recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        recipe = {}
    info = RunInfo(run_dir=run_dir, recipe=recipe, summary=_json(run_dir / "summary.json"), adapter=adapter)
    config = _json(run_dir / "config.json")
    if (info.algorithm == "reward" or (adapter or {}).get("task_type") == "SEQ_CLS"
            or any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])):
        info.head = "reward"
    return info


def base_model_path(info: RunInfo) -> str:
    """Where an adapter's base model is: built/resolved from the recipe, else adapter_config's path."""
    from align_recipes.run import models

    spec = info.model_spec
    if spec.get("name_or_path"):
        try:
            return models.resolve_model_path(spec, info.base_dir)
        except RecipeError:
            pass
    base = (info.adapter or {}).get("base_model_name_or_path")
    if base and (Path(base).is_dir() or models.looks_like_hub_id(base)):
        return base
    if base and Path(base).name.startswith("tiny-qwen2-"):
        from align_recipes import tiny

        return str(tiny.ensure_tiny_model())
    raise RecipeError(f"cannot find the base model of the adapter in '{info.run_dir}' (base: {base!r})",
                      fix="make the base model available at that path (or as a hub id) and try again")


def _dtype(info: RunInfo, device: str):
    import torch

    from align_recipes.run import models

    name = info.model_spec.get("dtype", "auto")
    if name == "auto":
        return torch.float32 if device == "cpu" else "auto"
    dtype = models.torch_dtype(name)
    return torch.float32 if device == "cpu" and dtype == torch.float16 else dtype


def quiet() -> None:
    """Mute loading chatter (progress bars, deprecation notices) that users cannot act on."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_run(run_dir: str | Path, head: str | None = None, device: str | None = None):
    """(model, tokenizer, info), ready for inference; adapters stay attached (PeftModel)."""
    quiet()
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    info = inspect_run(run_dir)
    head = head or info.head
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(info.run_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": _dtype(info, device)}
    if head == "reward":
        cls, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    else:
        cls = AutoModelForCausalLM
    trust = bool(info.model_spec.get("trust_remote_code", False))
    if info.adapter is None:
        model = cls.from_pretrained(str(info.run_dir), trust_remote_code=trust, **kwargs)
    else:
        from peft import PeftModel

        # QLoRA: the base is loaded un-quantized in the compute dtype; the adapter's weights apply as they are.
        base = cls.from_pretrained(base_model_path(info), trust_remote_code=trust, **kwargs)
        if head == "reward":
            base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, str(info.run_dir))
    if head == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer, info


def reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.7,
          top_p: float = 0.95, streamer=None) -> str:
    """The assistant's next message for a conversation, through the tokenizer's chat template."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, streamer=streamer, **sampling)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()


HELP = "commands: /reset (forget the conversation), /system TEXT (set a system message), /exit (or Ctrl-D)"


def chat(run_dir: str | Path, prompt: str | None = None, system: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.7, top_p: float = 0.95, stream=None) -> int:
    """One answer for `prompt`, or a read-reply loop on stdin until /exit or end of input."""
    stream = stream or sys.stdout
    model, tokenizer, info = load_run(run_dir)
    if info.head == "reward":
        raise RecipeError(f"'{run_dir}' is a reward model: it scores answers and cannot write them",
                          fix="chat with a policy (sft, dpo, grpo, … output); score with `align-recipes eval`")
    if getattr(tokenizer, "chat_template", None) is None:
        raise RecipeError(f"the tokenizer in '{run_dir}' has no chat template",
                          fix="train with model.chat_template set, or add chat_template.jinja to the directory")
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        print(reply(model, tokenizer, [*history, {"role": "user", "content": prompt}], **settings), file=stream)
        return 0

    interactive = sys.stdin.isatty()
    name = f"{info.algorithm or 'model'} · {info.model_spec.get('name_or_path') or info.run_dir}"
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
            history = [{"role": "system", "content": line[len("/system"):].strip()}] + \
                      [m for m in history if m["role"] != "system"]
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
