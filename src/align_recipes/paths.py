"""Telling local paths from hub ids, and finding a relative path where it was meant. Stdlib only.

The rule everywhere: a relative path resolves against the folder of the file that wrote it (a
recipe, its `extends` parent, a pipeline file), then against the current directory, where other
runs' outputs live by default. `plan.load` applies it once, so the plan and `recipe.resolved.yaml`
carry absolute paths for everything found; what was not found stays as written (a hub id, or a
path a later pipeline stage will create).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """'org/name': what a hub (Hugging Face or ModelScope) calls a repository."""
    return bool(HUB_ID.match(str(name))) and not str(name).startswith((".", "/", "~"))


def candidates(name: str, *dirs: Path | str | None) -> list[Path]:
    """Where a path may live: itself when absolute, else under each folder given (None: the current one)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path]
    return list(dict.fromkeys(Path(d if d is not None else Path.cwd()) / path for d in dirs or (None,)))


def find_local(name: str, *dirs: Path | str | None) -> Path | None:
    """The first existing file or folder among `candidates(name, *dirs)`, as an absolute path."""
    for candidate in candidates(name, *dirs):
        try:
            if candidate.exists():
                return candidate.absolute()
        except OSError:  # a name too long to be a path (an inline chat template, say)
            return None
    return None


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a reader (or a crash) never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def built_in_place(final: Path, marker: str) -> Iterator[Path]:
    """A temporary folder beside `final` to build a cached folder in; renamed to `final` when the block ends
    without an error, removed otherwise. Readers never see half a build. `marker` is the file a complete build
    holds: when another process completed `final` meanwhile (two test workers, two ranks), that build is kept
    and this one dropped, so a folder someone may be reading is never replaced; an incomplete one is."""
    from filelock import FileLock  # torch's own dependency: present wherever a build can run

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        with FileLock(str(final.parent / f".{final.name}.lock")):
            if (final / marker).is_file():
                return
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable (a run folder may be half written)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
