"""vLLM server mode: the run's own local `vllm serve` (weights reach it through rl/vllm_sync.py).

With ``train.vllm_mode: server`` and no server named (plan/generator.py `given_server`), the run starts
`vllm serve` for the policy itself, the command line `trl vllm-serve` builds (TRL's `build_command`), on
127.0.0.1 and a free port, waits for its ``/health`` (bounded by ``vllm_server_timeout``), and stops it when
the run ends, whatever ended it: the server is in its own process group, which `LocalServer.stop` terminates,
and the kernel sends it SIGTERM if the training process dies without running that (``PR_SET_PDEATHSIG``).
A server that exits or never answers raises `ServerFailed` (the run's summary then says `failed`). One that dies
while the run trains shows up in the trainer as a refused connection (after TRL's client has retried for about a
minute); `died` names the real cause, which the run then reports (run/finish.py).

The server runs with ``VLLM_SERVER_DEV_MODE=1`` (as `trl vllm-serve` sets): on vLLM's CPU build the
weights are pushed through its dev-mode ``/collective_rpc`` (rl/vllm_sync.py `push_weights`).

A launch of several processes (FSDP2, DDP) gets one server for all its ranks, the layout OpenRLHF and verl use:
rank 0 starts and stops it, the other ranks are told its URL (`on_rank_zero`), and a server that fails on rank 0
fails every rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServerFailed(RuntimeError):
    """The local vLLM server exited or did not answer in time."""


# The local servers started and not yet stopped by this process (`died` looks at them).
_STARTED: list[LocalServer] = []


def died() -> ServerFailed | None:
    """A `ServerFailed` naming the local server that exited on its own while the run went on, or None."""
    for server in _STARTED:
        code = server.process.poll() if server.process is not None else None
        if code is not None:
            return ServerFailed(
                f"the local vLLM server on {server.url} exited with code {code} while the run was using it; "
                f"its log: {server.log_path}\n{server.log_tail()}"
            )
    return None


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process, before exec: its own process group, and SIGTERM when the trainer dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_command(
    model_path: str,
    port: int,
    dtype: str,
    max_model_len: int | None,
    cpu: bool,
    tensor_parallel_size: int = 1,
    max_num_seqs: int | None = None,
) -> list[str]:
    """`trl vllm-serve`'s `vllm serve` command line on 127.0.0.1:port, with the colocated engine's CPU
    settings (rl/vllm_engine.py: the policy's dtype, eager mode, a fixed KV cache) and the recipe's
    ``vllm_tensor_parallel_size`` and ``vllm_max_num_seqs``."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    from align_recipes.rl.vllm_engine import CPU_KV_CACHE_BYTES

    script = ScriptArguments(
        model=model_path,
        host=LOOPBACK,
        port=port,
        dtype=dtype or "auto",
        max_model_len=max_model_len,
        enforce_eager=cpu,
        log_level="warning",
        tensor_parallel_size=tensor_parallel_size,
    )
    extra = ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)] if cpu else []
    extra += ["--max-num-seqs", str(max_num_seqs)] if max_num_seqs else []
    return build_command(script, extra)


class LocalServer:
    """One `vllm serve` process for the run; `start` returns its base URL once it answers."""

    def __init__(self, command: list[str], port: int, log_path: Path, timeout: float):
        self.command, self.port, self.log_path, self.timeout = command, port, Path(log_path), timeout
        self.url = f"http://{LOOPBACK}:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )
        _STARTED.append(self)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # not left behind, and no longer watched by `died`
            raise
        return self.url

    def wait_ready(self, interval: float = 1.0) -> None:
        import requests

        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"the local vLLM server exited with code {self.process.returncode} before it answered; "
                    f"its log: {self.log_path}\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=interval).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(
                    f"the local vLLM server did not answer on {self.url} within {self.timeout:g} s "
                    f"(train.vllm_server_timeout); its log: {self.log_path}\n{self.log_tail()}"
                )
            time.sleep(interval)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds; waits for it."""
        if self in _STARTED:
            _STARTED.remove(self)
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def local_server(
    model_path: str,
    dtype: str | None,
    max_model_len: int | None,
    log_path: Path,
    timeout: float,
    cpu: bool,
    **engine: int | None,
) -> Iterator[str]:
    """A `LocalServer` for the block: yields its URL, and stops it however the block ends. ``engine``: the
    `serve_command` knobs (tensor_parallel_size, max_num_seqs)."""
    port = free_port()
    command = serve_command(model_path, port, dtype, max_model_len, cpu, **engine)
    server = LocalServer(command, port, log_path, timeout)
    try:
        yield server.start()
    finally:
        server.stop()


def max_model_len(config, model) -> int | None:
    """The longest prompt plus completion the trainer asks for, capped at the model's positions (vLLM refuses
    a longer max_model_len); None leaves it to vLLM (the model's positions)."""
    total = getattr(config, "vllm_max_model_length", None)
    completion = getattr(config, "max_new_tokens", None) or getattr(config, "max_completion_length", None)
    if total is None and completion:
        prompt = getattr(config, "max_prompt_length", None) or getattr(config, "max_length", None)
        total = prompt + completion if prompt else None
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(total, int(positions)) if total and positions else total or positions


def serve_policy(config, model, given: str | None, log_path: Path):
    """The run's local server when ``config`` asks for server mode and names none (``given``): starts it,
    points ``config.vllm_server_base_url`` at it, and stops it when the block ends. Else a no-op."""
    if not getattr(config, "use_vllm", False) or getattr(config, "vllm_mode", None) != "server" or given:
        return contextlib.nullcontext(None)
    return _serving(config, model, log_path)


@contextlib.contextmanager
def _serving(config, model, log_path: Path) -> Iterator[str]:
    from align_recipes.rl.vllm_engine import dtype_name, on_cpu_build
    from align_recipes.rl.vllm_sync import model_source

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        getattr(config, "device", None)  # TrainingArguments start the process group (gloo on CPU) here

    source = model_source(model)
    timeout = float(getattr(config, "vllm_server_timeout", 240) or 240)
    cpu = on_cpu_build()
    engine = {
        "tensor_parallel_size": int(getattr(config, "vllm_tensor_parallel_size", 1) or 1),
        "max_num_seqs": getattr(config, "vllm_max_num_seqs", None),
    }
    length = max_model_len(config, model)

    def start():
        return local_server(source, dtype_name(model), length, log_path, timeout, cpu, **engine)

    with on_rank_zero(start) as url:
        config.vllm_server_base_url = url
        yield url


@contextlib.contextmanager
def on_rank_zero(start: Callable[[], contextlib.AbstractContextManager[str]]) -> Iterator[str]:
    """One server for every process of a launch (one per rank would be wrong): rank 0 enters ``start()`` (a
    context yielding the server's URL, which stops it on exit) and sends the URL to the others. When rank 0
    cannot start it, every rank raises `ServerFailed` instead of waiting for a URL that never comes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        with start() as url:
            yield url
        return
    message: list[str | None] = [None, None]  # the URL, or why there is none
    with contextlib.ExitStack() as stack:
        if dist.get_rank() == 0:
            try:
                message[0] = stack.enter_context(start())
            except Exception as exc:
                message[1] = f"{type(exc).__name__}: {exc}"
                dist.broadcast_object_list(message, src=0)
                raise
        dist.broadcast_object_list(message, src=0)
        if message[0] is None:
            raise ServerFailed(f"rank 0 could not start the vLLM server: {message[1]}")
        yield message[0]
