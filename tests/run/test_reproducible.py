"""Reproducible mode (align_recipes/reproducible.py): decided by the plan, applied by the CLI before torch is
imported, recorded in the manifest, explained by `show`; and the proof that it works: the same tiny run on an
emulated other CPU gives bit-identical weights and equal metrics with the mode, and different weights
without it (so the test can fail)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align_recipes import reproducible
from align_recipes.cli import main
from align_recipes.plan.load import load_plan

REPO = Path(__file__).resolve().parents[2]
# Another CPU, as far as this one can pretend: ATen's scalar kernels instead of its AVX2 ones, and MKL capped
# below AVX2. (An AVX-512 CPU cannot be emulated on an AVX2 one; the mode pins that case the same way.)
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def test_pins_are_set_before_torch_and_the_suite_runs_in_the_mode():
    environ: dict[str, str] = {}
    reproducible.pin_environment(environ)
    if reproducible.is_x86_64():
        assert environ["ATEN_CPU_CAPABILITY"] == "avx2" and environ["MKL_CBWR"] == "AVX2"
        assert environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert environ["OMP_NUM_THREADS"] == "1" and environ[reproducible.ENV_FLAG] == "1"
    assert reproducible.ENV_FLAG not in reproducible.unpinned(environ)
    assert "ATEN_CPU_CAPABILITY" not in reproducible.unpinned(environ)
    # tests/conftest.py pinned this process before torch was imported: the mode holds here
    assert os.environ.get(reproducible.ENV_FLAG) == "1"
    assert reproducible.problems() == []


def test_a_session_that_imported_torch_first_is_told_the_mode_cannot_hold():
    probe = (
        "import os, torch\n"
        "from align_recipes import reproducible\n"
        "print(reproducible.apply(True))\n"
        "print(os.environ.get('ATEN_CPU_CAPABILITY'))\n"
    )
    env = reproducible.unpinned(os.environ)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    problems, capability = out.stdout.splitlines()
    assert "torch was imported before align-recipes could pin its kernels" in problems
    assert capability == "None"  # nothing set behind the libraries' backs


@pytest.mark.parametrize(
    "recipe, overrides, expected, why",
    [
        ("recipes/tiny/dpo.yaml", [], True, "builtin model"),
        ("recipes/tiny/dpo.yaml", ["reproducible=false"], False, "override"),
        ("recipes/qwen05b/dpo.yaml", [], False, "off by default"),
        ("recipes/qwen05b/dpo.yaml", ["reproducible=true"], True, "override"),
    ],
)
def test_the_plan_decides(recipe, overrides, expected, why):
    plan = load_plan(recipe, overrides, profile="cpu")
    assert plan.reproducible is expected and why in plan.reproducible_why


def test_show_says_it_is_on_and_what_it_costs(capsys):
    assert main(["show", "recipes/tiny/sft.yaml", "--profile", "cpu"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("reproducible:"))
    assert line.startswith("reproducible: on (builtin model)") and "AVX2" in line and "costs" in line
    assert f"MKL's path here: {reproducible.mkl_path()}" in line  # identical weights need the same maker too
    assert main(["show", "recipes/qwen05b/sft.yaml", "--profile", "cpu", "--reproducible"]) == 0
    assert "reproducible: on (override)" in capsys.readouterr().out
    assert main(["show", "recipes/tiny/sft.yaml", "--profile", "cpu", "--no-reproducible"]) == 0
    assert "reproducible: off (override)" in capsys.readouterr().out


INTEL_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\n"
AMD_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\n"


@pytest.mark.parametrize(
    "cpuinfo, maker, path",
    [
        (INTEL_CPUINFO, "GenuineIntel", "intel"),
        (AMD_CPUINFO, "AuthenticAMD", "other"),
        ("processor\t: 0\nvendor_id\t: HygonGenuine\n", "HygonGenuine", "other"),
        ("processor\t: 0\nCPU implementer\t: 0x41\n", "", "other"),  # Arm: no vendor_id line
    ],
)
def test_the_cpu_maker_decides_mkls_path(cpuinfo, maker, path):
    """MKL honours its AVX2 reproducibility branch on Intel CPUs only; every other maker shares another path."""
    assert reproducible.cpu_maker(cpuinfo) == maker
    assert reproducible.mkl_path(maker) == path


def _weights_hash(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()


SHORT_RUN = [
    "recipes/tiny/dpo.yaml",
    "--profile",
    "cpu",
    "--no-report",
    "train.max_steps=4",
    "evaluate.limit=8",
]


def _outputs(out: Path) -> tuple[str, dict, dict]:
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    return _weights_hash(out), summary, manifest


def _train(out: Path, cpu: dict[str, str], *flags: str) -> tuple[str, dict, dict]:
    """A short tiny DPO run in a fresh process on an 'other CPU' (`cpu` variables, outside the mode)."""
    env = {**reproducible.unpinned(os.environ), **cpu}
    command = [sys.executable, "-m", "align_recipes", "train", *SHORT_RUN, *flags, f"train.output_dir={out}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return _outputs(out)


def _train_here(out: Path) -> tuple[str, dict, dict]:
    """The same run in this process, which the suite keeps in the mode on this CPU (tests/conftest.py)."""
    assert main(["train", *SHORT_RUN, f"train.output_dir={out}"]) == 0
    return _outputs(out)


@pytest.mark.slow
def test_another_cpu_gives_identical_weights_with_the_mode_and_different_ones_without(tmp_path):
    here, summary_here, manifest = _train_here(tmp_path / "here")
    there, summary_there, _ = _train(tmp_path / "there", OTHER_CPU)
    assert here == there, "reproducible mode: the emulated CPU trained different weights"
    assert summary_here["task_metrics"] == summary_there["task_metrics"]
    record = manifest["reproducible"]
    assert record["on"] and record["holds"] and record["why"] == "builtin model"
    assert record["pins"]["ATEN_CPU_CAPABILITY"] == reproducible.PINS["ATEN_CPU_CAPABILITY"]
    assert record["cpu_maker"] == reproducible.cpu_maker() and record["mkl_path"] in ("intel", "other")

    free_here, _, free_manifest = _train(tmp_path / "free-here", {}, "--no-reproducible")
    free_there, _, _ = _train(tmp_path / "free-there", OTHER_CPU, "--no-reproducible")
    assert free_manifest["reproducible"]["on"] is False
    assert free_here != free_there, "without the mode the emulated CPU should train different weights"
