"""PPOTrainer and SPOTrainer: the same rollout and clipped-update loop (`OnlineRLTrainer`), two ways
of turning scores into advantages.

PPO  per-token reward = -kl_coef * KL(policy || reference) on each token + the score on the last one;
     a critic (`ValueHead`) predicts values; GAE gives advantages and returns; optional whitening;
     loss = clipped policy loss + vf_coef * clipped value loss. kl_coef is fixed or adaptive.
SPO  advantage = score - baseline on every token of the completion; no critic. The baseline (`baselines`) is,
     by default, the SPO paper's per-prompt value tracker (a Beta belief per prompt, forgetting by how far
     the policy moved since it last sampled that prompt, measured on that sample; advantages normalised over
     the batch; `spo_tracking`), or with ``baseline="global"`` MiniMind's single Beta belief. Clipped to
     +-advantage_clip.
     The KL to the reference is a loss term: loss = clipped policy loss + beta * k3 (whose value estimates
     KL(policy || reference) and whose gradient is that of KL(reference || policy)).

Both take TRL-style constructor arguments (see `OnlineRLTrainer.__init__`), so the registry dispatches
them like TRL's trainers.
"""

from __future__ import annotations

from align_recipes.reward_model import RewardModelFunc
from align_recipes.rl import core, sharding, tracker_io
from align_recipes.rl.base import OnlineRLTrainer
from align_recipes.rl.baselines import GlobalBetaBaseline, PromptValueTracker, rewards_range
from align_recipes.rl.config import PPOConfig, SPOConfig
from align_recipes.rl.control import AdaptiveKLController, FixedKLController
from align_recipes.rl.modeling import init_kwargs, is_peft
from align_recipes.rl.shared_critic import fsdp_requested
from align_recipes.rl.spo_tracking import PerPromptTracking
from align_recipes.rl.value import value_model_from

__all__ = ["PPOTrainer", "SPOTrainer"]


class PPOTrainer(OnlineRLTrainer):
    """Actor-critic RLHF: KL-shaped per-token rewards, GAE, clipped policy and value losses.

    Args:
        model: the policy, a `PreTrainedModel` or a path.
        args: a `PPOConfig`.
        train_dataset: a `datasets.Dataset` with a `prompt` column (conversational or plain text); other columns
            reach the reward functions as keyword arguments.
        processing_class: the tokenizer (default: loaded from the model's path).
        reward_funcs: a callable ``f(prompts, completions, **columns) -> list[float]``, a reward model path, a loaded
            sequence classifier, or a list of those (see `align_recipes.rewards`).
        reward_weights: one weight per reward function (default: ``args.reward_weights``, else 1.0 each).
        ref_model: the frozen reference (default: a copy of the policy; with an adapter, the policy without it).
        value_model: the critic: a `ValueHead`, a path or a loaded model (default: ``args.value_model_path``, then
            the reward model, then the policy's backbone).
        peft_config: a PEFT config: the policy and the critic each get an adapter; the reference is the policy
            with its adapter disabled.
        callbacks, eval_dataset: as for `transformers.Trainer`.
    """

    uses_critic = True
    _tag_names = ["align-recipes", "ppo"]

    config_class = PPOConfig

    def _check_arguments(self, args, value_model) -> None:
        super()._check_arguments(args, value_model)
        self.kl_controller = (
            AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
            if args.adaptive_kl
            else FixedKLController(args.kl_coef)
        )

    def _kl_weight(self, args) -> float:
        return args.kl_coef

    def _critic_source(self, value_model, args):
        """What the critic starts from: the given model, value_model_path, the reward model, else None (the
        policy's own body)."""
        source = value_model if value_model is not None else args.value_model_path
        if source is None:
            source = args.reward_model_path or next(
                (f.path for f in self.reward_funcs if isinstance(f, RewardModelFunc)), None
            )
        return source

    def _build_value_model(self, value_model, policy, args, peft_config):
        return value_model_from(
            self._critic_source(value_model, args), policy, peft_config, **init_kwargs(args)
        )

    def _critic_shares_policy_base(self, value_model, policy, args, peft_config) -> bool:
        """Under LoRA a critic started from the policy is a second adapter on its base, not a copy of its body
        (`shared_critic`); not under FSDP, and not for a policy that arrives with an adapter already."""
        return (
            peft_config is not None
            and self._critic_source(value_model, args) is None
            and not is_peft(policy)
            and not fsdp_requested(args)
        )

    def _advantages(self, batch: dict) -> dict[str, float]:
        args, mask = self.args, batch["response_mask"]
        kl = core.kl_estimate(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator) * mask
        kl_coef = self.kl_controller.value
        rewards = core.shaped_rewards(batch["scores"].float(), kl, mask, kl_coef)
        every_rank = sharding.sum_over_ranks(self.accelerator)  # whiten with the whole batch's statistics
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, sum_over_ranks=every_rank)
        advantages, returns = core.gae(rewards, batch["values"], mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask, sum_over_ranks=every_rank)
        batch["advantages"], batch["returns"], batch["rewards"] = advantages, returns, rewards
        mean_kl = self._gather_mean(core.masked_sum(kl, mask, dim=1).mean())
        self.kl_controller.update(mean_kl, self.args.rollout_batch_size * self.accelerator.num_processes)
        return {
            "kl_coef": kl_coef,
            "non_score_reward": (-kl_coef * kl.sum(1)).mean().item(),
            "value": core.masked_mean(batch["values"], mask).item(),
        }

    def _loss(self, batch, idx, logprobs):
        return self._policy_loss(batch, idx, logprobs)

    def _value_loss(self, batch, idx, values):
        args = self.args
        vf_loss, vf_clipfrac = core.value_loss(
            values,
            batch["values"][idx],
            batch["returns"][idx],
            batch["response_mask"][idx],
            args.cliprange_value,
        )
        return args.vf_coef * vf_loss, {"value_loss": vf_loss.item(), "vf_clipfrac": vf_clipfrac.item()}

    def _algorithm_state(self) -> dict:
        return {"algorithm": "ppo", "kl_controller": self.kl_controller.state_dict()}

    def _load_algorithm_state(self, state: dict, checkpoint: str | None = None) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])


class SPOTrainer(PerPromptTracking, OnlineRLTrainer):
    """Single-sample RL with a baseline kept across steps (no critic, one completion per prompt).

    Same arguments as `PPOTrainer` with an `SPOConfig`, minus ``value_model``. ``ref_model`` is only used when
    ``args.beta > 0``.
    """

    _tag_names = ["align-recipes", "spo"]

    config_class = SPOConfig

    def _check_arguments(self, args, value_model) -> None:
        super()._check_arguments(args, value_model)
        if value_model is not None:
            raise ValueError("SPO has no critic: remove value_model (it is for PPO)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # After the base: the tracker reads the reward functions' declared range and the process layout.
        args = self.args
        if args.baseline == "per_prompt":
            self.tracker = self._make_prompt_tracker()
        else:
            declared = rewards_range(self.reward_funcs, self.reward_weights, args.missing_eos_penalty)
            self.tracker = GlobalBetaBaseline(
                args.clip_lower,
                args.clip_upper,
                args.half_life,
                args.rho_const,
                rho_mode=args.rho_mode,
                reward_range=args.tracker_range(declared),
            )

    def _kl_weight(self, args) -> float:
        return args.beta

    def _before_first_step(self) -> None:
        if self.args.baseline == "per_prompt" and self.args.offline_init_samples > 0:
            self._offline_init()

    def _advantages(self, batch: dict) -> dict[str, float]:
        if isinstance(self.tracker, GlobalBetaBaseline):
            return self._global_advantages(batch)
        return self._per_prompt_advantages(batch)

    def _global_advantages(self, batch: dict) -> dict[str, float]:
        mask = batch["response_mask"]
        baseline = self.tracker.baseline
        advantages = core.spo_advantages(batch["scores"].float(), baseline, self.args.advantage_clip)
        batch["advantages"] = advantages.unsqueeze(1) * mask
        # The tracker must be identical on every process: it sees the rewards and log-probs of all of them.
        all_scores = self.accelerator.gather(batch["scores"].float()).tolist()
        mean_logprob = self._gather_mean(core.masked_mean(batch["logprobs"], mask))
        rho = self.tracker.update(all_scores, mean_logprob)
        return {
            "baseline": baseline,
            "rho": rho,
            "advantage": advantages.mean().item(),
            "kl_coef": self.args.beta,
        }

    def _loss(self, batch, idx, logprobs):
        args, mask = self.args, batch["response_mask"][idx]
        loss, logs = self._policy_loss(batch, idx, logprobs)
        if args.beta > 0:
            kl = core.kl_penalty_loss(logprobs, batch["ref_logprobs"][idx], mask, "k3")
            loss = loss + args.beta * kl
            logs["kl_loss"] = kl.item()
        return loss, logs

    def _algorithm_state(self) -> dict:
        """rl_state.json's part: the global belief itself; for the per-prompt tracker only where it is (its
        tensors are in spo_tracker-*.safetensors, one file per process, `tracker_io`)."""
        if isinstance(self.tracker, GlobalBetaBaseline):
            return {"algorithm": "spo", "baseline": "global", "tracker": self.tracker.state_dict()}
        return {
            "algorithm": "spo",
            "baseline": "per_prompt",
            "tracker_files": tracker_io.shard_name(0, self.tracker.num_shards).replace("00000-of", "*-of"),
        }

    def _save_algorithm_files(self, output_dir: str) -> None:
        if isinstance(self.tracker, PromptValueTracker):
            self._save_tracker(output_dir)

    def _load_algorithm_state(self, state: dict, checkpoint: str | None = None) -> None:
        if state.get("baseline", "global") != self.args.baseline:
            raise ValueError(
                f"the checkpoint's SPO baseline is {state.get('baseline', 'global')!r} but this run uses "
                f"{self.args.baseline!r}; resume with the same `baseline`"
            )
        if isinstance(self.tracker, GlobalBetaBaseline):
            self.tracker.load_state_dict(state["tracker"])
        else:
            self._load_tracker(checkpoint, state)
