"""Research for the tiny RLHF flow (sft -> reward -> ppo): which reward-model data keeps PPO from lowering held-out
exact match?

The classic flow lowers it because the tiny reward model, trained on `prefs.jsonl` (one random plausible wrong
answer per prompt), ranks "answer + 1" above the answer on many prompts, and PPO learns exactly that. Here each
variant of the reward data trains a reward model from the same SFT policy (`recipes/tiny/reward.yaml`, only the
training file and the overrides given change), which is then measured three ways:

- held-out preference accuracy on `prefs_eval.jsonl` (what the reward recipe reports);
- near-miss accuracy: on the 100 held-out prompts, how often it scores the answer above answer + 1 and above
  answer - 1 (200 comparisons);
- PPO against it (`recipes/tiny/ppo.yaml` with `reward_model_path`, the pipeline's third stage) for each seed:
  greedy held-out exact match after training (0.79 before), and the held-out greedy answers that are the
  answer + 1.

Variants: `prefs` (the committed file), `near` (`toytask.near_miss_pairs`: the answer against answer +- 1 and one
random plausible wrong answer, for each of the 300 training prompts), `near2` (+- 1, +- 2 and one random).

    python bench/rlhf_reward_data.py --variants prefs near --seeds 1 2 3 4 5 --json bench/results/rlhf-reward-data.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import metric, write_json

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "rlhf-research"
VARIANTS = {
    "prefs": None,
    "near": {"offsets": (1, -1), "random_wrong": 1},
    "near2": {"offsets": (1, -1, 2, -2), "random_wrong": 1},
}
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO / "src"),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def train(recipe: str, out: Path, *overrides: str) -> dict:
    if (
        not (out / "summary.json").is_file()
        or json.loads((out / "summary.json").read_text())["status"] != "complete"
    ):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "align_recipes",
                "train",
                f"recipes/tiny/{recipe}.yaml",
                f"train.output_dir={out}",
                *overrides,
                "--profile",
                "cpu",
                "--no-report",
                "--overwrite",
            ],
            cwd=REPO,
            env=ENV,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return json.loads((out / "summary.json").read_text())


def variant_data(name: str) -> Path:
    if VARIANTS[name] is None:
        return REPO / "recipes" / "tiny" / "data" / "prefs.jsonl"
    from align_recipes.tiny.toytask import dumps_jsonl, near_miss_pairs

    path = WORK / f"{name}.jsonl"
    path.write_text(dumps_jsonl(near_miss_pairs(**VARIANTS[name])))
    return path


def near_miss_accuracy(reward_dir: Path) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align_recipes.tiny.toytask import load_rows, reward_accuracy

    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    rows = [
        {"prompt": r["prompt"], "answer": r["answer"], "rejected": str(int(r["answer"]) + d)}
        for r in load_rows(REPO / "recipes" / "tiny" / "data" / "eval.jsonl")
        for d in (1, -1)
        if int(r["answer"]) + d >= 0
    ]
    return reward_accuracy(model, tokenizer, rows)["reward_accuracy"]


def plus_one_answers(policy_dir: Path) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_recipes.tiny.toytask import generate_completions, load_rows

    torch.set_num_threads(1)
    rows = load_rows(REPO / "recipes" / "tiny" / "data" / "eval.jsonl")
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    completions = generate_completions(
        model, AutoTokenizer.from_pretrained(policy_dir), rows, max_new_tokens=8
    )
    return sum(c.strip() == str(int(r["answer"]) + 1) for c, r in zip(completions, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["prefs", "near"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--reward-overrides", nargs="*", default=[], help="extra overrides for the reward stage"
    )
    parser.add_argument("--ppo-overrides", nargs="*", default=[], help="extra overrides for the PPO stage")
    parser.add_argument("--tag", default="", help="suffix for the output folders of these overrides")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    WORK.mkdir(parents=True, exist_ok=True)
    sft = WORK / "sft"
    sft_summary = train("sft", sft)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "sft_exact_match": metric(sft_summary, "exact_match")["after"],
        "reward_overrides": args.reward_overrides,
        "ppo_overrides": args.ppo_overrides,
        "variants": {},
    }
    for name in args.variants:
        reward = WORK / f"reward-{name}{args.tag}"
        summary = train(
            "reward",
            reward,
            f"model.name_or_path={sft}",
            f"data.train.path={variant_data(name)}",
            *args.reward_overrides,
        )
        entry = {
            "preference_accuracy": metric(summary, "preference_accuracy")["after"],
            "near_miss_accuracy": near_miss_accuracy(reward),
            "ppo": [],
        }
        print(name, "reward model:", entry["preference_accuracy"], entry["near_miss_accuracy"], flush=True)
        for seed in args.seeds:
            out = WORK / f"ppo-{name}{args.tag}-{seed}"
            ppo = train(
                "ppo",
                out,
                f"model.name_or_path={sft}",
                f"train.reward_model_path={reward}",
                "rewards=[]",
                f"train.seed={seed}",
                *args.ppo_overrides,
            )
            run = {
                "seed": seed,
                "exact_match": metric(ppo, "exact_match")["after"],
                "plus_one": plus_one_answers(out),
                "reward_first": ppo["metrics_first"]["reward"],
                "reward_last": ppo["metrics_last"]["reward"],
                "kl_last": ppo["metrics_last"]["kl"],
            }
            entry["ppo"].append(run)
            print(name, run, flush=True)
        ems = [r["exact_match"] for r in entry["ppo"]]
        entry["exact_match_mean"] = sum(ems) / len(ems)
        results["variants"][name] = entry
    print(
        json.dumps(
            {
                k: (v["preference_accuracy"], v["near_miss_accuracy"], v["exact_match_mean"])
                for k, v in results["variants"].items()
            }
        )
    )
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
