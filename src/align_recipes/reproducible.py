"""Reproducible mode: the same recipe and seed give the same weights on any x86-64 CPU of one maker.

Why it is needed: ATen, MKL and oneDNN choose their kernels by the CPU they run on (AVX2, AVX-512, …),
and kernels of different widths add floating-point numbers in different orders. The builtin tiny SFT
policy, built from one seed, hashed differently under `ATEN_CPU_CAPABILITY` default / avx2 / avx512, and
every trajectory after it differed (docs/benchmarks.md, "Reproducible mode").

What it pins, before torch is imported (each library reads its variable once, at load time):
- ATen's kernels at the AVX2 level (`ATEN_CPU_CAPABILITY=avx2`): every x86-64 CPU sold since 2015 has
  AVX2, and an AVX-512 CPU runs the same AVX2 code; the level below (`default`, no vector kernels)
  costs far more time and gains nothing on such CPUs;
- MKL's conditional numerical reproducibility at its AVX2 branch (`MKL_CBWR=AVX2`, and
  `MKL_ENABLE_INSTRUCTIONS=AVX2` so no wider path is taken);
- oneDNN's instruction set capped at AVX2 (`ONEDNN_MAX_CPU_ISA`, and its older name `DNNL_MAX_CPU_ISA`);
- one intra-op thread (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`): a reduction split over threads is summed
  in an order that depends on the core count;
- deterministic algorithms (`torch.use_deterministic_algorithms`, and cuBLAS's workspace setting on GPUs),
  set by `apply_after_import` once torch is loaded.

Why "of one maker": MKL, which does torch's float32 matrix products on CPU, honours the AVX2 branch on Intel
CPUs only (Intel's guarantee: the same results on every Intel CPU with AVX2). On AMD CPUs it runs a path of
its own that ignores both settings (other non-Intel makers are untried and counted with AMD). So Intel CPUs
agree with each other, AMD CPUs with each other, and the two differ (`mkl_path`; measured, with an AMD CPU
emulated on an Intel one, in docs/benchmarks.md, "Reproducible mode across CPU makers"). MKL's one branch that
is the same on both, `MKL_CBWR=COMPATIBLE` (SSE2), doubled the CPU time of a tiny training run, so the mode
does not take it.

It is decided in the plan (`Plan.reproducible`: on for the builtin models, `--reproducible` or
`reproducible: true` for any recipe), applied by the CLI entry point before anything imports torch
(`pin_environment`), and recorded in the run's manifest (`describe`, with the CPU's maker and MKL's path).
Where it cannot hold, it says so: on a CPU that is not x86-64 (Arm, Apple silicon) the kernel pins do not
exist, and in a Python session that imported torch before the CLI ran, the libraries have already read
their variables. Stdlib only.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping

LEVEL = "avx2"
PINS = {
    "ATEN_CPU_CAPABILITY": LEVEL,
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS (ignored on CPU)
}
# Measured on the headline training run (bench/reproducible.py --train; docs/benchmarks.md, "Reproducible
# mode"); `show` prints it.
COST = (
    "0.96x the CPU time of an unpinned run on an AVX2 CPU (recipes/tiny/dpo.yaml, docs/benchmarks.md); "
    "an AVX-512 CPU gives up its wider kernels; one thread"
)
ENV_FLAG = "ALIGN_RECIPES_REPRODUCIBLE"  # set by pin_environment: subprocesses and launchers inherit the mode


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_maker(cpuinfo: str | None = None) -> str:
    """The CPU's vendor string as the kernel reports it ("GenuineIntel", "AuthenticAMD"; "" where unknown)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read(65536)
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def mkl_path(maker: str | None = None) -> str:
    """Which of MKL's paths the pins select on this CPU: "intel" (its AVX2 reproducibility branch) or "other"
    (its own path for AMD, which ignores the branch; other makers are untried and counted with AMD). Runs in
    the mode agree within a path."""
    return "intel" if (cpu_maker() if maker is None else maker) == "GenuineIntel" else "other"


def pin_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set every pin in `environ` (default: this process's environment). Call it before torch is imported."""
    environ = os.environ if environ is None else environ
    environ.update(
        PINS if is_x86_64() else {k: v for k, v in PINS.items() if "THREADS" in k or "CUBLAS" in k}
    )
    environ[ENV_FLAG] = "1"


def unpinned(environ: MutableMapping[str, str]) -> dict[str, str]:
    """A copy of `environ` without the pins: what a run outside the mode sees."""
    return {k: v for k, v in environ.items() if k not in PINS and k != ENV_FLAG}


def _imported_unpinned() -> bool:
    """torch is loaded, but not under the pins: its libraries read their variables already."""
    expected = pin_environment_copy()
    return "torch" in sys.modules and any(os.environ.get(k) != v for k, v in expected.items())


def pin_environment_copy() -> dict[str, str]:
    pinned: dict[str, str] = {}
    pin_environment(pinned)
    return pinned


def problems() -> list[str]:
    """Why the mode cannot hold in this process, if it cannot (empty: it holds)."""
    found = []
    if not is_x86_64():
        found.append(
            f"this CPU is {platform.machine()}, not x86-64: only threads and deterministic algorithms are "
            "pinned, so results repeat on this machine but not across machines"
        )
    if _imported_unpinned():
        found.append(
            "torch was imported before align-recipes could pin its kernels (a notebook or Python session): "
            "run `align-recipes train …` in a fresh process for reproducible results"
        )
    return found


def holds_here() -> bool:
    """Whether this process runs in the mode: pinned before torch was imported."""
    return os.environ.get(ENV_FLAG) == "1" and not _imported_unpinned()


def run_pinned(code: str, environ: dict[str, str] | None = None) -> None:
    """Run Python `code` in a child process in the mode: how the builtin models are built when the caller is
    not pinned (a notebook, `chat`, a run with the mode off), so their cached weights never depend on the CPU."""
    import subprocess

    env = dict(os.environ if environ is None else environ)
    pin_environment(env)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)


def apply(wanted: bool) -> list[str]:
    """The CLI's step before anything heavy: pin the environment when the plan wants the mode.
    Returns the reasons it cannot hold (also printed by the caller)."""
    if not wanted:
        return []
    if "torch" not in sys.modules:
        pin_environment()
    return problems()


def apply_after_import() -> None:
    """Once torch is loaded: deterministic algorithms (warn, don't fail, where an op has none).

    Deterministic mode also fills every uninitialised tensor with NaN by default, a debugging aid that changes
    no result of code that writes before it reads. It is switched off: on CPU the allocator returns large blocks
    to the system, so each fill faults fresh pages in (a 15-step tiny DPO run: 1.5M page faults instead of
    0.22M, 18.6 s of CPU instead of 14.0 s; bench/reproducible.py --train measures it)."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def describe(wanted: bool, why: str) -> dict:
    """What the manifest records about the mode."""
    if not wanted:
        return {"on": False, "why": why}
    maker = cpu_maker()
    return {
        "on": True,
        "why": why,
        "pins": {k: os.environ.get(k) for k in PINS},
        "holds": not problems(),
        "problems": problems(),
        "machine": platform.machine(),
        # identical weights need the same MKL path as well as the pins: see the module's docstring
        "cpu_maker": maker,
        "mkl_path": mkl_path(maker),
    }
