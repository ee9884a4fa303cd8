"""One RL step of `OnlineRLTrainer`: sample and score a rollout, take its no-grad passes, run the updates.

Which passes a rollout needs:
- pi_old (the log-probs the ratio divides by, and SPO's stored log-probs) comes from the sampler when it is the
  policy itself (`Generator.logprobs_match_policy`, transformers' generate), dropout is off and everything runs
  in float32: no extra policy forward. Otherwise it is a policy forward, in the update's mode: with vLLM (other
  kernels, possibly stale weights); with dropout on, where micro batch k uses the same dropout masks in that
  forward and in every update pass (`same_dropout_masks`), so the first ratio is exactly 1; and with autocast or
  non-float32 weights (`_reduced_precision`), where generate's incremental key/value-cache log-probs differ
  from the training forward's (bf16 on CPU: 0.01 per token, first ratios 0.62-1.35, SPO's rho at clip_lower
  for a policy that had not moved).
- the critic's values (PPO), the reference's log-probs (when the KL weight is > 0). When one micro batch
  holds the whole rollout (no accumulation, one mini batch), the first update pass runs at the rollout's
  weights on the same rows, so the critic's rollout values are taken from that pass (detached) instead of
  a separate forward: the advantages are computed there, before its loss (`_values_in_first_pass`).
- with vLLM and `vllm_importance_sampling_correction`, per-token weights min(pi_old / pi_vllm, cap).

The completion mask comes from the generator's lengths; the missing-EOS penalty from its `truncated` flags.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import defaultdict

import torch
from torch import nn

from align_recipes.rewards import reward_func_name
from align_recipes.rl import core, sharding
from align_recipes.rl.rollout import (
    PromptCache,
    decode_completions,
    is_conversational,
    left_pad,
    position_ids_from,
    response_logits,
)
from align_recipes.rl.shared_critic import adapters_disabled


class ExperienceMixin:
    """Rollout and update methods of `OnlineRLTrainer` (see the module docstring)."""

    # ---------------------------------------------------------------------------------- rollout
    @property
    def _values_in_first_pass(self) -> bool:
        """The critic's rollout values come from the first update pass (see the module docstring)."""
        return (
            self.value_model is not None
            and self.args.rollout_batch_size <= self.args.per_device_train_batch_size
        )

    @property
    def _reduced_precision(self) -> bool:
        """bf16/fp16 autocast, or policy weights in another float dtype than float32 (see the module docstring)."""
        if self.args.bf16 or self.args.fp16:
            return True
        policy = self.accelerator.unwrap_model(self.model)
        return any(p.is_floating_point() and p.dtype != torch.float32 for p in policy.parameters())

    def _micro_seed(self, k: int) -> int | None:
        """The dropout seed of micro batch k at this step (None with dropout off)."""
        if not self._dropout_active:
            return None
        return zlib.crc32(f"{self.args.seed}:{self.state.global_step}:{k}".encode())

    def _ref_logits(self, input_ids, attention_mask, position_ids, n_response):
        """The reference's logits predicting the response tokens (a full forward)."""
        if self.ref_model is not None:
            return response_logits(self.ref_model, input_ids, attention_mask, position_ids, n_response)
        policy = self.accelerator.unwrap_model(self.model)
        with adapters_disabled(policy):  # requires_grad kept (rl.shared_critic)
            return response_logits(policy, input_ids, attention_mask, position_ids, n_response)

    @torch.no_grad()
    def _generate_and_score(self, cache: PromptCache, indices: list[int]) -> dict:
        args, tok, device = self.args, self.processing_class, self.accelerator.device
        rows = [cache.row(i) for i in indices]
        prompts = [row["prompt"] for row in rows]
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("prompt", "completion")}
        prompt_rows = [cache.ids(i) for i in indices]
        prompt_ids, prompt_mask = left_pad(prompt_rows, tok.pad_token_id, device)
        policy = self.accelerator.unwrap_model(self.model)
        # FSDP: gathered once, not per token, when this process samples (a vLLM server's sync gathers itself).
        with sharding.whole_weights(policy) if self.generator.runs_policy_here else contextlib.nullcontext():
            gen = self.generator.generate(prompt_ids, prompt_mask)
        completions = decode_completions(tok, gen.completion_ids, gen.lengths, is_conversational(prompts[0]))
        keys = list(indices) if cache is self._train_prompts else None  # frozen models cache training prompts
        scores, per_func = self.scorer.score(
            prompts,
            completions,
            columns,
            [cache.text(i) for i in indices],
            prompt_rows,
            gen.completion_ids,
            gen.lengths,
            keys=keys,
            trainer_state=self.state,
        )
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * gen.truncated.float().cpu()
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "response_ids": gen.completion_ids,
            "response_mask": core.mask_from_lengths(gen.lengths, gen.completion_ids.shape[1]),
            "truncated": gen.truncated,
            "scores": scores.to(device),
            "per_func": per_func,
            "sampler_logprobs": gen.logprobs,
            "sampler_entropy": gen.entropy,
            "prompt_keys": list(indices),
            "prompt_rows": prompt_rows,
        }

    @torch.no_grad()
    def _rollout(self, indices: list[int]) -> dict:
        """Generate, score, and run the no-grad passes (see the module docstring)."""
        args = self.args
        batch = self._generate_and_score(self._train_prompts, indices)
        input_ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["response_mask"].long()], 1)
        batch.update(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from(attention_mask)
        )
        n_resp, micro = batch["response_ids"].shape[1], args.per_device_train_batch_size
        policy_pass = (
            self._dropout_active
            or not self.generator.logprobs_match_policy
            or batch["sampler_logprobs"] is None
            or self._reduced_precision
        )
        module = self._actor_critic
        module.train(self._dropout_active)
        parts = defaultdict(list)
        for k, start in enumerate(range(0, input_ids.shape[0], micro)):
            sl = slice(start, start + micro)
            inputs = (input_ids[sl], attention_mask[sl], batch["position_ids"][sl], n_resp)
            tokens = batch["response_ids"][sl]
            seed = self._micro_seed(k)
            with self.accelerator.autocast():
                if policy_pass:
                    logits, values = module(*inputs, seed=seed)
                else:
                    logits, values = (
                        None,
                        None if self._values_in_first_pass else module.values(*inputs, seed=seed),
                    )
                ref_logits = None
                if self._kl_weight(args) > 0:
                    ref_logits = (
                        self._ref_prefix.run(
                            batch["prompt_keys"][sl],
                            batch["prompt_rows"][sl],
                            batch["response_ids"][sl],
                            batch["response_mask"][sl],
                            lambda inputs=inputs: self._ref_logits(*inputs),
                        )
                        if self._ref_prefix is not None
                        else self._ref_logits(*inputs)
                    )
            if logits is not None:
                parts["logprobs"].append(core.logprobs_from_logits(logits, tokens, args.temperature))
                parts["entropy"].append(core.entropy_from_logits(logits, args.temperature))
            if values is not None:
                parts["values"].append(values.float())
            if ref_logits is not None:
                parts["ref_logprobs"].append(core.logprobs_from_logits(ref_logits, tokens, args.temperature))
        module.train()
        batch.update({k: torch.cat(v) for k, v in parts.items()})
        mask = batch["response_mask"]
        if not policy_pass:
            batch["logprobs"], batch["entropy"] = batch["sampler_logprobs"], batch["sampler_entropy"]
        if "entropy" not in batch or batch["entropy"] is None:
            batch["entropy"] = torch.zeros_like(mask)
        batch["logprobs"] = batch["logprobs"] * mask
        if "ref_logprobs" not in batch:
            batch["ref_logprobs"] = batch["logprobs"].clone()
        batch["ref_logprobs"] = batch["ref_logprobs"] * mask
        if (
            not self.generator.logprobs_match_policy
            and batch["sampler_logprobs"] is not None
            and args.vllm_importance_sampling_correction
        ):
            sampler = torch.where(
                torch.isnan(batch["sampler_logprobs"]), batch["logprobs"], batch["sampler_logprobs"]
            )
            batch["is_weights"] = core.truncated_importance_weights(
                batch["logprobs"], sampler, args.vllm_importance_sampling_cap, mask
            )
        return batch

    # ----------------------------------------------------------------------------------- update
    def _micro_batches(self, size: int, micro: int, mini: int) -> list[list[torch.Tensor]]:
        """One pass: mini batches (one optimizer step each) of micro batches (one forward each). With dropout
        on, the micro batches are the rollout's (so each keeps its dropout seed) in a shuffled order; otherwise
        rows are shuffled freely."""
        if self._dropout_active:
            chunks = [torch.arange(s, min(s + micro, size)) for s in range(0, size, micro)]
            order = [chunks[i] for i in torch.randperm(len(chunks)).tolist()]
            per_mini = max(mini // micro, 1)
            return [order[i : i + per_mini] for i in range(0, len(order), per_mini)]
        rows = torch.randperm(size)
        return [
            [rows[s : s + micro] for s in range(m, min(m + mini, size), micro)] for m in range(0, size, mini)
        ]

    def _micro_step(
        self, module: nn.Module, batch: dict, idx: torch.Tensor, scale: float
    ) -> dict[str, float]:
        """Forward and backward of one micro batch (``scale`` = 1 / accumulation steps). On one process the critic
        and the policy run as two graphs, one after the other (the same gradients; the peak activation memory of
        one model instead of both); under DDP as one forward of the wrapped module."""
        args, acc = self.args, self.accelerator
        inputs = (
            batch["input_ids"][idx],
            batch["attention_mask"][idx],
            batch["position_ids"][idx],
            batch["response_ids"].shape[1],
        )
        seed = self._micro_seed(int(idx[0]) // args.per_device_train_batch_size)
        split = acc.num_processes == 1 and self.value_model is not None
        stats, total = {}, 0.0
        with acc.autocast():
            if split:
                values = self._actor_critic.values(*inputs, seed=seed)
            else:
                logits, values = module(*inputs, seed=seed)
        if "advantages" not in batch:  # the whole rollout in this pass, at the rollout's weights
            batch["values"] = torch.empty_like(values, dtype=torch.float32)
            batch["values"][idx] = values.detach().float()
            batch["advantage_logs"] = self._advantages(batch)
        value_loss = None
        if values is not None:
            value_loss, value_stats = self._value_loss(batch, idx, values.float())
            stats.update(value_stats)
            total += value_loss.item()
            if split:
                acc.backward(value_loss * scale)
                del values
                with acc.autocast():
                    logits = self._actor_critic.policy_logits(*inputs, seed=seed)
        logprobs = core.logprobs_from_logits(logits, batch["response_ids"][idx], args.temperature)
        loss, policy_stats = self._loss(batch, idx, logprobs)
        stats.update(policy_stats)
        total += loss.item()
        acc.backward((loss if split or value_loss is None else loss + value_loss) * scale)
        stats["loss"] = total
        return stats

    def _update(self, module: nn.Module, batch: dict) -> dict[str, list[float]]:
        """The optimizer steps on one rollout; fills ``batch["advantages"]`` first when `_step` left that to the
        first pass (`_values_in_first_pass`), and puts the advantage logs in ``batch["advantage_logs"]``."""
        args, acc = self.args, self.accelerator
        micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
        device = batch["input_ids"].device
        stats: dict[str, list[float]] = defaultdict(list)
        module.train()
        for _ in range(args.num_ppo_epochs):
            for mini_batch in self._micro_batches(batch["input_ids"].shape[0], micro, micro * accum):
                for j, idx in enumerate(mini_batch):
                    last = j == len(mini_batch) - 1
                    with contextlib.nullcontext() if last else acc.no_sync(module):
                        micro_stats = self._micro_step(module, batch, idx.to(device), 1.0 / accum)
                    for k, v in micro_stats.items():
                        stats[k].append(float(v))
                if args.max_grad_norm is not None and args.max_grad_norm > 0:
                    # Under FSDP: the joint norm of the policy's and the critic's sharded gradients (rl.sharding).
                    grad_norm = (
                        sharding.clip_grad_norm_(module.parameters(), args.max_grad_norm)
                        if self._fsdp
                        else acc.clip_grad_norm_(module.parameters(), args.max_grad_norm)
                    )
                    stats["grad_norm"].append(float(grad_norm))
                for optimizer in self._optimizers():
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        for scheduler in self._schedulers():
            scheduler.step()
        self.generator.mark_stale()
        return stats

    def _policy_loss(
        self, batch: dict, idx: torch.Tensor, logprobs: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """The clipped surrogate on micro batch ``idx`` (with the vLLM importance weights when there are any)."""
        weights = batch["is_weights"][idx] if "is_weights" in batch else None
        loss, clipfrac, approx_kl = core.policy_loss(
            logprobs,
            batch["logprobs"][idx],
            batch["advantages"][idx],
            batch["response_mask"][idx],
            self.args.cliprange,
            weights,
            getattr(self.args, "cliprange_high", None),
        )
        return loss, {"policy_loss": loss.item(), "clipfrac": clipfrac.item(), "approx_kl": approx_kl.item()}

    def _step(self, module: nn.Module, indices: list[int]) -> dict[str, float]:
        batch = self._rollout(indices)
        mask = batch["response_mask"]
        kl_k1 = core.masked_sum(batch["logprobs"] - batch["ref_logprobs"], mask, dim=1)
        logs = {
            "reward": batch["scores"].mean(),
            "reward_std": batch["scores"].std() if len(mask) > 1 else 0.0,
            "kl": kl_k1.mean(),
            "entropy": core.masked_mean(batch["entropy"], mask),
            "response_length": mask.sum(1).mean(),
            "eos_rate": 1.0 - batch["truncated"].float().mean(),
        }
        if "is_weights" in batch:
            logs["is_weight"] = core.masked_mean(batch["is_weights"], mask)
        for j, func in enumerate(self.reward_funcs):
            logs[f"rewards/{reward_func_name(func)}"] = batch["per_func"][:, j].nanmean()
        if "values" in batch or self.value_model is None:
            logs.update(self._advantages(batch))
        stats = self._update(module, batch)
        logs.update(batch.get("advantage_logs", {}))
        logs.update({k: sum(v) / len(v) for k, v in stats.items() if v})
        return {k: self._gather_mean(v) for k, v in logs.items()}
