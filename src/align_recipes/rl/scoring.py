"""Scoring a rollout: every reward function on every completion, and their weighted sum.

Reward functions follow TRL GRPO's contract (``f(prompts, completions, **columns) -> list[float | None]``).
A reward model that shares the policy's tokenizer is scored on token ids instead, in one forward pass:
prompt ids + the answer's ids + the tokens the chat template puts after an answer. That skips decoding,
re-rendering and re-tokenizing the text, and is what it would have read anyway whenever the decoded text
re-tokenizes to the same ids (tests/rl/test_rl_wiring.py compares both). It differs only where decoding is
lossy (special tokens are dropped either way; byte fragments of broken UTF-8 decode to U+FFFD), and then the
reward model scores what the policy actually generated. Rows whose template layout differs fall back to text.
During training the reward model also keeps its key/value caches of the prompts (`PromptPrefixCache`), so from a
prompt's second visit on it reads only the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from align_recipes.reward_model import RewardModelFunc
from align_recipes.rewards import reward_func_name
from align_recipes.rl.prefix_cache import PromptPrefixCache


class RewardScorer:
    """Calls the reward functions on a rollout; ``score`` returns (scores [B], per_function [B, F])."""

    def __init__(
        self,
        reward_funcs: list[Callable],
        weights: list[float],
        policy_tokenizer,
        num_prompts: int = 0,
        prefix_budget_bytes: int = 0,
    ):
        self.funcs, self.weights = list(reward_funcs), list(weights)
        self.special_ids = set(policy_tokenizer.all_special_ids)
        self.by_ids = [
            isinstance(f, RewardModelFunc) and f.shares_tokenizer(policy_tokenizer) for f in self.funcs
        ]
        self.num_prompts, self.prefix_budget = num_prompts, prefix_budget_bytes
        self.prefixes: dict[
            int, PromptPrefixCache
        ] = {}  # per reward model: its caches of the training prompts

    def answer_ids(self, completion_ids: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Each completion's generated ids without special tokens (what decoding with skip_special_tokens keeps)."""
        return [
            [t for t in row[:n] if t not in self.special_ids]
            for row, n in zip(completion_ids.tolist(), lengths.tolist())
        ]

    def _score_ids(
        self,
        j: int,
        func: RewardModelFunc,
        prompts: list,
        prompt_texts: list[str],
        prompt_ids: list[list[int]],
        answers: list[list[int]],
        completions: list,
        columns: dict,
        keys: list[int] | None,
        extra: dict,
    ) -> list[float]:
        suffixes = [func.completion_suffix(p, t) for p, t in zip(prompts, prompt_texts)]
        rows = [i for i, s in enumerate(suffixes) if s is not None]
        values = [math.nan] * len(prompts)
        if rows:

            def full() -> torch.Tensor:
                return torch.tensor(
                    func.score_ids([prompt_ids[i] + answers[i] + suffixes[i] for i in rows])
                ).unsqueeze(1)

            if keys is None or self.prefix_budget <= 0:
                scored = full()[:, 0].tolist()
            else:
                if j not in self.prefixes:
                    self.prefixes[j] = PromptPrefixCache(
                        func.model, self.num_prompts, self.prefix_budget, lm=False
                    )
                pad, device = func.tokenizer.pad_token_id, func.model.device
                continuations = [answers[i] + suffixes[i] for i in rows]
                width = max(len(c) for c in continuations) or 1
                ids = torch.tensor([c + [pad] * (width - len(c)) for c in continuations], device=device)
                mask = torch.tensor(
                    [[1] * len(c) + [0] * (width - len(c)) for c in continuations], device=device
                )
                scored = (
                    self.prefixes[j]
                    .run([keys[i] for i in rows], [prompt_ids[i] for i in rows], ids, mask, full)[:, 0]
                    .float()
                    .tolist()
                )
            for i, v in zip(rows, scored):
                values[i] = v
        rest = [i for i, s in enumerate(suffixes) if s is None]
        if rest:
            scored = func(
                prompts=[prompts[i] for i in rest],
                completions=[completions[i] for i in rest],
                **{k: [v[i] for i in rest] for k, v in columns.items()},
                **extra,
            )
            for i, v in zip(rest, scored):
                values[i] = v
        return values

    def score(
        self,
        prompts: list,
        completions: list,
        columns: dict[str, list],
        prompt_texts: list[str],
        prompt_ids: list[list[int]],
        completion_ids: torch.Tensor,
        lengths: torch.Tensor,
        keys: list[int] | None = None,
        **extra,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each function's rewards (None -> NaN) and their weighted sum (NaNs skipped, as in TRL GRPO). ``keys``
        (training-prompt indices) let a reward model reuse its caches of the prompts (`PromptPrefixCache`)."""
        per_func = torch.zeros(len(completions), len(self.funcs), dtype=torch.float32)
        answers = self.answer_ids(completion_ids, lengths) if any(self.by_ids) else None
        for j, (func, by_ids) in enumerate(zip(self.funcs, self.by_ids)):
            if by_ids:
                values = self._score_ids(
                    j, func, prompts, prompt_texts, prompt_ids, answers, completions, columns, keys, extra
                )
            else:
                values = func(prompts=prompts, completions=completions, **columns, **extra)
            values = [math.nan if v is None else float(v) for v in values]
            if len(values) != len(completions):
                raise ValueError(
                    f"reward function '{reward_func_name(func)}' returned {len(values)} rewards for "
                    f"{len(completions)} completions; it must return one per completion"
                )
            per_func[:, j] = torch.tensor(values, dtype=torch.float32)
        weighted = per_func * torch.tensor(self.weights, dtype=torch.float32)
        return weighted.nansum(1), per_func
