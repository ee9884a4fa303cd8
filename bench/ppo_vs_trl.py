"""Our PPO against TRL's last PPO (trl 1.12.0, `trl.experimental.ppo`) on the shared tiny setting.

Setting (both sides): CPU, one thread, the tiny SFT policy (`recipes/tiny/sft.yaml`, seed 42), a tiny reward
model trained from it by `recipes/tiny/reward.yaml` (seed 42; also the critic's start), the 100 RL prompts of
`recipes/tiny/data/prompts.jsonl`, 60 steps x 64 rollouts, lr 1e-4, 2 PPO epochs, one mini batch, KL
coefficient 0.02 (k1), clip 0.2, value clip 0.2, vf_coef 0.1, gamma 1, lambda 0.95, temperature 0.5, at
most 6 new tokens, stop at EOS. Both measure greedy held-out exact match (`eval.jsonl`, 100 prompts, the same
`align_recipes.tiny.toytask.evaluate_task`) before and after training, as our CLI does; ours runs
`align-recipes train recipes/tiny/ppo.yaml --no-report evaluate.watch_every=0` (the report's plots are not PPO
work, the layer benchmark times them on their own; the reward-hacking watch, which TRL does not have, answers the
held-out prompts greedily at 10 checks: `--watch` runs ours with it, to measure what it costs).

Each run is a fresh process. Recorded per run: CPU time of the whole child process (user + sys, from
`os.wait4`: the headline, because up to five people share this machine's two cores and wall time follows
their load), wall time, peak RSS, the trainer's own seconds per 1,000 episodes, and held-out exact match.
Each side runs in its own virtualenv built on first use the same way (CPU torch 2.13.0 first, then the
rest): `.cache/bench-trl112` with trl 1.12.0 and transformers 5.23.0 (which `trl.experimental.ppo` 1.12
runs with), `.cache/bench-ours` with this checkout installed as a user would (`pip install -e .`, so its
dependencies, peft and bitsandbytes included). Why not the shared development venv for ours: a shared
library that other processes keep hot in the page cache is mapped in larger pieces, which showed as +46 MiB
of resident libtorch_cpu.so for the same torch build; separate, equally fresh venvs compare like with like.

    python bench/ppo_vs_trl.py                       # seeds 1 2 3, alternating ours / TRL
    python bench/ppo_vs_trl.py --seeds 1 --json bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import metric, write_json

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
TRL_VENV, OURS_VENV = CACHE / "bench-trl112", CACHE / "bench-ours"
WORK = CACHE / "bench-ppo"
TORCH = "torch==2.13.0"
TRL_PINS = ["trl==1.12.0", "transformers==5.23.0", "accelerate>=1.15,<1.16", "datasets>=5.0,<5.3"]
SETTING = {
    "steps": 60,
    "rollouts": 64,
    "learning_rate": 1e-4,
    "num_ppo_epochs": 2,
    "max_new_tokens": 6,
    "temperature": 0.5,
    "kl_coef": 0.02,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "gamma": 1.0,
    "lam": 0.95,
    "eval_max_new_tokens": 8,
}
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}


# --------------------------------------------------------------------------------------------- setup


def ensure_venv(venv: Path, requirements: list[str]) -> Path:
    """A virtualenv with CPU torch installed first (a bare `torch` requirement would pull a CUDA build), then
    ``requirements``; built once (a stamp file records what it holds)."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
        stamp.write_text("\n".join([TORCH, *requirements]) + "\n")
    return python


def ensure_start_models(python: Path) -> tuple[Path, Path]:
    """The SFT policy and the reward model both sides start from (built once, seed 42)."""
    sft, reward = WORK / "sft", WORK / "reward"
    for recipe, out, extra in (("sft", sft, []), ("reward", reward, [f"model.name_or_path={sft}"])):
        if not (out / "summary.json").is_file():
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "align_recipes",
                    "train",
                    f"recipes/tiny/{recipe}.yaml",
                    f"train.output_dir={out}",
                    *extra,
                    "--profile",
                    "cpu",
                    "--no-report",
                    "--overwrite",
                ],
                check=True,
                cwd=REPO,
                env={**os.environ, **THREAD_ENV, "PYTHONPATH": str(REPO / "src")},
            )
    return sft, reward


def versions(python: Path) -> dict:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('torch', 'transformers', 'trl', 'accelerate', 'datasets')}))"
    )
    return json.loads(
        subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    )


# ------------------------------------------------------------------------------------------- a child


def run_child(cmd: list[str], log: Path, env: dict) -> dict:
    """Run one fresh process; its CPU time (user + sys) and peak RSS come from the kernel via wait4."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}); see {log}")
    return {
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def run_ours(python: Path, seed: int, sft: Path, reward: Path, watch: bool = False) -> dict:
    name = f"ours-{seed}" + ("-watch" if watch else "")
    out = WORK / name
    cmd = [
        str(python),
        "-m",
        "align_recipes",
        "train",
        "recipes/tiny/ppo.yaml",
        f"train.output_dir={out}",
        f"model.name_or_path={sft}",
        f"train.reward_model_path={reward}",
        "rewards=[]",
        f"train.seed={seed}",
        f"train.max_steps={SETTING['steps']}",
        f"train.per_device_train_batch_size={SETTING['rollouts']}",
        *([] if watch else ["evaluate.watch_every=0"]),
        "--profile",
        "cpu",
        "--no-report",
        "--overwrite",
    ]
    measured = run_child(
        cmd, WORK / f"{name}.log", {**os.environ, **THREAD_ENV, "PYTHONPATH": str(REPO / "src")}
    )
    summary = json.loads((out / "summary.json").read_text())
    episodes = summary["steps"] * SETTING["rollouts"]
    return {
        **measured,
        "train_s": summary["runtime_s"],
        "s_per_1000_episodes": round(summary["runtime_s"] / episodes * 1000, 2),
        "exact_match_before": metric(summary, "exact_match")["before"],
        "exact_match": metric(summary, "exact_match")["after"],
        "sampled_reward_first": summary["metrics_first"]["reward"],
        "sampled_reward_last": summary["metrics_last"]["reward"],
    }


def run_trl(python: Path, seed: int, sft: Path, reward: Path) -> dict:
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--trl-child",
        "--seed",
        str(seed),
        "--sft",
        str(sft),
        "--reward",
        str(reward),
        "--out",
        str(WORK / f"trl-{seed}"),
    ]
    log = WORK / f"trl-{seed}.log"
    measured = run_child(cmd, log, {**os.environ, **THREAD_ENV, "PYTHONPATH": str(REPO / "src")})
    result = json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith("{")))
    return {**measured, **result}


# -------------------------------------------------------------------- the TRL side (in its own venv)


def trl_child(args) -> None:
    """TRL 1.12's PPO as its example script sets it up: policy, reference and value/reward models loaded from
    paths, prompts tokenized with the chat template (left padding), `PPOConfig` with the shared setting."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from align_recipes.tiny.toytask import evaluate_task, load_rows

    torch.set_num_threads(1)
    data = REPO / "recipes" / "tiny" / "data"
    tokenizer = AutoTokenizer.from_pretrained(args.sft, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        args.reward, num_labels=1, dtype=torch.float32
    )
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        args.reward, num_labels=1, dtype=torch.float32
    )
    eval_rows = load_rows(data / "eval.jsonl")
    before = evaluate_task(policy, tokenizer, eval_rows, max_new_tokens=SETTING["eval_max_new_tokens"])[
        "exact_match"
    ]

    def tokenize(row):
        return {
            "input_ids": tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        }

    train = load_dataset("json", data_files=str(data / "prompts.jsonl"), split="train")
    train = train.map(tokenize, remove_columns=train.column_names)
    evalset = load_dataset("json", data_files=str(data / "eval.jsonl"), split="train")
    evalset = evalset.map(tokenize, remove_columns=evalset.column_names)
    config = PPOConfig(
        output_dir=args.out,
        seed=args.seed,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=5,
        learning_rate=SETTING["learning_rate"],
        total_episodes=SETTING["steps"] * SETTING["rollouts"],
        per_device_train_batch_size=SETTING["rollouts"],
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        local_rollout_forward_batch_size=SETTING["rollouts"],
        num_ppo_epochs=SETTING["num_ppo_epochs"],
        response_length=SETTING["max_new_tokens"],
        temperature=SETTING["temperature"],
        kl_coef=SETTING["kl_coef"],
        kl_estimator="k1",
        cliprange=SETTING["cliprange"],
        cliprange_value=SETTING["cliprange_value"],
        vf_coef=SETTING["vf_coef"],
        gamma=SETTING["gamma"],
        lam=SETTING["lam"],
        stop_token="eos",
        num_sample_generations=0,
        sft_model_path=args.sft,
        reward_model_path=args.reward,
        dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train,
        eval_dataset=evalset,
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    after = evaluate_task(
        trainer.policy_model, tokenizer, eval_rows, max_new_tokens=SETTING["eval_max_new_tokens"]
    )["exact_match"]
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    episodes = SETTING["steps"] * SETTING["rollouts"]
    print(
        json.dumps(
            {
                "train_s": round(train_s, 2),
                "s_per_1000_episodes": round(train_s / episodes * 1000, 2),
                "exact_match_before": before,
                "exact_match": after,
                "sampled_reward_first": scores[0] if scores else None,
                "sampled_reward_last": scores[-1] if scores else None,
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------------------------- main


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("cpu_s", "wall_s", "peak_rss_mb", "train_s", "s_per_1000_episodes", "exact_match"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--watch", action="store_true", help="also run ours with the reward-hacking watch on")
    parser.add_argument("--trl-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sft", help=argparse.SUPPRESS)
    parser.add_argument("--reward", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trl_child:
        trl_child(args)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    trl_python = ensure_venv(TRL_VENV, TRL_PINS)
    ours_python = ensure_venv(OURS_VENV, ["-e", str(REPO)])
    sft, reward = ensure_start_models(ours_python)
    runs = {"ours": [], "trl": []}
    for seed in args.seeds:  # alternating, so a change in the machine's load hits both sides alike
        runs["ours"].append({"seed": seed, **run_ours(ours_python, seed, sft, reward)})
        print("ours", runs["ours"][-1], flush=True)
        runs["trl"].append({"seed": seed, **run_trl(trl_python, seed, sft, reward)})
        print("trl ", runs["trl"][-1], flush=True)
        if args.watch:
            runs.setdefault("ours_with_watch", []).append(
                {"seed": seed, **run_ours(ours_python, seed, sft, reward, True)}
            )
            print("ours+watch", runs["ours_with_watch"][-1], flush=True)
    ours, trl = summarize(runs["ours"]), summarize(runs["trl"])
    ratios = {
        k: round(ours[k]["median"] / trl[k]["median"], 3)
        for k in ("cpu_s", "wall_s", "peak_rss_mb", "s_per_1000_episodes")
    }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1},
        "setting": SETTING,
        "seeds": args.seeds,
        "versions": {"ours": versions(ours_python), "trl_side": versions(trl_python)},
        "runs": runs,
        "median": {
            "ours": ours,
            "trl": trl,
            **({"ours_with_watch": summarize(runs["ours_with_watch"])} if args.watch else {}),
        },
        "ratio_ours_over_trl": ratios,
    }
    print(json.dumps(result["ratio_ours_over_trl"]))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
