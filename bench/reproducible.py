"""What reproducible mode costs, and what it buys: the builtin tiny SFT policy built from scratch in fresh
processes, on this CPU and on emulated other CPUs, with the mode's pins and without them.

For each configuration it records the SHA-256 of the base model's and the SFT policy's weights, the SFT
policy's held-out exact match, and the CPU time of the build (user + sys of the child process: on a shared
machine wall time measures the neighbours). Configurations run round-robin, so load drifts hit each alike.

    python bench/reproducible.py --rounds 2 --json bench/results/reproducible-2026-12-06.json
    python bench/reproducible.py --train --rounds 3 --json bench/results/reproducible-train-2026-12-07.json

`--train` measures the mode where users meet it: `align-recipes train recipes/tiny/dpo.yaml` (the README's
headline) with `--reproducible` and `--no-reproducible`, alternating, recording CPU time and minor page faults
of the whole process. The builds above never switch on deterministic algorithms; a training run does.

Emulated CPUs, as tests/run/test_reproducible.py does: `aten-default` (ATen's scalar kernels, what a CPU
without AVX2 or a differently dispatched build runs) and `mkl-sse42` (MKL capped below AVX2). An AVX-512 CPU
cannot be emulated on an AVX2 one; the mode pins it to the same AVX2 code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from align_recipes import reproducible  # noqa: E402  (stdlib only)

CPUS = {
    "here": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
BUILD = """
import hashlib, json, sys
from pathlib import Path
from align_recipes import tiny
from align_recipes.tiny import sft
root = Path(sys.argv[1])
(root / "base").mkdir(); (root / "sft").mkdir()
tiny._write_build(root / "base")  # the builders' own steps, in this process: pinned or not as it was started
info = sft.train_into(root / "sft", root / "base")
digest = lambda d: hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()[:16]
import torch
print(json.dumps({"base": digest(root / "base"), "sft": digest(root / "sft"),
                  "exact_match": info["held_out_exact_match"], "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def run_child(command: list[str], env: dict[str, str], **kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``command`` to its end; (the process, its CPU seconds, kernel seconds and minor page faults)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=True, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = {
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "sys_s": round(after.ru_stime - before.ru_stime, 1),
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }
    return proc, usage


def build(mode: str, cpu: str) -> dict:
    """One build in a fresh process: pinned as the mode does it (`on`, the emulated CPU's variables
    overridden by the pins) or as it would run without the mode (`off`)."""
    env = {**reproducible.unpinned(os.environ), **CPUS[cpu], "PYTHONPATH": str(REPO / "src")}
    if mode == "on":
        reproducible.pin_environment(env)
    else:
        env["OMP_NUM_THREADS"] = "1"  # the builder's own thread count; the tiny runs use one thread anyway
    with tempfile.TemporaryDirectory(prefix="repro-") as cache:
        proc, usage = run_child([sys.executable, "-c", BUILD, cache], env)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "cpu_s": usage["cpu_s"]}


def train(mode: str) -> dict:
    """The headline DPO recipe trained in a fresh process, with the mode or without it."""
    env = {**reproducible.unpinned(os.environ), "PYTHONPATH": str(REPO / "src")}
    with tempfile.TemporaryDirectory(prefix="repro-train-") as out:
        proc, usage = run_child(
            [sys.executable, "-m", "align_recipes", "train", "recipes/tiny/dpo.yaml", "--profile", "cpu",
             f"train.output_dir={out}", "--no-report", f"--{'' if mode == 'on' else 'no-'}reproducible"],
            env, cwd=REPO,
        )  # fmt: skip
    done = [line for line in proc.stdout.splitlines() if line.startswith("done: ")]
    return {**usage, "done": done[-1] if done else None}


def main_train(rounds: int, json_path: Path | None) -> int:
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for round_ in range(rounds):
        for mode in ("on", "off"):
            runs[mode].append(train(mode))
            print(f"round {round_} mode {mode:<3} {json.dumps(runs[mode][-1])}", flush=True)
    median = {mode: sorted(r["cpu_s"] for r in found)[len(found) // 2] for mode, found in runs.items()}
    summary = {
        "cpu_s_median": median,
        "cost_ratio": round(median["on"] / median["off"], 2),
        "same_done_line": len({r["done"] for found in runs.values() for r in found}) == 1,
    }
    print(json.dumps(summary))
    if json_path:
        write_json(json_path, {"runs": runs, "summary": summary, "machine": os.uname().machine}, indent=1)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--train", action="store_true", help="time `train recipes/tiny/dpo.yaml` on and off")
    args = parser.parse_args()
    if args.train:
        return main_train(args.rounds, args.json)
    configs = [("on", cpu) for cpu in CPUS] + [("off", cpu) for cpu in CPUS]
    runs: dict[str, list[dict]] = {f"{mode}/{cpu}": [] for mode, cpu in configs}
    for round_ in range(args.rounds):
        for mode, cpu in configs:
            if round_ > 0 and cpu != "here":
                continue  # the weights are deterministic per configuration: time the two `here` builds only
            result = build(mode, cpu)
            runs[f"{mode}/{cpu}"].append(result)
            print(f"round {round_} mode {mode:<3} cpu {cpu:<12} {json.dumps(result)}", flush=True)
    on = {r["sft"] for cpu in CPUS for r in runs[f"on/{cpu}"]}
    off = {r["sft"] for cpu in CPUS for r in runs[f"off/{cpu}"]}
    cpu_on = sorted(r["cpu_s"] for r in runs["on/here"])
    cpu_off = sorted(r["cpu_s"] for r in runs["off/here"])
    summary = {
        "identical_with_the_mode": len(on) == 1,
        "distinct_weights_without_the_mode": len(off),
        "cpu_s_on_here": cpu_on,
        "cpu_s_off_here": cpu_off,
        "cost_ratio": round(cpu_on[len(cpu_on) // 2] / cpu_off[len(cpu_off) // 2], 2),
    }
    print(json.dumps(summary))
    if args.json:
        write_json(args.json, {"runs": runs, "summary": summary, "machine": os.uname().machine}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
