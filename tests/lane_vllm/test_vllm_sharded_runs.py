"""Sharded RL with one vLLM server (issue 21, part 5), the layout OpenRLHF and verl use: ppo, spo and grpo train
under FSDP2 in 2 processes (`accelerate launch`, configs/accelerate/cpu_fsdp2.yaml), and every rank samples
through one `vllm serve`, which rank 0 syncs from the sharded policy by file (rl/vllm_sync.py).

One server, started here before the launches as a user would (`trl vllm-serve` on its own machine), serves the
three runs in turn. Each run evaluates at its last step, so its last sync pushes the final weights, and the test
then asks the server for the log-probabilities of a fixed completion: they must equal the saved policy's. A
sync that was skipped, or wrote the wrong weights, leaves the server on the previous weights (the checkpoint, or
the previous run's policy), and the check also asserts that those are far from the saved policy's.

Short runs (few steps, a lower learning rate): the proof is that sharded training through the server runs, does
not break the policy, and that the server holds what trained. Five steps claim no direction for the held-out
metric (below); the whole SPO recipe through vLLM carries that proof (test_vllm_online_runs.py).

A run starting its own server in a launch of several processes (rank 0 starts it for all ranks) runs last, and
leaves no server behind; stand-in servers check the same in tests/rl/test_vllm_sharded_sync.py without vLLM.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

import pytest
import requests
import torch
from launch_helpers import REPO, clean_env, launch_command
from test_vllm_online_runs import assert_trained_through_vllm, held_out_moves

# float32 on both sides; the server sums in another order than transformers' eager forward (1e-6 to 4e-6 on
# this model in test_vllm_weight_sync.py).
TOLERANCE = 1e-4
QUESTION, ANSWER = "7+5=", "12"  # a toy-task prompt (chat template) and its answer with the EOS token
STEPS = 5
# The recipes dip before they climb (test_vllm_online_runs.py), so the short runs take a lower learning rate:
# at 3e-5 GRPO fell after 5 steps here (exact match 0.79 -> 0.72, TRL's sampling_logp_difference at most 1e-5:
# the server sampled from the policy's weights; through transformers in the same launch 0.79 -> 0.76), and SPO
# after 3 steps (0.79 -> 0.74). At 1e-5 the policy still moves far beyond the tolerance (asserted below).
LEARNING_RATE = 1e-5
ALGORITHMS = ("ppo", "spo", "grpo")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(URL, served model path): one local `vllm serve` of the tiny SFT policy for every run of this module."""
    from align_recipes.rl import vllm_server
    from align_recipes.tiny import ensure_builtin

    model = str(ensure_builtin("builtin:tiny-qwen2-sft"))
    log = tmp_path_factory.mktemp("server") / "vllm_server.log"
    with vllm_server.local_server(model, "float32", 512, log, 600, cpu=True) as url:
        yield url, model


def completion_logprobs(url: str, model: str, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The server's log-probability of each completion token after the prompt (its prompt log-probs)."""
    body = {
        "model": model,
        "prompt": prompt + completion,
        "max_tokens": 1,
        "temperature": 1.0,
        "prompt_logprobs": 0,
    }
    answer = requests.post(f"{url}/v1/completions", json=body, timeout=120)
    answer.raise_for_status()
    rows = answer.json()["choices"][0]["prompt_logprobs"]
    picked = [
        rows[i][str(token)]["logprob"] for i, token in enumerate(prompt + completion) if i >= len(prompt)
    ]
    return torch.tensor(picked, dtype=torch.float64)


@torch.no_grad()
def policy_logprobs(path: str | Path, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The same from a plain transformers forward of a saved model folder (full weights, or base + adapter)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([prompt + completion])
    logits = model.eval()(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def launch_through(url: str | None, algorithm: str, out: Path) -> tuple[dict, str]:
    """A 2-process FSDP2 launch of the recipe through the server at ``url`` (None: the run starts its own)."""
    server = [f"train.vllm_server_base_url={url}"] if url else []
    command = launch_command(
        "cpu_fsdp2",
        f"recipes/tiny/{algorithm}.yaml",
        out,
        "train.use_vllm=true",
        "train.vllm_mode=server",
        *server,
        f"train.max_steps={STEPS}",
        f"train.learning_rate={LEARNING_RATE}",
        # An evaluation after the last step: it samples through the server, after a sync of the final weights.
        "data.eval={path: recipes/tiny/data/eval.jsonl}",
        "train.eval_strategy=steps",
        f"train.eval_steps={STEPS}",
    )
    started, cpu = time.monotonic(), children_cpu()
    done = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=1200)
    wall, cpu = time.monotonic() - started, children_cpu() - cpu
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return json.loads((out / "summary.json").read_text()), f"{wall:.1f} s wall, {cpu:.1f} s CPU"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sharded_run_through_one_server(server, tmp_path, algorithm):
    from transformers import AutoTokenizer

    url, served = server
    tokenizer = AutoTokenizer.from_pretrained(served)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    completion = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    before = completion_logprobs(
        url, served, prompt, completion
    )  # the checkpoint, or the previous run's policy

    summary, took = launch_through(url, algorithm, tmp_path / "run")

    # Five steps are too few to raise the held-out metric, and SPO dips first: through the server at 1e-5, exact
    # match went 0.79 -> 0.75-0.77 at each of seeds 42, 1, 2, 3 and 7 here, "fell" at seed 7 (interval
    # [-0.079, -0.001]) and at seed 42 on CI's CPU. So no verdict is asserted, only that no metric lost more
    # than MAX_DIP (test_vllm_online_runs.py): a policy that training broke loses most of its 0.79.
    assert_trained_through_vllm(summary, mode="server")
    assert summary["generator"]["server"] == url
    assert summary["distributed"]["engine"] == "fsdp2" and summary["distributed"]["processes"] == 2
    saved = policy_logprobs(tmp_path / "run", prompt, completion)
    after = completion_logprobs(url, served, prompt, completion)
    gaps = [(after - saved).abs().max().item(), (before - saved).abs().max().item()]
    # The figures docs/scaling.md quotes
    print(
        f"{algorithm}: {took}, training {summary.get('runtime_s')} s, gaps {gaps}, {held_out_moves(summary)}"
    )
    assert (after - saved).abs().max().item() < TOLERANCE, (after, saved)
    # What the server held before this run is measurably another policy: had the sync been skipped, the
    # check above would have failed.
    assert (before - saved).abs().max().item() > 10 * TOLERANCE, (before, saved)


@pytest.mark.slow
def test_a_launch_without_a_server_starts_one_on_rank_0_and_leaves_none(tmp_path):
    """No server named: rank 0 starts one local `vllm serve` for both ranks and stops it when the run ends."""
    from test_vllm_server_sync import serves_on

    summary, took = launch_through(None, "spo", tmp_path / "run")
    print(f"spo, own server: {took}")
    assert summary["status"] == "complete" and summary["generator"]["mode"] == "server"
    url = summary["generator"]["server"]
    assert url.startswith("http://127.0.0.1:")
    assert summary["distributed"]["processes"] == 2
    assert serves_on(url) == []  # by its port: other `vllm serve`s may run on a shared machine
