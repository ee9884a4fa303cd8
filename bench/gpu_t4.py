"""Qwen2-0.5B-shaped SFT, DPO and GRPO on a T4-sized memory budget: align-recipes' t4 profile versus
the plain TRL script a tutorial would write. NEEDS AN NVIDIA GPU; on CPU it stops with exit code 2.

The model has the real Qwen2-0.5B architecture (Qwen2Config: hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4864, vocab 151936, tied embeddings) with random weights, built locally:
no hub access. Its tokenizer is the builtin tiny model's byte-level one (one token per character,
ids < 300, so inside the vocabulary); the synthetic data's lengths are therefore token counts.
Every variant runs in a fresh process with `torch.cuda.set_per_process_memory_fraction` capping it
at 16 GiB (a T4's memory, not its speed: on a faster card the times are that card's).

Variants:
  sft, dpo    align-recipes  recipe (LoRA r16) + `--profile t4`: fp16 weights and AMP, sdpa, gradient
                             checkpointing, micro-batch cap; run through align_recipes.run.training.train
              tutorial-fp32  plain TRL: fp32 weights, fp16=True AMP, same LoRA and batch, TRL defaults otherwise
              tutorial-fp16  plain TRL: fp16 weights, fp16=True, same LoRA and batch
              (plain scripts set bf16=False: TRL 1.16 defaults to bf16=True, which a T4 rejects)
  grpo        align-recipes  recipe + `--profile t4` (generation with transformers; the T4 profile keeps vLLM off)
              plain-fp32     plain TRL GRPO: fp32 weights, no AMP, TRL defaults otherwise, same batch/lengths

Per variant: peak allocated / reserved GPU memory, steady-state seconds per optimizer step (median
after two warm-up steps), samples per second, and for GRPO completion tokens per second
(completions/mean_length x generation batch / step time). Out-of-memory and other failures are
recorded as such, never as numbers.

    python bench/gpu_t4.py                         # all tasks, 12 steps each
    python bench/gpu_t4.py --tasks dpo --steps 20 --json bench/results/gpu_t4.json
    python bench/gpu_t4.py --smoke                 # CPU code-path check with a toy shape: NOT a benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_json

REPO = Path(__file__).resolve().parents[1]
CAP_GIB = 16.0
QWEN2_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
)
SMOKE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
TRAIN = {  # what the recipe asks for; the same values go to the plain scripts
    "sft": {
        "learning_rate": 2.0e-4,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_length": 1024,
    },
    "dpo": {
        "learning_rate": 5.0e-6,
        "beta": 0.1,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_length": 1024,
    },
    "grpo": {
        "learning_rate": 1.0e-5,
        "beta": 0.04,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_completion_length": 256,
        "temperature": 0.9,
    },
}
VARIANTS = {
    "sft": ["align-recipes", "tutorial-fp32", "tutorial-fp16"],
    "dpo": ["align-recipes", "tutorial-fp32", "tutorial-fp16"],
    "grpo": ["align-recipes", "plain-fp32"],
}
COMMON = {
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    "dataloader_num_workers": 0,
}


# ------------------------------------------------------------------------------------------ setup


def build_model(work: Path, smoke: bool) -> Path:
    """Random-weight Qwen2 with the 0.5B shape, saved with the tiny model's byte-level tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from align_recipes import tiny

    out = work / "qwen2-0.5b-random"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
    config = Qwen2Config(
        **(SMOKE if smoke else QWEN2_05B),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).to(torch.float16 if not smoke else torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.0123456789") for _ in range(n))


def write_data(work: Path, smoke: bool) -> dict[str, Path]:
    rng = random.Random(0)
    scale = 8 if smoke else 1
    rows = 256
    files = {"sft": work / "sft.jsonl", "dpo": work / "prefs.jsonl", "grpo": work / "prompts.jsonl"}
    with files["sft"].open("w") as f:
        for _ in range(rows):
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": _text(rng, 256 // scale)},
                            {"role": "assistant", "content": _text(rng, 640 // scale)},
                        ]
                    }
                )
                + "\n"
            )
    with files["dpo"].open("w") as f:
        for _ in range(rows):
            f.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": _text(rng, 384 // scale)}],
                        "chosen": [{"role": "assistant", "content": _text(rng, 256 // scale)}],
                        "rejected": [{"role": "assistant", "content": _text(rng, 256 // scale)}],
                    }
                )
                + "\n"
            )
    with files["grpo"].open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": [{"role": "user", "content": _text(rng, 128 // scale)}]}) + "\n")
    return files


def train_fields(task: str, steps: int, smoke: bool) -> dict:
    fields = {**TRAIN[task], **COMMON, "max_steps": steps}
    if smoke:
        fields = {**fields, "max_length": 128, "max_completion_length": 16}
        fields = {k: v for k, v in fields.items() if k in TRAIN[task] or k in COMMON or k == "max_steps"}
    return fields


# --------------------------------------------------------------------------------------- children


class StepTimer:
    """Wall-clock time of every optimizer step (a TrainerCallback, built lazily)."""

    @staticmethod
    def make(inner=None):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self._t = time.perf_counter()

            def on_step_begin(self, args, state, control, **kw):
                self._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync()
                self.times.append(time.perf_counter() - self._t)

            def on_log(self, *a, **kw):
                return inner.on_log(*a, **kw) if inner is not None else None

        return _Timer()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child(task: str, variant: str, work: Path, steps: int, smoke: bool) -> dict:
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total), 0)
        torch.cuda.reset_peak_memory_stats()
    model_dir = work / "qwen2-0.5b-random"  # model and data were written by the parent
    data = {"sft": work / "sft.jsonl", "dpo": work / "prefs.jsonl", "grpo": work / "prompts.jsonl"}
    fields = train_fields(task, steps, smoke)
    out = work / f"out-{task}-{variant}"
    timer = None
    try:
        if variant == "align-recipes":
            timer, settings, logs = _run_recipe(task, model_dir, data[task], fields, out, smoke)
        else:
            timer, settings, logs = _run_plain(task, variant, model_dir, data[task], fields, out, smoke)
        status = "ok"
    except torch.cuda.OutOfMemoryError as exc:
        status, settings, logs = f"oom: {str(exc).splitlines()[0][:160]}", {}, []
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result, recorded as such
        status, settings, logs = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", {}, []
    result = {"task": task, "variant": variant, "status": status, "settings": settings}
    times = (timer.times if timer else [])[2:]
    if status == "ok" and times:
        step_s = statistics.median(times)
        batch = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
        result.update(step_s=step_s, samples_per_s=batch / step_s, steps_timed=len(times))
        if task == "grpo":
            lengths = [r["completions/mean_length"] for r in logs if "completions/mean_length" in r][2:]
            generated = settings.get("generation_batch_size") or batch
            if lengths:
                result["completion_tokens_per_s"] = statistics.mean(lengths) * generated / step_s
    if torch.cuda.is_available():
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["gpu"] = torch.cuda.get_device_name(0)
    return result


def _settings(config) -> dict:
    keys = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "fp16",
        "bf16",
        "activation_checkpointing",
        "optim",
        "generation_batch_size",
        "max_length",
        "max_completion_length",
    )
    return {k: getattr(config, k, None) for k in keys if hasattr(config, k)}


def _run_recipe(task, model_dir, data_file, fields, out, smoke):
    import yaml

    from align_recipes.plan import load_plan
    from align_recipes.run import training
    from align_recipes.run.load import build_config
    from align_recipes.run.rundir import RunDir

    recipe = {
        "algorithm": task,
        "model": {"name_or_path": str(model_dir), "adapter": "lora", "lora": LORA},
        "data": {"train": {"path": str(data_file)}},
        "train": {**fields, "output_dir": str(out)},
    }
    if task == "grpo":
        recipe["rewards"] = [{"name": "length_penalty", "max_length": 64}]
    path = out.parent / f"{task}.recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    plan = load_plan(path, ["model.dtype=float32"] if smoke else [], profile="cpu" if smoke else "t4")
    timers = []
    original = RunDir.metrics_callback

    def with_timer(run_dir):  # run.train builds its callbacks here: time the steps too
        timers.append(StepTimer.make(original(run_dir)))
        return timers[-1]

    RunDir.metrics_callback = with_timer
    try:
        training.train(plan, overwrite=True, command=["bench/gpu_t4.py"])
    finally:
        RunDir.metrics_callback = original
    config = build_config(plan)
    settings = {
        **_settings(config),
        "dtype": plan.model.dtype,
        "adapter": plan.model.adapter,
        "profile": plan.profile.name,
    }
    return timers[0], settings, RunDir(out).metrics()


def _run_plain(task, variant, model_dir, data_file, fields, out, smoke):
    """The tutorial script: from_pretrained, load_dataset, LoraConfig, <Algo>Config, <Algo>Trainer.train()."""
    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    half = variant.endswith("fp16") and not smoke
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16 if half else torch.float32)
    dataset = datasets.load_dataset("json", data_files=str(data_file), split="train")
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    config_cls, trainer_cls = {
        "sft": (trl.SFTConfig, trl.SFTTrainer),
        "dpo": (trl.DPOConfig, trl.DPOTrainer),
        "grpo": (trl.GRPOConfig, trl.GRPOTrainer),
    }[task]
    amp = (
        variant.startswith("tutorial") and not smoke
    )  # tutorials turn on fp16 on a T4; plain-fp32 stays fp32
    # bf16 off explicitly: TRL 1.16's configs default to bf16=True, which a T4 cannot run (and which would
    # make "fp32" runs bf16 on newer cards). Everything else stays at TRL's defaults: no tuning.
    config = config_cls(**fields, output_dir=str(out), fp16=amp, bf16=False, use_cpu=smoke)
    timer = StepTimer.make()
    extra = {}
    if task == "grpo":
        from align_recipes.rewards import build_reward_funcs

        extra["reward_funcs"] = build_reward_funcs([{"name": "length_penalty", "max_length": 64}])[0]
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
        **extra,
    )
    trainer.train()
    settings = {
        **_settings(config),
        "dtype": "float16" if half else "float32",
        "adapter": "lora",
        "profile": None,
    }
    return timer, settings, trainer.state.log_history


# ----------------------------------------------------------------------------------------- parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["sft", "dpo", "grpo"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--smoke", action="store_true", help="CPU code-path check with a toy shape; not a benchmark"
    )
    parser.add_argument("--child", nargs=3, metavar=("TASK", "VARIANT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    if args.child:
        task, variant, work = args.child
        print(
            "BENCH_RESULT " + json.dumps(child(task, variant, Path(work), args.steps, args.smoke)), flush=True
        )
        return 0
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(
            "bench/gpu_t4.py needs an NVIDIA GPU with CUDA; torch sees none, so nothing was measured.\n"
            "  (run it on a GPU machine; `--smoke` only checks the code paths on CPU and measures nothing)",
            file=sys.stderr,
        )
        return 2
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": args.smoke,
        "cap_gib": CAP_GIB,
        "steps": args.steps,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="align-gpu-bench-") as tmp:
        work = Path(tmp)
        build_model(work, args.smoke)
        write_data(work, args.smoke)
        for task in args.tasks:
            for variant in VARIANTS[task]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    task,
                    variant,
                    str(work),
                    "--steps",
                    str(args.steps),
                    *(["--smoke"] if args.smoke else []),
                ]
                proc = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                    env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
                )
                lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
                result = (
                    json.loads(lines[-1].split(" ", 1)[1])
                    if lines
                    else {
                        "task": task,
                        "variant": variant,
                        "status": f"crashed (rc {proc.returncode}): {proc.stderr[-400:]}",
                    }
                )
                results["runs"].append(result)
                shown = {
                    k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in result.items()
                    if k != "settings"
                }
                print(json.dumps(shown), flush=True)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
