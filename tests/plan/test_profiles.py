"""Hardware profiles: GPU detection from nvidia-smi text, size rules, the effective batch, vLLM and
FlashAttention choices, recipe-beats-profile, and every impossible combination as a RecipeError with a
fix. No GPU is needed: the hardware is faked with nvidia-smi output and optional packages with
monkeypatched look-ups."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from align_recipes.cli import main
from align_recipes.errors import RecipeError, RecipeErrors
from align_recipes.plan import hardware, model_size, profile_layer, profiles
from align_recipes.plan.load import load_plan

REPO = Path(__file__).resolve().parents[2]

SMI = {
    "t4": "Tesla T4, 15360, 7.5",
    "l4": "NVIDIA L4, 23034, 8.9",
    "a10g": "NVIDIA A10G, 23028, 8.6",
    "a100_40": "NVIDIA A100-SXM4-40GB, 40960, 8.0",
    "a100_80": "NVIDIA A100-SXM4-80GB, 81920, 8.0",
    "h100": "NVIDIA H100 80GB HBM3, 81559, 9.0",
    "8xh100": "\n".join(["NVIDIA H100 80GB HBM3, 81559, 9.0"] * 8),
    "h200": "NVIDIA H200, 143771, 9.0",
    "v100": "Tesla V100-SXM2-32GB, 32768, 7.0",
    "rtx4090": "NVIDIA GeForce RTX 4090, 24564, 8.9",
    "none": "",
}


@pytest.fixture(autouse=True)
def _no_real_hardware(monkeypatch):
    """Every test sees no GPU unless it fakes one, and no launcher environment."""
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, "")
    for name in (
        "CUDA_VISIBLE_DEVICES",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE",
        "ACCELERATE_USE_FSDP",
        "WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)


def fake_packages(
    monkeypatch, *, vllm: str | None = None, flash_attn: bool = False, bitsandbytes: bool = True
):
    """Pretend which optional packages are installed (looked up without importing them)."""
    installed = {"vllm": vllm is not None, "flash_attn": flash_attn, "bitsandbytes": bitsandbytes}
    real = hardware.has_module
    monkeypatch.setattr(hardware, "has_module", lambda name: installed.get(name, real(name)))
    monkeypatch.setattr(hardware, "package_version", lambda name: vllm if name == "vllm" else None)


def write_recipe(
    tmp_path: Path,
    algorithm: str = "dpo",
    model: str = "Qwen/Qwen2.5-1.5B-Instruct",
    model_extra: str = "",
    train: str = "",
    name: str | None = None,
) -> Path:
    data = tmp_path / "data.jsonl"
    if algorithm in ("grpo", "ppo", "spo"):
        data.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}) + "\n")
        rewards = "rewards: [{name: exact_match, column: answer}]"
    else:
        data.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"}) + "\n")
        rewards = ""
    path = tmp_path / (name or f"{algorithm}.yaml")
    path.write_text(
        textwrap.dedent(f"""\
        algorithm: {algorithm}
        model: {{name_or_path: {model}{", " + model_extra if model_extra else ""}}}
        data: {{train: {{path: {data}}}}}
        {rewards}
        train: {{{train}}}
        """)
    )
    return path


def errors_of(call) -> list[RecipeError]:
    with pytest.raises((RecipeError, RecipeErrors)) as info:
        call()
    exc = info.value
    return exc.errors if isinstance(exc, RecipeErrors) else [exc]


def change(plan, key: str) -> profiles.Change:
    found = [c for c in plan.profile_changes if c.key == key]
    assert found, f"no change for {key}: {[c.key for c in plan.profile_changes]}"
    return found[-1]


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gpu, expected, count, memory, capability",
    [
        ("t4", "t4", 1, 15, 7.5),
        ("l4", "l4", 1, 22.5, 8.9),
        ("a10g", "l4", 1, 22.5, 8.6),
        ("a100_40", "a100", 1, 40, 8.0),
        ("a100_80", "a100", 1, 80, 8.0),
        ("h100", "h100", 1, 79.6, 9.0),
        ("8xh100", "h100", 8, 79.6, 9.0),
        ("h200", "h100", 1, 140.4, 9.0),
        ("v100", "t4", 1, 32, 7.0),  # unknown card without bf16: the fp16 profile
        ("rtx4090", "l4", 1, 24, 8.9),  # unknown 24 GB Ada card: matched by memory
    ],
)
def test_auto_detects_profile_from_nvidia_smi(gpu, expected, count, memory, capability):
    profile = profiles.resolve("auto", smi_output=SMI[gpu])
    assert profile.name == expected
    assert profile.gpu.count == count
    assert profile.gpu.memory_gb == pytest.approx(memory, abs=0.2)
    assert profile.gpu.compute_capability == capability
    assert str(count) in profile.detected


def test_auto_without_gpu_is_cpu():
    profile = profiles.resolve("auto", smi_output=SMI["none"])
    assert profile.name == "cpu" and profile.gpu is None and "no NVIDIA GPU" in profile.detected


def test_detection_reads_the_environment_hook_and_visible_devices(monkeypatch):
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, SMI["8xh100"])
    assert profiles.resolve("auto").gpu.count == 8
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert profiles.resolve("auto").gpu.count == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert profiles.resolve("auto").name == "cpu"


def test_old_driver_without_compute_cap_and_header_line():
    gpus = hardware.parse_nvidia_smi("name, memory.total [MiB]\nTesla T4, 15360 MiB\n")
    assert [(g.name, g.compute_capability) for g in gpus] == [("Tesla T4", 7.5)]
    assert gpus[0].arch == "Turing (sm75)" and not gpus[0].has_bf16


def test_manifest_lists_gpus_from_nvidia_smi_when_torch_is_not_loaded(monkeypatch):
    """The manifest's hardware record falls back to nvidia-smi when torch was never imported."""
    import sys

    from align_recipes.run import manifest

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, "\n".join([SMI["t4"]] * 2))
    gpus = manifest.hardware()["gpus"]
    assert gpus == [{"name": "Tesla T4", "memory_gib": 15.0, "capability": "7.5"}] * 2


def test_forced_profile_takes_gpu_count_only_from_matching_hardware():
    assert profiles.resolve("h100", smi_output=SMI["8xh100"]).gpu.count == 8
    assert profiles.resolve("h100", smi_output=SMI["t4"]).gpu.count == 1  # another machine: nominal
    assert profiles.resolve("t4", smi_output="").gpu.memory_gb == 16


def test_every_shipped_profile_loads_with_reasons_for_its_values():
    for name in profiles.available():
        profile = profiles.resolve(name)
        for section, values in (("model", profile.model), ("train", profile.train)):
            for key in values:
                assert f"{section}.{key}" in profile.why, f"{name}: {section}.{key} has no reason"


def test_profiles_ship_inside_the_package_and_a_project_may_add_its_own(tmp_path, monkeypatch):
    """An installed align-recipes (no repository around it) still has every profile of configs/profiles;
    a project's ./configs/profiles adds its own."""
    package_dir = Path(profiles.__file__).parents[1]  # src/align_recipes (profiles.py lives in plan/)
    assert profiles.PACKAGED_PROFILES.parent.parent == package_dir
    shipped = sorted(p.name for p in profiles.PACKAGED_PROFILES.glob("*.yaml"))
    assert shipped == sorted(
        p.name for p in (Path(__file__).parents[2] / "configs" / "profiles").glob("*.yaml")
    )
    assert {"cpu.yaml", "t4.yaml", "l4.yaml", "a100.yaml", "h100.yaml"} <= set(shipped)
    own = tmp_path / "configs" / "profiles"
    own.mkdir(parents=True)
    (own / "mygpu.yaml").write_text("gpu: {name: My GPU, memory_gb: 12, compute_capability: 8.6}\n")
    monkeypatch.chdir(tmp_path)
    assert {"cpu", "t4", "l4", "a100", "h100", "mygpu"} <= set(profiles.available())
    assert profiles.resolve("mygpu").gpu.memory_gb == 12


def test_unknown_key_in_a_profile_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("gpu: {name: X, memory_gb: 8, compute_capability: 8.6}\nrulez: []\n")
    monkeypatch.setenv("ALIGN_RECIPES_PROFILES", str(tmp_path))
    [error] = errors_of(lambda: profiles.resolve("mine"))
    assert "rulez" in error.message and "'rules'" in error.fix


# --- model size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params",
    [
        ("Qwen/Qwen2-0.5B-Instruct", 0.5e9),
        ("Qwen/Qwen2.5-1.5B-Instruct", 1.5e9),
        ("meta-llama/Llama-3.1-8B", 8e9),
        ("Qwen/Qwen2.5-72B-Instruct", 72e9),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 135e6),
        ("mistralai/Mixtral-8x7B-v0.1", 56e9),
        ("Qwen/Qwen3-30B-A3B", 30e9),
        ("openai-community/gpt2", None),
    ],
)
def test_size_from_the_name(name, params):
    assert model_size.estimate_params(name)[0] == (pytest.approx(params) if params else None)


def test_size_from_a_local_config_and_the_tiny_model(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {  # Qwen2-0.5B's shape
                "hidden_size": 896,
                "num_hidden_layers": 24,
                "intermediate_size": 4864,
                "vocab_size": 151936,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "tie_word_embeddings": True,
            }
        )
    )
    params, how = model_size.estimate_params(str(tmp_path))
    assert params == pytest.approx(494e6, rel=0.02) and "config.json" in how
    tiny, _ = model_size.estimate_params("builtin:tiny-qwen2")
    assert tiny < 5e6


# --- size rules --------------------------------------------------------------------------------------


def test_t4_with_1_5b_gets_qlora_in_fp16(tmp_path):
    plan = load_plan(write_recipe(tmp_path), profile="t4")
    model, train = plan.recipe["model"], plan.train
    assert (model["adapter"], model["quantization"], model["dtype"]) == ("qlora", "4bit", "float16")
    assert train["fp16"] is True and train["bf16"] is False and train["optim"] == "paged_adamw_8bit"
    assert model["attn_implementation"] == "sdpa"
    assert change(plan, "model.adapter").why == (
        "1.5B params > 1B on 16 GB: QLoRA 4-bit (fp16 weights plus activations leave no room; "
        "4-bit base weights, paged 8-bit AdamW)"
    )
    assert change(plan, "train.bf16").why == "T4 is Turing (sm75): no bf16"


def test_h100_with_0_5b_gets_full_fine_tuning_in_bf16(tmp_path):
    plan = load_plan(write_recipe(tmp_path, model="Qwen/Qwen2-0.5B-Instruct"), profile="h100")
    model, train = plan.recipe["model"], plan.train
    assert model["adapter"] == "full" and model.get("quantization", "none") == "none"
    assert train["bf16"] is True and train["fp16"] is False and train["activation_checkpointing"] is False
    assert model["dtype"] == "float32" and "fp32 master weights" in change(plan, "model.dtype").why


def test_24gb_card_with_1_5b_gets_lora_and_a100_80_trains_3b_in_full(tmp_path):
    plan = load_plan(write_recipe(tmp_path), profile="l4")
    assert plan.recipe["model"]["adapter"] == "lora" and plan.recipe["model"]["dtype"] == "bfloat16"
    recipe = write_recipe(tmp_path, model="Qwen/Qwen2.5-3B-Instruct")
    assert load_plan(recipe, profile="a100").recipe["model"]["adapter"] == "lora"  # nominal 40 GB
    profile_80 = profiles.resolve("auto", smi_output=SMI["a100_80"])
    layer, _ = profile_layer.layer_for(
        profile_80,
        None,
        {"name_or_path": "Qwen/Qwen2.5-3B-Instruct"},
        model_size.estimate_params("Qwen/Qwen2.5-3B-Instruct")[0],
    )
    assert layer["model"]["adapter"] == "full"


def test_tiny_model_on_t4_trains_in_full_with_fp32_master_weights(tmp_path):
    plan = load_plan(write_recipe(tmp_path, model="builtin:tiny-qwen2"), profile="t4")
    assert plan.recipe["model"]["adapter"] == "full" and plan.recipe["model"]["dtype"] == "float32"
    assert plan.train["fp16"] is True


def test_micro_batch_is_lowered_and_effective_batch_kept(tmp_path):
    recipe = write_recipe(tmp_path, train="per_device_train_batch_size: 8, gradient_accumulation_steps: 2")
    plan = load_plan(recipe, profile="t4")
    assert plan.train["per_device_train_batch_size"] == 2
    assert plan.train["gradient_accumulation_steps"] == 8
    assert plan.sources["train.per_device_train_batch_size"] == "profile:t4"
    why = change(plan, "train.gradient_accumulation_steps").why
    assert "micro-batch 8→2, grad accumulation 2→8 keeps effective batch 16" in why


def test_micro_batch_split_uses_a_divisor_and_long_sequences_lower_the_cap(tmp_path):
    recipe = write_recipe(
        tmp_path,
        model="Qwen/Qwen2-0.5B-Instruct",
        train="per_device_train_batch_size: 6, gradient_accumulation_steps: 1",
    )
    plan = load_plan(recipe, profile="t4")  # cap 4 for 0.5B on 16 GB
    assert (plan.train["per_device_train_batch_size"], plan.train["gradient_accumulation_steps"]) == (3, 2)
    recipe = write_recipe(
        tmp_path,
        model="Qwen/Qwen2-0.5B-Instruct",
        train="per_device_train_batch_size: 4, gradient_accumulation_steps: 4, max_length: 2048",
    )
    plan = load_plan(recipe, profile="t4")
    assert (plan.train["per_device_train_batch_size"], plan.train["gradient_accumulation_steps"]) == (2, 8)
    assert "max_length 2048" in change(plan, "train.per_device_train_batch_size").why


def test_micro_batch_from_the_command_line_is_kept(tmp_path):
    recipe = write_recipe(tmp_path, train="gradient_accumulation_steps: 2")
    plan = load_plan(recipe, ["train.per_device_train_batch_size=8"], profile="t4")
    assert plan.train["per_device_train_batch_size"] == 8 and plan.train["gradient_accumulation_steps"] == 2
    assert "set on the command line" in change(plan, "train.per_device_train_batch_size").why


def test_recipe_values_beat_profile_values(tmp_path):
    recipe = write_recipe(
        tmp_path,
        model_extra="adapter: lora, attn_implementation: eager",
        train="gradient_checkpointing: false, optim: adamw_torch",
    )
    plan = load_plan(recipe, profile="t4")
    model, train = plan.recipe["model"], plan.train
    assert model["adapter"] == "lora" and "quantization" not in model  # a QLoRA rule adds no 4-bit to LoRA
    assert model["attn_implementation"] == "eager" and train["activation_checkpointing"] is False
    assert train["optim"] == "adamw_torch" and plan.sources["train.optim"].startswith("recipe:")
    assert plan.sources["model.adapter"].startswith("recipe:")
    plan = load_plan(recipe, ["train.fp16=false"], profile="t4")
    assert plan.train["fp16"] is False and plan.sources["train.fp16"] == "override"


def test_shipped_recipes_validate_with_every_profile():
    for name in profiles.available():
        for recipe in ("sft", "dpo", "reward"):
            plan = load_plan(REPO / "recipes" / "qwen05b" / f"{recipe}.yaml", profile=name)
            assert plan.profile.name == name


# --- attention and vLLM --------------------------------------------------------------------------------


def test_flash_attention_only_when_installed_and_never_on_t4(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path)
    fake_packages(monkeypatch, flash_attn=False)
    plan = load_plan(recipe, profile="h100")
    assert plan.recipe["model"]["attn_implementation"] == "sdpa"
    assert "flash_attn is not installed" in change(plan, "model.attn_implementation").why
    fake_packages(monkeypatch, flash_attn=True)
    assert load_plan(recipe, profile="h100").recipe["model"]["attn_implementation"] == "flash_attention_2"
    assert load_plan(recipe, profile="a100").recipe["model"]["attn_implementation"] == "flash_attention_2"
    assert load_plan(recipe, profile="t4").recipe["model"]["attn_implementation"] == "sdpa"


def test_vllm_colocate_on_one_gpu_when_installed(tmp_path, monkeypatch):
    fake_packages(monkeypatch, vllm="0.28.1")
    plan = load_plan(write_recipe(tmp_path, "grpo"), profile="h100")
    train = plan.train
    assert train["use_vllm"] is True and train["vllm_mode"] == "colocate"
    assert train["vllm_gpu_memory_utilization"] == 0.3
    assert "vllm 0.28.1 installed" in change(plan, "train.use_vllm").why


def test_vllm_server_mode_with_several_gpus_prints_the_serve_command(tmp_path, monkeypatch):
    fake_packages(monkeypatch, vllm="0.31.0")
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, SMI["8xh100"])
    plan = load_plan(write_recipe(tmp_path, "grpo"))
    assert plan.profile.name == "h100" and plan.train["vllm_mode"] == "server"
    why = change(plan, "train.use_vllm").why
    assert "trl vllm-serve --model Qwen/Qwen2.5-1.5B-Instruct --tensor-parallel-size 1" in why
    assert "--num_processes 7" in why


@pytest.mark.parametrize(
    "gpus, processes",
    [
        (
            "8xh100",
            4,
        ),  # the qwen05b GRPO recipe: 32 over 7 training GPUs is not whole: launch 4 processes of 8
        ("2xh100", 1),  # one GPU for vLLM, one for training: the recipe's own split
    ],
)
def test_vllm_server_mode_keeps_the_effective_batch(tmp_path, monkeypatch, gpus, processes):
    """Server mode trains on the GPUs vLLM leaves: the plan says how many training processes divide the
    recipe's effective batch, and under that launch each process takes its share (not the whole batch)."""
    fake_packages(monkeypatch, vllm="0.31.0")
    monkeypatch.setenv(hardware.FAKE_SMI_ENV, "\n".join([SMI["h100"]] * int(gpus[0])))
    recipe = write_recipe(
        tmp_path, "grpo", train="per_device_train_batch_size: 8, gradient_accumulation_steps: 4"
    )
    plan = load_plan(recipe)
    assert plan.train["vllm_mode"] == "server" and plan.profile.gpu.count == int(gpus[0])
    if processes > 1:
        why = change(plan, "train.vllm_mode").why
        assert f"--num_processes {processes}" in why and "effective batch 32" in why
    monkeypatch.setenv("WORLD_SIZE", str(processes))  # as `accelerate launch --num_processes N` sets it
    train = load_plan(recipe).train
    assert train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] * processes == 32


@pytest.mark.parametrize(
    "vllm, expected",
    [(None, "vllm is not installed"), ("0.35.0", "outside TRL 1.16's"), ("0.20.2", "outside TRL 1.16's")],
)
def test_vllm_left_off_when_missing_or_unsupported(tmp_path, monkeypatch, vllm, expected):
    fake_packages(monkeypatch, vllm=vllm)
    plan = load_plan(write_recipe(tmp_path, "grpo"), profile="h100")
    assert plan.train["use_vllm"] is False and expected in change(plan, "train.use_vllm").why


def test_vllm_off_on_t4_and_for_tiny_models(tmp_path, monkeypatch):
    fake_packages(monkeypatch, vllm="0.28.0")
    assert load_plan(write_recipe(tmp_path, "grpo"), profile="t4").train["use_vllm"] is False
    plan = load_plan(write_recipe(tmp_path, "grpo", model="builtin:tiny-qwen2"), profile="h100")
    assert plan.train["use_vllm"] is False and "fast enough" in change(plan, "train.use_vllm").why


# --- impossible combinations ------------------------------------------------------------------------------


def one_error(call, key: str) -> RecipeError:
    errors = [e for e in errors_of(call) if e.key == key]
    assert errors, f"no error for {key}"
    assert errors[0].fix, "every error names its fix"
    return errors[0]


def test_bf16_on_a_gpu_without_bf16(tmp_path):
    recipe = write_recipe(tmp_path, train="bf16: true, fp16: false")
    error = one_error(lambda: load_plan(recipe, profile="t4"), "train.bf16")
    assert "no bf16" in error.message and "fp16" in error.fix
    recipe = write_recipe(tmp_path, model_extra="dtype: bfloat16")
    assert "float16" in one_error(lambda: load_plan(recipe, profile="t4"), "model.dtype").fix


def test_flash_attention_on_turing_or_not_installed(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, model_extra="attn_implementation: flash_attention_2")
    fake_packages(monkeypatch, flash_attn=True)
    error = one_error(lambda: load_plan(recipe, profile="t4"), "model.attn_implementation")
    assert "Turing" in error.message and "sdpa" in error.fix
    fake_packages(monkeypatch, flash_attn=False)
    error = one_error(lambda: load_plan(recipe, profile="h100"), "model.attn_implementation")
    assert "flash_attn is not installed" in error.message


def test_qlora_without_bitsandbytes(tmp_path, monkeypatch):
    fake_packages(monkeypatch, bitsandbytes=False)
    error = one_error(lambda: load_plan(write_recipe(tmp_path), profile="t4"), "model.quantization")
    assert "bitsandbytes" in error.message and "pip install" in error.fix


def test_vllm_requested_but_missing_unsupported_or_8bit(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, "grpo", train="use_vllm: true")
    fake_packages(monkeypatch, vllm=None)
    error = one_error(lambda: load_plan(recipe, profile="h100"), "train.use_vllm")
    assert "not installed" in error.message and "align-recipes[vllm]" in error.fix
    fake_packages(monkeypatch, vllm="0.40.0")
    assert "0.22-0.31" in one_error(lambda: load_plan(recipe, profile="h100"), "train.use_vllm").message
    fake_packages(monkeypatch, vllm="0.30.0")
    recipe = write_recipe(
        tmp_path, "grpo", model_extra="adapter: lora, quantization: 8bit", train="use_vllm: true"
    )
    error = one_error(lambda: load_plan(recipe, profile="h100"), "train.use_vllm")
    assert "8-bit" in error.message


def test_quantized_full_fine_tuning_is_rejected(tmp_path):
    recipe = write_recipe(tmp_path, model_extra="adapter: full, quantization: 4bit")
    assert "qlora" in one_error(lambda: load_plan(recipe, profile="t4"), "model.adapter").fix


@pytest.mark.parametrize(
    "model, extra, profile, fix",
    [
        ("meta-llama/Llama-3.1-8B", "adapter: full", "t4", "adapter: lora"),
        ("meta-llama/Llama-3.1-70B", "adapter: lora", "h100", "qlora"),
        ("Qwen/Qwen2.5-72B-Instruct", "adapter: qlora", "t4", "smaller model"),
    ],
)
def test_model_that_cannot_fit(tmp_path, model, extra, profile, fix):
    recipe = write_recipe(tmp_path, model=model, model_extra=extra)
    error = one_error(lambda: load_plan(recipe, profile=profile), "model.name_or_path")
    assert "GB" in error.message and fix in error.fix


def test_full_fine_tuning_fits_when_zero3_shards_it(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, model="meta-llama/Llama-3.1-8B", model_extra="adapter: full")
    with pytest.raises(RecipeErrors):
        load_plan(recipe, profile="h100")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert load_plan(recipe, profile="h100").recipe["model"]["adapter"] == "full"


def test_fp16_on_cpu_and_fp16_with_half_precision_master_weights(tmp_path):
    recipe = write_recipe(tmp_path, model="builtin:tiny-qwen2", train="fp16: true")
    assert "CUDA GPU" in one_error(lambda: load_plan(recipe, profile="cpu"), "train.fp16").message
    recipe = write_recipe(tmp_path, model="builtin:tiny-qwen2", model_extra="adapter: full, dtype: float16")
    error = one_error(lambda: load_plan(recipe, profile="t4"), "model.dtype")
    assert "master weights" in error.message and "float32" in error.fix


def test_qlora_under_deepspeed_zero3(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    error = one_error(lambda: load_plan(write_recipe(tmp_path), profile="t4"), "model.adapter")
    assert "ZeRO-3" in error.message and "zero2.yaml" in error.fix
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert load_plan(write_recipe(tmp_path), profile="t4").recipe["model"]["adapter"] == "qlora"


# --- the CLI ------------------------------------------------------------------------------------------------


def test_show_with_t4_prints_the_reasons(tmp_path, capsys):
    recipe = write_recipe(tmp_path, train="per_device_train_batch_size: 8, gradient_accumulation_steps: 2")
    assert main(["show", str(recipe), "--profile", "t4"]) == 0
    text = capsys.readouterr().out
    assert "# what profile 't4' changed" in text
    for reason in (
        "T4 is Turing (sm75): no bf16",
        "1.5B params > 1B on 16 GB: QLoRA 4-bit",
        "micro-batch 8→2, grad accumulation 2→8 keeps effective batch 16",
    ):
        assert reason in text


def test_impossible_combination_exits_2_with_the_fix(tmp_path, capsys):
    recipe = write_recipe(tmp_path, train="bf16: true, fp16: false")
    assert main(["validate", str(recipe), "--profile", "t4"]) == 2
    err = capsys.readouterr().err
    assert "train.bf16" in err and "fix:" in err


# --- kernels -------------------------------------------------------------------------------------------


def test_gpu_profiles_switch_liger_on_when_installed_and_say_so_when_not(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, "dpo")
    monkeypatch.setattr(profile_layer, "package_version", lambda name: None)
    plan = load_plan(recipe, profile="a100")
    assert plan.train["use_liger_kernel"] is False
    assert "pip install 'align-recipes[liger]'" in change(plan, "train.use_liger_kernel").why
    monkeypatch.setattr(
        profile_layer, "package_version", lambda name: "0.8.5" if name == "liger-kernel" else None
    )
    plan = load_plan(recipe, profile="a100")
    assert (
        plan.train["use_liger_kernel"] is True
        and "liger-kernel 0.8.5" in change(plan, "train.use_liger_kernel").why
    )
    assert "use_liger_kernel" not in load_plan(recipe, profile="cpu").train  # Triton kernels need a GPU
    (tmp_path / "online").mkdir()
    ppo = write_recipe(tmp_path / "online", "ppo", model_extra="adapter: lora")
    assert "use_liger_kernel" not in load_plan(ppo, profile="a100").train  # our PPO: not wired for Liger
    plan = load_plan(recipe, ["train.use_liger_kernel=false"], profile="a100")
    assert plan.train["use_liger_kernel"] is False and plan.sources["train.use_liger_kernel"] == "override"
