"""Never lose work: a run killed at an arbitrary step and resumed ends where an uninterrupted run ends.

For sft, dpo, grpo (and our ppo, once its tiny recipe exists) a training subprocess is killed with
SIGKILL shortly after its first complete checkpoint appears (it is then somewhere in a later step or
in the middle of the next save). `align-recipes train … --resume` then continues from the newest
complete checkpoint. The resumed run must end at the same step with the same final weights and
logged metrics as an uninterrupted run with the same seed.

Tolerance: weights and logged metrics agree to rtol 1e-5 (on CPU they are bitwise equal; the slack
covers other BLAS builds). Counters TRL keeps outside the checkpoint (`num_tokens`) and timings are
not compared.

SIGTERM and Ctrl-C (SIGINT) save a checkpoint, mark the summary interrupted, exit 143/130 and print
the exact command that resumes; running that command finishes the run with the same result.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from align_recipes.cli import main
from align_recipes.run import checkpoints

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

RTOL = 1e-5
STEP_DELAY = 0.3  # seconds the killed subprocess sleeps after each step, so the kill lands mid-run
UNCOMPARED = {"num_tokens", "train_runtime", "train_samples_per_second", "train_steps_per_second", "epoch"}

COMMON = [
    "--profile",
    "cpu",
    "train.save_strategy=steps",
    "train.save_steps=2",
    "train.logging_steps=1",
    "evaluate=null",
    "train.report_to=none",
]


def _tiny_or_fallback(name: str, fallback: str) -> str:
    path = REPO / "recipes" / "tiny" / f"{name}.yaml"
    return str(path.relative_to(REPO)) if path.exists() else fallback


# Random tiny-model completions rarely match an answer, so grpo and ppo get a reward that varies between
# samples (a digit anywhere): the advantages, gradients and weights then move and can be compared.
VARIED_REWARD = "rewards=[{name: regex, pattern: '[0-9]'}]"

ALGORITHMS = {
    "sft": ("recipes/tiny/sft.yaml", ["train.max_steps=6", "train.per_device_train_batch_size=4"]),
    "dpo": (
        "recipes/tiny/dpo.yaml",
        ["train.max_steps=6", "train.per_device_train_batch_size=4", "model.name_or_path=builtin:tiny-qwen2"],
    ),  # no SFT stage needed to resume
    "grpo": (
        _tiny_or_fallback("grpo", "tests/fixtures/bad_inputs/good_grpo.yaml"),
        [
            "train.max_steps=6",
            "train.per_device_train_batch_size=4",
            "train.num_generations=4",
            "train.max_completion_length=6",
            "model.name_or_path=builtin:tiny-qwen2",
            VARIED_REWARD,
        ],
    ),
    "ppo": (
        "recipes/tiny/ppo.yaml",
        [
            "train.max_steps=6",
            "train.per_device_train_batch_size=8",
            "model.name_or_path=builtin:tiny-qwen2",
            VARIED_REWARD,
        ],
    ),
}

CHILD = f"""
import sys, time
from align_recipes.run import guards
_callback = guards.RunGuard.callback

def slow_callback(self):
    cb = _callback(self)
    step_end = cb.on_step_end

    def on_step_end(args, state, control, **kwargs):
        time.sleep({STEP_DELAY})
        return step_end(args, state, control, **kwargs)

    cb.on_step_end = on_step_end
    return cb

guards.RunGuard.callback = slow_callback
from align_recipes.cli import main
sys.exit(main(sys.argv[1:]))
"""


def words(algorithm: str, out: Path) -> list[str]:
    recipe, extra = ALGORITHMS[algorithm]
    if not (REPO / recipe).exists():
        pytest.skip(f"{recipe} does not exist yet (the {algorithm} recipe is being written)")
    return ["train", recipe, f"train.output_dir={out}", *COMMON, *extra]


def start_child(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_after_checkpoint(
    proc: subprocess.Popen, out: Path, signum: int, extra_wait: float, timeout: float = 240
) -> dict:
    """Wait for a complete checkpoint, then (a little later) send `signum`. Runs in a thread."""
    seen: dict = {}
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        checkpoint, _ = checkpoints.newest_complete(out)
        if checkpoint is not None:
            seen["checkpoint"] = checkpoint.name
            time.sleep(extra_wait)
            if proc.poll() is None:
                proc.send_signal(signum)
                seen["sent"] = True
            break
        time.sleep(0.02)
    return seen


def run_in_process(argv: list[str]) -> int:
    return main(argv)


def records(out: Path) -> dict[int, dict]:
    by_step = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train_runtime" not in record:
            by_step[record["step"]] = record
    return by_step


def assert_same_run(resumed: Path, reference: Path) -> None:
    ref_summary = json.loads((reference / "summary.json").read_text())
    got_summary = json.loads((resumed / "summary.json").read_text())
    assert got_summary["status"] == ref_summary["status"] == "complete"
    assert got_summary["steps"] == ref_summary["steps"] > 0
    assert got_summary["resumed_from"], "the resumed run does not record where it resumed from"
    assert math.isclose(got_summary["train_loss"], ref_summary["train_loss"], rel_tol=1e-4, abs_tol=1e-7), (
        got_summary["train_loss"],
        ref_summary["train_loss"],
    )

    got, ref = records(resumed), records(reference)
    assert sorted(got) == sorted(ref), "logged steps differ"
    for step in ref:
        for key, value in ref[step].items():
            if (
                key in UNCOMPARED
                or "time" in key
                or not isinstance(value, (int, float))
                or isinstance(value, bool)
            ):
                continue
            assert math.isclose(got[step][key], value, rel_tol=RTOL, abs_tol=1e-7), (
                step,
                key,
                got[step][key],
                value,
            )

    import torch
    from safetensors.torch import load_file

    weights = (
        "model.safetensors" if (reference / "model.safetensors").exists() else "adapter_model.safetensors"
    )
    ref_w, got_w = load_file(str(reference / weights)), load_file(str(resumed / weights))
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        assert torch.allclose(got_w[name], ref_w[name], rtol=RTOL, atol=1e-7), name

    manifest = json.loads((resumed / "manifest.json").read_text())
    # shareable: the checkpoint by its folder name, not the local path of the run
    assert manifest["resumes"] and manifest["resumes"][-1]["from_checkpoint"].startswith("checkpoint-")


_REFERENCES: dict[str, Path] = {}


def reference_run(algorithm: str, root: Path) -> Path:
    """An uninterrupted run (in this process), shared by the tests of one algorithm."""
    if algorithm not in _REFERENCES:
        out = root / f"{algorithm}-reference"
        assert run_in_process(words(algorithm, out)) == 0
        _REFERENCES[algorithm] = out
    return _REFERENCES[algorithm]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


def kill_and_resume(algorithm: str, root: Path, truncate_newer: bool = False) -> None:
    out = root / f"{algorithm}-killed"
    argv = words(algorithm, out)
    child = start_child(argv)
    seen: dict = {}
    killer = threading.Thread(
        target=lambda: seen.update(signal_after_checkpoint(child, out, signal.SIGKILL, 0.3))
    )
    killer.start()
    try:
        reference = reference_run(algorithm, root)  # meanwhile, in this process
        killer.join()
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert seen.get("sent") and child.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-way (rc {child.returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running"  # a killed run cannot say more; resuming tells it apart

    if truncate_newer:
        # A save cut short by the kill: a newer checkpoint without trainer_state.json and with a torn
        # optimizer file. It must be skipped, never loaded.
        newest, _ = checkpoints.newest_complete(out)
        torn = out / f"checkpoint-{checkpoints.checkpoint_step(newest) + 1}"
        shutil.rmtree(torn, ignore_errors=True)
        shutil.copytree(newest, torn)
        (torn / "trainer_state.json").unlink()
        (torn / checkpoints.MARKER).unlink(missing_ok=True)
        with open(torn / "optimizer.pt", "r+b") as handle:
            handle.truncate(100)
        assert checkpoints.checkpoint_problem(torn) is not None

    assert run_in_process([*argv, "--resume"]) == 0
    assert_same_run(out, reference)
    if truncate_newer:
        assert not torn.exists(), "the torn checkpoint should have been removed when the run resumed"


def test_sft_killed_and_resumed_matches_uninterrupted(runs_root):
    kill_and_resume("sft", runs_root, truncate_newer=True)


def test_dpo_killed_and_resumed_matches_uninterrupted(runs_root):
    kill_and_resume("dpo", runs_root)


def test_grpo_killed_and_resumed_matches_uninterrupted(runs_root):
    kill_and_resume("grpo", runs_root)


def test_ppo_killed_and_resumed_matches_uninterrupted(runs_root):
    if not (REPO / "src" / "align_recipes" / "rl" / "trainer.py").exists():
        pytest.skip("align_recipes.rl.trainer does not exist yet")
    kill_and_resume("ppo", runs_root)


def test_sigterm_saves_reports_and_resumes_with_the_printed_command(runs_root):
    out = runs_root / "sft-sigterm"
    argv = words("sft", out)
    child = start_child(argv)
    seen = signal_after_checkpoint(child, out, signal.SIGTERM, 0.1)
    stdout, stderr = child.communicate(timeout=120)
    assert seen.get("sent"), stdout[-2000:] + stderr[-2000:]
    assert child.returncode == 143, f"rc {child.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    assert "SIGTERM: stopped at step" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert 0 < summary["steps"] < summary["max_steps"]
    checkpoint = Path(summary["checkpoint"])
    assert (
        checkpoint.name == f"checkpoint-{summary['steps']}"
        and checkpoints.checkpoint_problem(checkpoint) is None
    )
    assert not (out / "model.safetensors").exists(), "an interrupted run must not look finished"

    command = stderr.split("resume with: ", 1)[1].strip().splitlines()[0]
    assert command == summary["resume_command"]
    resume_words = shlex.split(command)
    assert resume_words[:2] == ["align-recipes", "train"] and resume_words[-1] == "--resume"
    assert run_in_process(resume_words[1:]) == 0
    assert_same_run(out, reference_run("sft", runs_root))


def test_ctrl_c_in_process_saves_and_exits_130(runs_root, capsys):
    """SIGINT (Ctrl-C) during training: checkpoint, summary marked interrupted, exit code 130."""
    out = runs_root / "dpo-sigint"
    argv = words("dpo", out) + ["train.max_steps=400"]  # long enough to be stopped early

    def press_ctrl_c():
        deadline = time.time() + 120
        while time.time() < deadline and checkpoints.newest_complete(out)[0] is None:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    rc = run_in_process(argv)
    presser.join()
    err = capsys.readouterr().err
    assert rc == 130, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert summary["steps"] < 400 and "--resume" in summary["resume_command"]
    assert "resume with: align-recipes train recipes/tiny/dpo.yaml" in err
    assert checkpoints.newest_complete(out)[0].name == f"checkpoint-{summary['steps']}"
    # the handlers are restored: the next Ctrl-C is an ordinary KeyboardInterrupt again
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_resume_auto_starts_fresh_then_continues(runs_root, capsys):
    """train.resume_from_checkpoint: auto is the pre-emptible-job setting: the same command starts a run,
    continues it after an interruption, and refuses to replace a finished run without a checkpoint.
    An explicit older checkpoint can be resumed too; the newer ones are moved aside, not deleted."""
    out = runs_root / "sft-auto"
    base = words("sft", out) + ["train.max_steps=2", "train.save_steps=1"]
    auto = [*base, "train.resume_from_checkpoint=auto"]
    assert run_in_process(auto) == 0  # nothing there yet: starts fresh
    assert run_in_process(auto) == 0  # checkpoint-2 is the last step: nothing left to train, finishes again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["status"] == "complete"
    assert "nothing left to train" in capsys.readouterr().err  # a note: stderr

    assert run_in_process([*base, f"train.resume_from_checkpoint={out / 'checkpoint-1'}"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert len(list(out.glob("superseded-checkpoint-2-*"))) == 1
    assert len(json.loads((out / "manifest.json").read_text())["resumes"]) == 2

    for path in checkpoints.list_checkpoints(out):
        shutil.rmtree(path)
    assert run_in_process(auto) == 2  # a finished run and nothing to continue: never silently replaced
    assert "holds a finished run" in capsys.readouterr().err
