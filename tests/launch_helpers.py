"""Launching tiny runs under `accelerate launch` on CPU processes, and reading what they wrote: shared by
tests/run/test_sharded.py and tests/rl/test_sharded_rl.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from align_recipes.cli import main
from align_recipes.plan import hardware

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_DIR = REPO / "configs" / "accelerate"
TIMEOUT = 300  # seconds per launch on a loaded 2-core runner; typical: 20-60 s
LAUNCHER_VARIABLES = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_USE_FSDP",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "FSDP_VERSION",
)


def launched_with(monkeypatch, **variables: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def accelerate_bin() -> str:
    found = Path(sys.executable).with_name("accelerate")
    return str(found) if found.exists() else shutil.which("accelerate") or "accelerate"


def clean_env() -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        hardware.FAKE_SMI_ENV: "",
        "PYTHONUNBUFFERED": "1",
    }
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def port() -> int:
    port.offset = getattr(port, "offset", 0) + 1
    return 29000 + (os.getpid() * 7 + port.offset) % 900


def launch_command(
    config: str,
    recipe: str,
    output_dir: Path,
    *overrides: str,
    launcher: tuple = (),
    start: str = "--overwrite",
) -> list[str]:
    """`accelerate launch` of two processes (`launcher` adds or replaces launcher options)."""
    options = {
        "--num_processes": "2",
        "--main_process_port": str(port()),
        **dict(zip(launcher[::2], launcher[1::2])),
    }
    return [
        accelerate_bin(),
        "launch",
        "--config_file",
        str(ACCELERATE_DIR / f"{config}.yaml"),
        *[word for pair in options.items() for word in pair],
        "-m",
        "align_recipes",
        "train",
        recipe,
        "--profile",
        "cpu",
        "--no-report",
        start,
        f"train.output_dir={output_dir}",
        *overrides,
    ]


def launch(
    config: str, recipe: str, output_dir: Path, *overrides: str, **options
) -> subprocess.CompletedProcess:
    command = launch_command(config, recipe, output_dir, *overrides, **options)
    result = subprocess.run(
        command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def train_one_process(recipe: str, output_dir: Path, *overrides: str) -> dict:
    assert (
        main(
            [
                "train",
                recipe,
                "--profile",
                "cpu",
                "--no-report",
                "--overwrite",
                f"train.output_dir={output_dir}",
                *overrides,
            ]
        )
        == 0
    )
    return json.loads((output_dir / "summary.json").read_text())


def summary_of(output_dir: Path) -> dict:
    return json.loads((output_dir / "summary.json").read_text())


def losses(output_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_sharded_once(
    result: subprocess.CompletedProcess | str, output_dir: Path, engine: str = "fsdp2"
) -> dict:
    log = result if isinstance(result, str) else result.stdout + result.stderr
    assert log.count("align-recipes · ") == 1 and log.count("done: ") == 1, log[-3000:]
    summary = summary_of(output_dir)
    distributed = summary["distributed"]
    assert distributed["engine"] == engine and distributed["processes"] == 2, distributed
    if engine == "fsdp2":
        assert distributed["wrapper"].startswith("FSDP"), distributed
        sharded, total = map(int, distributed["sharded_parameters"].split("/"))
        assert sharded == total > 0, distributed  # every parameter split over the ranks
    else:
        assert distributed["wrapper"] == "DeepSpeedEngine", distributed
    assert summary["status"] == "complete" and summary["task_metrics"]
    return summary


def assert_plain_model_folder(output_dir: Path, reward: bool = False) -> None:
    """The final model is one ordinary Hugging Face folder (no per-rank files) that transformers loads."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    names = [p.name for p in output_dir.iterdir()]
    assert "model.safetensors" in names and not [n for n in names if "rank" in n or n.endswith(".distcp")], (
        names
    )
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    model = cls.from_pretrained(str(output_dir))
    assert sum(p.numel() for p in model.parameters()) > 100_000
