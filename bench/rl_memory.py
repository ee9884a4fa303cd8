"""Peak CPU memory of one PPO and one SPO step at the qwen15b shape, for two source trees, beside the rehearse
estimate.

The shape is Qwen2.5-1.5B's (hidden 1536, MLP 8960, 12 heads / 2 KV heads, tied embeddings, vocabulary
151,936) with few decoder layers and random weights; every answer is 1,024 tokens. Generation is replaced by a
stand-in that returns random 1,024-token answers at once (its log-probabilities unreported, as vLLM's would be
without logprobs, so pi_old comes from a policy forward): what is measured is the trainer's own passes (pi_old,
reference, critic) and its update, which is where the logits live.

- ppo: LoRA r=16 on every linear, float32, kl_coef 0.05, a rule reward (no reward model): the reference is the
  policy without its adapter, the critic starts from the policy's body.
- spo: full fine-tuning, float32, beta 0.02 (a frozen reference copy); RL_MEMORY_SPO_BF16=1 runs it under bf16
  autocast (the reference then kept in bf16), which took over 20 CPU-minutes a step on a 2-vCPU machine.

Each configuration runs in its own process (``--worker``) with the given ``src`` first on PYTHONPATH; the peak
is the process's VmHWM (peak resident set) from /proc/self/status. ``--before-src`` is an export of the sources
at the base commit (``git archive BASE src | tar -x -C DIR``).

    python bench/rl_memory.py --before-src /tmp/base/src --out bench/results/rl-memory-DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QWEN15B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}


def rss_gb(field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident set, GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"{field} not in /proc/self/status")


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")


def settings(algorithm: str, micro: int, answer: int, layers: int) -> dict:
    """The recipe-level settings of one configuration (shared by the worker and the estimate)."""
    common = {
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": 1,
        "num_ppo_epochs": 1,
        "max_new_tokens": answer,
        "max_completion_length": answer,
        "max_prompt_length": 16,
        "temperature": 0.7,
    }
    if algorithm == "ppo":
        return {"adapter": "lora", "dtype": "float32", "train": {**common, "kl_coef": 0.05}}
    bf16 = os.environ.get("RL_MEMORY_SPO_BF16") == "1"  # CPU bf16 matmuls are slow here: off by default
    return {"adapter": "full", "dtype": "float32", "train": {**common, "beta": 0.02, "bf16": bf16}}


def worker(algorithm: str, micro: int, answer: int, layers: int) -> dict:
    """One step of one configuration in this process; returns the memory readings (GB)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from align_recipes.rl.config import PPOConfig, SPOConfig
    from align_recipes.rl.generation import Generation, Generator
    from align_recipes.rl.trainer import PPOTrainer, SPOTrainer
    from align_recipes.tiny import ensure_tiny_model

    readings = {"imports": rss_gb("VmRSS")}
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    torch.manual_seed(0)
    config = Qwen2Config(
        **QWEN15B,
        num_hidden_layers=layers,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    readings["params"] = sum(p.numel() for p in model.parameters())

    class RandomAnswers(Generator):
        """Random answers of exactly ``answer`` tokens, none of them EOS; log-probs not reported."""

        def generate(self, prompt_ids, prompt_mask):
            rows = prompt_ids.shape[0]
            ids = torch.randint(0, config.vocab_size, (rows, answer), device=prompt_ids.device)
            ids[ids == tokenizer.eos_token_id] = 0
            lengths = torch.full((rows,), answer, dtype=torch.long, device=prompt_ids.device)
            return Generation(ids, lengths, torch.ones(rows, dtype=torch.bool, device=prompt_ids.device))

    chosen = settings(algorithm, micro, answer, layers)
    train = {k: v for k, v in chosen["train"].items() if k != "max_completion_length"}
    cls, cfg = (PPOTrainer, PPOConfig) if algorithm == "ppo" else (SPOTrainer, SPOConfig)
    args = cfg(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"rl-memory-{algorithm}-{os.getpid()}"),
        max_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        use_cpu=True,
        seed=0,
        **train,
    )
    prompts = Dataset.from_list([{"prompt": f"question {i}: what is {i} + {i}?"} for i in range(micro)])
    trainer = cls(
        model=model,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_funcs=[lambda prompts, completions, **kw: torch.rand(len(completions)).tolist()],
        peft_config=lora_config() if chosen["adapter"] == "lora" else None,
    )
    trainer.generator = RandomAnswers()
    readings["built"] = rss_gb("VmRSS")
    readings["built_peak"] = rss_gb()
    start = time.time()
    trainer.train()
    readings["step_seconds"] = round(time.time() - start, 1)
    readings["peak"] = rss_gb()
    return readings


def run_worker(src: Path, algorithm: str, micro: int, answer: int, layers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, __file__, "--worker", algorithm, "--micro", str(micro), "--answer", str(answer)]
    cmd += ["--layers", str(layers)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {algorithm} ({src}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def rehearse_estimate(algorithm: str, micro: int, answer: int, layers: int) -> dict:
    """results/rehearse/memory.py's estimate for the same configuration (CPU: no budget; its ~1 GB CUDA overhead
    term is reported apart, as a CPU process has no CUDA context)."""
    from align_recipes.registry import ALGORITHMS
    from align_recipes.results.rehearse import memory, shapes

    config = {**QWEN15B, "num_hidden_layers": layers, "model_type": "qwen2"}
    params, linear = shapes.full_parameter_count(config)
    chosen = settings(algorithm, micro, answer, layers)
    model = {"adapter": chosen["adapter"], "dtype": chosen["dtype"], "lora": {"r": 16}}
    est = memory.estimate(config, params, linear, ALGORITHMS[algorithm], model, chosen["train"], None)
    parts = {k: round(v, 3) for k, v in est.parts.items()}
    return {
        "parts_gb": parts,
        "total_gb": round(est.total_gb, 2),
        "without_overhead_gb": round(est.total_gb - parts["overhead"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["ppo", "spo"])
    parser.add_argument("--before-src", type=Path)
    parser.add_argument("--micro", type=int, default=2)
    parser.add_argument("--answer", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--only", choices=["ppo", "spo"])
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--estimate-only", action="store_true", help="recompute the estimates of an existing --out file"
    )
    a = parser.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, a.micro, a.answer, a.layers)), flush=True)
        return
    sys.path.insert(0, str(REPO / "src"))  # the estimate of this tree, whatever is installed
    algorithms = [a.only] if a.only else ["ppo", "spo"]
    if a.estimate_only:
        result = json.loads(a.out.read_text())
    else:
        trees = [("after", REPO / "src")] + ([("before", a.before_src)] if a.before_src else [])
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} vCPU, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.0f} GB RAM",
            "shape": {
                **QWEN15B,
                "num_hidden_layers": a.layers,
                "answer_tokens": a.answer,
                "micro_batch": a.micro,
            },
            "runs": {},
        }
        for algorithm in algorithms:
            for label, src in trees:
                found = run_worker(src, algorithm, a.micro, a.answer, a.layers)
                result["runs"][f"{algorithm}/{label}"] = found
                print(algorithm, label, json.dumps(found), flush=True)
    result["estimate"] = {
        algorithm: rehearse_estimate(algorithm, a.micro, a.answer, a.layers) for algorithm in algorithms
    }
    print(json.dumps(result, indent=2))
    if a.out:
        sys.path.insert(0, str(REPO / "bench"))
        from common import write_json

        write_json(a.out, result)


if __name__ == "__main__":
    main()
