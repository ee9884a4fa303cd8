"""`OnlineRLTrainer`: the rollout -> score -> advantages -> clipped-update loop shared by PPO and SPO.

Why `transformers.Trainer` with our own `train()`: one PPO step is a generation phase followed by
``num_ppo_epochs x num_mini_batches`` optimizer steps on the same batch, which does not fit Trainer's
one-batch-per-optimizer-step loop (TRL's old PPOTrainer made the same choice). Everything else is
Trainer's: the accelerator (DDP, mixed precision), optimizer and scheduler construction, callbacks and
`self.log`, `TrainerState`, `_save_checkpoint` (model, optimizer, scheduler, RNG states, state,
rotation) and its loading helpers, `save_model`. Under FSDP2 (`rl.sharding`) the policy and the critic are
sharded separately, each with its own optimizer, and a checkpoint holds their shards. We add the critic's
weights and the algorithm's own state (KL coefficient, SPO baseline) to each checkpoint, so
`resume_from_checkpoint` continues the run exactly: prompts come from a step-indexed sampler, and
sampling and shuffling use the restored RNGs. One step's rollout and updates are in `experience`.

Subclasses fill the hooks: `_kl_weight` (is a reference model needed), `_advantages` (fills
``batch["advantages"]`` and ``batch["returns"]``), `_loss` and `_value_loss` (per micro batch) and
`_algorithm_state`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import defaultdict

import torch
from accelerate.utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer
from transformers import Trainer, TrainerState, get_scheduler
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import TrainOutput, get_last_checkpoint, speed_metrics

from align_recipes.reward_model import RewardModelFunc
from align_recipes.rewards import as_reward_func, reward_func_name
from align_recipes.rl import sharding
from align_recipes.rl.experience import ExperienceMixin
from align_recipes.rl.generation import make_generator
from align_recipes.rl.modeling import (
    disable_dropout,
    enable_checkpointing,
    frozen_in_compute_dtype,
    is_peft,
    load_causal_lm,
)
from align_recipes.rl.prefix_cache import PromptPrefixCache
from align_recipes.rl.rollout import PolicyAndValue, PromptCache, PromptSampler, eval_shards
from align_recipes.rl.scoring import RewardScorer
from align_recipes.rl.shared_critic import critic_on_policy_base, policy_adapter_only

RL_STATE_NAME = "rl_state.json"
CRITIC_INDEX = 1  # under FSDP the critic's shards are pytorch_model_fsdp_1/ and optimizer_1/ in a checkpoint


def _scores_with(funcs: list, model_path: str) -> bool:
    """Whether `funcs` already hold the reward model at `model_path` (as a path or a RewardModelFunc)."""
    target = str(model_path)
    for func in funcs:
        path = (
            func.path
            if isinstance(func, RewardModelFunc)
            else str(func)
            if isinstance(func, (str, os.PathLike))
            else None
        )
        if path == target or (
            path and os.path.isdir(path) and os.path.isdir(target) and os.path.samefile(path, target)
        ):
            return True
    return False


class OnlineRLTrainer(ExperienceMixin, Trainer):
    """Base of `PPOTrainer` and `SPOTrainer`; see the module docstring."""

    uses_critic = False
    config_class: type | None = None  # the subclass's config (PPOConfig, SPOConfig): args must be one

    def _check_arguments(self, args, value_model) -> None:
        """Refuse arguments this trainer cannot use, and set up what the base's loading reads (a subclass
        extends it); runs first, before any model loads."""
        if self.config_class is not None and not isinstance(args, self.config_class):
            article = "an" if self.config_class.__name__[0] in "AEIOSU" else "a"
            raise TypeError(
                f"{type(self).__name__} needs {article} {self.config_class.__name__}, got {type(args).__name__}"
            )

    def __init__(
        self,
        model,
        args=None,
        train_dataset=None,
        processing_class=None,
        reward_funcs=None,
        reward_weights=None,
        ref_model=None,
        value_model=None,
        peft_config=None,
        callbacks=None,
        eval_dataset=None,
    ):
        from transformers import AutoTokenizer, set_seed

        self._check_arguments(args, value_model)
        if args is None:
            raise ValueError(
                f"{type(self).__name__} needs args (a {type(self).__name__.replace('Trainer', 'Config')})"
            )
        set_seed(args.seed)  # before the adapters and the critic's head are initialised
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: PPO/SPO need prompts (a 'prompt' column)")
        if "prompt" not in train_dataset.column_names:
            raise ValueError(
                f"train_dataset has no 'prompt' column (columns: {', '.join(train_dataset.column_names)})"
            )
        model = load_causal_lm(model, args)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token

        funcs = (
            list(reward_funcs)
            if isinstance(reward_funcs, (list, tuple))
            else ([] if reward_funcs is None else [reward_funcs])
        )
        if args.reward_model_path and not _scores_with(funcs, args.reward_model_path):
            funcs.append(
                args.reward_model_path
            )  # once: `align-recipes train` already passes it as a function
        if not funcs:
            raise ValueError(
                "no reward: pass reward_funcs (callables or reward model paths) or set reward_model_path"
            )
        self.reward_funcs = [as_reward_func(f) for f in funcs]
        weights = reward_weights if reward_weights is not None else args.reward_weights
        weights = [1.0] * len(self.reward_funcs) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.reward_funcs):
            raise ValueError(
                f"{len(weights)} reward weights for {len(self.reward_funcs)} reward functions "
                f"({', '.join(map(reward_func_name, self.reward_funcs))}); give one weight each"
            )
        self.reward_weights = weights

        # The critic and the reference copy are taken before the adapter is added to the policy; a critic that
        # is a second adapter on the policy's base (`shared_critic`) after it.
        shared_critic = self.uses_critic and self._critic_shares_policy_base(
            value_model, model, args, peft_config
        )
        self.value_model = (
            self._build_value_model(value_model, model, args, peft_config)
            if self.uses_critic and not shared_critic
            else None
        )
        self.ref_model = None
        if self._kl_weight(args) > 0:
            if ref_model is not None:
                self.ref_model = load_causal_lm(ref_model, args)
            elif peft_config is None and not is_peft(model):
                self.ref_model = copy.deepcopy(model)
            if self.ref_model is not None:
                self.ref_model.eval().requires_grad_(False)
                frozen_in_compute_dtype(self.ref_model, args)
        if peft_config is not None and not is_peft(model):
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if shared_critic:
            self.value_model = critic_on_policy_base(model, peft_config)
        self._dropout_active = not args.disable_dropout
        for m in (model, self.value_model):
            if m is not None and args.disable_dropout:
                disable_dropout(m)
            if m is not None and args.activation_checkpointing:
                enable_checkpointing(m)

        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=lambda rows: rows,
            callbacks=callbacks,
        )
        self._fsdp = bool(self.is_fsdp_enabled)
        if self._fsdp:
            self._check_fsdp(args)
        self.critic_optimizer, self.critic_scheduler = None, None  # FSDP: the critic's own (see `_prepare`)
        device = self.accelerator.device
        for m in (self.value_model, self.ref_model):
            if m is not None:
                m.to(device)
        for func in self.reward_funcs:
            if hasattr(func, "to") and callable(func.to):
                func.to(device)
        self._actor_critic = PolicyAndValue(self.model, self.value_model)
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_token_ids = sorted(eos | {processing_class.eos_token_id})
        self.generator = make_generator(
            args,
            lambda: self.accelerator.unwrap_model(self.model),
            self.accelerator,
            processing_class,
            self.eos_token_ids,
            processing_class.pad_token_id,
        )
        budget = int(args.prefix_cache_mb * 2**20)
        self.scorer = RewardScorer(
            self.reward_funcs, self.reward_weights, processing_class, len(train_dataset), budget
        )
        self._ref_prefix = (
            PromptPrefixCache(self.ref_model, len(train_dataset), budget, lm=True)
            if self.ref_model is not None
            else None
        )
        self._train_prompts = PromptCache(train_dataset, processing_class, args.max_prompt_length)
        self._eval_prompts: dict[int, PromptCache] = {}
        self._metrics: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------------------ subclass hooks
    def _kl_weight(self, args) -> float:
        return 0.0

    def _build_value_model(self, value_model, policy, args, peft_config):
        return None

    def _critic_shares_policy_base(self, value_model, policy, args, peft_config) -> bool:
        """Whether the critic is a second adapter on the policy's base (`shared_critic`) rather than a model of
        its own."""
        return False

    def _advantages(self, batch: dict) -> dict[str, float]:
        raise NotImplementedError

    def _loss(self, batch: dict, idx: torch.Tensor, logprobs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The policy's loss on micro batch ``idx`` and its statistics."""
        raise NotImplementedError

    def _value_loss(self, batch: dict, idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The critic's weighted loss on micro batch ``idx`` (only called with a critic)."""
        raise NotImplementedError

    def _algorithm_state(self) -> dict:
        return {}

    def _load_algorithm_state(self, state: dict, checkpoint: str | None = None) -> None:
        pass

    def _save_algorithm_files(self, output_dir: str) -> None:
        """Algorithm state each process writes itself into a checkpoint (SPO's tracker shards)."""

    def _step_indices(self, sampler: PromptSampler, step: int) -> list[int]:
        """The dataset rows this process takes at `step` (SPO's prioritised sampling overrides it)."""
        return sampler.indices(step)

    def _before_first_step(self) -> None:
        """Work before the first step of a fresh run, not of a resumed one (SPO's offline tracker start)."""

    def _check_fsdp(self, args) -> None:
        """What runs under FSDP2 (rl.sharding): refused before any training step otherwise."""
        version = getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise ValueError(
                f"{type(self).__name__} runs under FSDP2 only (this launch asks for FSDP{version}): set "
                "fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp2.yaml)"
            )
        if args.use_vllm and args.vllm_mode != "server":
            raise ValueError(
                f"{type(self).__name__} does not generate with colocated vLLM under FSDP (every rank would hold "
                "a whole engine beside its shard): set vllm_mode: server (one vLLM server for every rank; "
                "the sharded weights are gathered into it at each sync), or use_vllm: false"
            )
        if getattr(self.value_model, "shares_policy_base", False):
            raise ValueError(
                f"{type(self).__name__}: under FSDP the critic cannot share the policy's base model (they are "
                "sharded as two roots); this launch was not recognised as FSDP before the models were built: set "
                "`fsdp` in the training arguments or launch with `accelerate launch` and an FSDP config"
            )
        sharding.check_frozen_models(
            {
                "reference model": self.ref_model,
                **{
                    f"reward model {f.path}": f.model
                    for f in self.reward_funcs
                    if isinstance(f, RewardModelFunc)
                },
            }
        )

    def _gather_mean(self, value: float | torch.Tensor) -> float:
        t = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return self.accelerator.gather(t).mean().item()

    # ------------------------------------------------------------------------------- training loop
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval=None,
        **kwargs,
    ) -> TrainOutput:
        args = self.args
        if args.n_gpu > 1:
            raise ValueError(
                "several GPUs in one process (DataParallel) are not supported: run with `accelerate "
                "launch` (one process per GPU) or set CUDA_VISIBLE_DEVICES to one GPU"
            )
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"no checkpoint-* directory in {args.output_dir} to resume from; "
                    "checkpoints are written every save_steps when save_strategy is 'steps'"
                )
        checkpoint = resume_from_checkpoint or None
        self.is_in_train = True
        sampler = PromptSampler(
            len(self.train_dataset),
            args.rollout_batch_size,
            self.accelerator.num_processes,
            self.accelerator.process_index,
            args.data_seed if args.data_seed is not None else args.seed,
        )
        max_steps = args.max_steps if args.max_steps > 0 else sampler.total_steps(args.num_train_epochs)

        self.state = TrainerState(
            stateful_callbacks=[
                cb
                for cb in self.callback_handler.callbacks + [self.control]
                if isinstance(cb, ExportableState)
            ]
        )
        self.state.train_batch_size = args.rollout_batch_size
        self.state.compute_steps(args, max_steps)
        if checkpoint is not None:
            if not self._fsdp:  # sharded weights are loaded once the modules are sharded (`_prepare`)
                self._load_from_checkpoint(checkpoint)
                if self.value_model is not None:
                    self.value_model.load(checkpoint)
            self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
            self._load_callback_state()
        self.state.init_training_references(self, max_steps, args.num_train_epochs, trial)

        module = self._prepare(max_steps, checkpoint)
        if checkpoint is not None:
            state = json.loads(open(os.path.join(checkpoint, RL_STATE_NAME)).read())
            self._load_algorithm_state(state, checkpoint)
            self.generator.mark_stale()
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, attr, getattr(self, attr))

        start_time, first_step, losses = time.time(), self.state.global_step, []
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if checkpoint is not None:
            self._load_rng_state(checkpoint)  # last, so nothing above consumes random numbers
        elif self.accelerator.num_processes > 1:
            # Each process samples its own completions from a random stream of its own (seed + rank, as TRL's GRPO
            # does): with one seed everywhere, row i of every process would be drawn with the same random numbers.
            # After the models are built, which must start identical on every process.
            from accelerate.utils import set_seed as set_process_seed

            set_process_seed(args.seed, device_specific=True)
        if checkpoint is None:
            self._before_first_step()
        epoch = int(self.state.global_step / sampler.steps_per_epoch)
        self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        while self.state.global_step < max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            step_logs = self._step(module, self._step_indices(sampler, self.state.global_step))
            losses.append(step_logs.get("loss", 0.0))
            for k, v in step_logs.items():
                self._metrics[k].append(v)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / sampler.steps_per_epoch
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if int(self.state.epoch) > epoch:
                epoch = int(self.state.epoch)
                self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
                self._log_save_evaluate(module, trial)
                self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            self._log_save_evaluate(module, trial)

        if self._metrics:  # the steps since the last log (max_steps not a multiple of logging_steps)
            self.control.should_log = True
            self._log_save_evaluate(module, trial, save=False)
        metrics = speed_metrics("train", start_time, num_steps=self.state.global_step - first_step)
        metrics["train_loss"] = sum(losses) / max(len(losses), 1)
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self.is_in_train = False
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    def _prepare(self, max_steps: int, checkpoint: str | None) -> torch.nn.Module:
        """Optimizers and schedulers, the modules wrapped for the launch, and (resuming) their checkpointed
        states. Returns the module the updates run: the policy and critic together.

        One process or DDP: one optimizer over policy and critic, one wrapper. FSDP2: the policy and the critic
        are sharded as two roots, each with its own optimizer (rl.sharding explains why and why it is the same
        update); their sharded states are loaded after sharding."""
        acc = self.accelerator
        self.optimizer, self.lr_scheduler = None, None
        if not self._fsdp:
            self.create_optimizer(self._actor_critic)
            module, self.optimizer = acc.prepare(self._actor_critic, self.optimizer)
            self.create_scheduler(num_training_steps=max_steps)
            self.model_wrapped = module
            if checkpoint is not None:
                self._load_optimizer_and_scheduler(checkpoint)
            return module
        if self.value_model is not None:
            self.critic_optimizer = self.create_optimizer(self.value_model)
            self.optimizer = None
        self.create_optimizer(self.model)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.create_scheduler(num_training_steps=max_steps)
        if self.value_model is not None:
            self.value_model, self.critic_optimizer = acc.prepare(self.value_model, self.critic_optimizer)
            self.critic_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=self.critic_optimizer,
                num_warmup_steps=self.args.get_warmup_steps(max_steps),
                num_training_steps=max_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
        self._actor_critic = PolicyAndValue(self.model, self.value_model)
        self.model_wrapped = self.model
        if checkpoint is not None:
            plugin = acc.state.fsdp_plugin
            load_fsdp_model(plugin, acc, self.model, checkpoint, model_index=0)
            self._load_optimizer_and_scheduler(
                checkpoint
            )  # the policy's optimizer (optimizer_0) and schedule
            if self.value_model is not None:
                load_fsdp_model(plugin, acc, self.value_model, checkpoint, model_index=CRITIC_INDEX)
                load_fsdp_optimizer(
                    plugin,
                    acc,
                    self.critic_optimizer,
                    self.value_model,
                    checkpoint,
                    optimizer_index=CRITIC_INDEX,
                )
                self.critic_scheduler.load_state_dict(self.lr_scheduler.state_dict())  # the same schedule
        return self._actor_critic

    def _optimizers(self) -> list:
        return [o for o in (self.optimizer, self.critic_optimizer) if o is not None]

    def _schedulers(self) -> list:
        return [s for s in (self.lr_scheduler, self.critic_scheduler) if s is not None]

    def _log_save_evaluate(self, module, trial, save: bool = True) -> None:
        if self.control.should_log and self._metrics:
            logs = {k: sum(v) / len(v) for k, v in self._metrics.items()}
            logs["learning_rate"] = self._get_learning_rate()
            self._metrics.clear()
            self.log(logs)
        self.control.should_log = False
        if self.control.should_evaluate and self.eval_dataset is not None:
            self.evaluate()
        self.control.should_evaluate = False
        if save and self.control.should_save:
            self._save_checkpoint(module, trial)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    # --------------------------------------------------------------------------- saving and eval
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The policy (full weights, or the adapter) and tokenizer; checkpoints also get the critic and the
        algorithm state."""
        super().save_model(output_dir, _internal_call)
        if _internal_call and self.args.should_save:
            output_dir = output_dir or self.args.output_dir
            os.makedirs(
                output_dir, exist_ok=True
            )  # under FSDP Trainer writes no weights here (they are sharded)
            if self.value_model is not None and not self._fsdp:  # FSDP: sharded, with the optimizers
                self.accelerator.unwrap_model(self.value_model).save(output_dir)
            with open(os.path.join(output_dir, RL_STATE_NAME), "w") as handle:
                json.dump(self._algorithm_state(), handle, indent=2)
        if _internal_call:  # every process: each writes the algorithm state it holds
            self._save_algorithm_files(output_dir or self.args.output_dir)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's, writing only the policy's adapter when the critic's adapter shares its base model."""
        with policy_adapter_only(self.accelerator.unwrap_model(self.model)):
            super()._save(output_dir, state_dict)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Trainer's (the policy's weights and optimizer, one shard per rank under FSDP, and the schedule); under
        FSDP also the critic's sharded weights and optimizer, as model and optimizer number `CRITIC_INDEX`."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self._fsdp and self.value_model is not None:
            plugin, acc = self.accelerator.state.fsdp_plugin, self.accelerator
            save_fsdp_model(plugin, acc, self.value_model, output_dir, model_index=CRITIC_INDEX)
            save_fsdp_optimizer(
                plugin, acc, self.critic_optimizer, self.value_model, output_dir, optimizer_index=CRITIC_INDEX
            )

    @torch.no_grad()
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Sample one completion per eval prompt (training sampling settings) and report the mean score. Every
        process makes the same number of generation calls (`eval_shards`), so vLLM's collectives cannot hang."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        acc, size = self.accelerator, self.args.rollout_batch_size
        cache = self._eval_prompts.setdefault(
            id(dataset), PromptCache(dataset, self.processing_class, self.args.max_prompt_length)
        )
        indices, real = eval_shards(len(dataset), acc.num_processes, acc.process_index)
        totals = torch.zeros(3, device=acc.device)  # score sum, length sum, count
        for start in range(0, len(indices), size):
            batch = self._generate_and_score(cache, indices[start : start + size])
            counted = (torch.arange(start, start + len(batch["scores"]), device=acc.device) < real).float()
            totals += torch.stack(
                [
                    (batch["scores"].float() * counted).sum(),
                    (batch["response_mask"].sum(1) * counted).sum(),
                    counted.sum(),
                ]
            )
        score_sum, length_sum, count = acc.reduce(totals, "sum").tolist()
        metrics = {
            f"{metric_key_prefix}_reward": score_sum / max(count, 1),
            f"{metric_key_prefix}_response_length": length_sum / max(count, 1),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
