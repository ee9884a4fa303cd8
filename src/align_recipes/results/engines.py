"""The engines a finished model can answer through, each giving greedy answers to rendered prompts and
saying whether the answer ended with an end-of-turn token inside the budget.

- `HFEngine`: the run's model in transformers (an adapter stays attached).
- `LlamaCppEngine`: a GGUF file in llama.cpp, through `llama-cpp-python` where it is installed.
- `GGUFReaderEngine`: a GGUF file read back by transformers (`from_pretrained(dir, gguf_file=…)`, which
  dequantizes q8_0 to float); needs the official `gguf` package (the `gguf` extra).

`gguf_engine(path, …)` picks llama.cpp where installed, else the reader. A vLLM engine (a `vllm.LLM` over
the HF folder, greedy `SamplingParams`, `stop_token_ids` from the same end-of-turn tokens) belongs to the
vLLM generation seam; it plugs in beside these as one more object with `name` and `greedy`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Answer:
    text: str  # the answer without its end-of-turn token
    stopped: bool  # an end-of-turn token came within the budget
    tokens: int  # tokens generated (the end-of-turn token included)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cut(ids: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[:index], True
    return ids, False


class HFEngine:
    """Greedy decoding with transformers' `generate`, one prompt at a time (no padding to differ by)."""

    def __init__(self, model, tokenizer, stop_ids: list[int], name: str = "hf"):
        self.model, self.tokenizer, self.stop_ids, self.name = model, tokenizer, list(stop_ids), name

    def greedy(self, prompt: str, max_new_tokens: int) -> Answer:
        import torch

        batch = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        ids = out[0, batch["input_ids"].shape[1] :].tolist()
        kept, stopped = _cut(ids, set(self.stop_ids))
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Answer(text=text.strip(), stopped=stopped, tokens=len(ids))


class GGUFReaderEngine(HFEngine):
    """A GGUF file read back by transformers. Its tokenizer comes from the file, except when export wrote an
    inert merge (the reader rebuilds a BPE from the merges and cannot take one whose result is not in the
    vocabulary): then `tokenizer` (the run's) is used, after checking that the file's token list is its own."""

    def __init__(self, path: Path, stop_ids: list[int], tokenizer=None, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).to(device).eval()
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            same_vocabulary(path, tokenizer)
        super().__init__(model, tokenizer, stop_ids, name="gguf (transformers reader)")


def gguf_tokens(path: Path) -> list[str]:
    from gguf import GGUFReader

    return list(GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents())


def same_vocabulary(path: Path, tokenizer) -> None:
    tokens = gguf_tokens(path)
    mine = tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    if tokens != mine:
        wrong = next(i for i, (a, b) in enumerate(zip(tokens, mine)) if a != b)
        raise ValueError(f"the GGUF's token {wrong} is {tokens[wrong]!r}, the tokenizer's {mine[wrong]!r}")


class LlamaCppEngine:
    """A GGUF file in llama.cpp (llama-cpp-python), greedy (top_k=1), prompt tokens parsed with specials."""

    name = "gguf (llama.cpp)"

    def __init__(self, path: Path, stop_ids: list[int], n_ctx: int = 2048):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, verbose=False)
        self.stop_ids = set(stop_ids)

    def greedy(self, prompt: str, max_new_tokens: int) -> Answer:
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        ids: list[int] = []
        for token in self.llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            ids.append(int(token))
            if token in self.stop_ids or len(ids) >= max_new_tokens:
                break
        kept, stopped = _cut(ids, self.stop_ids)
        text = self.llm.detokenize(kept).decode("utf-8", errors="replace")
        return Answer(text=text.strip(), stopped=stopped, tokens=len(ids))


def gguf_engine(path: Path, stop_ids: list[int], tokenizer=None):
    """llama.cpp where llama-cpp-python is installed, else transformers' reader; None when neither is."""
    if installed("llama_cpp"):
        return LlamaCppEngine(path, stop_ids)
    if installed("gguf"):
        return GGUFReaderEngine(path, stop_ids, tokenizer)
    return None


GGUF_ENGINE_PACKAGES = "llama-cpp-python, or the official gguf package (pip install 'align-recipes[gguf]')"
