"""Which MKL path each CPU maker takes under reproducible mode's pins: the float32 matrix products torch runs
on CPU, hashed, on this CPU and on other CPU models emulated by qemu-user (Debian's `qemu-user` package).

qemu-user runs the same torch wheel under another CPUID (vendor string, instruction sets), in software, about
ten times slower; MKL picks its path from that CPUID. Emulation is checked against real hardware where this
project has it: the emulated Intel Haswell gives this Intel CPU's bits, and an emulated AMD EPYC the builtin
SFT weights a real AMD EPYC built (docs/benchmarks.md, "Reproducible mode across CPU makers").

    python bench/mkl_paths.py --cpus native Haswell EPYC-Rome --json bench/results/mkl-paths-2026-12-07.json

Each cell is the SHA-256 (16 hex digits) of the products of four shapes (torch.matmul and F.linear), under
ATen pinned at AVX2, oneDNN capped at AVX2 and one thread, with the MKL settings of its column.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from align_recipes import reproducible  # noqa: E402  (stdlib only)

PROBE = """
import hashlib, torch
torch.manual_seed(0)
digest = hashlib.sha256()
for m, k, n in [(64, 64, 64), (37, 128, 96), (256, 64, 1000), (8, 200, 33)]:
    a, b = torch.randn(m, k), torch.randn(k, n)
    digest.update((a @ b).numpy().tobytes())
    digest.update(torch.nn.functional.linear(a, b.t()).numpy().tobytes())
print(digest.hexdigest()[:16])
"""
# The mode's own MKL pins first; then each other branch, and the one setting that is meant to differ by CPU.
SETTINGS = {
    "mode (CBWR=AVX2)": {},
    "mode, MKL capped at SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "CBWR=SSE4_2": {"MKL_CBWR": "SSE4_2"},
    "CBWR=SSE2": {"MKL_CBWR": "SSE2"},
    "CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
}


def probe(cpu: str, setting: dict[str, str]) -> str:
    env = dict(os.environ)
    reproducible.pin_environment(env)
    env.update(setting)
    command = [sys.executable, "-c", PROBE]
    if cpu != "native":
        command = ["qemu-x86_64", "-cpu", cpu, *command]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=900)
    return proc.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", nargs="+", default=["native", "Haswell", "EPYC-Rome"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if any(cpu != "native" for cpu in args.cpus) and not shutil.which("qemu-x86_64"):
        print("qemu-x86_64 not found: apt-get install qemu-user", file=sys.stderr)
        return 2
    table = {cpu: {name: probe(cpu, setting) for name, setting in SETTINGS.items()} for cpu in args.cpus}
    print("| CPU | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 1) + "|")
    for cpu, row in table.items():
        label = f"{cpu} ({reproducible.cpu_maker()})" if cpu == "native" else f"{cpu} (qemu)"
        print(f"| {label} | " + " | ".join(row.values()) + " |")
    if args.json:
        write_json(args.json, {"native_maker": reproducible.cpu_maker(), "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
