"""The wiring between the generator, the rollout and the losses, each compared with a naive computation
(one unpadded sequence at a time, no trainer code) or hand values. Fast: a 32-wide model, one rollout each.

A scripted stand-in for vLLM (`ScriptedEngine`, the interface of TRL's `VLLMGeneration`) lets rows stop the
ways vLLM rows do: at EOS, early without EOS (a stop string), or at the token cap."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")

from rl_helpers import (
    ScriptedEngine,
    answer_over_ten,
    args_for,
    chat_prompt_ids,
    dataset,
    digits,
    make_trainer,  # noqa: E402,F401
    naive_token_entropy,
    naive_token_logprobs,
    step_logs,
)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from align_recipes.rl.config import PPOConfig, SPOConfig  # noqa: E402
from align_recipes.rl.generation import VLLMGenerator  # noqa: E402
from align_recipes.rl.rollout import eval_shards  # noqa: E402
from align_recipes.rl.trainer import PPOTrainer, SPOTrainer  # noqa: E402

MAX_NEW = 4


def scripted_ppo(tiny, tmp_path, **kw):
    """A PPO trainer whose generator is the vLLM seam over a `ScriptedEngine`. Prompt 0 ends with EOS after 2
    tokens, prompt 1 stops after 2 tokens without EOS (a stop string), prompts 2 and 3 hit the 4-token cap."""
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path, max_new_tokens=MAX_NEW, save_strategy="no", **kw)
    tok = t.processing_class
    digit = tok.convert_tokens_to_ids(list("1234"))
    scripts = [[digit[0], digit[1], tok.eos_token_id], [digit[2], digit[3]], digit[:4], digit[::-1]]
    sampler = copy.deepcopy(t.model)
    with torch.no_grad():
        for p in sampler.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine = ScriptedEngine(
        sampler, {tuple(t._train_prompts.ids(i)): s for i, s in enumerate(scripts)}, t.args.temperature
    )
    t.generator = VLLMGenerator(engine, tok.pad_token_id, t.eos_token_ids, MAX_NEW)
    return t, engine, scripts


def test_completion_mask_comes_from_the_generator_lengths(tiny, tmp_path):
    """Old behaviour caught: the mask was found by scanning for EOS, so row 1 (stopped without EOS, then padded
    with the pad id, which is not EOS here) counted its padding as generated tokens."""
    t, _, scripts = scripted_ppo(tiny, tmp_path)
    assert t.processing_class.pad_token_id not in t.eos_token_ids
    batch = t._rollout([0, 1, 2, 3])
    assert batch["response_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch["truncated"].tolist() == [False, False, True, True]
    for i, script in enumerate(scripts):
        assert batch["response_ids"][i, : len(script)].tolist() == script


def test_missing_eos_penalty_hits_only_rows_cut_at_the_cap(tiny, tmp_path):
    """Old behaviour caught: row 1 stopped early without EOS (a stop string) and was penalised as if cut off."""
    t, _, _ = scripted_ppo(tiny, tmp_path, missing_eos_penalty=0.5)
    batch = t._rollout([0, 1, 2, 3])
    texts = [
        t.processing_class.decode(batch["response_ids"][i, :n], skip_special_tokens=True)
        for i, n in enumerate(batch["response_mask"].sum(1).long().tolist())
    ]
    plain = digits(None, texts, ["0", "1", "2", "3"])  # the dataset's answers of prompts 0..3 ("i+0=")
    assert batch["scores"].tolist() == pytest.approx([plain[0], plain[1], plain[2] - 0.5, plain[3] - 0.5])


def test_score_lands_on_the_last_generated_token(tiny, tmp_path):
    """PPO's per-token rewards: -kl_coef * KL on each generated token, the score on the last one. Old behaviour
    caught: row 1's score landed on its last padding position (index 3) instead of its last token (index 1)."""
    t, _, _ = scripted_ppo(tiny, tmp_path)
    batch = t._rollout([0, 1, 2, 3])
    t._advantages(batch)
    mask = batch["response_mask"]
    kl = (batch["logprobs"] - batch["ref_logprobs"]) * mask  # k1, the default estimator
    expected = -t.args.kl_coef * kl
    for i, n in enumerate(mask.sum(1).long().tolist()):
        expected[i, n - 1] += batch["scores"][i]
    assert torch.allclose(batch["rewards"], expected, atol=1e-6)
    assert batch["rewards"][1, 2:].tolist() == [0.0, 0.0]


def test_vllm_seam_returns_sampler_logprobs_recomputes_pi_old_and_weights_tokens(tiny, tmp_path):
    """pi_old is the trained policy's own log-probs (naive forward); the sampler's (the engine's model) come back
    unchanged; each token's importance weight is min(pi_old / pi_sampler, cap) by hand. Old behaviour caught: the
    sampler's log-probs were dropped (no correction possible)."""
    t, engine, scripts = scripted_ppo(tiny, tmp_path, vllm_importance_sampling_cap=1.02)
    batch = t._rollout([0, 1, 2, 3])
    temp, tok = t.args.temperature, t.processing_class
    for i, script in enumerate(scripts):
        prompt = chat_prompt_ids(tok, dataset()[i]["prompt"])
        policy = naive_token_logprobs(t.model, prompt, script, temp)
        sampler = naive_token_logprobs(engine.model, prompt, script, temp)
        n = len(script)
        assert batch["sampler_logprobs"][i, :n].tolist() == pytest.approx(sampler, abs=1e-5)
        assert batch["logprobs"][i, :n].tolist() == pytest.approx(policy, abs=1e-5)
        weights = [min(pow(2.718281828459045, p - s), 1.02) for p, s in zip(policy, sampler)]
        assert batch["is_weights"][i, :n].tolist() == pytest.approx(weights, abs=1e-4)
        assert batch["is_weights"][i, n:].abs().sum() == 0
    assert any(w > 1.0199 for w in batch["is_weights"].flatten().tolist())  # the cap bites somewhere


def test_vllm_weights_are_synced_before_the_first_rollout_and_after_every_update(tiny, tmp_path):
    """Old behaviour caught: colocated vLLM sampled the first rollout from the checkpoint on disk (weights were
    first pushed after step 1)."""
    t, engine, _ = scripted_ppo(
        tiny,
        tmp_path,
        max_steps=2,
        train_dataset=dataset(n=4),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    t.train()
    assert engine.events == ["sync", "generate", "sync", "generate"]
    t.evaluate(dataset(n=4))  # the weights changed at step 2: synced before evaluating
    assert engine.events[4:] == ["sync", "generate"]


def test_every_process_makes_the_same_number_of_generation_calls_in_evaluation():
    """Old behaviour caught: with 5 eval rows on 2 processes and batches of 2, process 0 made 2 generate calls and
    process 1 made 1, and vLLM's collective calls hung."""
    shards = [eval_shards(5, 2, rank) for rank in (0, 1)]
    assert shards == [([0, 2, 4], 3), ([1, 3, 3], 2)]  # process 1 repeats its last row, which does not count
    counted = sorted(i for rows, real in shards for i in rows[:real])
    assert counted == [0, 1, 2, 3, 4]
    assert eval_shards(0, 2, 1) == ([], 0)
    assert {len(eval_shards(7, 3, r)[0]) for r in range(3)} == {3}


def test_evaluation_counts_each_row_once(tiny, tmp_path):
    t, engine, scripts = scripted_ppo(tiny, tmp_path)
    rows = dataset(n=4).select([0, 1, 2])
    metrics = t.evaluate(rows)
    assert engine.events.count("generate") == 1  # 3 rows, rollout batch 4: one call
    assert metrics["eval_response_length"] == pytest.approx((3 + 2 + 4) / 3)


def test_prompts_are_encoded_like_the_chat_template_once_per_row(tiny, tmp_path, monkeypatch):
    """Left-padded ids equal to the chat template's tokenization; a too-long prompt keeps its last tokens. Old
    behaviour caught: every step re-rendered and re-tokenized every prompt."""
    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        tiny,
        tmp_path,
        save_strategy="no",
        max_prompt_length=9,
        train_dataset=dataset(n=4),
        max_steps=2,
    )
    tok = t.processing_class
    naive = [chat_prompt_ids(tok, dataset(n=4)[i]["prompt"])[-9:] for i in (0, 3)]
    assert len(chat_prompt_ids(tok, dataset(n=4)[0]["prompt"])) > 9  # the truncation is exercised
    calls = []
    original = type(tok).__call__
    monkeypatch.setattr(
        type(tok), "__call__", lambda self, *a, **k: calls.append(a) or original(self, *a, **k)
    )
    batch = t._rollout([0, 3])
    width = max(len(r) for r in naive)
    for row, ids, mask in zip(naive, batch["prompt_ids"].tolist(), batch["prompt_mask"].tolist()):
        assert ids[width - len(row) :] == row and mask == [0] * (width - len(row)) + [1] * len(row)
        assert all(x == tok.pad_token_id for x in ids[: width - len(row)])
    t._rollout([0, 3])
    t._rollout([3, 0])
    assert len(calls) == 2  # one tokenization per prompt, whatever the number of steps


def test_rollout_logprobs_values_and_reference_match_a_naive_forward(tiny, tmp_path):
    """transformers' generate reports the log-probs and entropies it sampled from; they must be the policy's own
    (a full forward of each unpadded sequence), aligned token by token, as must the critic's values and the
    reference's log-probs. No extra policy forward is run for them."""
    t = make_trainer(
        PPOTrainer, PPOConfig, tiny, tmp_path, save_strategy="no", max_new_tokens=5, temperature=0.8
    )
    forwards = []
    t.model.register_forward_hook(lambda *a: forwards.append(1))
    batch = t._rollout([0, 5, 6, 11])
    assert (
        len(forwards) == batch["response_ids"].shape[1]
    )  # one per generated token, inside generate: no extra pass
    critic, temp, tok = t.value_model, t.args.temperature, t.processing_class
    for i, key in enumerate([0, 5, 6, 11]):
        prompt = chat_prompt_ids(tok, dataset()[key]["prompt"])
        n = int(batch["response_mask"][i].sum())
        completion = batch["response_ids"][i, :n].tolist()
        assert batch["logprobs"][i, :n].tolist() == pytest.approx(
            naive_token_logprobs(t.model, prompt, completion, temp), abs=1e-5
        )
        assert batch["entropy"][i, :n].tolist() == pytest.approx(
            naive_token_entropy(t.model, prompt, completion, temp), abs=1e-4
        )
        assert batch["ref_logprobs"][i, :n].tolist() == pytest.approx(
            naive_token_logprobs(t.ref_model, prompt, completion, temp), abs=1e-5
        )
        with torch.no_grad():
            values = critic(input_ids=torch.tensor([prompt + completion]))[
                0, len(prompt) - 1 : len(prompt) - 1 + n
            ]
        assert batch["values"][i, :n].tolist() == pytest.approx(values.tolist(), abs=1e-5)


def test_reference_with_the_adapter_disabled_is_the_base_model(tiny, tmp_path):
    """With LoRA the reference is the policy with its adapter off: after an update (adapter no longer zero) the
    reference log-probs must equal the untouched base model's, and the policy's must differ from them."""
    from peft import LoraConfig

    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        tiny,
        tmp_path,
        save_strategy="no",
        max_steps=1,
        learning_rate=5e-2,
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
        reward_funcs=[answer_over_ten],  # scores that differ (no digits yet: `digits` scored every answer 0)
    )
    t.train()
    base, tok, temp = AutoModelForCausalLM.from_pretrained(tiny), t.processing_class, t.args.temperature
    batch = t._rollout([1, 2, 3, 4])
    moved = 0.0
    for i, key in enumerate([1, 2, 3, 4]):
        prompt = chat_prompt_ids(tok, dataset()[key]["prompt"])
        n = int(batch["response_mask"][i].sum())
        completion = batch["response_ids"][i, :n].tolist()
        reference = naive_token_logprobs(base, prompt, completion, temp)
        assert batch["ref_logprobs"][i, :n].tolist() == pytest.approx(reference, abs=1e-5)
        moved += sum(abs(a - b) for a, b in zip(batch["logprobs"][i, :n].tolist(), reference))
    assert moved > 1e-3


def test_reward_model_scores_token_ids_in_one_forward_like_the_text_path(tiny, tmp_path):
    """A reward model that shares the policy's tokenizer scores prompt ids + answer ids + the template's end-of-turn
    tokens in one forward pass; the scores equal the text path's (decode, chat template, re-tokenize). Old
    behaviour caught: the text path in chunks of 16 (4 forwards for 64 completions)."""
    from transformers import AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    rm.config.pad_token_id = AutoTokenizer.from_pretrained(tiny).pad_token_id
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(rm_dir)
    t, _, _ = scripted_ppo(
        tiny,
        tmp_path / "run",
        reward_funcs=[str(rm_dir)],
        per_device_train_batch_size=12,
        gradient_accumulation_steps=3,
    )
    func = t.reward_funcs[0]
    assert t.scorer.by_ids == [True]
    keys = [0, 1, 2, 3] * 9
    batch = t._rollout(
        keys
    )  # first use: the 4 prompts are cached, and the cache is checked against a full pass
    lengths = batch["response_mask"].sum(1).long().tolist()
    texts = t.processing_class.batch_decode(
        [r[:n] for r, n in zip(batch["response_ids"].tolist(), lengths)], skip_special_tokens=True
    )
    by_text = func([dataset()[k]["prompt"] for k in keys], texts)
    assert batch["scores"].tolist() == pytest.approx(by_text, abs=1e-5)
    assert len(set(round(x, 6) for x in by_text)) == 4  # four different answers, four different scores
    assert t.scorer.prefixes[0].enabled
    calls = []
    func.model.register_forward_hook(lambda *a: calls.append(1))
    again = t._rollout(keys)
    assert len(calls) == 1  # 36 completions, one forward over the answers on top of the cached prompts
    assert again["scores"].tolist() == pytest.approx(by_text, abs=1e-5)


def test_dropout_on_starts_every_update_at_ratio_one(tiny, tmp_path):
    """disable_dropout=False keeps attention dropout (p = 0.3 here) in the updates; pi_old is computed with the
    same dropout masks each micro batch gets in the update, so a single pass before the only optimizer step sees
    ratio exactly 1 (approx_kl 0, nothing clipped). Old behaviour caught: pi_old came from a dropout-free pass,
    so the first ratio was dropout noise."""
    from rl_helpers import build_tiny

    path = build_tiny(tmp_path / "dropout_model", attention_dropout=0.3)
    t = make_trainer(
        PPOTrainer,
        PPOConfig,
        path,
        tmp_path / "run",
        save_strategy="no",
        max_steps=1,
        disable_dropout=False,
        num_ppo_epochs=1,
        max_new_tokens=5,
    )
    t.train()
    logs = step_logs(t, 1)
    assert logs["approx_kl"] == 0.0 and logs["clipfrac"] == 0.0
    assert t.model.config.attention_dropout == 0.3  # dropout really was on


def test_python_api_loads_paths_in_float32_unless_told(tiny, tmp_path):
    """Old behaviour caught: a bf16 checkpoint given by path was loaded with dtype="auto" and fully fine-tuned in
    bf16 (a small learning rate then loses most updates)."""
    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(bf16_dir)
    t = PPOTrainer(
        model=str(bf16_dir),
        args=args_for(PPOConfig, tmp_path / "a", save_strategy="no"),
        train_dataset=dataset(),
        reward_funcs=[digits],
    )
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
    assert {p.dtype for p in t.value_model.parameters()} == {torch.float32}
    t = SPOTrainer(
        model=str(bf16_dir),
        ref_model=str(bf16_dir),
        train_dataset=dataset(),
        reward_funcs=[digits],
        args=args_for(SPOConfig, tmp_path / "b", model_init_kwargs={"dtype": "bfloat16"}),
    )
    assert {p.dtype for p in t.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in t.ref_model.parameters()} == {torch.bfloat16}


def test_spo_divergence_is_measured_on_the_prompts_earlier_sample(tiny, tmp_path):
    """The per-prompt D: the stored sample of a prompt re-scored by the policy now, against its log-probs when it was
    sampled, mean |difference| over its tokens (naive forward by hand)."""
    t = make_trainer(
        SPOTrainer,
        SPOConfig,
        tiny,
        tmp_path,
        save_strategy="no",
        train_dataset=dataset(n=4),
        max_steps=1,
        learning_rate=5e-2,
        reward_funcs=[answer_over_ten],
    )
    t.train()  # step 1: prompts 0..3 sampled and stored; then the weights moved
    tok, temp = t.processing_class, t.args.temperature
    divergences = t._divergences([2, 0])
    for key, got in zip([2, 0], divergences):
        ids, then = t.tracker.stored_sample(key)
        now = naive_token_logprobs(t.model, chat_prompt_ids(tok, dataset(n=4)[key]["prompt"]), ids, temp)
        assert got == pytest.approx(sum(abs(a - b) for a, b in zip(now, then)) / len(ids), abs=1e-5)
        assert got > 1e-4


def test_critic_values_taken_from_the_first_update_pass_equal_a_separate_rollout_pass(
    tiny, tmp_path, monkeypatch
):
    """With the whole rollout in one micro batch, PPO takes the rollout values from the first update pass (same
    weights, same rows) instead of a separate critic forward. Its logs and weights must match a run that makes the
    separate pass."""

    def run(out):
        t = make_trainer(
            PPOTrainer,
            PPOConfig,
            tiny,
            out,
            save_strategy="no",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
        )
        t.train()
        return t

    fused = run(tmp_path / "fused")
    assert fused._values_in_first_pass
    monkeypatch.setattr(PPOTrainer, "_values_in_first_pass", property(lambda self: False))
    separate = run(tmp_path / "separate")
    for step in (1, 2):
        a, b = step_logs(fused, step), step_logs(separate, step)
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6) for k in a), (a, b)
    for (name, p), q in zip(fused.model.named_parameters(), separate.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_frozen_models_reuse_their_prompt_caches_and_match_a_naive_forward(tiny, tmp_path):
    """The reference reads each training prompt once (`PromptPrefixCache`); from the second rollout on only the
    completion runs. Its log-probs must still equal a naive full forward of each sequence (the prompts differ in
    length, so the cached prompts are left-padded to different widths)."""
    from datasets import Dataset

    rows = [
        {
            "prompt": [{"role": "user", "content": f"{10 ** (i % 4) * i}+{i}="}],
            "answer": str(10 ** (i % 4) * i + i),
        }
        for i in range(8)
    ]
    data = Dataset.from_list(rows)
    t = make_trainer(
        PPOTrainer, PPOConfig, tiny, tmp_path, save_strategy="no", max_new_tokens=5, train_dataset=data
    )
    tok, temp = t.processing_class, t.args.temperature
    assert len({len(chat_prompt_ids(tok, r["prompt"])) for r in rows}) == 4
    t._rollout([0, 1, 2, 3])  # first use: computed both ways and compared
    assert t._ref_prefix.enabled and sorted(t._ref_prefix.entries) == [0, 1, 2, 3]
    calls = []
    hook = t.ref_model.register_forward_hook(lambda *a: calls.append(a[1][0].shape if a[1] else None))
    batch = t._rollout([3, 6, 0, 5])  # two cached prompts, two new ones
    hook.remove()
    assert len(calls) == 2 + 2  # a prefill for each new prompt, then one completion pass per micro batch of 2
    for i, key in enumerate([3, 6, 0, 5]):
        prompt = chat_prompt_ids(tok, rows[key]["prompt"])
        n = int(batch["response_mask"][i].sum())
        completion = batch["response_ids"][i, :n].tolist()
        assert batch["ref_logprobs"][i, :n].tolist() == pytest.approx(
            naive_token_logprobs(t.ref_model, prompt, completion, temp), abs=1e-5
        )


def test_prompt_caches_switch_off_when_they_would_not_fit(tiny, tmp_path):
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path, save_strategy="no", prefix_cache_mb=1e-4)
    t._rollout([0, 1, 2, 3])
    assert t._ref_prefix.enabled is False and not t._ref_prefix.entries
    t = make_trainer(PPOTrainer, PPOConfig, tiny, tmp_path / "off", save_strategy="no", prefix_cache_mb=0)
    t._rollout([0, 1, 2, 3])
    assert t._ref_prefix.enabled is False and not t._ref_prefix.entries
