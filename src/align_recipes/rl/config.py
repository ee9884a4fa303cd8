"""PPOConfig and SPOConfig: TrainingArguments plus the knobs of our online-RL trainers.

Written in TRL's style (every field has a help text; the class docstrings list them) so that recipes,
`align-recipes show` and `HfArgumentParser` treat them like TRL's own configs. The rollout fields are
shared through `OnlineRLConfig`; nothing is written twice.

Batch sizes, per device:
    micro batch   = per_device_train_batch_size           (one forward/backward)
    mini batch    = micro batch x gradient_accumulation_steps  (one optimizer step)
    rollout batch = mini batch x num_mini_batches          (prompts generated per training step)
One training step (`global_step`) = generate one rollout batch, score it, then `num_ppo_epochs` passes
over it in `num_mini_batches` optimizer steps each. `max_steps`, `logging_steps` and `save_steps`
count these steps.
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from align_recipes.rl.presets import SPO_PRESETS

KL_ESTIMATOR_CHOICES = ("k1", "k2", "k3")
VLLM_MODES = ("colocate", "server")
RHO_MODES = ("kl", "constant")
SPO_BASELINES = ("per_prompt", "global")
SPO_PRESET_NAMES = tuple(SPO_PRESETS)


def _bf16_default(fp16: bool, use_cpu: bool) -> bool:
    """bf16 when unset: on for CUDA GPUs that support it, off otherwise (never forced on a CPU)."""
    if fp16 or use_cpu:
        return False
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class OnlineRLConfig(TrainingArguments):
    r"""
    Fields shared by [`PPOConfig`] and [`SPOConfig`]: rollout (generation), reward and update-loop settings.
    Defaults differing from `TrainingArguments`: `logging_steps=10`, `remove_unused_columns=False` (extra
    dataset columns reach the reward functions), `bf16=None` (on for bf16-capable CUDA GPUs only).

    Parameters:
        max_prompt_length (`int` or `None`, *optional*, defaults to `512`):
            Prompts longer than this many tokens keep their last `max_prompt_length` tokens. `None`: no limit.
        max_new_tokens (`int`, *optional*, defaults to `53`):
            Most tokens generated per completion (TRL's old `response_length`). Generation stops earlier at EOS.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature; log-probabilities for the losses are computed at the same temperature.
        top_p (`float`, *optional*, defaults to `1.0`):
            Must stay 1.0: the losses need the log-probabilities of the distribution that sampled each token, and
            nucleus truncation makes them undefined once the policy moves. Lower `temperature` instead.
        top_k (`int`, *optional*, defaults to `0`):
            Must stay 0, for the same reason as `top_p`.
        missing_eos_penalty (`float` or `None`, *optional*, defaults to `None`):
            Subtracted from the score of every completion that hit `max_new_tokens` without an EOS token.
        reward_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            One weight per reward function (in order); the score is their weighted sum. `None`: all 1.0.
        reward_model_path (`str` or `None`, *optional*, defaults to `None`):
            A reward model (sequence classifier with one label) added to the reward functions.
        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Passes over each rollout batch.
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Optimizer steps per pass over a rollout batch.
        cliprange (`float`, *optional*, defaults to `0.2`):
            Policy ratio clipping: ratios outside [1 - cliprange, 1 + cliprange] get no gradient.
        cliprange_high (`float` or `None`, *optional*, defaults to `None`):
            Upper clip of the ratio when it differs from the lower one (DAPO's "clip higher"; the SPO authors use
            0.28 with `cliprange` 0.2): ratios outside [1 - cliprange, 1 + cliprange_high]. `None`: `cliprange`.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Turn dropout off in the policy (and critic). With `False`, dropout stays on during updates and pi_old
            is computed with the very dropout masks each micro batch gets in the updates, so the first ratio is 1
            and the ratio measures only how far the weights moved.
        prefix_cache_mb (`float`, *optional*, defaults to `256`):
            Memory for the frozen models' (reference, reward model) key/value caches of the training prompts, which
            they then read only once (`rl/prefix_cache.py`). Used only when all prompts fit; 0 turns it off.
        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `from_pretrained` when `model`, `ref_model` or the critic is given as a path.
            `dtype` defaults to `"float32"`: weights train in full precision and `bf16`/`fp16` only set the
            compute precision (a bf16 copy trained at a small learning rate loses most of its updates).
        use_vllm (`bool`, *optional*, defaults to `False`):
            Generate with vLLM (needs `pip install 'align-recipes[vllm]'` and a GPU).
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            `colocate`: vLLM runs inside the training processes and shares their GPUs; `server`: a separate
            `trl vllm-serve` process on its own GPUs.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Share of GPU memory vLLM may take in colocate mode.
        vllm_server_base_url (`str` or `None`, *optional*, defaults to `None`):
            Server mode: the server's URL (overrides host and port).
        vllm_server_host (`str`, *optional*, defaults to `"0.0.0.0"`):
            Server mode: host of the vLLM server.
        vllm_server_port (`int`, *optional*, defaults to `8000`):
            Server mode: port of the vLLM server.
        vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
            Server mode: seconds to wait for the server to answer before failing.
        vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            Devices one vLLM engine is split over (TRL's name). Colocated: that many training processes share
            one engine; server mode: passed to the run's own `vllm serve`.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Colocate mode: vLLM frees its weights and KV cache between generations (TRL's name; CUDA/ROCm only).
        vllm_max_num_seqs (`int` or `None`, *optional*, defaults to `None`):
            Most sequences vLLM runs at once (its `max_num_seqs`); None leaves vLLM's default.
        vllm_importance_sampling_correction (`bool`, *optional*, defaults to `True`):
            With vLLM, weight each token's policy loss by min(pi_old / pi_vllm, cap) (truncated importance
            sampling), correcting for vLLM's kernels, precision and weight sync sampling a slightly different
            distribution than the trained policy. pi_old is recomputed by the trainer either way.
        vllm_importance_sampling_cap (`float`, *optional*, defaults to `2.0`):
            Upper bound of those weights.
    """

    # TrainingArguments fields with other defaults
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X training steps (an int, or a float in [0, 1) for a share of max_steps)."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Kept False: every dataset column besides `prompt` is passed to the reward functions."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Unset: on for CUDA GPUs that support it, off on CPU and older GPUs."
        },
    )

    # rollout
    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Prompts keep at most their last N tokens. None: no limit."}
    )
    max_new_tokens: int = field(
        default=53, metadata={"help": "Most tokens generated per completion (TRL's old response_length)."}
    )
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature; the losses' log-probabilities use it too."}
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "Must stay 1.0 (the losses need the sampler's exact log-probs); lower temperature."
        },
    )
    top_k: int = field(
        default=0, metadata={"help": "Must stay 0 (the losses need the sampler's exact log-probs)."}
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the score of completions that end without an EOS token."},
    )

    # rewards
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One weight per reward function; the score is the weighted sum. None: 1.0."},
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Reward model directory or hub id, added to the reward functions."}
    )

    # update loop
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(
        default=1, metadata={"help": "Optimizer steps per pass over a rollout batch."}
    )
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clipping range (PPO epsilon)."})
    cliprange_high: float | None = field(
        default=None,
        metadata={
            "help": "Upper ratio clip (clip higher): [1 - cliprange, 1 + cliprange_high]; None: cliprange."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Turn dropout off. False: pi_old uses the update's dropout masks (ratio 1)."},
    )
    prefix_cache_mb: float = field(
        default=256.0,
        metadata={
            "help": "Memory for frozen models' caches of the training prompts (used if all fit); 0: off."
        },
    )
    model_init_kwargs: dict | None = field(
        default=None,
        metadata={"help": "from_pretrained kwargs for models given as paths; dtype defaults to float32."},
    )

    # generation backend
    use_vllm: bool = field(
        default=False, metadata={"help": "Generate with vLLM (needs the vllm extra and a GPU)."}
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "colocate: vLLM shares the training GPUs; server: a separate `trl vllm-serve` process.",
            "choices": VLLM_MODES,
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Colocate mode: share of GPU memory vLLM may take."}
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "Server mode: the server's URL (overrides host and port)."}
    )
    vllm_server_host: str = field(
        default="0.0.0.0", metadata={"help": "Server mode: host of the vLLM server."}
    )
    vllm_server_port: int = field(default=8000, metadata={"help": "Server mode: port of the vLLM server."})
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Server mode: seconds to wait for the server."}
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "Devices one vLLM engine is split over (colocated: training processes)."}
    )
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "Colocate mode: vLLM sleeps between generations (CUDA/ROCm only)."}
    )
    vllm_max_num_seqs: int | None = field(
        default=None, metadata={"help": "Most sequences vLLM runs at once; None: vLLM's default."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "vLLM: weight token losses by min(pi_old / pi_vllm, cap)."}
    )
    vllm_importance_sampling_cap: float = field(
        default=2.0, metadata={"help": "vLLM: upper bound of the importance weights."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = _bf16_default(bool(self.fp16), bool(self.use_cpu))
        problems = self._problems()
        if problems:
            raise ValueError("; ".join(problems))
        super().__post_init__()

    @property
    def rollout_batch_size(self) -> int:
        """Prompts generated per training step on each device."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    def _problems(self) -> list[str]:
        p: list[str] = []
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            p.append(f"max_prompt_length must be >= 1 or null (got {self.max_prompt_length})")
        if self.max_new_tokens < 1:
            p.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.temperature <= 0:
            p.append(f"temperature must be > 0 (got {self.temperature}); sampling is required for RL")
        if self.top_p != 1.0:
            p.append(
                f"top_p must be 1.0 (got {self.top_p}): PPO/SPO need the log-probabilities of the distribution "
                "that sampled each token, and nucleus truncation leaves them undefined once the policy moves; "
                "lower temperature to sample closer to the greedy answer instead"
            )
        if self.top_k != 0:
            p.append(
                f"top_k must be 0 (got {self.top_k}): PPO/SPO need the log-probabilities of the distribution "
                "that sampled each token, and top-k truncation leaves them undefined once the policy moves; "
                "lower temperature to sample closer to the greedy answer instead"
            )
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            p.append(f"missing_eos_penalty must be >= 0 (got {self.missing_eos_penalty}); it is subtracted")
        if self.reward_weights is not None and not all(
            isinstance(w, (int, float)) for w in self.reward_weights
        ):
            p.append(f"reward_weights must be a list of numbers (got {self.reward_weights!r})")
        if self.num_ppo_epochs < 1:
            p.append(f"num_ppo_epochs must be >= 1 (got {self.num_ppo_epochs})")
        if self.num_mini_batches < 1:
            p.append(f"num_mini_batches must be >= 1 (got {self.num_mini_batches})")
        if self.cliprange <= 0:
            p.append(f"cliprange must be > 0 (got {self.cliprange}); 0.2 is the usual value")
        if self.cliprange_high is not None and self.cliprange_high <= 0:
            p.append(
                f"cliprange_high must be > 0 or null (got {self.cliprange_high}); the SPO authors use 0.28"
            )
        if self.vllm_mode not in VLLM_MODES:
            p.append(f"vllm_mode must be one of {', '.join(VLLM_MODES)} (got {self.vllm_mode!r})")
        if self.prefix_cache_mb < 0:
            p.append(f"prefix_cache_mb must be >= 0 (got {self.prefix_cache_mb}); 0 turns the cache off")
        if self.vllm_tensor_parallel_size < 1:
            p.append(f"vllm_tensor_parallel_size must be >= 1 (got {self.vllm_tensor_parallel_size})")
        if self.vllm_max_num_seqs is not None and self.vllm_max_num_seqs < 1:
            p.append(f"vllm_max_num_seqs must be >= 1 or null (got {self.vllm_max_num_seqs})")
        if self.vllm_importance_sampling_cap < 1:
            p.append(f"vllm_importance_sampling_cap must be >= 1 (got {self.vllm_importance_sampling_cap})")
        if self.model_init_kwargs is not None and not isinstance(self.model_init_kwargs, dict):
            p.append(f"model_init_kwargs must be a mapping (got {type(self.model_init_kwargs).__name__})")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            p.append(
                f"vllm_gpu_memory_utilization must be in (0, 1] (got {self.vllm_gpu_memory_utilization})"
            )
        return p


@dataclass
class PPOConfig(OnlineRLConfig):
    r"""
    Configuration of [`~align_recipes.rl.trainer.PPOTrainer`]: actor-critic RLHF with a KL-shaped reward,
    GAE and clipped policy and value losses. Also takes every [`OnlineRLConfig`] and `TrainingArguments` field.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `3e-6`):
            Learning rate of the policy and the critic (one optimizer).
        kl_coef (`float`, *optional*, defaults to `0.05`):
            Weight of the per-token KL penalty folded into the reward (start value when `adaptive_kl`).
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            Per-token KL estimator in the reward: `k1` (log-ratio), `k2` (half squared log-ratio) or `k3`.
        adaptive_kl (`bool`, *optional*, defaults to `False`):
            Adapt `kl_coef` so the measured KL tracks `kl_target` (Ziegler et al. 2019).
        kl_target (`float`, *optional*, defaults to `6.0`):
            Target KL per completion (summed over its tokens) for the adaptive controller.
        kl_horizon (`float`, *optional*, defaults to `10000`):
            Completions over which the adaptive controller closes the gap to the target.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor of future rewards in GAE.
        lam (`float`, *optional*, defaults to `0.95`):
            GAE lambda: 0 uses one-step TD errors (low variance, biased), 1 full returns (unbiased, noisy).
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            Value predictions may move at most this far from the rollout values per update.
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the value loss in the total loss.
        whiten_advantages (`bool`, *optional*, defaults to `True`):
            Normalise advantages to mean 0, std 1 over each rollout batch.
        whiten_rewards (`bool`, *optional*, defaults to `False`):
            Scale per-token rewards to std 1 (mean kept) before GAE.
        value_model_path (`str` or `None`, *optional*, defaults to `None`):
            Where the critic's backbone and head start. `None`: the reward model if one is given, else the policy
            (with a fresh value head).
    """

    learning_rate: float = field(
        default=3e-6, metadata={"help": "Learning rate of the policy and the critic."}
    )
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "Weight of the per-token KL penalty in the reward (start value if adaptive)."},
    )
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "Per-token KL estimator in the reward: k1, k2 or k3.",
            "choices": KL_ESTIMATOR_CHOICES,
        },
    )
    adaptive_kl: bool = field(
        default=False, metadata={"help": "Adapt kl_coef so the KL tracks kl_target (Ziegler et al. 2019)."}
    )
    kl_target: float = field(default=6.0, metadata={"help": "Adaptive KL: target KL per completion."})
    kl_horizon: float = field(
        default=10000, metadata={"help": "Adaptive KL: completions over which the gap to the target closes."}
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor in GAE."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda in [0, 1]."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clipping range of value predictions."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Normalise advantages to mean 0, std 1 per rollout batch."}
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Scale per-token rewards to std 1 before GAE."}
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Critic initialisation. None: the reward model if given, else the policy's backbone."
        },
    )

    def _problems(self) -> list[str]:
        p = super()._problems()
        if self.kl_coef < 0:
            p.append(f"kl_coef must be >= 0 (got {self.kl_coef})")
        if self.kl_estimator not in KL_ESTIMATOR_CHOICES:
            p.append(
                f"kl_estimator must be one of {', '.join(KL_ESTIMATOR_CHOICES)} (got {self.kl_estimator!r})"
            )
        if self.adaptive_kl and self.kl_target <= 0:
            p.append(f"kl_target must be > 0 (got {self.kl_target})")
        if self.adaptive_kl and self.kl_horizon <= 0:
            p.append(f"kl_horizon must be > 0 (got {self.kl_horizon})")
        if self.adaptive_kl and self.kl_coef == 0:
            p.append("adaptive_kl needs kl_coef > 0 to start from (it is multiplied, so 0 stays 0)")
        if not 0 < self.gamma <= 1:
            p.append(f"gamma must be in (0, 1] (got {self.gamma})")
        if not 0 <= self.lam <= 1:
            p.append(f"lam must be in [0, 1] (got {self.lam})")
        if self.cliprange_value <= 0:
            p.append(f"cliprange_value must be > 0 (got {self.cliprange_value})")
        if self.vf_coef < 0:
            p.append(f"vf_coef must be >= 0 (got {self.vf_coef})")
        return p


@dataclass
class SPOConfig(OnlineRLConfig):
    r"""
    Configuration of [`~align_recipes.rl.trainer.SPOTrainer`]: one completion per prompt, no critic. The advantage
    is the score minus a baseline kept across steps; the KL to the reference is a loss term (k3, as in GRPO).
    Also takes every [`OnlineRLConfig`] and `TrainingArguments` field.

    Two baselines (`baseline`):
    - `per_prompt` (default): the SPO paper's value tracker (Xu & Ding 2025, arXiv 2509.13232). Each prompt keeps a
      Beta(alpha, beta) belief about its normalised reward; the baseline is its mean. When a prompt comes back, its
      belief first decays by rho = clip(2 ** (-D / half_life), clip_lower, clip_upper), where D is the mean
      |log-ratio| between the policy now and the one that last sampled the prompt, measured on that earlier
      sample (a first visit: clip_upper, as the authors' code gives). Advantages are normalised over the whole
      batch (all processes) to mean 0, std 1.
    - `global`: MiniMind's simplified variant: one Beta belief for all prompts, updated with the batch's mean
      reward; rho follows the change of the batch's mean token log-probability between steps (different prompts
      each step, so it mostly follows noise). Advantages are not normalised.

    `preset: paper` (`rl/presets.py`; the plan layer and `SPOConfig.from_preset` lay it under explicit values)
    adds the rest of the paper's method: prioritised prompt sampling, the tracker started from offline samples,
    the authors' clip 0.2 / 0.28 and no KL term.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `1e-6`):
            Learning rate of the policy.
        num_ppo_epochs (`int`, *optional*, defaults to `1`):
            Passes over each rollout batch; with 1 the clipped surrogate is plain policy gradient.
        beta (`float`, *optional*, defaults to `0.02`):
            Weight of the k3 KL loss term (its value estimates KL(policy || reference); its gradient is that of
            KL(reference || policy)). 0 skips the reference model.
        preset (`str` or `None`, *optional*, defaults to `None`):
            `paper`: the SPO paper's full method (see above). Recorded here; its values are applied by the plan
            layer (or `SPOConfig.from_preset`) under the values you set.
        baseline (`str`, *optional*, defaults to `"per_prompt"`):
            `per_prompt`: the SPO paper's per-prompt value tracker; `global`: MiniMind's single Beta baseline.
        prioritized_sampling (`bool`, *optional*, defaults to `False`):
            `per_prompt` only: draw each step's prompts (without replacement) with probability proportional to
            sqrt(p (1 - p)) + 0.05, p a prompt's tracked success rate (the SPO authors' weight).
        offline_init_samples (`int`, *optional*, defaults to `0`):
            `per_prompt` only: before the first step, sample this many completions of every training prompt with the
            start policy and start each prompt's belief from their rewards (the authors' offline estimate). 0: the
            prior Beta(0.5, 0.5).
        rho_mode (`str`, *optional*, defaults to `"kl"`):
            `kl`: the forgetting factor follows how far the policy moved; `constant`: always `rho_const`.
        rho_const (`float`, *optional*, defaults to `0.9`):
            Forgetting factor with `rho_mode="constant"`, and of the `global` baseline's first update.
        half_life (`float`, *optional*, defaults to `0.06`):
            Divergence D at which the forgetting factor halves (the paper's D_half).
        clip_lower (`float`, *optional*, defaults to `0.875`):
            Lowest forgetting factor (the paper's value; MiniMind used 0.5). `global` and the offline start also set
            their prior's strength N = 1 / (1 - clip_lower) from it.
        clip_upper (`float`, *optional*, defaults to `0.96`):
            Highest forgetting factor.
        reward_range (`list[float]` or `None`, *optional*, defaults to `None`):
            [low, high]: rewards in this range map onto [0, 1] for the Beta beliefs (values beyond are clipped), so
            the prior's mean is the middle of the range. `None`: [-reward_scale, reward_scale] when `reward_scale` is
            set, else the range the reward functions declare (0/1 rule rewards: [0, 1]), else [-3, 3].
        reward_scale (`float` or `None`, *optional*, defaults to `None`):
            Shorthand for `reward_range: [-reward_scale, reward_scale]`.
        advantage_clip (`float`, *optional*, defaults to `5.0`):
            Advantages are clipped to [-advantage_clip, advantage_clip].
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate of the policy."})
    num_ppo_epochs: int = field(
        default=1, metadata={"help": "Passes over each rollout batch (1: plain policy gradient)."}
    )
    beta: float = field(
        default=0.02, metadata={"help": "Weight of the k3 KL-to-reference loss term; 0: no reference."}
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "paper: the SPO paper's full method (rl/presets.py).", "choices": SPO_PRESET_NAMES},
    )
    baseline: str = field(
        default="per_prompt",
        metadata={
            "help": "per_prompt: the SPO paper's per-prompt value tracker; global: MiniMind's single baseline.",
            "choices": SPO_BASELINES,
        },
    )
    prioritized_sampling: bool = field(
        default=False,
        metadata={"help": "per_prompt: draw prompts by sqrt(p(1-p)) + 0.05 of their tracked success rate p."},
    )
    offline_init_samples: int = field(
        default=0,
        metadata={
            "help": "per_prompt: start each prompt's belief from this many samples before training; 0: prior."
        },
    )
    rho_mode: str = field(
        default="kl",
        metadata={
            "help": "kl: forgetting follows policy change; constant: always rho_const.",
            "choices": RHO_MODES,
        },
    )
    rho_const: float = field(
        default=0.9,
        metadata={"help": "Forgetting factor with rho_mode constant (and global's first update)."},
    )
    half_life: float = field(
        default=0.06, metadata={"help": "Policy divergence at which the forgetting factor halves (D_half)."}
    )
    clip_lower: float = field(
        default=0.875, metadata={"help": "Lowest forgetting factor (global: prior 1/(1-clip_lower))."}
    )
    clip_upper: float = field(default=0.96, metadata={"help": "Highest forgetting factor."})
    reward_range: list[float] | None = field(
        default=None,
        metadata={
            "help": "[low, high] mapped onto [0, 1] for the tracker; None: from reward_scale or the rewards."
        },
    )
    reward_scale: float | None = field(
        default=None, metadata={"help": "Shorthand for reward_range [-scale, scale]."}
    )
    advantage_clip: float = field(default=5.0, metadata={"help": "Advantages are clipped to +- this value."})

    def _problems(self) -> list[str]:
        p = super()._problems()
        if self.beta < 0:
            p.append(f"beta must be >= 0 (got {self.beta})")
        if self.baseline not in SPO_BASELINES:
            p.append(f"baseline must be one of {', '.join(SPO_BASELINES)} (got {self.baseline!r})")
        if self.rho_mode not in RHO_MODES:
            p.append(f"rho_mode must be one of {', '.join(RHO_MODES)} (got {self.rho_mode!r})")
        if not 0 < self.rho_const <= 1:
            p.append(f"rho_const must be in (0, 1] (got {self.rho_const})")
        if self.half_life <= 0:
            p.append(f"half_life must be > 0 (got {self.half_life})")
        if not 0 < self.clip_lower <= self.clip_upper < 1:
            p.append(
                f"need 0 < clip_lower <= clip_upper < 1 (got clip_lower={self.clip_lower}, "
                f"clip_upper={self.clip_upper})"
            )
        if self.reward_scale is not None and self.reward_scale <= 0:
            p.append(f"reward_scale must be > 0 (got {self.reward_scale})")
        if self.reward_range is not None and not (
            len(self.reward_range) == 2 and float(self.reward_range[1]) > float(self.reward_range[0])
        ):
            p.append(f"reward_range must be [low, high] with high > low (got {self.reward_range})")
        if self.preset is not None and self.preset not in SPO_PRESETS:
            p.append(f"preset must be one of {', '.join(SPO_PRESETS)} or null (got {self.preset!r})")
        if self.offline_init_samples < 0:
            p.append(f"offline_init_samples must be >= 0 (got {self.offline_init_samples})")
        if self.baseline != "per_prompt" and (self.prioritized_sampling or self.offline_init_samples):
            p.append(
                "prioritized_sampling and offline_init_samples need baseline: per_prompt (they read each prompt's "
                f"belief; got baseline {self.baseline!r})"
            )
        if self.advantage_clip <= 0:
            p.append(f"advantage_clip must be > 0 (got {self.advantage_clip})")
        return p

    def tracker_range(self, declared: tuple[float, float] | None) -> tuple[float, float]:
        """The reward range the tracker maps onto [0, 1]: `reward_range`, else +-`reward_scale`, else the range
        the reward functions declare (`baselines.rewards_range`), else [-3, 3]."""
        if self.reward_range is not None:
            return (float(self.reward_range[0]), float(self.reward_range[1]))
        if self.reward_scale is not None:
            return (-float(self.reward_scale), float(self.reward_scale))
        return declared if declared is not None else (-3.0, 3.0)

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "SPOConfig":
        """An SPOConfig with a preset's values (`rl/presets.py`) under the keyword arguments given."""
        if preset not in SPO_PRESETS:
            raise ValueError(f"unknown SPO preset {preset!r}; known: {', '.join(SPO_PRESETS)}")
        return cls(**{**SPO_PRESETS[preset], **kwargs, "preset": preset})
