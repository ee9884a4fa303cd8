"""Sampling throughput: vLLM's CPU build against transformers' ``generate``, on the tiny model and at the
qwen05b real shape (rehearse's architecture: Qwen2-0.5B's config cut to 2 layers, random weights, the real
151,936-token vocabulary). Same prompts (random token ids), same budget (every row samples exactly
``--new-tokens``: vLLM ignores EOS, transformers is held to min_new_tokens), temperature 1, float32 on both
sides, one rollout batch per "step". Both engines live in this process (vLLM without its engine process), so
the CPU time of the process is the cost of the step on a machine shared with other work; wall time is also
recorded. The engines alternate step by step, so load from other processes falls on both.

Run in the vLLM lane's environment:
    PYTHONPATH=src OMP_NUM_THREADS=2 .venv-vllm/bin/python bench/vllm_generation.py --out bench/results/x.json
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

os.environ.setdefault(
    "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
)  # the engine in this process: its CPU time counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

CACHE = Path(".cache/bench")


def real_shape_model() -> Path:
    """Qwen2-0.5B's architecture as rehearse builds it (2 layers, random weights, seed 0), float32."""
    import torch
    from transformers import AutoModelForCausalLM

    from align_recipes.results.rehearse import shapes

    asset = shapes.shipped()["qwen/qwen2-0.5b-instruct"]
    folder = CACHE / "qwen05b-2layers"
    if (folder / "config.json").is_file():
        return folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shapes.SEED)
        model = AutoModelForCausalLM.from_config(shapes.to_config(shapes.cut_layers(asset["config"])))
    model.to(torch.float32).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_model() -> Path:
    from align_recipes.tiny import ensure_tiny_model

    return Path(ensure_tiny_model())


def prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, min(vocab, 150000) - 1, (count, length), generator=generator).tolist()


class Transformers:
    def __init__(self, folder: Path, new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.config = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
        )

    def step(self, batch: list[list[int]]) -> int:
        ids = self.torch.tensor(batch)
        with self.torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=self.torch.ones_like(ids), generation_config=self.config
            )
        return int((out.shape[1] - ids.shape[1]) * out.shape[0])


class VLLM:
    def __init__(self, folder: Path, new_tokens: int, max_len: int, batch: int):
        from vllm import LLM, SamplingParams

        from align_recipes.rl.vllm_engine import engine_arguments

        self.llm = LLM(
            model=str(folder),
            skip_tokenizer_init=True,
            max_model_len=max_len,
            max_num_seqs=batch,
            seed=0,
            **engine_arguments("float32", cpu=True),
        )
        self.params = SamplingParams(
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_tokens=new_tokens,
            ignore_eos=True,
            logprobs=0,
            detokenize=False,
        )

    def step(self, batch: list[list[int]]) -> int:
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in batch], self.params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outputs)


def measure(engine, batch, results: list) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    tokens = engine.step(batch)
    results.append((tokens, time.process_time() - cpu, time.perf_counter() - wall))


def summarise(runs: list) -> dict:
    tokens = runs[0][0]
    cpu = statistics.median(r[1] for r in runs)
    wall = statistics.median(r[2] for r in runs)
    return {
        "tokens_per_step": tokens,
        "step_cpu_s": round(cpu, 3),
        "step_wall_s": round(wall, 3),
        "tokens_per_cpu_s": round(tokens / cpu, 1),
        "tokens_per_wall_s": round(tokens / wall, 1),
        "steps": [[round(c, 3), round(w, 3)] for _, c, w in runs],
    }


def bench(shape: str, folder: Path, batch_size: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    batch = prompts(vocab, batch_size, prompt_len)
    hf = Transformers(folder, new_tokens)
    vllm = VLLM(folder, new_tokens, prompt_len + new_tokens, batch_size)
    hf.step(batch), vllm.step(batch)  # warm-up: first-call allocations, vLLM's first schedule
    hf_runs, vllm_runs = [], []
    for _ in range(repeats):  # alternate, so other processes' load falls on both
        measure(hf, batch, hf_runs)
        measure(vllm, batch, vllm_runs)
    result = {"shape": shape, "model": str(folder), "vocab": vocab, "transformers": summarise(hf_runs)}
    result["vllm"] = summarise(vllm_runs)
    result["vllm_over_transformers_cpu"] = round(
        result["vllm"]["tokens_per_cpu_s"] / result["transformers"]["tokens_per_cpu_s"], 2
    )
    result["vllm_over_transformers_wall"] = round(
        result["vllm"]["tokens_per_wall_s"] / result["transformers"]["tokens_per_wall_s"], 2
    )
    del vllm
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,qwen05b")
    parser.add_argument("--batch", type=int, default=32, help="prompts per rollout step")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/vllm-generation.json"))
    args = parser.parse_args()
    import torch
    import vllm

    builders = {"tiny": tiny_model, "qwen05b": real_shape_model}
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start",
        "torch_threads": torch.get_num_threads(),
        "vllm": vllm.__version__,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "shapes": [],
    }
    shapes = args.shapes.split(",")
    for shape in shapes:
        if len(shapes) > 1:  # one vLLM engine per process: each shape in its own
            part = args.out.with_suffix(f".{shape}.json")
            command = [sys.executable, __file__, "--shapes", shape, "--out", str(part)]
            command += ["--batch", str(args.batch), "--prompt-len", str(args.prompt_len)]
            command += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            subprocess.run(command, check=True)
            found = json.loads(part.read_text())["shapes"][0]
            part.unlink()
            results["shapes"].append(found)
            continue
        found = bench(shape, builders[shape](), args.batch, args.prompt_len, args.new_tokens, args.repeats)
        results["shapes"].append(found)
        print(
            f"{shape}: transformers {found['transformers']['tokens_per_cpu_s']} tok/CPU-s, "
            f"vLLM {found['vllm']['tokens_per_cpu_s']} tok/CPU-s: {found['vllm_over_transformers_cpu']}x "
            f"(wall {found['vllm_over_transformers_wall']}x)",
            flush=True,
        )
    results["load_average_at_end"] = round(os.getloadavg()[0], 1)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
