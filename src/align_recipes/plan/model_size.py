"""A model's parameter count without downloading it: from a local config.json (or an adapter's base),
else from the size in its name ("Qwen2-0.5B", "8x7B", "135M"). Profiles pick their size rules and the
compatibility check its memory estimate from this number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SIZE_TOKEN = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)


def estimate_params(name_or_path: str | None, base_dir: Path | None = None) -> tuple[float | None, str]:
    """(parameter count or None, how it was estimated). Reads a local config.json when the model is a
    local directory, else a size token in the name ('0.5B', '1.5B', '7B', '8x7B', '135M')."""
    if not name_or_path:
        return None, "no model named"
    name = str(name_or_path)
    if name.startswith("builtin:"):
        config = Path(__file__).parents[1] / "assets" / "tiny" / "model_config.json"
        count = _params_from_config(json.loads(config.read_text())) if config.is_file() else 1e6
        return count, "builtin tiny model"
    for candidate in (Path(name).expanduser(), (base_dir or Path.cwd()) / name):
        config = candidate / "config.json"
        if config.is_file():
            try:
                count = _params_from_config(json.loads(config.read_text()))
            except (OSError, ValueError, TypeError):
                count = None
            if count:
                return count, f"from {config}"
            base = _adapter_base(candidate)
            if base:
                return estimate_params(base, base_dir)
        elif (candidate / "adapter_config.json").is_file():
            base = _adapter_base(candidate)
            if base:
                return estimate_params(base, base_dir)
    tokens = [
        (
            float(m.group(2))
            * (int(m.group(1)) if m.group(1) else 1)
            * (1e9 if m.group(3).lower() == "b" else 1e6)
        )
        for m in SIZE_TOKEN.finditer(name.rsplit("/", 1)[-1])
        if not m.string[: m.start()].endswith(("v", "V"))
    ]  # 'v2' is a version, not a size
    if tokens:
        return max(tokens), "from the size in its name"
    return None, "size unknown (no local config.json, no size token such as 7B in the name)"


def _adapter_base(directory: Path) -> str | None:
    try:
        return json.loads((directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def _params_from_config(config: dict) -> float | None:
    """Decoder-only transformer parameter count from config.json fields (nested text_config too)."""
    config = config.get("text_config") or config
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers")
    if not hidden or not layers:
        return None
    vocab = config.get("vocab_size") or 300  # the tiny model fills its vocab in from the tokenizer
    intermediate = config.get("intermediate_size") or config.get("n_inner") or 4 * hidden
    heads = config.get("num_attention_heads") or config.get("n_head") or max(1, hidden // 64)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
    expert_size = config.get("moe_intermediate_size") or intermediate
    mlp = 3 * hidden * (expert_size * experts if experts > 1 else intermediate)
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    return float(layers * (attention + mlp + 2 * hidden) + embeddings)


def human(count: float | None) -> str:
    """1.5e9 -> '1.5B', 5e8 -> '0.5B', 1.35e8 -> '135M'."""
    if count is None:
        return "?"
    if count >= 4e8:
        return f"{count / 1e9:.3g}B"
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    return f"{count / 1e3:.3g}K"
