"""The one seam through which the RL trainers sample completions.

A `Generator` takes a left-padded batch of prompt token ids and returns a `Generation`: the completion ids
(right-padded), how many tokens each row generated, whether a row was cut off at ``max_new_tokens``, and the
sampler's own log-probability of every token it drew. The trainer never calls ``model.generate`` or vLLM
itself, and never guesses lengths by looking for EOS: a row that stopped for another reason (a stop string)
is followed by padding that may even be the EOS id.

`HFGenerator` samples with ``model.generate`` on the live policy and records the log-probabilities of the
distribution it samples from, so the trainer needs no extra forward pass for them (`logprobs_match_policy`).
`VLLMGenerator` wraps TRL's `VLLMGeneration` (or anything with its ``generate``/``sync_weights`` interface):
its log-probabilities come from other kernels and possibly stale weights, so the trainer recomputes pi_old
and may correct with truncated importance sampling. Weights are pushed to vLLM lazily, before the first
generation after any change (`mark_stale`), so the first rollout never samples from the initial checkpoint
on disk while the policy in memory differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from align_recipes.rl.logprobs import token_entropy, token_logprobs


@dataclass
class Generation:
    """A generator's answer for B prompts (all tensors on the prompts' device).

    Attributes:
        completion_ids: [B, R] long, right-padded with the pad id.
        lengths: [B] long, tokens generated per row, the EOS token included when there is one.
        truncated: [B] bool, the row hit ``max_new_tokens`` without an EOS token.
        logprobs: [B, R] float32 log-probability of each token under the sampling distribution (0 on padding),
            or None when the sampler does not report them.
        entropy: [B, R] float32 entropy of the sampling distribution at each position, or None.
    """

    completion_ids: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


class Generator:
    """Interface: ``generate(prompt_ids, prompt_mask) -> Generation``; ``mark_stale()`` after weight updates."""

    #: The reported log-probabilities are the trained policy's own (same weights, same kernels, same mode), so
    #: they can serve as pi_old without another forward pass.
    logprobs_match_policy = False
    #: Sampling runs the policy in this process, so under FSDP its weights must be gathered around `generate`
    #: (rl/sharding.py `whole_weights`). A vLLM server samples elsewhere: its sync gathers what it needs.
    runs_policy_here = False

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Generation:
        raise NotImplementedError

    def mark_stale(self) -> None:
        """The policy's weights changed: the next `generate` must use the new ones."""


def pad_right(
    rows: list[list], pad_value, dtype=torch.long, device=None, width: int | None = None
) -> torch.Tensor:
    width = width if width is not None else (max((len(r) for r in rows), default=0) or 1)
    out = torch.full((len(rows), width), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out.to(device) if device is not None else out


def lengths_at_first_stop(
    completion_ids: torch.Tensor, stop_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths, stopped) for a sampler that stops a row at its first stop token (transformers' rule):
    length = position of the first stop token + 1, or the full width when there is none."""
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))
    stopped = is_stop.any(1)
    first = torch.where(
        stopped,
        is_stop.float().argmax(1),
        torch.full_like(stopped, completion_ids.shape[1] - 1, dtype=torch.long),
    )
    return first + 1, stopped


class _RecordSamplingLogprobs:
    """A transformers logits processor that records, at each step, the scores (softmax(scores / T) is the
    distribution `generate` samples from: every other processor is neutral, see `HFGenerator`) and, one step later, the
    log-probability and entropy at the token that was drawn. It leaves the scores untouched."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []

    def record(self, drawn: torch.Tensor) -> None:
        scores = self.previous.unsqueeze(1)  # [B, 1, V]: one position, through the trainer's own function
        self.logprobs.append(token_logprobs(scores, drawn.unsqueeze(1), self.temperature)[:, 0])
        self.entropy.append(token_entropy(scores, self.temperature)[:, 0])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.record(input_ids[:, -1])
        self.previous = scores.detach().clone()
        return scores


class HFGenerator(Generator):
    """Sampling with transformers' ``generate`` on the live policy, which reports its own log-probabilities."""

    logprobs_match_policy = True
    runs_policy_here = True

    def __init__(
        self,
        get_model: Callable[[], nn.Module],
        accelerator,
        args,
        eos_token_ids: list[int],
        pad_token_id: int,
    ):
        from transformers import GenerationConfig, LogitsProcessorList

        self.get_model, self.accelerator = get_model, accelerator
        self.eos_token_ids, self.pad_token_id = list(eos_token_ids), pad_token_id
        self.recorder = _RecordSamplingLogprobs(args.temperature)
        self.processors = LogitsProcessorList([self.recorder])
        # Every sampling knob is set to a neutral value explicitly: a hub model's generation_config.json
        # (top_k=20, repetition_penalty=1.05, typical_p, ...) would otherwise fill the unset ones and sample
        # from a distribution other than softmax(logits / temperature), which the losses assume.
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=True,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            renormalize_logits=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=self.eos_token_ids,
            pad_token_id=pad_token_id,
            bos_token_id=None,
        )

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Generation:
        model = self.get_model()
        was_training = model.training
        model.eval()
        self.recorder.reset()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                # synced_gpus=False: under FSDP the trainer gathers the weights around this call
                # (rl.sharding.whole_weights), so no rank has to keep stepping with the others token by token.
                out = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    synced_gpus=False,
                    generation_config=self.generation_config,
                    logits_processor=self.processors,
                )
        finally:
            model.train(was_training)
        completion_ids = out[:, prompt_ids.shape[1] :]
        self.recorder.record(completion_ids[:, -1])
        lengths, stopped = lengths_at_first_stop(completion_ids, self.eos_token_ids)
        mask = torch.arange(completion_ids.shape[1], device=completion_ids.device) < lengths.unsqueeze(1)
        logprobs = torch.stack(self.recorder.logprobs, 1) * mask
        entropy = torch.stack(self.recorder.entropy, 1) * mask
        self.recorder.reset()
        return Generation(
            completion_ids.masked_fill(~mask, self.pad_token_id), lengths, ~stopped, logprobs, entropy
        )


class VLLMGenerator(Generator):
    """Sampling with vLLM through an engine with TRL `VLLMGeneration`'s interface:
    ``generate(prompts=list of token id lists, images=None, num_generations=1)`` returning
    ``(prompt_ids, completion_ids, logprobs, logprob_token_ids)`` with ``logprobs[i][t][0]`` the sampled
    token's log-probability (None when unknown), and ``sync_weights()``. Completions come back unpadded,
    so their lengths are exact whatever made a row stop."""

    def __init__(self, engine, pad_token_id: int, eos_token_ids: list[int], max_new_tokens: int):
        self.engine, self.pad_token_id = engine, pad_token_id
        self.eos_token_ids, self.max_new_tokens = set(eos_token_ids), max_new_tokens
        self.stale = True  # the engine starts from the checkpoint on disk, not from the policy in memory

    def mark_stale(self) -> None:
        self.stale = True

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Generation:
        if self.stale:
            self.engine.sync_weights()
            self.stale = False
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
        _, completions, logprobs, _ = self.engine.generate(prompts=prompts, images=None, num_generations=1)
        completions = [list(c) for c in completions]
        device, width = prompt_ids.device, max((len(c) for c in completions), default=0) or 1
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.long, device=device)
        truncated = torch.tensor(
            [
                len(c) >= self.max_new_tokens and (not c or c[-1] not in self.eos_token_ids)
                for c in completions
            ],
            dtype=torch.bool,
            device=device,
        )
        sampled = None
        if logprobs is not None:
            rows = [[math.nan if step[0] is None else float(step[0]) for step in row] for row in logprobs]
            sampled = pad_right(rows, 0.0, torch.float32, device, width)
        return Generation(
            pad_right(completions, self.pad_token_id, torch.long, device, width),
            lengths,
            truncated,
            sampled,
            None,
        )


def _max_model_length(model, args) -> int | None:
    """Prompt plus completion, capped at the model's positions (vLLM refuses a longer max_model_len)."""
    if not args.max_prompt_length:
        return None
    total = args.max_prompt_length + args.max_new_tokens
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(total, int(positions)) if positions else total


def make_generator(
    args,
    get_model: Callable[[], nn.Module],
    accelerator,
    processing_class,
    eos_token_ids: list[int],
    pad_token_id: int,
) -> Generator:
    if not args.use_vllm:
        return HFGenerator(get_model, accelerator, args, eos_token_ids, pad_token_id)
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        raise ImportError(
            "use_vllm is true but vLLM is not installed (or not a version TRL supports): "
            "pip install 'align-recipes[vllm]', or set use_vllm: false to generate with transformers"
        )
    from trl.generation.vllm_generation import VLLMGeneration

    from align_recipes.rl import vllm_engine

    model = get_model()
    with vllm_engine.for_policy(model):
        engine = VLLMGeneration(
            model=model,
            accelerator=accelerator,
            processing_class=processing_class,
            mode=args.vllm_mode,
            server_base_url=args.vllm_server_base_url,
            server_host=args.vllm_server_host,
            server_port=args.vllm_server_port,
            server_timeout=args.vllm_server_timeout,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            max_num_seqs=args.vllm_max_num_seqs,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            max_model_length=_max_model_length(model, args),
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            max_completion_length=args.max_new_tokens,
            logprobs=0,
            # vLLM stops on the checkpoint's generation config unless told: stop on the same EOS set as HFGenerator.
            generation_kwargs={"stop_token_ids": list(eos_token_ids)},
        )
    vllm_engine.install_sync(engine)  # TRL's load_weights and NCCL syncs fail on vLLM's CPU build
    return VLLMGenerator(engine, pad_token_id, eos_token_ids, args.max_new_tokens)
