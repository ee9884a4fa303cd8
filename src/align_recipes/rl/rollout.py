"""Rollout plumbing shared by PPO and SPO: which prompts a step (or an evaluation) takes, how they are
tokenized (once per prompt), and the policy/critic forward pass.

Layout of a rollout batch: ``input_ids = [prompt (left-padded, P) | completion (right-padded, R)]``.
The token at position P + t is predicted by the logits at P + t - 1, so the response logits and
values are positions P - 1 ... P + R - 2 (`response_logits`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from align_recipes.rl.modeling import same_dropout_masks


class PromptSampler:
    """Which dataset rows each process takes at each step.

    The rows form one endless stream: epoch e is a permutation seeded with ``seed + e``; step k takes
    stream positions [k * G, (k + 1) * G) with G = per_process x num_processes, and process r the r-th
    slice of that. Everything follows from the step number, so resuming at step k continues exactly,
    and a dataset smaller than one step simply wraps into the next epoch.
    """

    def __init__(
        self, num_rows: int, per_process: int, num_processes: int = 1, process_index: int = 0, seed: int = 0
    ):
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
        return [
            self._permutation(p // self.num_rows)[p % self.num_rows]
            for p in range(start, start + self.per_process)
        ]


def eval_shards(num_rows: int, num_processes: int, process_index: int) -> tuple[list[int], int]:
    """(rows, real) for evaluation: process r takes rows r, r + P, r + 2P, ...; every process gets the same
    number of rows (the short ones repeat their last row, or row 0), so every process makes the same number of
    generation calls (vLLM's server and tensor-parallel modes are collectives: unequal counts hang). Only the
    first ``real`` rows count."""
    own = list(range(process_index, num_rows, num_processes))
    per_process = -(-num_rows // num_processes) if num_rows else 0
    filler = own[-1] if own else 0
    return own + [filler] * (per_process - len(own)), len(own)


# ------------------------------------------------------------------------------------------ prompts


def is_conversational(prompt: Any) -> bool:
    return (
        isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) and "role" in m for m in prompt)
    )


def prompt_text(tokenizer, prompt: Any) -> str:
    if is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


def prompt_token_ids(tokenizer, text: str, max_length: int | None) -> list[int]:
    """The prompt's ids; an over-long prompt keeps its last ``max_length`` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:] if max_length is not None else ids


def left_pad(rows: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask."""
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def encode_prompts(
    tokenizer, prompts: list, max_length: int | None, pad_id: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask; over-long prompts keep their last ``max_length`` tokens."""
    return left_pad(
        [prompt_token_ids(tokenizer, prompt_text(tokenizer, p), max_length) for p in prompts], pad_id, device
    )


class PromptCache:
    """A dataset's rows, rendered prompt texts and prompt ids, each computed once per row: an RL run visits
    every prompt many times, and the chat template and tokenizer cost more than a tiny model's step."""

    def __init__(self, dataset, tokenizer, max_length: int | None):
        self.dataset, self.tokenizer, self.max_length = dataset, tokenizer, max_length
        self._rows: dict[int, dict] = {}
        self._texts: dict[int, str] = {}
        self._ids: dict[int, list[int]] = {}

    def row(self, index: int) -> dict:
        if index not in self._rows:
            self._rows[index] = self.dataset[int(index)]
        return self._rows[index]

    def text(self, index: int) -> str:
        if index not in self._texts:
            self._texts[index] = prompt_text(self.tokenizer, self.row(index)["prompt"])
        return self._texts[index]

    def ids(self, index: int) -> list[int]:
        if index not in self._ids:
            self._ids[index] = prompt_token_ids(self.tokenizer, self.text(index), self.max_length)
        return self._ids[index]


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decode_completions(
    tokenizer, completion_ids: torch.Tensor, lengths: torch.Tensor, conversational: bool
) -> list:
    texts = [
        tokenizer.decode(row[:n], skip_special_tokens=True)
        for row, n in zip(completion_ids.tolist(), lengths.tolist())
    ]
    return [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts


# ------------------------------------------------------------------------------------ forward pass


def response_logits(
    model: nn.Module, input_ids, attention_mask, position_ids, n_response: int
) -> torch.Tensor:
    """Logits that predict the ``n_response`` last tokens: [B, n_response, V]."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=n_response + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]


class PolicyAndValue(nn.Module):
    """The trained modules as one `nn.Module`, so one optimizer and one DDP wrapper cover both.
    ``forward`` returns (response logits [B, R, V], response values [B, R] or None). ``seed`` fixes each part's
    dropout masks (the policy's from ``seed``, the critic's from ``seed + 1``), whichever way they are called."""

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids, attention_mask, position_ids, n_response: int, seed: int | None = None):
        return (
            self.policy_logits(input_ids, attention_mask, position_ids, n_response, seed),
            self.values(input_ids, attention_mask, position_ids, n_response, seed),
        )

    def policy_logits(
        self, input_ids, attention_mask, position_ids, n_response: int, seed: int | None = None
    ):
        with same_dropout_masks(seed, input_ids.device):
            return response_logits(self.policy, input_ids, attention_mask, position_ids, n_response)

    def values(
        self, input_ids, attention_mask, position_ids, n_response: int, seed: int | None = None
    ) -> torch.Tensor | None:
        """The critic's values at the response positions alone (no policy forward), or None without a critic."""
        if self.value_model is None:
            return None
        with same_dropout_masks(None if seed is None else seed + 1, input_ids.device):
            return self.value_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )[:, -(n_response + 1) : -1]
