"""The run's local vLLM server is waited for with a bound and never left behind (rl/vllm_server.py). Stand-in
servers (a few lines of Python) replace `vllm serve`: the lifecycle is the same, and no vLLM is needed."""

from __future__ import annotations

import sys

import pytest

from align_recipes.rl import vllm_server

HEALTHY = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def server(tmp_path, code: str, timeout: float = 30.0, *args: str) -> vllm_server.LocalServer:
    port = vllm_server.free_port()
    command = [sys.executable, "-c", code, str(port), *args]
    return vllm_server.LocalServer(command, port, tmp_path / "server.log", timeout)


def test_starts_answers_and_stops(tmp_path):
    local = server(tmp_path, HEALTHY)
    url = local.start()
    assert url == f"http://127.0.0.1:{local.port}"
    process = local.process
    local.stop()
    assert process.poll() is not None


def test_stopped_when_the_run_fails(tmp_path):
    local = server(tmp_path, HEALTHY)
    with pytest.raises(RuntimeError, match="training broke"):
        try:
            local.start()
            process = local.process
            raise RuntimeError("training broke")
        finally:
            local.stop()
    assert process.poll() is not None


def test_a_server_that_exits_is_a_clear_error(tmp_path):
    local = server(tmp_path, "import sys; print('no model here'); sys.exit(3)")
    with pytest.raises(vllm_server.ServerFailed, match="exited with code 3") as failed:
        local.start()
    assert "no model here" in str(failed.value)  # the log's tail


def test_a_server_that_never_answers_is_stopped_at_the_timeout(tmp_path):
    local = server(tmp_path, "import time; time.sleep(600)", 2.0)
    with pytest.raises(vllm_server.ServerFailed, match="did not answer .* within 2 s"):
        local.start()
    assert local.process is None  # stopped, and waited for


def test_stop_reaches_the_servers_children(tmp_path):
    """`vllm serve` runs engine processes of its own: the whole process group goes."""
    spawn = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[2], 'w').write(str(child.pid))\n" + HEALTHY
    )
    pid_file = tmp_path / "child.pid"
    local = server(tmp_path, spawn, 30.0, str(pid_file))
    local.start()
    child = int(pid_file.read_text())
    local.stop()
    import os
    import time

    for _ in range(50):  # the child is reaped by init once it has exited
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the server's child {child} is still running")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"vllm_max_model_length": 300}, 300),
        ({"max_prompt_length": 100, "max_new_tokens": 6}, 106),  # ppo/spo
        ({"max_prompt_length": 100, "max_completion_length": 8}, 108),  # grpo/rloo
        ({"max_length": 64, "max_new_tokens": 6}, 70),  # online dpo
        ({"max_prompt_length": 600, "max_new_tokens": 6}, 512),  # capped at the model's positions
        ({}, 512),
    ],
)
def test_max_model_len(config, expected):
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    assert vllm_server.max_model_len(SimpleNamespace(**config), model) == expected


def test_a_server_that_dies_during_the_run_is_named_as_the_cause(tmp_path):
    """The trainer only sees a refused connection; the run reports the server's death, exit code and log tail
    instead (run/finish.py `server_death`), and the summary says `failed` with that error."""
    import os
    import signal

    from align_recipes.run import finish
    from align_recipes.run.rundir import RunDir

    local = server(tmp_path, "print('serving the tiny model')\n" + HEALTHY)
    local.start()
    refused = ConnectionError("HTTPConnectionPool(host='127.0.0.1'): Max retries exceeded")
    assert vllm_server.died() is None and finish.server_death(refused) is refused
    os.killpg(local.process.pid, signal.SIGKILL)
    local.process.wait()
    cause = finish.server_death(refused)
    assert isinstance(cause, vllm_server.ServerFailed)
    assert f"server on {local.url} exited with code -9 while the run was using it" in str(cause)
    assert "serving the tiny model" in str(cause)  # the log's tail
    assert finish.server_death(KeyboardInterrupt()) is not cause  # Ctrl-C stays Ctrl-C
    run_dir = RunDir(tmp_path / "run")
    finish.write_failed(run_dir, {"algorithm": "ppo"}, cause, existed=False)
    summary = run_dir.summary()
    assert summary["status"] == "failed" and "ServerFailed: the local vLLM server" in summary["error"]
    local.stop()  # the run's ExitStack: nothing left to stop, and no longer watched
    assert vllm_server.died() is None


def test_overwrite_keeps_the_log_of_the_server_this_run_already_started(tmp_path):
    """The run's own server starts (and writes its log in the output folder) before the folder is prepared;
    --overwrite clears the old run around it instead of deleting the live log."""
    from types import SimpleNamespace

    from align_recipes.run import training
    from align_recipes.run.rundir import RunDir, clear_folder

    run_dir = RunDir(tmp_path / "run")
    (run_dir.path / "checkpoint-5").mkdir(parents=True)
    for name in ("summary.json", "model.safetensors", "vllm_server.log"):
        (run_dir.path / name).write_text("old run" if name != "vllm_server.log" else "this run's server")
    plan = SimpleNamespace(train={"vllm_server_base_url": None}, source=lambda key: "recipe")
    parts = SimpleNamespace(config=SimpleNamespace(use_vllm=True), model=None)
    training.serve_policy(plan, parts, run_dir)  # not entered: nothing starts, the log is registered
    assert run_dir.live == {"vllm_server.log"}
    clear_folder(run_dir.path, keep=run_dir.live)
    assert [p.name for p in run_dir.path.iterdir()] == ["vllm_server.log"]
    assert (run_dir.path / "vllm_server.log").read_text() == "this run's server"
