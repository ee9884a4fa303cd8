"""The built-in tiny model: a randomly initialised Qwen2 small enough to train on a laptop CPU in seconds.

Recipes name it with ``model.name_or_path: builtin:tiny-qwen2`` (`TINY_MODEL_ID`). Nothing is
downloaded: `ensure_tiny_model()` builds it from the small text files in ``assets/tiny/`` — the
model hyper-parameters, the tokenizer's description and the chat template — with a fixed torch
seed, and caches the result as an ordinary Hugging Face model directory that
``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` load.

The tokenizer is byte level with no merges: one token per byte, so one token per ASCII character
(ids 0-255 are the byte values), plus the Qwen special tokens ``<|endoftext|>`` (padding),
``<|im_start|>`` and ``<|im_end|>`` (end of turn, the eos token). It is saved as a
``Qwen2Tokenizer`` and matches that class's byte-level pre-tokenizer and decoder, so it behaves the
same whichever class loads it. The chat template is ChatML with ``{% generation %}`` markers around
the assistant's content and its ``<|im_end|>``, as TRL's ``assistant_only_loss=True`` needs.

The cache directory is ``$ALIGN_RECIPES_CACHE/tiny-qwen2-<hash>`` (default
``~/.cache/align_recipes``), where ``<hash>`` covers the asset files and `BUILDER_VERSION`:
editing an asset builds a fresh model. The build happens in a temporary directory that is renamed
into place, so processes racing to build it (``accelerate launch --num_processes 2``) are safe, and
two builds give byte-identical weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from align_recipes import reproducible

TINY_MODEL_ID = "builtin:tiny-qwen2"
TINY_SFT_ID = "builtin:tiny-qwen2-sft"  # built by tiny/sft.py from this model
# Every `builtin:` model a recipe may name, with one line each for error messages and docs.
BUILTIN_MODELS = {
    TINY_MODEL_ID: "the untrained tiny Qwen2 (random weights, built from assets/tiny)",
    TINY_SFT_ID: "the tiny Qwen2 after SFT on the toy task (recipes/tiny/sft.yaml, seed 42; built on first use)",
}
BUILDER_VERSION = "2"  # bump when the build code changes what it writes

ASSET_FILES = ("model_config.json", "tokenizer_spec.json", "chat_template.jinja")
MARKER_FILE = "align_recipes_tiny.json"  # written last inside the build; names the hash and sizes
CACHE_ENV = "ALIGN_RECIPES_CACHE"


def is_tiny_model_id(name_or_path: str | os.PathLike | None) -> bool:
    return str(name_or_path) in BUILTIN_MODELS


def ensure_builtin(name: str, cache_dir: Path | None = None) -> Path:
    """The directory of the builtin model `name` (one of `BUILTIN_MODELS`), built on first use."""
    if name == TINY_SFT_ID:
        from align_recipes.tiny.sft import ensure_tiny_sft

        return ensure_tiny_sft(cache_dir)
    if name == TINY_MODEL_ID:
        return ensure_tiny_model(cache_dir)
    raise ValueError(f"unknown builtin model {name!r}; builtin models: {', '.join(BUILTIN_MODELS)}")


def builtin_of_cache_dir(path: str | os.PathLike) -> str | None:
    """The builtin id whose cache directory `path` names (an adapter's recorded base), else None."""
    name = Path(path).name
    if name.startswith("tiny-qwen2-sft-"):
        return TINY_SFT_ID
    if name.startswith("tiny-qwen2-"):
        return TINY_MODEL_ID
    return None


def resolve_model_path(name_or_path: str | os.PathLike, cache_dir: Path | None = None) -> str:
    """A builtin id becomes its built model's directory; anything else is returned unchanged."""
    if is_tiny_model_id(name_or_path):
        return str(ensure_builtin(str(name_or_path), cache_dir))
    return str(name_or_path)


# --------------------------------------------------------------------------------------- assets


def _asset_bytes(name: str) -> bytes:
    return resources.files("align_recipes").joinpath("assets", "tiny", name).read_bytes()


def _asset_json(name: str) -> dict[str, Any]:
    data = json.loads(_asset_bytes(name).decode("utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def asset_hash() -> str:
    """Short hash of the asset files and the builder version: the cache key."""
    h = hashlib.sha256(f"builder={BUILDER_VERSION}\n".encode())
    for name in ASSET_FILES:
        data = _asset_bytes(name)
        h.update(f"{name}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:12]


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "align_recipes"


def tiny_model_dir(cache_dir: Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / f"tiny-qwen2-{asset_hash()}"


# ------------------------------------------------------------------------------------ tokenizer


def _byte_alphabet() -> dict[int, str]:
    """GPT-2 / Qwen byte-to-printable-character table (the alphabet of byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tokenizer():
    """The tiny model's tokenizer, built from ``assets/tiny`` (no files read from a hub)."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    spec = _asset_json("tokenizer_spec.json")
    if spec.get("alphabet") != "bytes":
        raise ValueError(f"assets/tiny/tokenizer_spec.json: unsupported alphabet {spec.get('alphabet')!r}")
    vocab = {char: byte for byte, char in _byte_alphabet().items()}
    for token in spec["special_tokens"]:
        vocab[token] = len(vocab)
    extra = [t for t in spec["special_tokens"] if t not in (spec["pad_token"], spec["eos_token"])]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        additional_special_tokens=extra,
        model_max_length=spec["model_max_length"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.padding_side = "right"
    tokenizer.chat_template = _asset_bytes("chat_template.jinja").decode("utf-8")
    if len(tokenizer) != len(vocab):
        raise AssertionError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


# -------------------------------------------------------------------------------------- model


def build_config(tokenizer=None):
    from transformers import Qwen2Config

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    spec = _asset_json("model_config.json")
    spec.pop("seed", None)
    rope_theta = spec.pop("rope_theta", 10000.0)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **spec,
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No 'Writing model shards' progress bar while building."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_model(tokenizer=None):
    """A freshly initialised tiny `Qwen2ForCausalLM` (same weights every call)."""
    import torch
    from transformers import Qwen2ForCausalLM

    config = build_config(tokenizer)
    seed = int(_asset_json("model_config.json").get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = None
    return model.to(torch.float32).eval()


def _write_build(target: Path) -> dict[str, Any]:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    with quiet_transformers():
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
    info = describe(model)
    info["hash"] = asset_hash()
    (target / MARKER_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    for path in target.iterdir():  # the weights are written private; the cache is an ordinary directory
        path.chmod(0o644)
    return info


def _is_complete(path: Path) -> bool:
    return (path / MARKER_FILE).is_file()


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """Build the tiny model and tokenizer once and return their directory (see the module docstring)."""
    final = tiny_model_dir(cache_dir)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if not reproducible.holds_here():  # the random init's kernels depend on the CPU: build in the mode
        reproducible.run_pinned(
            f"from align_recipes import tiny; tiny.ensure_tiny_model({str(final.parent)!r})"
        )
        if _is_complete(final):
            return final
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-", dir=final.parent)
    )
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        _write_build(tmp)
        if final.exists() and not _is_complete(final):
            # Not made by this code (it only renames complete builds into place): clear it away.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process renamed its build into place first; ours is identical, keep theirs.
            if not _is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------ describe


def describe(model=None) -> dict[str, Any]:
    """Sizes of the tiny model, for docs and logs: parameters, vocabulary, layers, width."""
    if model is None:
        import torch
        from transformers import Qwen2ForCausalLM

        with torch.device("meta"):
            model = Qwen2ForCausalLM(build_config())
    cfg = model.config
    return {
        "model_id": TINY_MODEL_ID,
        "architecture": "Qwen2ForCausalLM",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "tokenizer": "byte level (one token per ASCII character) + <|endoftext|> <|im_start|> <|im_end|>",
    }


if __name__ == "__main__":  # python -m align_recipes.tiny: build (if needed) and print where and how big
    path = ensure_tiny_model()
    print(path)
    print(json.dumps(describe(), indent=2))
