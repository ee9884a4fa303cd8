"""PPOTrainer and SPOTrainer: the same rollout and clipped-update loop (`OnlineRLTrainer`), two ways
of turning scores into advantages.

PPO  per-token reward = -kl_coef * KL(policy || reference) on each token + the score on the last one;
     a critic (`ValueHead`) predicts values; GAE gives advantages and returns; optional whitening;
     loss = clipped policy loss + vf_coef * clipped value loss. kl_coef is fixed or adaptive.
SPO  advantage = clip(score - baseline, +-advantage_clip) on every token of the completion, where the
     baseline is the mean of a Beta belief over normalised rewards, updated after every step with a
     forgetting factor rho that follows how much the policy moved; no critic. The KL to the reference
     is a loss term: loss = clipped policy loss + beta * k3 KL.

Both take TRL-style constructor arguments (see `OnlineRLTrainer.__init__`), so the registry dispatches
them like TRL's trainers.
"""

from __future__ import annotations

from align_recipes.rewards import RewardModelFunc
from align_recipes.rl import core
from align_recipes.rl.base import OnlineRLTrainer
from align_recipes.rl.config import PPOConfig, SPOConfig
from align_recipes.rl.control import AdaptiveKLController, BetaBaselineTracker, FixedKLController
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

    def __init__(self, model, args: PPOConfig, train_dataset, processing_class=None, reward_funcs=None,
                 reward_weights=None, ref_model=None, value_model=None, peft_config=None, callbacks=None,
                 eval_dataset=None):
        if not isinstance(args, PPOConfig):
            raise TypeError(f"PPOTrainer needs a PPOConfig, got {type(args).__name__}")
        self.kl_controller = AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon) \
            if args.adaptive_kl else FixedKLController(args.kl_coef)
        super().__init__(model, args, train_dataset, processing_class, reward_funcs, reward_weights, ref_model,
                         value_model, peft_config, callbacks, eval_dataset)

    def _kl_weight(self, args) -> float:
        return args.kl_coef

    def _build_value_model(self, value_model, policy, args, peft_config):
        source = value_model if value_model is not None else args.value_model_path
        if source is None:
            source = args.reward_model_path or next(
                (f.path for f in self.reward_funcs if isinstance(f, RewardModelFunc)), None)
        return value_model_from(source, policy, peft_config)

    def _advantages(self, batch: dict) -> dict[str, float]:
        args, mask = self.args, batch["response_mask"]
        kl = core.kl_estimate(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator) * mask
        kl_coef = self.kl_controller.value
        rewards = core.shaped_rewards(batch["scores"].float(), kl, mask, kl_coef)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae(rewards, batch["values"], mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)
        batch["advantages"], batch["returns"] = advantages, returns
        mean_kl = self._gather_mean(core.masked_sum(kl, mask, dim=1).mean())
        self.kl_controller.update(mean_kl, self.args.rollout_batch_size * self.accelerator.num_processes)
        return {"kl_coef": kl_coef, "non_score_reward": (-kl_coef * kl.sum(1)).mean().item(),
                "value": core.masked_mean(batch["values"], mask).item()}

    def _loss(self, batch, idx, logprobs, values):
        args, mask = self.args, batch["response_mask"][idx]
        pg_loss, clipfrac, approx_kl = core.policy_loss(logprobs, batch["logprobs"][idx], batch["advantages"][idx],
                                                        mask, args.cliprange)
        vf_loss, vf_clipfrac = core.value_loss(values, batch["values"][idx], batch["returns"][idx], mask,
                                               args.cliprange_value)
        loss = pg_loss + args.vf_coef * vf_loss
        return loss, {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "clipfrac": clipfrac.item(),
                      "vf_clipfrac": vf_clipfrac.item(), "approx_kl": approx_kl.item()}

    def _algorithm_state(self) -> dict:
        return {"algorithm": "ppo", "kl_controller": self.kl_controller.state_dict()}

    def _load_algorithm_state(self, state: dict) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])


class SPOTrainer(OnlineRLTrainer):
    """Single-sample RL with an adaptive Beta baseline (no critic, one completion per prompt).

    Same arguments as `PPOTrainer` with an `SPOConfig`, minus ``value_model``. ``ref_model`` is only used when
    ``args.beta > 0``.
    """

    _tag_names = ["align-recipes", "spo"]

    def __init__(self, model, args: SPOConfig, train_dataset, processing_class=None, reward_funcs=None,
                 reward_weights=None, ref_model=None, value_model=None, peft_config=None, callbacks=None,
                 eval_dataset=None):
        if not isinstance(args, SPOConfig):
            raise TypeError(f"SPOTrainer needs an SPOConfig, got {type(args).__name__}")
        if value_model is not None:
            raise ValueError("SPO has no critic: remove value_model (it is for PPO)")
        self.tracker = BetaBaselineTracker(args.clip_lower, args.clip_upper, args.half_life, args.rho_const,
                                           args.reward_scale, args.rho_mode)
        super().__init__(model, args, train_dataset, processing_class, reward_funcs, reward_weights, ref_model,
                         None, peft_config, callbacks, eval_dataset)

    def _kl_weight(self, args) -> float:
        return args.beta

    def _advantages(self, batch: dict) -> dict[str, float]:
        mask = batch["response_mask"]
        baseline = self.tracker.baseline
        advantages = core.spo_advantages(batch["scores"].float(), baseline, self.args.advantage_clip)
        batch["advantages"] = advantages.unsqueeze(1) * mask
        # The tracker must be identical on every process: it sees the rewards and log-probs of all of them.
        all_scores = self.accelerator.gather(batch["scores"].float()).tolist()
        mean_logprob = self._gather_mean(core.masked_mean(batch["logprobs"], mask))
        rho = self.tracker.update(all_scores, mean_logprob)
        return {"baseline": baseline, "rho": rho, "advantage": advantages.mean().item(), "kl_coef": self.args.beta}

    def _loss(self, batch, idx, logprobs, values):
        args, mask = self.args, batch["response_mask"][idx]
        pg_loss, clipfrac, approx_kl = core.policy_loss(logprobs, batch["logprobs"][idx], batch["advantages"][idx],
                                                        mask, args.cliprange)
        loss, logs = pg_loss, {"policy_loss": pg_loss.item(), "clipfrac": clipfrac.item(),
                               "approx_kl": approx_kl.item()}
        if args.beta > 0:
            kl = core.kl_penalty_loss(logprobs, batch["ref_logprobs"][idx], mask, "k3")
            loss = loss + args.beta * kl
            logs["kl_loss"] = kl.item()
        return loss, logs

    def _algorithm_state(self) -> dict:
        return {"algorithm": "spo", "tracker": self.tracker.state_dict()}

    def _load_algorithm_state(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
