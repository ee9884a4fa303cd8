"""SPO's per-prompt tracker inside the training loop: advantages, the divergence D, prioritised sampling and the
offline start, with the tracker sharded by prompt across processes.

Process r owns the prompts ``key % num_processes == r`` (`PromptValueTracker`): it alone keeps their beliefs and
last samples. One step:

1. every process gathers the batch's prompt keys and scores (small tensors);
2. each owner fills in the baselines of its prompts; a sum over processes gives everyone all of them, and the
   advantages are normalised over the whole batch (the paper's global normalisation);
3. the completions and their log-probs are gathered (padded to one width); each owner measures D for its
   prompts that have an earlier sample (micro-batched no-grad forwards of the policy), folds the rewards into
   its beliefs and keeps the new samples; nothing else is kept.

Prioritised sampling draws the step's prompts from one weight vector that every process assembles the same way
(its own prompts' weights, zeros elsewhere, summed over processes) with a generator seeded by (seed, step): every
process draws the same prompts, and a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import time

import torch

from align_recipes import console
from align_recipes.rl import core, sharding, tracker_io
from align_recipes.rl.baselines import PromptValueTracker, rewards_range
from align_recipes.rl.rollout import eval_shards, left_pad, position_ids_from, response_logits


class PerPromptTracking:
    """Mixin for `SPOTrainer` (needs `OnlineRLTrainer`'s accelerator, prompts, generator and scorer)."""

    def _make_prompt_tracker(self) -> PromptValueTracker:
        args, acc = self.args, self.accelerator
        declared = rewards_range(self.reward_funcs, self.reward_weights, args.missing_eos_penalty)
        return PromptValueTracker(
            len(self.train_dataset),
            args.clip_lower,
            args.clip_upper,
            args.half_life,
            args.rho_const,
            rho_mode=args.rho_mode,
            reward_range=args.tracker_range(declared),
            num_shards=acc.num_processes,
            shard=acc.process_index,
        )

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    # ------------------------------------------------------------------------------ prompt choice
    def _step_indices(self, sampler, step: int) -> list[int]:
        """Prioritised sampling (the SPO authors'): the global batch drawn without replacement (with, when it is
        larger than the prompt set) with probability proportional to each prompt's `sampling_weights`."""
        if not self.args.prioritized_sampling:
            return sampler.indices(step)
        tracker, device = self.tracker, self.accelerator.device
        weights = torch.zeros(tracker.num_prompts, dtype=torch.float64, device=device)
        weights[tracker.owned_keys().to(device)] = tracker.sampling_weights().to(device)
        weights = self._sum_over_processes(weights).cpu()
        generator = torch.Generator().manual_seed(sampler.seed * 1_000_003 + step)
        total = sampler.global_batch
        drawn = torch.multinomial(
            weights, total, replacement=total > len(weights), generator=generator
        ).tolist()
        start = sampler.process_index * sampler.per_process
        return drawn[start : start + sampler.per_process]

    # ------------------------------------------------------------------------------- offline start
    @torch.no_grad()
    def _offline_init(self) -> None:
        """The authors' offline estimate: k completions of every prompt from the start policy, scored, and each
        owner starts its prompts' beliefs from them (`PromptValueTracker.initialize`). Every process makes the same
        number of generation calls (its own prompts, padded like `eval_shards`)."""
        k, acc, tracker = self.args.offline_init_samples, self.accelerator, self.tracker
        started = time.time()
        own, real = eval_shards(tracker.num_prompts, acc.num_processes, acc.process_index)
        rows = [key for key in own for _ in range(k)]
        sums: dict[int, float] = {}
        size = self.args.rollout_batch_size
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            scores = self._generate_and_score(self._train_prompts, chunk)["scores"].float().tolist()
            for j, (key, score) in enumerate(zip(chunk, scores)):
                if (start + j) // k < real:
                    sums[key] = sums.get(key, 0.0) + tracker.normalize(score)
        keys = own[:real]
        tracker.initialize(keys, [sums[key] for key in keys], k)
        mean = torch.tensor([sums[key] / k for key in keys] or [0.0], device=acc.device)
        count = torch.tensor([float(len(keys))], device=acc.device)
        total = self._sum_over_processes(torch.cat([mean.sum().reshape(1) * 1.0, count]))
        if acc.is_main_process:
            console.info(
                f"spo: tracker started from {k} samples of each of {tracker.num_prompts} prompts "
                f"(mean normalised reward {total[0].item() / max(total[1].item(), 1):.3f}) in "
                f"{time.time() - started:.1f}s"
            )

    # ---------------------------------------------------------------------------------- advantages
    def _per_prompt_advantages(self, batch: dict) -> dict[str, float]:
        acc, mask, keys, tracker = (
            self.accelerator,
            batch["response_mask"],
            batch["prompt_keys"],
            self.tracker,
        )
        device, n, rank = mask.device, len(keys), acc.process_index
        scores = batch["scores"].float()
        all_keys = acc.gather(torch.tensor(keys, dtype=torch.long, device=device))
        all_scores = acc.gather(scores)
        key_list = all_keys.tolist()
        owned = [i for i, k in enumerate(key_list) if tracker.owns(k)]
        baselines = torch.zeros(len(key_list), dtype=torch.float32, device=device)
        if owned:
            baselines[owned] = torch.tensor(
                tracker.baselines([key_list[i] for i in owned]), dtype=torch.float32, device=device
            )
        baselines = self._sum_over_processes(baselines)
        # Normalised over the whole batch (every process), as the paper does; each process keeps its own rows.
        normalized = core.spo_advantages(
            all_scores - baselines, 0.0, self.args.advantage_clip, normalize=True
        )
        advantages = normalized[rank * n : (rank + 1) * n]
        batch["advantages"] = advantages.unsqueeze(1) * mask

        lengths = acc.gather(mask.sum(1).long())
        ids = acc.gather(acc.pad_across_processes(batch["response_ids"], dim=1, pad_index=0))
        logprobs = acc.gather(acc.pad_across_processes(batch["logprobs"].float() * mask, dim=1, pad_index=0))
        own_keys = [key_list[i] for i in owned]
        divergences = self._divergences(own_keys)
        samples = [(ids[i, : lengths[i]], logprobs[i, : lengths[i]]) for i in owned]
        rhos = tracker.update(own_keys, [all_scores[i].item() for i in owned], divergences, samples)
        known = [d for d in divergences if d is not None]
        sums = self._sum_over_processes(
            torch.tensor([sum(rhos), len(rhos), sum(known), len(known)], dtype=torch.float64, device=device)
        ).tolist()
        return {
            "baseline": baselines[rank * n : (rank + 1) * n].mean().item(),
            "rho": sums[0] / max(sums[1], 1),
            "divergence": sums[2] / sums[3] if sums[3] else 0.0,
            "advantage": advantages.mean().item(),
            "kl_coef": self.args.beta,
        }

    @torch.no_grad()
    def _divergences(self, keys: list[int]) -> list[float | None]:
        """D for each (owned) prompt that has an earlier sample: mean |log-ratio| between the policy now and the one
        that sampled it, on that sample (no-grad forwards over the stored samples, one micro batch at a time)."""
        out: list[float | None] = [None] * len(keys)
        if self.args.rho_mode == "constant":
            return out
        policy = self.accelerator.unwrap_model(self.model)
        # Under FSDP a forward of sharded weights is a collective, but ranks hold different numbers of stored
        # samples: every rank gathers the weights (a collective all of them make) and runs only its own forwards.
        with sharding.whole_weights(policy):
            rows = [i for i, k in enumerate(keys) if self.tracker.stored_tensors(k) is not None]
            micro = self.args.per_device_train_batch_size
            for start in range(0, len(rows), micro):
                self._divergences_of(keys, rows[start : start + micro], policy, out)
        return out

    def _divergences_of(self, keys: list[int], rows: list[int], policy, out: list[float | None]) -> None:
        stored = {i: self.tracker.stored_tensors(keys[i]) for i in rows}
        rows = [i for i in rows if len(stored[i][0])]
        if not rows:
            return
        device, pad = self.accelerator.device, self.processing_class.pad_token_id
        prompt_ids, prompt_mask = left_pad([self._train_prompts.ids(keys[i]) for i in rows], pad, device)
        lengths = torch.tensor([len(stored[i][0]) for i in rows], device=device)
        width = int(lengths.max())
        tokens = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        then = torch.zeros((len(rows), width), dtype=torch.float32, device=device)
        for j, i in enumerate(rows):
            tokens[j, : lengths[j]] = stored[i][0].to(device=device, dtype=torch.long)
            then[j, : lengths[j]] = stored[i][1].to(device)
        mask = core.mask_from_lengths(lengths, width)
        attention = torch.cat([prompt_mask, mask.long()], 1)
        with self.accelerator.autocast():
            logits = response_logits(
                policy, torch.cat([prompt_ids, tokens], 1), attention, position_ids_from(attention), width
            )
        now = core.logprobs_from_logits(logits, tokens, self.args.temperature)
        for j, d in zip(rows, core.mean_abs_log_ratio(now, then, mask).tolist()):
            out[j] = d

    # ---------------------------------------------------------------------------------- checkpoints
    def _save_tracker(self, output_dir: str) -> None:
        tracker_io.save(self.tracker, output_dir)

    def _load_tracker(self, checkpoint: str, state: dict) -> None:
        """From the checkpoint's safetensors shards, or (older checkpoints) from rl_state.json's lists."""
        if tracker_io.load(self.tracker, checkpoint):
            return
        if isinstance(state.get("tracker"), dict) and "samples" in state["tracker"]:
            self.tracker.load_json_state(state["tracker"])
            return
        raise ValueError(
            f"{checkpoint} has no SPO tracker (no spo_tracker-*.safetensors and none in rl_state.json): it was "
            "not written by a per-prompt SPO run; resume from a checkpoint of this run, or start over"
        )
