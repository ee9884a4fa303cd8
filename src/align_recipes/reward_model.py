"""A reward model as a reward function (`RewardModelFunc`): a sequence classifier (num_labels=1) that
scores chat-templated prompt + completion, loaded lazily so that building a recipe's rewards imports no
torch until the first score. rewards.py builds it for a `{model: …}` entry; the online trainers
(rl/) also score token ids with it directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align_recipes.data.messages import completion_text


class RewardModelFunc:
    """A reward model as a reward function: scores chat-templated prompt + completion with a sequence
    classifier (num_labels=1). The model loads on first use, on ``device`` (default: the current CUDA
    device, else CPU); ``.to(device)`` moves it. ``batch_size=None`` scores a whole call in one forward pass.

    Online trainers whose policy shares this model's tokenizer skip the text round trip: `shares_tokenizer`
    tells them so, `completion_suffix` gives the tokens the chat template puts after an answer, and `score_ids`
    scores ready-made token sequences (prompt ids + answer ids + suffix) in one forward pass."""

    _PROBE = "\u2063probe\u2063"  # a completion no template changes, to find what comes after an answer

    def __init__(
        self,
        path: str,
        device: Any = None,
        batch_size: int | None = None,
        model: Any = None,
        tokenizer: Any = None,
        max_length: int | None = None,
    ):
        self.path, self.device, self.batch_size, self.max_length = str(path), device, batch_size, max_length
        self._model, self._tokenizer = model, tokenizer
        self._suffixes: dict[str, list[int] | None] = {}
        self.__name__ = "reward_model_" + (Path(self.path.rstrip("/")).name or "model")

    def _resolve_device(self):
        import torch

        if self.device is not None:
            return torch.device(self.device)
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            self._model = AutoModelForSequenceClassification.from_pretrained(
                self.path, num_labels=1, dtype="auto"
            )
        if not getattr(self, "_prepared", False):
            if self._model.config.pad_token_id is None:
                self._model.config.pad_token_id = self.tokenizer.pad_token_id
            self._model.eval().requires_grad_(False)
            self._model.to(self._resolve_device())
            self._prepared = True
        return self._model

    def to(self, device: Any) -> RewardModelFunc:
        self.device = device
        if self._model is not None:
            self._model.to(device)
        return self

    def texts(self, prompts: list, completions: list) -> list[str]:
        out = []
        for prompt, completion in zip(prompts, completions):
            if isinstance(prompt, list):
                messages = list(prompt) + (
                    completion
                    if isinstance(completion, list)
                    else [{"role": "assistant", "content": completion_text(completion)}]
                )
                if getattr(self.tokenizer, "chat_template", None):
                    out.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
                else:
                    out.append("\n".join(completion_text([m]) for m in messages))
            else:
                out.append(str(prompt) + completion_text(completion))
        return out

    # --- scoring token ids directly (online RL with a shared tokenizer)
    def shares_tokenizer(self, tokenizer) -> bool:
        """Whether ``tokenizer`` (the policy's) is this model's: same class, vocabulary, special tokens and chat
        template, so the policy's token ids mean the same here."""
        mine = self.tokenizer
        return (
            type(mine).__name__ == type(tokenizer).__name__
            and getattr(mine, "chat_template", None) == getattr(tokenizer, "chat_template", None)
            and mine.all_special_tokens == tokenizer.all_special_tokens
            and mine.get_vocab() == tokenizer.get_vocab()
        )

    def completion_suffix(self, prompt: Any, prompt_text: str) -> list[int] | None:
        """Token ids this model's text layout puts after an answer to ``prompt`` (e.g. the end-of-turn tokens),
        given ``prompt_text``, the prompt as the policy saw it (chat template with the generation prompt). None
        when the layout is not ``prompt_text + answer + suffix`` (then only the text path is right)."""
        if prompt_text not in self._suffixes:
            full = self.texts([prompt], [self._PROBE])[0]
            head = prompt_text + self._PROBE
            suffix = full[len(head) :] if full.startswith(head) else None
            self._suffixes[prompt_text] = (
                None if suffix is None else self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
            )
        return self._suffixes[prompt_text]

    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        """Scores of ready-made token sequences, padded on the tokenizer's side, in one forward pass (or chunks
        of ``batch_size``)."""
        import torch

        model, tokenizer = self.model, self.tokenizer
        pad, left = tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right") == "left"
        size = self.batch_size or max(len(sequences), 1)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), size):
                chunk = sequences[start : start + size]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, seq in enumerate(chunk):
                    cols = slice(width - len(seq), width) if left else slice(0, len(seq))
                    ids[i, cols] = torch.tensor(seq, dtype=torch.long)
                    mask[i, cols] = 1
                logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
                scores.extend(logits[:, 0].float().tolist())
        return scores

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        import torch

        model, tokenizer, texts, scores = self.model, self.tokenizer, self.texts(prompts, completions), []
        max_length = self.max_length or min(getattr(tokenizer, "model_max_length", 4096) or 4096, 32768)
        size = self.batch_size or max(len(texts), 1)
        with torch.no_grad():
            for start in range(0, len(texts), size):
                batch = tokenizer(
                    texts[start : start + size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    add_special_tokens=False,
                )
                logits = model(**batch.to(model.device)).logits
                scores.extend(logits[:, 0].float().tolist())
        return scores
