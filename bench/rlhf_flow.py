"""The tiny RLHF flow as shipped (`make rlhf`: recipes/tiny/pipeline.yaml, sft -> reward -> ppo), per seed, and
why its PPO stage uses kl_coef 0.5.

For each seed: the whole pipeline with `train.seed=SEED` (every stage), in a fresh process, one thread. Recorded:
the SFT stage's held-out exact match, the reward stage's held-out preference accuracy (answer vs answer +- 1, the
gate's metric), the PPO stage's held-out exact match before -> after, the watch's lowest check, and its warning.

`--kl-analysis` (seed 42's SFT and reward models): which held-out answer would the KL-regularised optimum pick?
PPO maximises E[score] - kl_coef * KL(pi || pi_ref), whose optimum is pi_ref * exp(score / kl_coef). Sampling at
temperature T tempers both sides, so the optimum's greedy answer is argmax over answers y of
log pi_ref(y) / T + score(y) / kl_coef. Every answer 0-39 of the 100 held-out prompts is scored by the SFT policy
(summed log-probability) and by the reward model; the table is how often that argmax is the right answer, per
kl_coef: at 0.02 (ppo.yaml, for its exact rule reward) it is the reward model's favourite; larger values keep
the SFT policy's answer where the reward model is unsure.

    python bench/rlhf_flow.py --seeds 42 7 1 2 3 --json bench/results/rlhf-flow-2026-12-01.json
    python bench/rlhf_flow.py --seeds 42 --kl-analysis
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
WORK = REPO / ".cache" / "rlhf-flow"
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO / "src"),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
TEMPERATURE = 0.5  # recipes/tiny/ppo.yaml
KL_COEFS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def run_flow(seed: int) -> dict:
    out = WORK / str(seed)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "align_recipes",
            "pipeline",
            "recipes/tiny/pipeline.yaml",
            "--output-dir",
            str(out),
            "--profile",
            "cpu",
            f"train.seed={seed}",
        ],
        cwd=REPO,
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sft, reward, ppo = (
        json.loads((out / stage / "summary.json").read_text()) for stage in ("sft", "reward", "ppo")
    )
    checks = ppo.get("reward_watch", {}).get("checks", [])
    return {
        "seed": seed,
        "sft_exact_match": metric(sft, "exact_match")["after"],
        "reward_preference_accuracy": metric(reward, "preference_accuracy")["after"],
        "ppo_exact_match_before": metric(ppo, "exact_match")["before"],
        "ppo_exact_match_after": metric(ppo, "exact_match")["after"],
        "watch_lowest": min((c["held_out"] for c in checks), default=None),
        "warning": ppo.get("reward_hacking"),
    }


def kl_analysis(sft_dir: Path, reward_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from align_recipes.run.measure import sequence_scores
    from align_recipes.tiny.toytask import load_rows

    torch.set_num_threads(1)
    rows = load_rows(REPO / "recipes" / "tiny" / "data" / "eval.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    policy = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=torch.float32)
    answers = [str(n) for n in range(40)]
    logp, score = [], []
    for row in rows:
        prompts, completions = (
            [row["prompt"]] * len(answers),
            [[{"role": "assistant", "content": a}] for a in answers],
        )
        logp.append(sequence_scores(policy, tokenizer, prompts, completions, reward_head=False))
        score.append(sequence_scores(reward, tokenizer, prompts, completions, reward_head=True))
    logp, score = torch.tensor(logp), torch.tensor(score)
    right = torch.tensor([int(r["answer"]) for r in rows])

    def accuracy(values: torch.Tensor) -> float:
        return round((values.argmax(1) == right).float().mean().item(), 3)

    return {
        "sft_greedy": accuracy(logp),
        "reward_model_favourite": accuracy(score),
        "optimum_by_kl_coef": {str(k): accuracy(logp / TEMPERATURE + score / k) for k in KL_COEFS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1, 2, 3])
    parser.add_argument(
        "--kl-analysis", action="store_true", help="also the KL-optimum table (first seed's models)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    WORK.mkdir(parents=True, exist_ok=True)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "runs": []}
    for seed in args.seeds:
        result["runs"].append(run_flow(seed))
        print(json.dumps(result["runs"][-1]), flush=True)
    if args.kl_analysis:
        first = WORK / str(args.seeds[0])
        result["kl_analysis"] = {
            "seed": args.seeds[0],
            "temperature": TEMPERATURE,
            **kl_analysis(first / "sft", first / "reward"),
        }
        print(json.dumps(result["kl_analysis"]), flush=True)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
