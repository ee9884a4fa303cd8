"""How far each tiny recipe's held-out metrics move, seed by seed: the numbers behind the end-to-end
tests' thresholds (tests/e2e/test_e2e_offline.py, docs/benchmarks.md).

For each seed, the same chain the tests run: `recipes/tiny/sft.yaml` from the untrained tiny model,
then every other tiny recipe from that SFT output (orpo from the untrained model, as its recipe says),
all with `train.seed=SEED`, `--profile cpu`, one fresh process per run. A different seed stands in
for a different machine: it changes the SFT start and each stage's data order and samples, as another
CPU's kernels would.

    python bench/seeds.py --seeds 42 1 2 3 4 --json bench/results/seeds-2026-12-01.json
    python bench/seeds.py --seeds 7 --algos sft dpo            # a quick look at one seed
    python bench/seeds.py --table bench/results/seeds-2026-12-01.json   # the markdown table of a file
    python bench/seeds.py --seeds 42 1 --mode off --cpu other --json off-other.json  # outside the mode,
                                                                    # on an emulated other CPU
    python bench/seeds.py --verdicts on.json off-other.json      # the per-seed verdict table of several files

`--mode on` (the default for the builtin models) runs in reproducible mode; `--mode off` passes
`--no-reproducible` and strips the pins from the environment. `--cpu other` emulates another CPU as
tests/run/test_reproducible.py does (ATen's scalar kernels, MKL capped below AVX2): with the mode on it must
give the same numbers as `--cpu here`; with it off, it shows how far another machine's numbers move.

Per run it records the summary's held-out metrics (before → after), the first and last logged training
metrics, and for the online algorithms the sampled reward of the first two and last two logged steps
and the largest KL: exactly what the tests assert on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from align_recipes.registry import names  # noqa: E402  (stdlib only)

FROM_SCRATCH = {"sft", "orpo"}  # recipes that start from the untrained model; the rest start from SFT
# Runs the tests make besides one per recipe: name -> (recipe, overrides).
VARIANTS = {"cpo-simpo": ("cpo", ["train.loss_type=simpo", "train.beta=2.0"])}
SAMPLED = {"online_dpo": "objective/scores"}  # the logged score of the policy's samples, where not `reward`


OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def environment(mode: str, cpu: str) -> dict[str, str]:
    from align_recipes import reproducible

    env = dict(os.environ) if mode == "on" else reproducible.unpinned(os.environ)
    return {**env, **(OTHER_CPU if cpu == "other" else {}), "PYTHONPATH": str(REPO / "src")}


def run(name: str, out: Path, seed: int, *overrides: str, mode: str = "on", cpu: str = "here") -> dict:
    recipe, extra = VARIANTS.get(name, (name, []))
    overrides = (*extra, *overrides)
    command = [
        sys.executable,
        "-m",
        "align_recipes",
        "train",
        f"recipes/tiny/{recipe}.yaml",
        "--profile",
        "cpu",
        f"train.output_dir={out}",
        f"train.seed={seed}",
        "--overwrite",
        "--no-report",
        "--reproducible" if mode == "on" else "--no-reproducible",
        *overrides,
    ]
    started = time.time()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment(mode, cpu))
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} seed {seed} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    key = SAMPLED.get(recipe, "reward")
    rewards = [r[key] for r in records if key in r]
    kls = [r["kl"] for r in records if "kl" in r]
    return {
        "held_out": summary.get("task_metrics"),
        "first": summary.get("metrics_first"),
        "last": summary.get("metrics_last"),
        "reward_early": sum(rewards[:2]) / 2 if len(rewards) >= 2 else None,
        "reward_late": sum(rewards[-2:]) / 2 if len(rewards) >= 2 else None,
        "max_kl": max(kls) if kls else None,
        "steps": summary.get("steps"),
        "wall_s": round(time.time() - started, 1),
    }


def table(results: dict) -> str:
    """docs/benchmarks.md's table: one row per algorithm and seed, every held-out metric before -> after,
    and for the online algorithms the sampled training reward (first two -> last two logs) and max KL."""
    lines = [
        "| algorithm | seed | held-out metrics, before → after | sampled reward | max KL |",
        "|---|---:|---|---|---:|",
    ]
    for algo in [*names(), *VARIANTS]:
        for seed, run in sorted(
            results["runs"].get(algo, {}).items(),
            key=lambda kv: (
                [42, 1, 2, 3, 4, 7].index(int(kv[0])) if int(kv[0]) in (42, 1, 2, 3, 4, 7) else int(kv[0])
            ),
        ):
            metrics = "; ".join(
                f"{m['name']} {m['before']:.2f} → {m['after']:.2f}" for m in run["held_out"] or []
            )
            sampled = (
                f"{run['reward_early']:.2f} → {run['reward_late']:.2f}"
                if run.get("reward_early") is not None
                else ""
            )
            kl = f"{run['max_kl']:.2f}" if run.get("max_kl") is not None else ""
            lines.append(f"| {algo} | {seed} | {metrics} | {sampled} | {kl} |")
    return "\n".join(lines)


def verdicts(files: list[Path]) -> str:
    """The per-seed verdict table: one row per algorithm and held-out metric, one column per file (a mode and
    CPU), each cell the verdicts seed by seed (rose ↑, no significant change ·, fell ↓)."""
    marks = {"rose": "↑", "no significant change": "·", "fell": "↓", None: "?"}
    loaded = [json.loads(f.read_text()) for f in files]
    labels = [r.get("label") or f.stem for r, f in zip(loaded, files)]
    lines = [
        "| algorithm | metric | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for algo in [*names(), *VARIANTS]:
        metric_names = []
        for results in loaded:
            for run in results["runs"].get(algo, {}).values():
                metric_names += [m["name"] for m in run["held_out"] or [] if m["name"] not in metric_names]
        for metric in metric_names:
            cells = []
            for results in loaded:
                seeds = results["runs"].get(algo, {})
                cell = []
                for seed, run in seeds.items():
                    found = {m["name"]: m for m in run["held_out"] or []}.get(metric)
                    if found:
                        cell.append(
                            f"{seed}{marks.get(found.get('verdict'), '?')} {found.get('difference', 0):+.2f}"
                        )
                cells.append(", ".join(cell))
            lines.append(f"| {algo} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument(
        "--algos",
        nargs="+",
        default=[*names(), *VARIANTS],
        help=f"default: every algorithm and {', '.join(VARIANTS)}",
    )
    parser.add_argument("--json", type=Path, help="write (and merge into) this file")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument(
        "--table", type=Path, metavar="JSON", help="print the markdown table of a results file"
    )
    parser.add_argument("--mode", choices=("on", "off"), default="on", help="reproducible mode (default on)")
    parser.add_argument(
        "--cpu", choices=("here", "other"), default="here", help="'other': an emulated other CPU"
    )
    parser.add_argument("--verdicts", type=Path, nargs="+", metavar="JSON", help="print the verdict table")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.verdicts:
        print(verdicts(args.verdicts))
        return 0
    results = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    results.setdefault(
        "machine",
        {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    )
    results["label"] = f"mode {args.mode}, {args.cpu} CPU"
    runs = results.setdefault("runs", {})
    root = args.workdir or Path(tempfile.mkdtemp(prefix="seeds-"))
    for seed in args.seeds:
        sft_dir = root / str(seed) / "sft"
        for algo in ["sft", *[a for a in args.algos if a != "sft"]]:
            if algo == "sft" and "sft" not in args.algos and (sft_dir / "summary.json").is_file():
                continue
            start = (
                [] if VARIANTS.get(algo, (algo,))[0] in FROM_SCRATCH else [f"model.name_or_path={sft_dir}"]
            )
            result = run(algo, root / str(seed) / algo, seed, *start, mode=args.mode, cpu=args.cpu)
            if algo in args.algos:
                runs.setdefault(algo, {})[str(seed)] = result
            print(
                f"seed {seed:>3} {algo:<10} {result['wall_s']:>6.1f}s  "
                + "  ".join(
                    f"{m['name']} {m['before']:.3f}->{m['after']:.3f}" for m in result["held_out"] or []
                )
                + (
                    f"  reward {result['reward_early']:.3f}->{result['reward_late']:.3f} kl<={result['max_kl']:.2f}"
                    if result["reward_early"] is not None and result["max_kl"] is not None
                    else ""
                ),
                flush=True,
            )
            if args.json:
                results["date"] = time.strftime("%Y-%m-%d")
                write_json(args.json, results, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
