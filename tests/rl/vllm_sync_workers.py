"""What each rank of tests/rl/test_vllm_sharded_sync.py's 2-process gloo group runs (spawned processes import the
module their function lives in, so it is a module of its own)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from align_recipes.rl import vllm_sync


def tiny_qwen2(lora: bool):
    """A 2-layer Qwen2 with a tied head, the same weights on every rank; under LoRA the adapter's B is nonzero
    (a fresh adapter adds nothing, so a merge that forgot it would still pass)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    return model


def shard(model) -> None:
    """FSDP2 as accelerate wraps the policy: one unit per decoder layer and the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in (
        model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers
    ):
        fully_shard(layer)
    fully_shard(model)


class Session:
    """TRL's client session, recording what the server would have been asked."""

    def __init__(self):
        self.posts = []

    def post(self, url, json=None, timeout=None):
        self.posts.append(url.rsplit("/", 1)[-1])
        return SimpleNamespace(status_code=200, text="", raise_for_status=lambda: None)


def sync_by_file(rank: int, out_dir: Path, lora: bool) -> None:
    """Expected: the unsharded model's `policy_weights`. Then the model is sharded and synced by file as TRL's
    engine in server mode would be; rank 0 reads the file written back and checks it against the expected."""
    import torch.distributed as dist
    from safetensors.torch import load_file

    model = tiny_qwen2(lora)
    expected = {name: tensor.clone() for name, tensor in vllm_sync.policy_weights(model)}
    query = "model.layers.0.self_attn.q_proj.weight"
    base = dict(model.named_parameters())[
        ("base_model.model." + query.replace(".weight", ".base_layer.weight")) if lora else query
    ]
    report = {"merge_changes_q_proj": not torch.equal(expected[query], base)}
    shard(model)
    folder = out_dir / f"weights-{'lora' if lora else 'full'}"
    folder.mkdir(exist_ok=True)
    session = Session()
    engine = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(is_main_process=rank == 0, wait_for_everyone=dist.barrier),
        vllm_client=SimpleNamespace(session=session, base_url="http://server") if rank == 0 else None,
        _weights_folder=str(folder),
    )
    vllm_sync.sync_server_by_file(engine)
    report["posts"] = session.posts
    if rank == 0:
        written = load_file(str(folder / vllm_sync.WEIGHTS_FILE))
        report["names"] = sorted(written) == sorted(expected)
        report["max_difference"] = max((written[n] - expected[n]).abs().max().item() for n in expected)
    from torch.distributed.tensor import DTensor

    report["sharded_after"] = all(isinstance(p, DTensor) for p in model.parameters())
    (out_dir / f"{'lora' if lora else 'full'}_{rank}.json").write_text(json.dumps(report))


HEALTHY = (  # a stand-in for `vllm serve`: answers /health
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def one_server(rank: int, out_dir: Path) -> None:
    """`vllm_server.on_rank_zero` with stand-in servers: rank 0 starts one, both ranks reach it, it is stopped
    when the block ends; then a server that exits at once fails both ranks (none waits for a URL)."""
    import contextlib
    import sys

    import requests
    import torch.distributed as dist

    from align_recipes.rl import vllm_server

    started = []

    @contextlib.contextmanager
    def start(code=HEALTHY):
        started.append(rank)
        port = vllm_server.free_port()
        server = vllm_server.LocalServer([sys.executable, "-c", code, str(port)], port, out_dir / "log", 30)
        try:
            yield server.start()
            started.append(server.process)
        finally:
            server.stop()

    report = {}
    with vllm_server.on_rank_zero(start) as url:
        report["url"] = url
        report["answers"] = requests.get(f"{url}/health", timeout=10).status_code
        dist.barrier()  # in a run, the training's collectives keep rank 0 from leaving first
    report["started_here"] = rank in started
    report["stopped"] = all(process.poll() is not None for process in started[1:])
    try:
        with vllm_server.on_rank_zero(lambda: start("import sys; sys.exit(3)")):
            report["failed"] = None
    except vllm_server.ServerFailed as exc:
        report["failed"] = str(exc).splitlines()[0]
    (out_dir / f"server_{rank}.json").write_text(json.dumps(report))


def run_rank(rank: int, world: int, init: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for lora in (False, True):
            sync_by_file(rank, Path(out_dir), lora)
        one_server(rank, Path(out_dir))
    finally:
        dist.destroy_process_group()
