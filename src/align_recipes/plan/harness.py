"""The `evaluate.harness:` section, checked before any model loads: lm-eval installed, task files there.

A task entry ending in .yaml/.yml is a local lm-evaluation-harness task file (relative to the recipe file
that names it, as every path in a recipe); any other entry is a task, group or tag name from lm-eval's
own catalogue, whose data comes from the hub when the run starts (so it needs a network, or a warm
datasets cache). Names are not checked here: lm-eval's catalogue is ~14,000 YAML files and indexing it
takes tens of seconds; run/harness.py reports an unknown name, with close matches, before training.

Inside a task file, `dataset_kwargs.data_files` (the offline route: `dataset_path: json`) resolves
against the task file's folder here and at run time. lm-eval's own CLI would read it against the current
directory; resolving it against the file lets a recipe family carry its tasks and data together.

No torch and no lm_eval import: the package is found with importlib, its files read as plain YAML.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

import yaml

from align_recipes.plan.hardware import has_module, package_version

EXTRA = "harness"  # pyproject.toml's extra that installs lm-eval
LM_EVAL_PIN = "lm-eval>=0.4.13,<0.5"
LM_EVAL_MIN, LM_EVAL_BELOW = (0, 4, 13), (0, 5)
TASK_SUFFIXES = (".yaml", ".yml")


def is_task_file(entry: Any) -> bool:
    """A local task file (by its suffix), as opposed to a name from lm-eval's catalogue."""
    return isinstance(entry, str) and entry.lower().endswith(TASK_SUFFIXES)


INSTALL_FIX = f"pip install 'align-recipes[{EXTRA}]' (or '{LM_EVAL_PIN}'), or remove evaluate.harness"


def lm_eval_problem() -> str | None:
    """Why the harness cannot run here (None: lm-eval is installed, in the tested range); INSTALL_FIX fixes it."""
    if not has_module("lm_eval"):
        return "evaluate.harness runs lm-evaluation-harness, which is not installed"
    version = package_version("lm_eval") or package_version("lm-eval") or "?"
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    if not numbers or not (LM_EVAL_MIN <= numbers and numbers[:2] < LM_EVAL_BELOW):
        return f"lm-eval {version} is installed; evaluate.harness is tested with 0.4.13 to 0.4.x"
    return None


class _TaskLoader(yaml.SafeLoader):
    """Plain YAML that keeps lm-eval's `!function utils.f` tags as text (they name code, not data)."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def read_task_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A task file as a mapping, its `include:` files merged under it (local keys win, as lm-eval does).
    Raises ValueError with a reason a user can act on."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"`include` cycle at {path.name}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)  # noqa: S506 - SafeLoader
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError("a task file must be a mapping (task:, dataset_path:, …)")
    includes = data.pop("include", None)
    merged: dict = {}
    for include in [includes] if isinstance(includes, str) else includes or []:
        included = path.parent / str(include)
        if not included.is_file():
            raise ValueError(f"include '{include}' not found ({included})")
        merged.update(read_task_file(included, (*seen, path)))
    merged.update(data)
    return merged


def _is_local_data(value: Any) -> bool:
    return isinstance(value, str) and "://" not in value


def absolute_data_files(config: dict, folder: Path) -> dict:
    """`config` with each relative local `dataset_kwargs.data_files` entry made absolute against `folder`
    (a str, a list, or a mapping of split -> str or list). The input is not changed."""
    kwargs = config.get("dataset_kwargs")
    if not isinstance(kwargs, dict) or "data_files" not in kwargs:
        return config

    def fix(value: Any) -> Any:
        if isinstance(value, list):
            return [fix(v) for v in value]
        if _is_local_data(value) and not Path(value).expanduser().is_absolute():
            return str(folder / value)
        return value

    files = kwargs["data_files"]
    files = {k: fix(v) for k, v in files.items()} if isinstance(files, dict) else fix(files)
    return {**config, "dataset_kwargs": {**kwargs, "data_files": files}}


def _data_file_entries(files: Any) -> list[str]:
    if isinstance(files, dict):
        return [f for value in files.values() for f in _data_file_entries(value)]
    if isinstance(files, list):
        return [f for value in files for f in _data_file_entries(value)]
    return [files] if _is_local_data(files) else []


def task_file_problem(path: Path) -> str | None:
    """Why a local task file cannot be run (None when it reads and its local data files exist)."""
    if not path.is_file():
        return f"task file '{path}' not found"
    try:
        config = read_task_file(path)
    except ValueError as exc:
        return f"task file {path.name}: {exc}"
    if not config.get("task") and not config.get("group"):
        return f"task file {path.name} names no `task:` (or `group:`)"
    config = absolute_data_files(config, path.parent)
    for entry in _data_file_entries((config.get("dataset_kwargs") or {}).get("data_files")):
        if not glob.glob(str(Path(entry).expanduser())):
            return f"task file {path.name}: data file '{entry}' not found"
    return None
