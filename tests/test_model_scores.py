"""`model_scores.sequence_scores` scores rows in right-padded batches under a token budget. Each score must equal
the plain one-row-at-a-time computation written out here (an unpadded forward, log-softmax, the completion's
tokens summed; a reward head's logit), for rows of different lengths, a row longer than the budget, and a
reward model with no pad id."""

from __future__ import annotations

import pytest
import torch

from align_recipes import model_scores, tiny

PROMPTS = ["3+4=", "12+30=", "7+8=", "41+59=", "5+5=", "90+9="]
COMPLETIONS = ["7", "42", "15 is the sum", "100", "ten", "99, since 90 and 9 make 99"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return tiny.ensure_tiny_model(tmp_path_factory.mktemp("cache"))


def naive_scores(model, tokenizer, reward_head: bool) -> list[float]:
    scores = []
    with torch.no_grad():
        for prompt, completion in zip(PROMPTS, COMPLETIONS):
            messages = [{"role": "user", "content": prompt}]
            prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt_text + completion, return_tensors="pt", add_special_tokens=False)[
                "input_ids"
            ]
            if reward_head:
                scores.append(model(input_ids=ids).logits[0, 0].item())
                continue
            n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
            logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            scores.append(sum(logps[t, ids[0, t + 1]].item() for t in range(n_prompt - 1, ids.shape[1] - 1)))
    return scores


def chat_prompts() -> list[list[dict]]:
    return [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.mark.parametrize("max_tokens", [10_000, 64, 1])  # one batch; several; every row alone
def test_batched_log_probabilities_equal_one_row_at_a_time(tiny_path, max_tokens):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    lengths = [len(model_scores._tokens(tokenizer, p, c)[0]) for p, c in zip(chat_prompts(), COMPLETIONS)]
    assert max(lengths) > min(lengths) + 5 and max(lengths) > 1  # padding happens, and 1 is below every row
    batched = model_scores.sequence_scores(
        model, tokenizer, chat_prompts(), COMPLETIONS, reward_head=False, max_tokens=max_tokens
    )
    assert batched == pytest.approx(naive_scores(model, tokenizer, False), abs=1e-4)


def test_batches_keep_to_the_token_budget_and_every_row_is_scored_once():
    lengths = [30, 5, 12, 90, 12, 7, 40]
    batches = model_scores._length_batches(lengths, 64)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 64
    assert [90] in [[lengths[i] for i in b] for b in batches]  # over the budget: alone
    assert model_scores._length_batches(lengths, 0) == [
        [i] for i in sorted(range(7), key=lengths.__getitem__)
    ]


@pytest.mark.parametrize("pad_id", ["tokenizer's", None])
def test_reward_head_scores_equal_one_row_at_a_time(tiny_path, pad_id):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=1).eval()
    reward_model.config.pad_token_id = tokenizer.pad_token_id if pad_id else None
    batched = model_scores.sequence_scores(
        reward_model, tokenizer, chat_prompts(), COMPLETIONS, reward_head=True
    )
    assert batched == pytest.approx(naive_scores(reward_model, tokenizer, True), abs=1e-4)
    assert len(set(batched)) == len(batched)  # distinct rows, distinct scores: no row took another's


def test_the_budget_keeps_a_real_vocabularys_logits_to_a_few_rows():
    from types import SimpleNamespace

    def model(vocab):
        return SimpleNamespace(config=SimpleNamespace(vocab_size=vocab))

    assert model_scores.token_budget(model(151936), reward_head=False) == 441  # 2**26 // 151936
    assert model_scores.token_budget(model(151936), reward_head=True) == 8192  # one value a row
    assert model_scores.token_budget(model(400), reward_head=False) == 8192  # the tiny model: the token cap
    assert model_scores.token_budget(SimpleNamespace(), reward_head=False) == 8192  # no config: the token cap
