"""What a model says about rows, the lowest layer of every held-out metric: greedy completions, and a
completion's summed log-probability or a reward model's score.

`run/measure.py` (the metrics a run measures before and after training, and `align-recipes eval`) and
`tiny/toytask.py` (the toy task's own evaluation, which the builtin SFT policy's build reports and the
benchmarks use) both score through these functions, so a toy-task number and a run's metric come from
the same code. It sits below both (tiny/ is below run/: docs/architecture.md); torch is imported on use.
"""

from __future__ import annotations

import contextlib
from typing import Any

from align_recipes.data.messages import completion_text, rendered_prompt


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode for the block, its train/eval mode as it was afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate(
    model, tokenizer, prompts: list[Any], max_new_tokens: int = 16, batch_size: int = 32
) -> list[str]:
    """Greedy completions, decoded without special tokens."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                texts = [rendered_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
                batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                    model.device
                )
                # synced_gpus=False: one rank measures alone (under ZeRO-3 generate would wait for the others).
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    synced_gpus=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return completions


# What one scoring forward may hold: at most SCORE_TOKENS tokens (padding included) and SCORE_LOGITS logit values
# (256 MB in float32). Scoring row by row paid a forward's fixed cost per sequence, most of a tiny model's held-out
# preference metrics; a real vocabulary (151936) still batches a few short rows a forward while its logits stay
# near one long row's, so the evaluation after training adds no memory peak. A longer row is scored alone.
SCORE_TOKENS = 8192
SCORE_LOGITS = 1 << 26


def token_budget(model, reward_head: bool) -> int:
    """Tokens per scoring forward for ``model``: a reward head's logits are one value per row, a policy's are a
    vocabulary's worth per token."""
    vocab = 1 if reward_head else getattr(getattr(model, "config", None), "vocab_size", None) or 1
    return max(1, min(SCORE_TOKENS, SCORE_LOGITS // vocab))


def sequence_scores(
    model,
    tokenizer,
    prompts: list[Any],
    completions: list[Any],
    reward_head: bool,
    max_tokens: int | None = None,
) -> list[float]:
    """Reward-model score, or the policy's summed log-probability of each completion. Rows go through the
    model in right-padded batches of similar length, at most ``max_tokens`` tokens each (`token_budget`)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    rows = [_tokens(tokenizer, prompt, completion) for prompt, completion in zip(prompts, completions)]
    # A sequence classifier finds each row's last token by its pad id: without one, a row at a time. The policy's
    # padding is masked and never scored, so any id does.
    config = getattr(model, "config", None)
    pad_id = getattr(config, "pad_token_id", None) if reward_head else tokenizer.pad_token_id or 0
    budget = 0 if pad_id is None else max_tokens or token_budget(model, reward_head)
    scores = [0.0] * len(rows)
    with eval_mode(model), torch.no_grad():
        for batch in _length_batches([len(ids) for ids, _ in rows], budget):
            tokens = [torch.tensor(rows[i][0]) for i in batch]
            ids = pad_sequence(tokens, batch_first=True, padding_value=pad_id or 0).to(model.device)
            mask = pad_sequence([torch.ones_like(t) for t in tokens], batch_first=True).to(model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            if reward_head:
                for r, i in enumerate(batch):
                    scores[i] = logits[r, 0].item()
                continue
            logps = logits[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
            for r, i in enumerate(batch):
                n_prompt, n = rows[i][1], len(rows[i][0])
                scores[i] = logps[r, n_prompt - 1 : n - 1].sum().item()
    return scores


def _tokens(tokenizer, prompt: Any, completion: Any) -> tuple[list[int], int]:
    """(the prompt and completion's token ids, how many of them are the prompt's)."""
    prompt_text = rendered_prompt(tokenizer, prompt)
    if isinstance(prompt, list) and isinstance(completion, list):
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    else:
        full = prompt_text + completion_text(completion)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return ids, len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])


def _length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Row indices in batches of similar length whose padded size (rows x longest) stays within
    ``max_tokens``; a row longer than that, or every row when ``max_tokens`` is 0, makes a batch alone."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        # sorted ascending: row i is the longest of the batch it joins
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
