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


def sequence_scores(
    model, tokenizer, prompts: list[Any], completions: list[Any], reward_head: bool
) -> list[float]:
    """Reward-model score, or the policy's summed log-probability of each completion."""
    import torch

    scores = []
    with eval_mode(model), torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            prompt_text = rendered_prompt(tokenizer, prompt)
            if isinstance(prompt, list) and isinstance(completion, list):
                full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            else:
                full = prompt_text + completion_text(completion)
            ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
            if reward_head:
                scores.append(model(input_ids=ids).logits[0, 0].item())
                continue
            n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
            logits = model(input_ids=ids).logits[0, :-1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
            scores.append(logps[n_prompt - 1 :].sum().item())
    return scores
