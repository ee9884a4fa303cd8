"""Frozen models read each prompt once: key/value caches of the prompts, reused every time a prompt comes back.

An RL run visits every training prompt many times (an epoch over the prompt set every few steps), and the
frozen models (the reference, a reward model) read the same prompt tokens each time. `PromptPrefixCache`
keeps, per prompt, the model's key/value states (and, for a language model, its logits at the last prompt
position, which predict the first completion token), so later calls run only the completion tokens on top of
a left-padded batch of cached prompts.

It switches itself off (every call is then the plain full forward) when the model's cache is not a plain
full-attention `DynamicCache`, when the caches of all the run's prompts would not fit in ``budget_bytes``
(estimated from the first prompt), or when the first batch computed both ways differs by more than 1e-4.
Entries depend only on the prompt, so a resumed run rebuilds exactly the caches the uninterrupted run had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

TOLERANCE = 1e-4


def _plain_dynamic_cache(model: nn.Module) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a model whose config cannot describe its cache: no prefix caching
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class PromptPrefixCache:
    """Prompt key/value states of one frozen model, by prompt key (a dataset index).

    ``model`` is a causal LM (``lm=True``: the logits that predict each completion token are returned) or a
    sequence classifier (its per-sequence output is returned). ``num_prompts`` is how many distinct prompts the run
    can visit, for the budget check."""

    def __init__(self, model: nn.Module, num_prompts: int, budget_bytes: int, lm: bool):
        self.model, self.num_prompts, self.budget, self.lm = model, num_prompts, budget_bytes, lm
        self.entries: dict[
            int, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]
        ] = {}
        self.enabled: bool | None = None if budget_bytes > 0 else False

    # ------------------------------------------------------------------------------------------ entries
    @torch.no_grad()
    def _entry(self, key: int, prompt: Sequence[int]):
        entry = self.entries.get(key)
        if entry is not None and entry[0] == tuple(prompt):
            return entry
        device = next(self.model.parameters()).device
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        out = self.model(input_ids=ids, use_cache=True, **({"logits_to_keep": 1} if self.lm else {}))
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        last = out.logits[0, -1].float() if self.lm else None
        entry = (tuple(prompt), layers, last)
        size = sum(k.numel() * k.element_size() * 2 for k, _ in layers) + (
            0 if last is None else last.numel() * 4
        )
        if self.enabled is None and size * 1.5 * self.num_prompts > self.budget:
            self.enabled = False
        self.entries[key] = entry
        return entry

    def _batch_cache(self, keys: Sequence[int], prompts: Sequence[Sequence[int]]):
        """(DynamicCache of the prompts, left-padded to the longest; prompt attention mask; prompt lengths; the
        last-position logits [B, V] or None)."""
        from transformers import DynamicCache

        entries = [self._entry(k, p) for k, p in zip(keys, prompts)]
        lengths = [len(e[0]) for e in entries]
        width = max(lengths)
        layers = []
        for i in range(len(entries[0][1])):
            padded = []
            for kv in (0, 1):
                parts = [e[1][i][kv] for e in entries]
                padded.append(
                    torch.cat([nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in parts], 0)
                )
            layers.append(tuple(padded))
        device = layers[0][0].device
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], dtype=torch.long, device=device)
        last = torch.stack([e[2] for e in entries]) if self.lm else None
        return DynamicCache(ddp_cache_data=layers), mask, torch.tensor(lengths, device=device), last

    # -------------------------------------------------------------------------------------------- calls
    @torch.no_grad()
    def run(
        self,
        keys: Sequence[int],
        prompts: Sequence[Sequence[int]],
        continuation: torch.Tensor,
        continuation_mask: torch.Tensor,
        full: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The model's output on prompt + continuation: LM -> logits predicting each continuation token [B, C, V];
        classifier -> its logits [B, labels]. ``continuation`` is right-padded [B, C]; ``full()`` computes the same
        without the cache (used when the cache is off, and once to check it)."""
        if self.enabled is None and not _plain_dynamic_cache(self.model):
            self.enabled = False
        if self.enabled is False:
            return full()
        cached = self._cached(keys, prompts, continuation, continuation_mask)
        if self.enabled is False:  # over the budget: found while building the first entries
            self.entries.clear()
            return full()
        if self.enabled is None:  # first use: check against the full forward once
            reference = full()
            self.enabled = cached.shape == reference.shape and bool(
                torch.allclose(cached.float(), reference.float(), atol=TOLERANCE, rtol=0)
            )
            if not self.enabled:
                self.entries.clear()
                return reference
        # The cached result even on first use: a run resumed from a checkpoint (whose first call is here) then
        # computes exactly what the uninterrupted run computed at that step.
        return cached

    def _cached(self, keys, prompts, continuation, continuation_mask) -> torch.Tensor:
        cache, prompt_mask, lengths, last = self._batch_cache(keys, prompts)
        steps = torch.arange(continuation.shape[1], device=continuation.device)
        out = self.model(
            input_ids=continuation,
            attention_mask=torch.cat([prompt_mask, continuation_mask.long()], 1),
            position_ids=lengths.unsqueeze(1) + steps,
            past_key_values=cache,
            use_cache=True,
        )
        if not self.lm:
            return out.logits
        return torch.cat([last.unsqueeze(1).to(out.logits.dtype), out.logits[:, :-1]], 1)
