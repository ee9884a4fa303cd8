"""Secrets never reach a file or a screen: values of secret-named environment variables (HF_TOKEN,
WANDB_API_KEY, ...) and secret-named recipe keys (hub_token, api_key) are replaced by *** in the
resolved recipe, the manifest, error messages and printed commands.

Local folders never reach what a run publishes: `share_paths` rewrites absolute paths in the model card,
report.md, the manifest's shareable fields and what `--push` uploads, relative to the project or as a
file name (/home/<user>/proj/recipes/tiny/dpo.yaml -> recipes/tiny/dpo.yaml).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
SECRET_WORDS = {"token", "secret", "password", "passwd", "apikey", "credential", "credentials", "auth"}
SPECIAL_TOKENS = {
    "pad",
    "eos",
    "bos",
    "unk",
    "sep",
    "cls",
    "mask",
    "image",
    "audio",
    "video",
    "vision",
    "think",
    "start",
    "end",
    "special",
    "additional",
    "default",
}
REDACTED = "***"
_MIN_SECRET_LENGTH = 6  # shorter environment values ("1", "true") are not worth hiding and would mangle text


def is_secret_name(name: Any) -> bool:
    """An environment variable that may hold a secret: anything with TOKEN, KEY, SECRET, PASSWORD in its
    name (HF_TOKEN, MODELSCOPE_API_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY), except TOKENIZERS_*."""
    upper = str(name).upper()
    return not upper.startswith("TOKENIZERS") and any(marker in upper for marker in SECRET_MARKERS)


def is_secret_key(name: Any) -> bool:
    """A recipe or config key that holds a secret (hub_token, api_key, wandb.secret), but not a special
    token's name such as pad_token or eos_token."""
    parts = [p for p in re.split(r"[^a-z0-9]+", str(name).lower().rsplit(".", 1)[-1]) if p]
    if not parts:
        return False
    if parts[-1] in ("token", "tokens") and len(parts) >= 2 and parts[-2] in SPECIAL_TOKENS:
        return False
    return any(p in SECRET_WORDS for p in parts) or parts[-1] == "key"


def secret_values(environ: dict | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first (so overlapping ones redact fully)."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v.strip()) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every secret value from the environment (and `extra`) replaced by ***."""
    for secret in [*secret_values(), *[e for e in extra if e and len(str(e)) >= _MIN_SECRET_LENGTH]]:
        text = text.replace(str(secret), REDACTED)
    return text


def redact_obj(value: Any, key: Any = None) -> Any:
    """A copy of a JSON/YAML-like value where secret-named keys and secret environment values are hidden."""
    if key is not None and is_secret_key(key) and isinstance(value, str) and value:
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_obj(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Command-line words with `secret_key=value` overrides and secret environment values hidden."""
    out = []
    for word in argv:
        key, sep, _ = str(word).partition("=")
        out.append(f"{key}={REDACTED}" if sep and is_secret_key(key) else redact(str(word)))
    return out


# ------------------------------------------------------------------------------------ local paths

# An absolute POSIX path inside text: a "/" that starts a word (not a URL's "//", not "a/b"), then name parts.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\-])/(?:[\w.+@%~\-]+/)*[\w.+@%~\-]+/?")


def share_path(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> str:
    """An absolute local path as it may be published: relative to the first of `roots` (the project) that
    holds it, else its file name. Relative paths, hub ids and builtin:… come back unchanged."""
    text = str(path)
    if not text.startswith("/"):
        return text
    for root in roots:
        root_text = str(root).rstrip("/")
        if root_text and (text == root_text or text.startswith(root_text + "/")):
            return text[len(root_text) + 1 :] or "."
    return text.rstrip("/").rsplit("/", 1)[-1] or text


def share_paths(text: str, roots: Iterable[str | os.PathLike]) -> str:
    """`text` (a card, a report, a command word) with every absolute local path made shareable (share_path):
    what a run publishes names no /home/<user>/… or /tmp/… folder. Secrets: `redact`."""
    roots = [str(r) for r in roots]
    return _ABSOLUTE_PATH.sub(lambda match: share_path(match.group(0), roots), text)


def share_paths_obj(value: Any, roots: Iterable[str | os.PathLike]) -> Any:
    """A copy of a JSON/YAML-like value with share_paths applied to every string in it."""
    roots = [str(r) for r in roots]
    if isinstance(value, dict):
        return {k: share_paths_obj(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [share_paths_obj(v, roots) for v in value]
    if isinstance(value, str):
        return share_paths(value, roots)
    return value
