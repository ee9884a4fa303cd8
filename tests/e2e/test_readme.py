"""The README's commands work as written: every command of its ```bash blocks that uses the tiny family
(or only reads a recipe) runs in a fresh copy of the repository, in the README's order.

The copy is the checkout's files (`git ls-files`, untracked-but-not-ignored ones included), and its
`.venv` is a link to the virtual environment running this test, so `.venv/bin/align-recipes` and
`make` use the installed package without creating or changing a venv (`make -o .venv/.installed`
keeps make from reinstalling). The first `make dpo`, the headline, runs exactly as written; later
training commands get `train.max_steps=4 evaluate.limit=8` appended, which keeps the test to about
two minutes. The other commands are skipped for a reason printed with the test: they download a hub
model, need GPUs, run this very suite (`make test`) or rehearse a real shape (tests/results/test_rehearse.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes import reproducible

REPO = Path(__file__).resolve().parents[2]
QUICK = ["train.max_steps=4", "evaluate.limit=8"]
OTHER_FAMILY = re.compile(r"(recipes|outputs)/qwen|RECIPE=qwen")


def readme_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, comments stripped, in order."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def why_skipped(command: str) -> str | None:
    words = shlex.split(command)
    if words[:2] == ["make", "test"]:
        return "runs this test suite"
    if words[1:2] == ["rehearse"]:
        return "a real-shape model for a minute or two; tests/results/test_rehearse.py runs these recipes"
    if words[0] == "accelerate":
        return "needs several GPUs and a hub model"
    if OTHER_FAMILY.search(command) and not (
        words[0].endswith("align-recipes") and words[1] in ("validate", "show")
    ):
        return "downloads a hub model (validate and show of such recipes do run: they read no model)"
    return None


def trains(command: str) -> bool:
    words = shlex.split(command)
    return (words[0] == "make" and words[1] not in ("validate", "list", "help")) or (
        words[0].endswith("align-recipes") and words[1] in ("train", "pipeline")
    )


def as_run(command: str, first_training: bool) -> list[str]:
    """The command as the test runs it: make without reinstalling, later training runs capped."""
    words = shlex.split(command)
    if words[0] == "make":
        words = ["make", "-o", ".venv/.installed", *words[1:]]
        if trains(command) and not first_training:
            args = [w for w in words if w.startswith("ARGS=")]
            extra = " ".join(QUICK)
            if args:
                words[words.index(args[0])] = f"{args[0]} {extra}"
            else:
                words.append(f"ARGS={extra}")
    elif trains(command) and not first_training:
        words += QUICK
    if words[1:2] == ["pipeline"]:
        words.append(
            "ppo:gate.preference_accuracy=0"
        )  # a 4-step reward model never passes the PPO stage's gate
    return words


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no file list to copy")
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    copy = tmp_path_factory.mktemp("readme") / "align-recipes"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() or source.is_symlink():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name, follow_symlinks=False)
    (copy / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    if (REPO / ".gguf-tool").is_dir():  # what `make install` put beside the checkout for `export`
        (copy / ".gguf-tool").symlink_to(REPO / ".gguf-tool", target_is_directory=True)
    return copy


def readme_done_line(mkl_path: str) -> str:
    """The `done:` line README.md promises for `make dpo` on this CPU's maker: its first for AMD and the other
    non-Intel CPUs, its second for Intel ones (MKL's two paths: align_recipes/reproducible.py)."""
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("done: ")]
    assert len(lines) == 2, lines
    return lines[1] if mkl_path == "intel" else lines[0]


def test_the_readme_shows_one_done_line_per_mkl_path():
    assert readme_done_line("other") != readme_done_line("intel")


def test_readme_commands_on_the_tiny_family_work_in_a_fresh_copy(fresh_copy):
    env = {
        **os.environ,
        "PYTHONPATH": str(fresh_copy / "src"),
        "PYTHON": sys.executable,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "ALIGN_RECIPES_NVIDIA_SMI": "",
    }
    ran, skipped, first_training = [], [], True
    for command in readme_commands():
        reason = why_skipped(command)
        if reason:
            skipped.append(f"{command}  ({reason})")
            continue
        words = as_run(command, first_training)
        proc = subprocess.run(words, cwd=fresh_copy, env=env, capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{shlex.join(words)} exited {proc.returncode}:\n{output[-3000:]}"
        assert "Traceback" not in output, output[-3000:]
        if command == "make dpo":
            summary = json.loads((fresh_copy / "outputs" / "tiny" / "dpo" / "summary.json").read_text())
            held_out = {m["name"]: m for m in summary["task_metrics"]}
            assert held_out["implicit_reward_accuracy"]["verdict"] == "rose", summary["task_metrics"]
            # Reproducible mode: the README's `done:` line, exactly, on any x86-64 CPU of this one's maker.
            done = [line for line in output.splitlines() if line.startswith("done: ")]
            expected = readme_done_line(reproducible.mkl_path())
            assert done == [expected], (done, expected)
        first_training = first_training and not trains(command)
        ran.append(command)
    print("ran:", *ran, "skipped:", *skipped, sep="\n  ")
    assert len(ran) >= 12 and len([s for s in skipped if "rehearse" not in s]) <= 5, (ran, skipped)
    for made in (
        "outputs/tiny/dpo/report.md",
        "outputs/tiny/sft/summary.json",
        "cmp/report.md",
        "outputs/tiny/dpo/eval.json",
        "outputs/tiny/pipeline/pipeline.json",
    ):
        assert (fresh_copy / made).is_file(), made
    evaluated = json.loads((fresh_copy / "outputs" / "tiny" / "dpo" / "eval.json").read_text())["metrics"]
    assert {"implicit_reward_accuracy", "exact_match"} <= set(evaluated)
