"""The one seam through which the RL trainers sample completions.

A `Generator` takes a left-padded batch of prompt token ids and returns the sampled completion ids,
right-padded with the pad token; the trainer never calls ``model.generate`` or vLLM itself.
`HFGenerator` uses ``model.generate`` on the (unwrapped) policy; `VLLMGenerator` delegates to TRL's
`VLLMGeneration` (colocate or server mode) and pushes the new policy weights to vLLM after every
update (`sync_weights`). `make_generator` picks one from the config.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Generator:
    """Interface: ``generate(prompt_ids, prompt_mask) -> completion_ids``; ``sync_weights()`` after updates."""

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sync_weights(self) -> None:
        """Make the next `generate` use the current policy weights (a no-op when it samples from them directly)."""


def pad_right(rows: list[list[int]], pad_id: int, device=None) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device) if device is not None else out


class HFGenerator(Generator):
    """Sampling with transformers' ``generate`` on the live policy."""

    def __init__(self, get_model: Callable[[], nn.Module], accelerator, args, eos_token_ids: list[int],
                 pad_token_id: int):
        from transformers import GenerationConfig

        self.get_model, self.accelerator = get_model, accelerator
        # Every sampling knob is set explicitly: a hub model's generation_config.json (top_k=20,
        # repetition_penalty=1.05, ...) would otherwise fill the unset ones and change the distribution
        # that the losses assume.
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, min_p=0.0, repetition_penalty=1.0, num_beams=1, use_cache=True,
            eos_token_id=eos_token_ids, pad_token_id=pad_token_id, bos_token_id=None,
        )

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        model = self.get_model()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                     generation_config=self.generation_config)
        finally:
            model.train(was_training)
        return out[:, prompt_ids.shape[1]:]


class VLLMGenerator(Generator):
    """Sampling with vLLM through TRL's `VLLMGeneration` (untested here: needs vLLM and a GPU)."""

    def __init__(self, model: nn.Module, accelerator, processing_class, args, pad_token_id: int):
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ImportError("use_vllm is true but vLLM is not installed (or not a version TRL supports): "
                              "pip install 'align-recipes[vllm]', or set use_vllm: false to generate with transformers")
        from trl.generation.vllm_generation import VLLMGeneration

        self.pad_token_id = pad_token_id
        self.vllm = VLLMGeneration(
            model=model, accelerator=accelerator, processing_class=processing_class, mode=args.vllm_mode,
            server_base_url=args.vllm_server_base_url, server_host=args.vllm_server_host,
            server_port=args.vllm_server_port, server_timeout=args.vllm_server_timeout,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_length=(args.max_prompt_length + args.max_new_tokens) if args.max_prompt_length else None,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            max_completion_length=args.max_new_tokens, logprobs=0,
        )

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        _, completion_ids, _, _ = self.vllm.generate(prompts=prompts, images=None, num_generations=1)
        return pad_right(completion_ids, self.pad_token_id, prompt_ids.device)

    def sync_weights(self) -> None:
        self.vllm.sync_weights()


def make_generator(args, get_model: Callable[[], nn.Module], accelerator, processing_class,
                   eos_token_ids: list[int], pad_token_id: int) -> Generator:
    if args.use_vllm:
        return VLLMGenerator(get_model(), accelerator, processing_class, args, pad_token_id)
    return HFGenerator(get_model, accelerator, args, eos_token_ids, pad_token_id)
