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
TEST_SECONDS = Path(__file__).with_name("test_seconds.json")
RECORDED_FROM = 0.5  # seconds: shorter tests do not change the order

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
        "--record-test-seconds",
        action="store_true",
        help=f"write the seconds of every test that takes {RECORDED_FROM} s or more to tests/test_seconds.json",
    )


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` deselected what will not run
def pytest_collection_modifyitems(config, items):
    """The longest files first, by the seconds tests/test_seconds.json last measured for the tests that will run
    (unknown tests count 0). Under `--dist loadfile` a worker takes a whole file at a time: a two-minute file
    started at the end keeps one worker busy while the other idles. One exception: the second file is the
    longest that does not wait for the session's SFT run (`sft_run`), so the two workers do not both start by
    waiting for it. A file's tests keep their order."""
    seconds = json.loads(TEST_SECONDS.read_text()) if TEST_SECONDS.is_file() else {}
    files: dict[str, list] = defaultdict(list)
    for item in items:
        files[item.nodeid.split("::")[0]].append(item)
    cost = {path: sum(seconds.get(item.nodeid, 0.0) for item in its) for path, its in files.items()}
    order = sorted(files, key=lambda path: -cost[path])
    waits = {path for path, its in files.items() if any("sft_run" in item.fixturenames for item in its)}
    if order and order[0] in waits:
        free = next((path for path in order[1:] if path not in waits), None)
        if free is not None:
            order.remove(free)
            order.insert(1, free)
    items[:] = [item for path in order for item in files[path]]


_measured: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _measured[report.nodeid] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session):
    config = session.config
    if not config.getoption("record_test_seconds") or hasattr(config, "workerinput"):
        return  # only the controller has every test's reports
    seconds = json.loads(TEST_SECONDS.read_text()) if TEST_SECONDS.is_file() else {}
    for nodeid, total in _measured.items():
        seconds.pop(nodeid, None)
        if total >= RECORDED_FROM:
            seconds[nodeid] = round(total, 1)
    ordered = dict(sorted(seconds.items(), key=lambda pair: -pair[1]))
    TEST_SECONDS.write_text(json.dumps(ordered, indent=1) + "\n")
