"""Does the reward-hacking watch (run/hacking.py) warn when it should, and only then?

For each seed, in one process (CPU, one thread, tiny model):
- weak: a reward model trained for one step from the builtin SFT policy (`recipes/tiny/reward.yaml`,
  train.max_steps=1), which PPO (`recipes/tiny/ppo.yaml`, rewards=[]) then climbs;
- healthy: `recipes/tiny/ppo.yaml` as it is (the toy task's rule reward).
Every run records its watch checks and whether, and from which step, it warned.

    python bench/hacking_watch.py --seeds 42 1 2 3 4 --json bench/results/hacking-watch.json [ppo.yaml overrides]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from align_recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]


def train(recipe: str, out: Path, seed: int, *overrides: str) -> dict:
    started = time.time()
    rc = main(
        [
            "train",
            str(ROOT / "recipes/tiny" / recipe),
            f"train.output_dir={out}",
            f"train.seed={seed}",
            "--profile",
            "cpu",
            "--no-report",
            *overrides,
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    return {"rc": rc, "wall_s": round(time.time() - started, 1), "summary": summary}


def row(kind: str, seed: int, result: dict, out: Path) -> dict:
    summary = result["summary"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    watch, warning = summary.get("reward_watch") or {}, summary.get("reward_hacking")
    tasks = {t["name"]: (t["before"], t["after"]) for t in summary.get("task_metrics") or []}
    return {
        "kind": kind,
        "seed": seed,
        "wall_s": result["wall_s"],
        "warned": warning is not None,
        "since_step": warning and warning["since_step"],
        "at_step": warning and warning["at_step"],
        "watch_before": watch.get("before"),
        "checks": [(c["step"], c["held_out"]) for c in watch.get("checks", [])],
        "exact_match": tasks.get("exact_match"),
        "metrics_first_reward": summary["metrics_first"].get("reward"),
        "metrics_last_reward": summary["metrics_last"].get("reward"),
        "proxy": [(r["step"], r["reward"]) for r in records if "reward" in r],
    }


def run(seeds: list[int], overrides: list[str], only: str = "") -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            rm = Path(tmp) / f"rm-{seed}"
            if only != "healthy":
                train("reward.yaml", rm, seed, "train.max_steps=1")
            weak_dir, healthy_dir = Path(tmp) / f"weak-{seed}", Path(tmp) / f"healthy-{seed}"
            if only != "healthy":
                weak = train(
                    "ppo.yaml", weak_dir, seed, f"train.reward_model_path={rm}", "rewards=[]", *overrides
                )
                rows.append(row("weak", seed, weak, weak_dir))
            if only != "weak":
                healthy = train("ppo.yaml", healthy_dir, seed, *overrides)
                rows.append(row("healthy", seed, healthy, healthy_dir))
            print(json.dumps(rows[-2:] if not only else rows[-1:]), flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["weak", "healthy"], default="", help="run one kind only")
    parser.add_argument("overrides", nargs="*", help="extra ppo.yaml overrides, e.g. train.max_steps=30")
    args = parser.parse_args()
    results = run(args.seeds, args.overrides, args.only)
    for r in results:
        print(
            f"{r['kind']:8} seed {r['seed']:>2}: warned={r['warned']} since={r['since_step']} "
            f"exact_match={r['exact_match']} checks={r['checks']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "overrides": args.overrides,
                    "only": args.only,
                    "runs": results,
                },
                indent=1,
            )
            + "\n"
        )
