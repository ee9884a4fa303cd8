"""A colocated vLLM engine makes a one-process torch.distributed group at MASTER_PORT. TRL takes 29500 when it
looks free, so two runs started together on one machine collided (EADDRINUSE); `vllm_engine.for_policy` gives
an unlaunched run a port from the OS instead, and leaves a launcher's alone. No vLLM needed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from align_recipes.rl import vllm_engine


def ephemeral_range() -> range:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("unset", [None, "", "0", "auto", " AUTO "])
def test_a_run_no_launcher_started_takes_a_free_port_from_the_os(unset):
    environ = {} if unset is None else {"MASTER_PORT": unset}
    vllm_engine.own_rendezvous_port(environ)
    port = int(environ["MASTER_PORT"])
    assert port in ephemeral_range() and port != 29500  # not TRL's fixed first choice
    assert free(port)


def test_a_launchers_port_is_left_alone():
    environ = {"MASTER_PORT": "29517"}
    vllm_engine.own_rendezvous_port(environ)
    assert environ == {"MASTER_PORT": "29517"}


def test_the_engine_context_sets_the_port_before_trl_builds_the_engine(monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setattr(vllm_engine, "on_cpu_build", lambda: False)
    with vllm_engine.for_policy(torch.nn.Linear(2, 2)):
        assert int(os.environ["MASTER_PORT"]) in ephemeral_range()
    monkeypatch.delenv("MASTER_PORT")
    with vllm_engine.for_policy(torch.nn.Linear(2, 2), enabled=False):
        assert "MASTER_PORT" not in os.environ  # vLLM off: nothing set
