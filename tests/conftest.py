"""Shared test setup: a private cache for the tiny model, and the repository as working directory."""

from __future__ import annotations

import importlib.util
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from align_recipes import reproducible

REPO = Path(__file__).resolve().parents[1]
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")

# The vLLM lane (`make test-vllm`) runs tests/lane_vllm in its own environment, with vLLM's CPU build.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["lane_vllm"]

# Tests never touch the user's cache or the network.
os.environ.setdefault("ALIGN_RECIPES_CACHE", str(REPO / ".cache" / "test"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs in reproducible mode (align_recipes/reproducible.py), pinned here before any test imports torch:
# its metric proofs must hold on any x86-64 CPU, not only the one that tuned them.
reproducible.pin_environment()


@pytest.fixture(scope="session")
def repo_cwd():
    """Recipes name paths relative to the repository (outputs/, recipes/tiny/data)."""
    previous = Path.cwd()
    os.chdir(REPO)
    yield REPO
    os.chdir(previous)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A saved tiny policy for the RL trainer tests (tests/rl_helpers.build_tiny)."""
    from rl_helpers import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny32"))


@pytest.fixture(scope="session")
def sft_run(request, tmp_path_factory, repo_cwd):
    """The tiny SFT recipe trained once per session with the test seed: the start of every end-to-end stage
    after it. (output folder, summary)

    Under pytest-xdist the workers of one session share it: the first to ask trains it in the session's
    common folder while the others wait on a file lock, then read what it wrote."""
    import json
    import shutil

    from e2e_helpers import SEED, train
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = hasattr(request.config, "workerinput")  # an xdist worker: .../pytest-N/popen-gwK
    root = base.parent if shared else base  # .../pytest-N: this session's, shared by its workers
    out = root / f"sft-run-seed{SEED}"
    with FileLock(str(out) + ".lock"):
        summary = out / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "complete":
            return out, json.loads(summary.read_text())
        shutil.rmtree(out, ignore_errors=True)  # a worker that failed while training it left a partial run
        return out, train("sft", out)


# --- the order files start in -------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption(
        "--record-file-seconds",
        action="store_true",
        help="write each test file's seconds (setup, call, teardown) to tests/file_seconds.json",
    )


def pytest_collection_modifyitems(config, items):
    """The longest files first, as tests/file_seconds.json last measured them (unknown files last). Under
    `--dist loadfile` a worker takes a whole file at a time: a two-minute file started at the end keeps one
    worker busy while the other idles. A file's tests keep their order (the sort is stable)."""
    seconds = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.is_file() else {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))


_measured: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _measured[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session):
    config = session.config
    if not config.getoption("record_file_seconds") or hasattr(config, "workerinput"):
        return  # only the controller has every file's reports
    seconds = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.is_file() else {}
    seconds.update({path: round(total, 1) for path, total in _measured.items()})
    ordered = dict(sorted(seconds.items(), key=lambda pair: -pair[1]))
    FILE_SECONDS.write_text(json.dumps(ordered, indent=1) + "\n")
