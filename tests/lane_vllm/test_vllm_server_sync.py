"""Server mode on vLLM's CPU build: the run's local `vllm serve` (as `trl vllm-serve` starts it), TRL's client
for generation, and weight sync by file through the server's layerwise reload (rl/vllm_server.py), proved as
the colocated sync is: vLLM's log-probs of its samples equal the policy's forward log-probs after k steps, and
a skipped sync fails. Then a run in server mode starts its own server and leaves none behind."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import subprocess

import pytest
import torch
from test_vllm_online_runs import assert_trained_through_vllm, train
from test_vllm_weight_sync import TOLERANCE, max_gap, train_steps


@contextlib.contextmanager
def server_engine(tiny_dir: str, log, **server):
    """TRL VLLMGeneration in server mode on a local tiny-model server (``server``: local_server's engine
    settings) with our sync installed; yields (engine, tokenizer)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.generation.vllm_generation import VLLMGeneration

    from align_recipes.rl import vllm_engine, vllm_server

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with vllm_server.local_server(tiny_dir, "float32", 128, log, 600, cpu=True, **server) as url:
        with vllm_engine.for_policy(model):
            engine = VLLMGeneration(
                model=model,
                accelerator=Accelerator(cpu=True),
                processing_class=tokenizer,
                mode="server",
                server_base_url=url,
                server_timeout=60,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_completion_length=12,
                logprobs=0,
            )
        vllm_engine.install_sync(engine)
        yield engine, tokenizer


def assert_sync_tracks_training(engine, tokenizer, model) -> None:
    """Trained away from what the server holds, one sync closes the gap, and training on reopens it."""
    train_steps(model, k=3)
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE  # the server still holds the old weights
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE
    train_steps(model, k=3, seed=1)
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    """(TRL VLLMGeneration in server mode on a local tiny-model server with our sync, tokenizer)."""
    # `vllm serve` reads this; `make test-vllm` writes a `vllm` dist-info for the CPU build (Makefile).
    assert importlib.metadata.version("vllm").endswith("+cpu"), "run through make test-vllm"
    with server_engine(tiny_dir, tmp_path_factory.mktemp("server") / "vllm_server.log") as served:
        yield served


def test_server_sync_after_k_steps(served):
    engine, tokenizer = served
    model = copy.deepcopy(engine.model)
    engine.model = model
    assert_sync_tracks_training(engine, tokenizer, model)
    engine.sync_weights()
    assert max_gap(engine, tokenizer, model) < TOLERANCE


def test_online_dpo_trainer_syncs_a_server_by_file(served):
    """TRL's online DPO holds its own client: `adopt` routes its ``_move_model_to_vllm`` through the file
    sync (TRL's would need NCCL)."""
    from types import SimpleNamespace

    from align_recipes.rl import vllm_engine

    engine, tokenizer = served
    model = copy.deepcopy(engine.model)
    engine.model = model
    trainer = SimpleNamespace(
        vllm_mode="server",
        llm=None,
        vllm_client=engine.vllm_client,
        accelerator=engine.accelerator,
        model=model,
        eos_token_ids=[7],
        generation_config=None,
        _move_model_to_vllm=None,
    )
    vllm_engine.adopt(trainer)
    train_steps(model, k=3, seed=3)
    assert max_gap(engine, tokenizer, model) > 100 * TOLERANCE
    trainer._move_model_to_vllm()
    assert max_gap(engine, tokenizer, model) < TOLERANCE


def test_online_dpo_server_generation_stops_on_the_trainers_eos_set(served, tiny_dir):
    """What `adopt` gives online DPO's client reaches the server: stop on every token of the tiny vocabulary,
    and each completion is one token long; without it the server samples on (tests/rl/
    test_online_dpo_server_stop_tokens.py shows TRL sends nothing otherwise)."""
    from transformers import AutoConfig
    from trl.generation.vllm_client import VLLMClient

    from align_recipes.rl import vllm_engine

    engine, _ = served
    client = VLLMClient(base_url=engine.vllm_client.base_url, connection_timeout=30)
    ask = {"prompts": ["1+2=", "hello"], "n": 4, "max_tokens": 8, "temperature": 1.0}
    plain = client.generate(**ask)["completion_ids"]
    assert max(len(c) for c in plain) > 1
    vocabulary = list(range(AutoConfig.from_pretrained(tiny_dir).vocab_size))
    vllm_engine.stop_server_on(client, vocabulary)
    stopped = client.generate(**ask)["completion_ids"]
    assert [len(c) for c in stopped] == [1] * 8


def serve_processes(parent: int | None = None) -> dict[int, str]:
    """pid -> command line of the `vllm serve` processes running now (only ``parent``'s children when given).
    Read whole from /proc by psutil: `ps` cuts its lines to the terminal's width ($COLUMNS), which hid the
    server from this check on CI."""
    import psutil

    found = psutil.Process(parent).children() if parent else psutil.process_iter()
    lines = {}
    for process in found:
        with contextlib.suppress(psutil.Error):
            lines[process.pid] = " ".join(process.cmdline())
    return {pid: line for pid, line in lines.items() if "vllm.entrypoints.cli.main serve" in line}


def serves_on(url: str) -> list[str]:
    """The `vllm serve` processes on the port of ``url`` (other tests' servers may run meanwhile: the lane runs
    on two workers)."""
    port = url.rstrip("/").rsplit(":", 1)[1].split("/")[0]
    return [line for line in serve_processes().values() if f"--port {port} " in line + " "]


@pytest.mark.slow
def test_server_mode_run_starts_and_stops_its_server(tmp_path):
    summary = train(
        tmp_path, "ppo.yaml", "train.vllm_mode=server", "train.max_steps=10", "train.learning_rate=3e-5"
    )
    assert_trained_through_vllm(summary, mode="server")
    assert summary["generator"]["server"].startswith("http://127.0.0.1:")
    assert (tmp_path / "run" / "vllm_server.log").is_file()
    assert serves_on(summary["generator"]["server"]) == []


@pytest.mark.slow
def test_a_server_that_does_not_answer_fails_the_run(tmp_path):
    """vllm_server_timeout bounds the wait (vLLM alone takes longer than 1 s to import): a `failed` summary
    that says why, and no server left behind."""
    summary = train(
        tmp_path, "grpo.yaml", "train.vllm_mode=server", "train.vllm_server_timeout=1", succeeds=False
    )
    assert summary["status"] == "failed"
    assert "did not answer on http://127.0.0.1:" in summary["error"]
    url = summary["error"].split("did not answer on ")[1].split()[0].rstrip(".,;:)")
    assert serves_on(url) == []


@pytest.mark.slow
def test_a_server_that_dies_mid_run_fails_the_run(tmp_path):
    """The run's own server is killed once training has begun (summary.json says `running`): the run ends
    (no hang) with a `failed` summary whose error names the server's death, its exit code and log."""
    import json
    import os
    import signal
    import sys
    import time

    from test_vllm_online_runs import ROOT

    out = tmp_path / "run"
    command = [sys.executable, "-m", "align_recipes", "train", "recipes/tiny/ppo.yaml", "train.use_vllm=true"]
    command += ["train.vllm_mode=server", f"train.output_dir={out}", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    log = tmp_path / "train.log"  # a file, not a pipe: nobody reads it while the run goes on
    with open(log, "w") as sink:
        run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        summary = out / "summary.json"
        deadline = time.monotonic() + 600
        while not (summary.is_file() and json.loads(summary.read_text())["status"] == "running"):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before it trained"
            time.sleep(1)
        server = list(serve_processes(parent=run.pid))
        assert len(server) == 1, "the run's own server (its child) was not found"
        os.killpg(server[0], signal.SIGKILL)  # the server leads its own process group
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, log.read_text()[-3000:]
    result = json.loads(summary.read_text())
    assert result["status"] == "failed"
    assert "ServerFailed: the local vLLM server on http://127.0.0.1:" in result["error"]
    assert "exited with code -9 while the run was using it" in result["error"]
    with pytest.raises(ProcessLookupError):  # nothing of it left behind
        os.killpg(server[0], 0)


@pytest.mark.slow
def test_tensor_parallel_server_sync(tiny_dir, tmp_path, monkeypatch):
    """A 2-way tensor-parallel local server on CPU (each worker's cores listed: vLLM would otherwise want a NUMA
    node per worker, plan/feasibility.py) takes the file sync in both workers: the gap after a sync is as small
    as with one worker (1.4e-6 measured), and a skipped sync fails."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    with server_engine(tiny_dir, tmp_path / "vllm_server.log", tensor_parallel_size=2) as (engine, tokenizer):
        assert_sync_tracks_training(engine, tokenizer, engine.model)
