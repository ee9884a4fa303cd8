"""`align-recipes rehearse`: the shipped qwen05b recipes run end to end at their real shape (Qwen2-0.5B's
architecture cut to 2 layers, vocabulary 151936, random weights) with QLoRA on CPU, offline; and the pieces
(stand-in tokenizer, architecture counts, sample layouts, memory estimate) checked against hand-computed values.

The runs (tests/rehearse_helpers.py) use shorter lengths than the CLI to keep the suite's time modest; the
recipes that sample while training are rehearsed in test_rehearse_rl.py, a file of its own so that the test
workers share the rehearsals."""

from __future__ import annotations

import pytest
from rehearse_helpers import PAIRS, QWEN05, TEST_CAPS, WHOLE_PAIRS, offline, rehearse_recipe


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    offline(monkeypatch)


# --- pieces -------------------------------------------------------------------------------------------


def _qwen2_params(hidden, inter, layers, heads, kv_heads, vocab):
    """Qwen2 parameters by hand: q/k/v with biases, o, gate/up/down, two norms per layer, tied embeddings."""
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    layer = (
        (hidden * hidden + hidden)
        + 2 * (hidden * kv + kv)
        + hidden * hidden
        + 3 * hidden * inter
        + 2 * hidden
    )
    return layers * layer + vocab * hidden + hidden


def test_shipped_architectures_have_the_public_parameter_counts():
    from align_recipes.results.rehearse import shapes

    assets = shapes.shipped()
    small = assets["qwen/qwen2-0.5b-instruct"]["config"]
    large = assets["qwen/qwen2.5-1.5b-instruct"]["config"]
    assert shapes.full_parameter_count(small)[0] == _qwen2_params(896, 4864, 24, 14, 2, 151936) == 494_032_768
    assert (
        shapes.full_parameter_count(large)[0] == _qwen2_params(1536, 8960, 28, 12, 2, 151936) == 1_543_714_304
    )
    cut = shapes.cut_layers(small)
    assert cut["num_hidden_layers"] == 2 and cut["max_window_layers"] == 2 and cut["vocab_size"] == 151936
    assert small["num_hidden_layers"] == 24  # the shipped config is not changed


def test_missing_stage_output_is_rehearsed_with_the_family_model(tmp_path):
    from align_recipes.results.rehearse import shapes

    arch = shapes.resolve(
        "outputs/qwen05b/sft/merged", "auto", tmp_path, online=False, fallbacks=["Qwen/Qwen2-0.5B-Instruct"]
    )
    assert arch.name == "Qwen/Qwen2-0.5B-Instruct" and arch.config["hidden_size"] == 896
    with pytest.raises(LookupError, match="not shipped"):
        shapes.resolve("someone/unknown-7b", "auto", tmp_path, online=False)


def test_stand_in_tokenizer_is_deterministic_with_qwen2_ids_and_template():
    from align_recipes.results.rehearse import shapes, tokenizer

    facts = shapes.shipped()["qwen/qwen2-0.5b-instruct"]["tokenizer"]
    first, second = tokenizer.build_stand_in(facts), tokenizer.build_stand_in(facts)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) == 151646  # 151643 regular + 3 special, as Qwen2's tokenizer
    assert [first.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643,
        151644,
        151645,
    ]
    assert first.eos_token == "<|im_end|>" and first.pad_token == "<|endoftext|>"
    ids = first("Please plan a visit to the garden. 请为春天的花园写一段介绍。")["input_ids"]
    assert len(ids) < 30 and max(ids) > 100_000  # merged words, ids spread over the whole range
    text = first.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert (
        text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )


def test_synthetic_samples_are_detected_as_the_real_layouts():
    from align_recipes.data import DataSpec, check_serves
    from align_recipes.results.rehearse.sample_data import layout_for, synthetic_rows

    expected = {
        ("HuggingFaceH4/ultrafeedback_binarized", "preference"): "ultrafeedback_binarized",
        ("HuggingFaceH4/ultrachat_200k", "language_modeling"): "messages",
        ("openai/gsm8k", "prompt_only"): "prompt_response",  # question+answer, as GSM8K
        ("AI-ModelScope/train_0.5M_CN", "language_modeling"): "alpaca",
        ("my/unknown", "unpaired"): "unpaired",
    }
    for (path, kind), fmt in expected.items():
        layout, _ = layout_for({"path": path}, kind)
        rows = synthetic_rows(layout, 8)
        assert check_serves(rows, DataSpec(path="x.jsonl"), kind) == fmt, (path, kind)
    assert synthetic_rows("belle", 3) == synthetic_rows("belle", 3)  # fixed seed


def test_lora_parameters_and_memory_estimate_by_hand():
    from align_recipes.plan.load import load_plan
    from align_recipes.plan.sections import LoraSection
    from align_recipes.registry import ALGORITHMS
    from align_recipes.results.rehearse import memory, shapes

    config = shapes.shipped()["qwen/qwen2-0.5b-instruct"]["config"]
    # r x (in + out) per projection: q 896+896, k 896+128, v 896+128, o 896+896, gate/up 896+4864, down 4864+896
    per_layer = 16 * (1792 + 1024 + 1024 + 1792 + 3 * 5760)
    assert memory.lora_parameters(config, LoraSection(r=16)) == 24 * per_layer == 8_798_208
    params, linear = shapes.full_parameter_count(config)
    plan = load_plan(QWEN05 / "dpo.yaml", profile="t4")
    train = {k: v for k, (v, _) in plan.effective_config().items()}
    est = memory.estimate(config, params, linear, ALGORITHMS["dpo"], plan.model, train, plan.profile)
    # LoRA on fp16 weights: 2 B/param; the adapter fp32 with grads (4 B) and AdamW (8 B).
    assert est.parts["weights"] == pytest.approx((params * 2 + 8_798_208 * 4) / 1e9)
    assert est.parts["optimizer"] == pytest.approx(8_798_208 * 8 / 1e9)
    # logits: micro-batch x 2 (chosen, rejected) x 1024 tokens x vocab x (2 B fp16 + 8 B fp32 copy and gradient)
    micro = train["per_device_train_batch_size"]
    assert est.parts["logits"] == pytest.approx(micro * 2 * 1024 * 151936 * 10 / 1e9)
    assert est.budget_gb == 16 and est.verdict in ("fits", "tight")
    full = load_plan(
        QWEN05 / "dpo.yaml", ["model.adapter=full", "train.per_device_train_batch_size=16"], profile="t4"
    )
    train = {k: v for k, (v, _) in full.effective_config().items()}
    big = memory.estimate(config, params, linear, ALGORITHMS["dpo"], full.model, train, full.profile)
    assert big.verdict == "WILL NOT FIT" and not big.fits


def test_memory_estimate_counts_the_rl_terms_by_hand():
    """PPO/SPO (ours): logits and their gradient in the compute dtype over the response only, the float32 log-prob
    chunks, the rollout buffers; the reference in the compute dtype; under LoRA the critic is an adapter, not a
    body (rl/shared_critic.py), unless it starts from the reward model."""
    from align_recipes.registry import ALGORITHMS
    from align_recipes.results.rehearse import memory, shapes

    config = shapes.shipped()["qwen/qwen2-0.5b-instruct"]["config"]
    params, linear = shapes.full_parameter_count(config)
    lora_params = 8_798_208  # r=16 on every projection (the test above)
    train = {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "num_mini_batches": 1,
        "max_prompt_length": 512,
        "max_new_tokens": 128,
        "bf16": True,
        "kl_coef": 0.05,
        "beta": 0.02,
    }
    from align_recipes.plan.sections import ModelSection

    lora = ModelSection.from_dict(
        {"name_or_path": "q", "adapter": "lora", "dtype": "bfloat16", "lora": {"r": 16}}
    )
    ppo = memory.estimate(config, params, linear, ALGORITHMS["ppo"], lora, train, None)
    assert ppo.parts["logits"] == pytest.approx(4 * 128 * 151936 * 2 * 2 / 1e9)  # bf16 logits + bf16 gradient
    assert ppo.parts["log-prob chunks"] == pytest.approx(3 * 220 * 151936 * 4 / 1e9)  # 2**25 // 151936 = 220
    assert ppo.parts["rollout buffers"] == pytest.approx(8 * ((512 + 128) * 24 + 128 * 44) / 1e9)
    # policy (bf16) + its adapter (fp32) + the critic's adapter (fp32); no second body, no reward model
    assert ppo.parts["weights"] == pytest.approx((params * 2 + 2 * lora_params * 4) / 1e9)
    with_rm = memory.estimate(
        config, params, linear, ALGORITHMS["ppo"], lora, {**train, "reward_model_path": "rm"}, None
    )
    # + the critic's own body (the reward model's) and the reward model itself
    assert with_rm.parts["weights"] == pytest.approx((params * 2 * 3 + 2 * lora_params * 4) / 1e9)
    full = ModelSection.from_dict({"name_or_path": "q", "adapter": "full", "dtype": "float32"})
    spo = memory.estimate(config, params, linear, ALGORITHMS["spo"], full, train, None)
    assert spo.parts["weights"] == pytest.approx(
        (params * 4 + params * 2) / 1e9
    )  # fp32 policy, bf16 reference


# --- whole rehearsals (QLoRA, one per algorithm) ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_shape
@pytest.mark.parametrize(
    "algorithm, steps, caps",
    [
        ("sft", 1, None),
        ("reward", 2, WHOLE_PAIRS),
        ("dpo", 1, None),
        ("orpo", 1, None),
        ("kto", 1, PAIRS),
    ],
)
def test_qwen05b_recipe_rehearses_with_qlora(tmp_path, algorithm, steps, caps):
    result, screen, records = rehearse_recipe(tmp_path, QWEN05 / f"{algorithm}.yaml", steps=steps, caps=caps)
    assert result.algorithm == algorithm and result.adapter == "qlora"
    if algorithm == "sft":  # assistant-only loss with packing, on the stand-in's stock Qwen2 template
        log = (tmp_path / "r" / "run.log").read_text()
        assert "assistant_only_loss: using align-recipes' qwen2_training.jinja" in log
        assert "packed into" in log


def test_a_failing_stage_is_named_with_trains_clean_error(tmp_path):
    """No traceback: the recipe error train would print, on the stage that hit it, and exit 2."""
    from align_recipes.results.rehearse import rehearse, render

    result = rehearse(
        QWEN05 / "dpo.yaml", ["data.eval=null"], profile="cpu", workdir=tmp_path / "r", caps=TEST_CAPS
    )
    screen = render(result)
    assert result.exit_code == 2 and result.stages["plan"].ok is False
    assert "train.eval_strategy" in result.stages["plan"].detail and "no data.eval" in screen
    assert result.stages["train"].ok is None and "Traceback" not in screen


def test_cli_rehearse_refuses_the_tiny_model_cleanly(capsys, tmp_path):
    from align_recipes.cli import main

    assert main(["rehearse", "recipes/tiny/sft.yaml", "--offline", "--out", str(tmp_path / "r")]) == 2
    out = capsys.readouterr().out
    assert "rehearse is for real models" in out and "FAILED" in out


def test_pipeline_stages_are_rehearsed_with_their_own_overrides_and_earlier_outputs_stood_in_for():
    from align_recipes.results.rehearse import pipeline_stages

    stages = pipeline_stages(QWEN05 / "pipeline.yaml", ["train.seed=3", "ppo:train.kl_coef=0.1"])
    assert [(name, recipe.name) for name, recipe, _ in stages] == [
        ("sft", "sft.yaml"),
        ("reward", "reward.yaml"),
        ("ppo", "ppo.yaml"),
    ]
    overrides = {name: o for name, _, o in stages}
    assert overrides["sft"] == overrides["reward"] == ["train.seed=3"]  # {sft} is stood in for, not passed on
    assert overrides["ppo"] == ["train.seed=3", "train.kl_coef=0.1"]
