"""What align-recipes costs on top of TRL, and whether it changes the result.

The same tiny training run (the builtin tiny Qwen2, the toy task's data) is run two ways, each in a
fresh Python process, alternately, several times:

  recipe  align_recipes.plan.load.load_plan(recipes/tiny/<algo>.yaml) + align_recipes.run.training.train(plan)
  plain   a TRL script as tutorials write it: AutoTokenizer / AutoModelForCausalLM.from_pretrained on
          the same model directory (tiny.ensure_tiny_model()), datasets.load_dataset("json") on the
          same file, <Algo>Config(**the same fields), <Algo>Trainer(...).train()

Reported per algorithm: median wall time of the whole process (interpreter start to exit, as a user
waits for it) and of trainer.train() alone, median peak RSS (resource.getrusage in the child), their
ratios recipe/plain (goal <= 1.03), the max |loss difference| between the two runs' logged losses at
every step (fidelity: same seed, same config -> same curve), and `align-recipes validate` latency
(goal < 1 s). The recipe runs use `evaluate=null` and no report (`run.train` writes none; the CLI does)
so that both sides do
the same work: the task metric before/after training and report.md with its plots are features the plain
script does not have, not layer overhead. The report is then written in the same process and timed on its
own (`report_s`, matplotlib's import included), so its cost is measured too, not hidden.

    python bench/overhead.py                      # sft and dpo, 3 rounds each, 40 steps
    python bench/overhead.py --algos sft --rounds 5 --steps 60 --threads 1 --json bench/results/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = {"sft": "sft.jsonl", "dpo": "prefs.jsonl", "reward": "prefs.jsonl"}
# wall_s leaves the recipe run's report out (both sides do the same work); wall_with_report_s keeps it.
METRICS = ("wall_s", "wall_with_report_s", "cpu_s", "train_s", "peak_rss_mb")
CLASSES = {
    "sft": ("SFTConfig", "SFTTrainer"),
    "dpo": ("DPOConfig", "DPOTrainer"),
    "reward": ("RewardConfig", "RewardTrainer"),
}


def overrides(out: Path, steps: int) -> list[str]:
    # Every algorithm starts from the builtin tiny model (the tiny recipes after sft start from
    # outputs/tiny/sft, which a benchmark should not depend on).
    return [
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.logging_steps=1",
        "evaluate=null",
        "train.save_strategy='no'",
        "model.name_or_path=builtin:tiny-qwen2",
    ]


# ------------------------------------------------------------------------------------------- children


def child_recipe(algo: str, out: Path, steps: int) -> dict:
    started = time.perf_counter()
    from align_recipes.plan.load import load_plan
    from align_recipes.run.training import train

    plan = load_plan(REPO / "recipes" / "tiny" / f"{algo}.yaml", overrides(out, steps), profile="cpu")
    summary = train(plan, overwrite=True, command=["bench"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r and "train_runtime" not in r}
    return {
        "losses": losses,
        "train_s": summary.get("runtime_s"),
        "in_process_s": time.perf_counter() - started,
    }


def time_report(out: Path) -> float:
    """What `align-recipes train` adds after training unless --no-report: report.md and its plots."""
    started = time.perf_counter()
    from align_recipes.results.report import write_report

    write_report(out)
    return time.perf_counter() - started


def child_plain(algo: str, out: Path, steps: int, config_file: Path) -> dict:
    """A plain TRL script; it imports nothing from align_recipes (the model directory and the config
    fields are handed over in a JSON file written by the parent)."""
    started = time.perf_counter()
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    spec = json.loads(config_file.read_text())
    config_cls, trainer_cls = (getattr(trl, name) for name in CLASSES[algo])
    args = config_cls(**{**spec["train"], "output_dir": str(out)})
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    dataset = datasets.load_dataset("json", data_files=spec["data_file"], split="train")
    if algo == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(
            spec["model_dir"], num_labels=1, dtype=torch.float32, attn_implementation=spec["attn"]
        )
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(
            spec["model_dir"], dtype=torch.float32, attn_implementation=spec["attn"]
        )
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    trainer.save_model(str(out))
    losses = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
    return {"losses": losses, "train_s": round(train_s, 2), "in_process_s": time.perf_counter() - started}


def child_main(argv: list[str]) -> None:
    mode, algo, out, steps = argv[0], argv[1], Path(argv[2]), int(argv[3])
    result = (
        child_recipe(algo, out, steps) if mode == "recipe" else child_plain(algo, out, steps, Path(argv[4]))
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    # CPU seconds (user + system) of the whole process: far less sensitive than wall time to other
    # processes competing for the same cores.
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["load_1min"] = os.getloadavg()[0]
    result["report_s"] = time_report(out) if mode == "recipe" else 0.0  # after the measurements above
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------- parent


def plain_spec(algo: str, steps: int, work: Path) -> Path:
    """The config fields, model directory and data file the recipe run will use, for the plain script."""
    from align_recipes import tiny
    from align_recipes.plan.load import load_plan

    plan = load_plan(
        REPO / "recipes" / "tiny" / f"{algo}.yaml", overrides(work / "unused", steps), profile="cpu"
    )
    train = {k: v for k, v in plan.train.items() if k != "output_dir"}
    spec = {
        "train": train,
        "model_dir": str(tiny.ensure_tiny_model()),
        "data_file": str(REPO / "recipes" / "tiny" / "data" / DATA[algo]),
        "attn": plan.recipe["model"].get("attn_implementation") or "sdpa",
    }
    path = work / f"{algo}.plain.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def run_child(args: list[str], threads: int | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if threads:  # fewer torch threads: less spinning, steadier timings on a shared machine
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO, env=env
    )
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {args[:2]} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1].split(" ", 1)[1])
    result["wall_with_report_s"] = wall
    result["wall_s"] = wall - result["report_s"]
    return result


def validate_latency(recipe: str = "recipes/tiny/dpo.yaml", *words: str, repeats: int = 7) -> dict:
    """`align-recipes validate` as a fresh process, offline (the suite asserts no time: this is the claim's
    measurement, "well under a second" in the README)."""
    exe = Path(sys.executable).with_name("align-recipes")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [str(exe), "validate", recipe, *words],
            cwd=REPO,
            check=True,
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        times.append(time.perf_counter() - started)
    return {"recipe": recipe, "median_s": statistics.median(times), "max_s": max(times), "repeats": repeats}


def bench(algo: str, rounds: int, steps: int, work: Path, threads: int | None = None) -> dict:
    spec = plain_spec(algo, steps, work)
    runs: dict[str, list[dict]] = {"recipe": [], "plain": []}
    order = ["recipe", "plain"]
    for round_index in range(rounds + 1):  # round 0 warms the caches (datasets, page cache) and is dropped
        for mode in order if round_index % 2 == 0 else order[::-1]:
            out = work / f"{algo}-{mode}-{round_index}"
            extra = [str(spec)] if mode == "plain" else []
            result = run_child([mode, algo, str(out), str(steps), *extra], threads)
            print(
                f"  {algo} round {round_index} {mode:<6} wall {result['wall_s']:.2f}s (+{result['report_s']:.2f}s "
                f"report) cpu {result['cpu_s']:.2f}s "
                f"train {result['train_s']}s "
                f"rss {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )
            if round_index:
                runs[mode].append(result)
    med = {mode: {key: statistics.median(r[key] for r in rs) for key in METRICS} for mode, rs in runs.items()}
    # Each round's two runs ran back to back: their ratio cancels most of the drift in machine load.
    paired = {
        key: statistics.median(r[key] / p[key] for r, p in zip(runs["recipe"], runs["plain"]))
        for key in METRICS
    }
    a, b = runs["recipe"][0]["losses"], runs["plain"][0]["losses"]
    shared = sorted(set(a) & set(b), key=int)
    return {
        "algorithm": algo,
        "steps": steps,
        "rounds": rounds,
        "median": med,
        "ratio": {key: med["recipe"][key] / med["plain"][key] for key in METRICS},
        "paired_ratio_median": paired,
        "threads": threads,
        "report_s_median": statistics.median(r["report_s"] for r in runs["recipe"]),
        "fidelity": {
            "steps_compared": len(shared),
            "steps_recipe": len(a),
            "steps_plain": len(b),
            "max_abs_loss_diff": max((abs(a[s] - b[s]) for s in shared), default=None),
            "first_loss": a.get(shared[0]) if shared else None,
            "last_loss": a.get(shared[-1]) if shared else None,
        },
        "raw": {mode: [{k: r[k] for k in METRICS} for r in rs] for mode, rs in runs.items()},
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("align-recipes", "trl", "transformers", "torch", "peft", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", default=["sft", "dpo"], choices=sorted(CLASSES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads per run (default: torch's choice)")
    args = parser.parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "src"))
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
        "validate": validate_latency("recipes/tiny/dpo.yaml", "evaluate=null"),
        "validate_real_recipe": validate_latency("recipes/qwen05b/dpo.yaml"),
        "runs": [],
    }
    for key in ("validate", "validate_real_recipe"):
        print(
            f"validate latency ({results[key]['recipe']}): median {results[key]['median_s']:.3f}s, "
            f"max {results[key]['max_s']:.3f}s",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="align-bench-") as tmp:
        for algo in args.algos:
            results["runs"].append(bench(algo, args.rounds, args.steps, Path(tmp), args.threads))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    for r in results["runs"]:
        ratio = r["paired_ratio_median"]
        print(
            f"{r['algorithm']}: recipe/plain (median of paired rounds) wall x{ratio['wall_s']:.3f} "
            f"(with report x{ratio['wall_with_report_s']:.3f})  "
            f"cpu x{ratio['cpu_s']:.3f}  train x{ratio['train_s']:.3f}  peak RSS x{ratio['peak_rss_mb']:.3f}  "
            f"max |dloss| {r['fidelity']['max_abs_loss_diff']} over {r['fidelity']['steps_compared']} steps"
        )
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
