"""Rollout plumbing shared by PPO and SPO: which prompts a step takes, how they are tokenized, which
completion tokens count, how completions are scored, and the policy/critic forward pass.

Layout of a rollout batch: ``input_ids = [prompt (left-padded, P) | completion (right-padded, R)]``.
The token at position P + t is predicted by the logits at P + t - 1, so the response logits and
values are positions P - 1 ... P + R - 2 (`response_outputs`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from align_recipes.rewards import reward_func_name


class PromptSampler:
    """Which dataset rows each process takes at each step.

    The rows form one endless stream: epoch e is a permutation seeded with ``seed + e``; step k takes
    stream positions [k * G, (k + 1) * G) with G = per_process x num_processes, and process r the r-th
    slice of that. Everything follows from the step number, so resuming at step k continues exactly,
    and a dataset smaller than one step simply wraps into the next epoch.
    """

    def __init__(self, num_rows: int, per_process: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0):
        if num_rows < 1:
            raise ValueError("the training dataset is empty")
        self.num_rows, self.per_process = num_rows, per_process
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self._perms: dict[int, list[int]] = {}

    @property
    def global_batch(self) -> int:
        return self.per_process * self.num_processes

    @property
    def steps_per_epoch(self) -> float:
        return self.num_rows / self.global_batch

    def total_steps(self, num_train_epochs: float) -> int:
        return max(1, math.ceil(num_train_epochs * self.steps_per_epoch))

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.num_rows, generator=generator).tolist()}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.global_batch + self.process_index * self.per_process
        return [self._permutation(p // self.num_rows)[p % self.num_rows] for p in range(start, start + self.per_process)]


# ------------------------------------------------------------------------------------------ prompts

def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) and "role" in m for m in prompt)


def prompt_text(tokenizer, prompt: Any) -> str:
    if is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


def encode_prompts(tokenizer, prompts: list, max_length: int | None, pad_id: int,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask; over-long prompts keep their last ``max_length`` tokens."""
    rows = [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    if max_length is not None:
        rows = [r[-max_length:] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def completion_mask(completion_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is 1.0 up to and including the first EOS token (everything if none), 0.0 after;
    ended says whether the completion produced an EOS token."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    after_first_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after_first_eos).float(), is_eos.any(1)


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ------------------------------------------------------------------------------------------ rewards

def score_completions(reward_funcs: list[Callable], weights: list[float], prompts: list, completions: list,
                      columns: dict[str, list], **extra) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B], per_function [B, F]): each function's rewards (None -> NaN) and their weighted sum
    (NaNs skipped, as in TRL GRPO)."""
    per_func = torch.zeros(len(completions), len(reward_funcs), dtype=torch.float32)
    for j, func in enumerate(reward_funcs):
        values = func(prompts=prompts, completions=completions, **columns, **extra)
        values = [math.nan if v is None else float(v) for v in values]
        if len(values) != len(completions):
            raise ValueError(f"reward function '{reward_func_name(func)}' returned {len(values)} rewards for "
                             f"{len(completions)} completions; it must return one per completion")
        per_func[:, j] = torch.tensor(values, dtype=torch.float32)
    weighted = per_func * torch.tensor(weights, dtype=torch.float32)
    return weighted.nansum(1), per_func


def decode_completions(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor, conversational: bool) -> list:
    lengths = mask.sum(1).long().tolist()
    texts = [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(completion_ids, lengths)]
    return [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts


# ------------------------------------------------------------------------------------ forward pass

def response_logits(model: nn.Module, input_ids, attention_mask, position_ids, n_response: int) -> torch.Tensor:
    """Logits that predict the ``n_response`` last tokens: [B, n_response, V]."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=n_response + 1, use_cache=False)
    return out.logits[:, :-1]


class PolicyAndValue(nn.Module):
    """The trained modules as one `nn.Module`, so one optimizer and one DDP wrapper cover both.
    ``forward`` returns (response logits [B, R, V], response values [B, R] or None)."""

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids, attention_mask, position_ids, n_response: int):
        logits = response_logits(self.policy, input_ids, attention_mask, position_ids, n_response)
        values = None
        if self.value_model is not None:
            values = self.value_model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids)[:, -(n_response + 1):-1]
        return logits, values
