"""SPO's baselines: what a completion's score is compared with, kept across steps instead of a critic.

`PromptValueTracker` is the SPO paper's (Xu & Ding 2025, arXiv 2509.13232; the authors' code is
volcengine/verl `recipe/spo/spo_ray_trainer.py`): one Beta belief per prompt, forgetting at a rate set by how
far the policy moved since it last sampled that prompt. Its beliefs and each prompt's last sample are tensors,
kept only on the process that owns the prompt (``key % num_shards == shard``), and saved with safetensors
(`tracker_io`). `GlobalBetaBaseline` is MiniMind's simplified variant: one Beta belief for all prompts, plain
numbers, identical on every process and saved as JSON.

Rewards enter the Beta beliefs normalised to [0, 1] over the reward range [low, high]:
``(r - low) / (high - low)``, clipped; a baseline goes back to reward units with the inverse map. The range is
`reward_range` when given, else [-reward_scale, reward_scale]: 0/1 rewards need [0, 1] (`rewards_range` infers
it from the reward functions), or the prior's mean, the middle of the range, sits at reward 0 instead of 0.5.
With a forgetting factor rho, one observation r updates a belief as ``alpha = rho * alpha + r``,
``beta = rho * beta + (1 - r)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

#: The SPO authors' prioritised sampling adds this to every prompt's weight, so a prompt the tracker is sure
#: about is still drawn now and then (EXPLORATION_EPSILON in their `spo_ray_trainer.py`).
SAMPLING_EPSILON = 0.05


def forgetting_factor(divergence: float, half_life: float, clip_lower: float, clip_upper: float) -> float:
    """rho = 2 ** (-divergence / half_life), clipped to [clip_lower, clip_upper]: a policy that moved by one
    half-life keeps half of the old evidence."""
    return min(max(2.0 ** (-abs(divergence) / half_life), clip_lower), clip_upper)


def rewards_range(funcs: Sequence, weights: Sequence[float], missing_eos_penalty: float | None = None):
    """The range of the weighted reward sum when every reward function declares its own (a ``reward_range``
    attribute, (low, high)), else None. A negative weight swaps its function's ends; the missing-EOS penalty can
    lower the low end."""
    ranges = [getattr(f, "reward_range", None) for f in funcs]
    if not ranges or any(r is None for r in ranges):
        return None
    low = sum(min(w * lo, w * hi) for w, (lo, hi) in zip(weights, ranges))
    high = sum(max(w * lo, w * hi) for w, (lo, hi) in zip(weights, ranges))
    if high <= low:
        return None
    return (float(low - (missing_eos_penalty or 0.0)), float(high))


class _BetaBelief:
    """Shared pieces: the reward <-> [0, 1] map and the checks on the forgetting parameters."""

    def __init__(
        self,
        clip_lower: float,
        clip_upper: float,
        half_life: float,
        rho_const: float,
        reward_scale: float,
        rho_mode: str,
        reward_range: tuple[float, float] | None = None,
    ):
        if not 0.0 < clip_lower <= clip_upper < 1.0:
            raise ValueError(f"{type(self).__name__} needs 0 < clip_lower <= clip_upper < 1")
        if half_life <= 0 or reward_scale <= 0:
            raise ValueError(f"{type(self).__name__} needs half_life > 0 and reward_scale > 0")
        if rho_mode not in ("kl", "constant"):
            raise ValueError("rho_mode must be 'kl' or 'constant'")
        low, high = reward_range if reward_range is not None else (-reward_scale, reward_scale)
        if not high > low:
            raise ValueError(
                f"{type(self).__name__} needs a reward range with high > low (got {low}, {high})"
            )
        self.clip_lower, self.clip_upper = float(clip_lower), float(clip_upper)
        self.half_life, self.rho_const = float(half_life), float(rho_const)
        self.reward_low, self.reward_high, self.rho_mode = float(low), float(high), rho_mode

    def normalize(self, reward: float) -> float:
        value = (float(reward) - self.reward_low) / (self.reward_high - self.reward_low)
        if math.isnan(value):
            raise ValueError(f"{type(self).__name__} got a NaN reward")
        return min(max(value, 0.0), 1.0)

    def denormalize(self, value: float) -> float:
        return self.reward_low + value * (self.reward_high - self.reward_low)


class PromptValueTracker(_BetaBelief):
    """The SPO paper's per-prompt value tracker, for the prompts this process owns.

    Each prompt (a dataset index) has Beta(alpha, beta), starting at the Jeffreys prior Beta(0.5, 0.5) (the SPO
    authors' start when no offline estimate is given; its mean is the middle of the reward range), or at an
    offline estimate from k samples (`initialize`). When the prompt is sampled again, its belief decays by
    rho = `forgetting_factor`(D) before the new reward is added, where D is the mean over the earlier sample's
    tokens of |log pi_then - log pi_now|: the divergence of the policy now from the one that last sampled this
    prompt, measured on that same earlier sample (the trainer re-scores it; `stored_sample` / `update`). A
    prompt's first visit has no earlier sample: the authors measure D on the new sample itself, which gives
    D = 0, rho = 2 ** 0 clipped to clip_upper (0.96). ``rho_mode="constant"`` uses ``rho_const`` always.

    Storage: ``alpha`` and ``beta`` are float64 tensors with one slot per owned prompt (slot ``key //
    num_shards``); each prompt's last sample is a pair of tensors (int32 token ids, float32 log-probs), about
    8 bytes a token, on its owner only.
    """

    PRIOR = 0.5

    def __init__(
        self,
        num_prompts: int,
        clip_lower: float = 0.875,
        clip_upper: float = 0.96,
        half_life: float = 0.06,
        rho_const: float = 0.9,
        reward_scale: float = 3.0,
        rho_mode: str = "kl",
        reward_range: tuple[float, float] | None = None,
        num_shards: int = 1,
        shard: int = 0,
    ):
        super().__init__(clip_lower, clip_upper, half_life, rho_const, reward_scale, rho_mode, reward_range)
        if num_prompts < 1 or not 0 <= shard < num_shards:
            raise ValueError("PromptValueTracker needs num_prompts >= 1 and 0 <= shard < num_shards")
        self.num_prompts, self.num_shards, self.shard = int(num_prompts), int(num_shards), int(shard)
        owned = len(range(self.shard, self.num_prompts, self.num_shards))
        self.alpha = torch.full((owned,), self.PRIOR, dtype=torch.float64)
        self.beta = torch.full((owned,), self.PRIOR, dtype=torch.float64)
        self.samples: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------- ownership
    def owns(self, key: int) -> bool:
        return 0 <= int(key) < self.num_prompts and int(key) % self.num_shards == self.shard

    def owned_keys(self) -> torch.Tensor:
        return torch.arange(self.shard, self.num_prompts, self.num_shards)

    def _slot(self, key: int) -> int:
        if not self.owns(key):
            raise KeyError(f"prompt {key} belongs to shard {int(key) % self.num_shards}, not {self.shard}")
        return int(key) // self.num_shards

    # -------------------------------------------------------------------------------------- reading
    def belief(self, key: int) -> tuple[float, float]:
        slot = self._slot(key)
        return float(self.alpha[slot]), float(self.beta[slot])

    def mean(self, key: int) -> float:
        """The Beta mean of one prompt, in [0, 1]."""
        alpha, beta = self.belief(key)
        return alpha / (alpha + beta)

    def baselines(self, keys: Iterable[int]) -> list[float]:
        """Each prompt's baseline in reward units (what its advantage subtracts)."""
        return [self.denormalize(self.mean(int(k))) for k in keys]

    def stored_sample(self, key: int) -> tuple[list[int], list[float]] | None:
        """(completion token ids, their log-probs under the policy that sampled them) from the prompt's last visit."""
        sample = self.samples.get(int(key))
        return None if sample is None else (sample[0].tolist(), sample[1].tolist())

    def stored_tensors(self, key: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.samples.get(int(key))

    def sampling_weights(self) -> torch.Tensor:
        """The SPO authors' prioritised sampling weight of each owned prompt: sqrt(p (1 - p)) + epsilon, p the
        belief's mean (the standard deviation of a 0/1 reward with success rate p: largest for prompts the policy
        solves half the time, where one sample teaches most)."""
        p = self.alpha / (self.alpha + self.beta)
        return (p * (1.0 - p)).sqrt() + SAMPLING_EPSILON

    def rho(self, key: int, divergence: float | None) -> float:
        if self.rho_mode == "constant":
            return self.rho_const
        if int(key) not in self.samples or divergence is None:
            return self.clip_upper  # a first visit: D measured on its own sample is 0
        return forgetting_factor(divergence, self.half_life, self.clip_lower, self.clip_upper)

    # -------------------------------------------------------------------------------------- writing
    def initialize(self, keys: Sequence[int], reward_sums: Sequence[float], k: int) -> None:
        """The SPO authors' offline start: with s the sum of a prompt's k normalised rewards (its successes, for
        0/1 rewards) and N = 1 / (1 - clip_lower), alpha = N (s + 0.5) / (k + 1), beta = N (k - s + 0.5) / (k + 1):
        the Jeffreys-smoothed success rate, with the evidence of N observations (the steady state at rho =
        clip_lower)."""
        if k < 1:
            raise ValueError("PromptValueTracker.initialize needs k >= 1 samples per prompt")
        n_init = 1.0 / (1.0 - self.clip_lower)
        for key, s in zip(keys, reward_sums):
            slot = self._slot(key)
            self.alpha[slot] = n_init * (float(s) + 0.5) / (k + 1)
            self.beta[slot] = n_init * (k - float(s) + 0.5) / (k + 1)

    def update(
        self,
        keys: Sequence[int],
        rewards: Sequence[float],
        divergences: Sequence[float | None],
        samples: Sequence[tuple],
    ) -> list[float]:
        """Fold one batch in, in order (a prompt twice in a batch is updated twice); returns the rho of each row.
        ``divergences[i]`` is D for row i (None when its prompt has no earlier sample); ``samples[i]`` is row i's
        completion and its log-probs (lists or tensors), kept for the prompt's next visit."""
        if not (len(keys) == len(rewards) == len(divergences) == len(samples)):
            raise ValueError("PromptValueTracker.update needs one reward, divergence and sample per key")
        rhos = []
        for key, reward, divergence, sample in zip(keys, rewards, divergences, samples):
            key = int(key)
            slot, r, rho = self._slot(key), self.normalize(reward), self.rho(key, divergence)
            self.alpha[slot] = rho * self.alpha[slot] + r
            self.beta[slot] = rho * self.beta[slot] + (1.0 - r)
            ids = torch.as_tensor(sample[0], dtype=torch.int32).detach().cpu().clone()
            logprobs = torch.as_tensor(sample[1], dtype=torch.float32).detach().cpu().clone()
            self.samples[key] = (ids, logprobs)
            rhos.append(rho)
        return rhos

    # ------------------------------------------------------------------------------------ persisting
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The owned beliefs and samples as a few flat tensors (what `tracker_io` writes with safetensors)."""
        keys = sorted(self.samples)
        lengths = torch.tensor([len(self.samples[k][0]) for k in keys], dtype=torch.int64)
        empty_ids, empty_lps = torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.float32)
        return {
            "belief_keys": self.owned_keys(),
            "alpha": self.alpha.clone(),
            "beta": self.beta.clone(),
            "sample_keys": torch.tensor(keys, dtype=torch.int64),
            "sample_lengths": lengths,
            "sample_ids": torch.cat([self.samples[k][0] for k in keys]) if keys else empty_ids,
            "sample_logprobs": torch.cat([self.samples[k][1] for k in keys]) if keys else empty_lps,
        }

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Take this shard's prompts from one saved shard (of any number of shards: call once per file)."""
        for key, alpha, beta in zip(state["belief_keys"].tolist(), state["alpha"], state["beta"]):
            if self.owns(key):
                slot = self._slot(key)
                self.alpha[slot], self.beta[slot] = alpha, beta
        offsets = torch.cumsum(state["sample_lengths"], 0).tolist()
        starts = [0, *offsets[:-1]]
        for key, start, end in zip(state["sample_keys"].tolist(), starts, offsets):
            if self.owns(key):
                self.samples[key] = (
                    state["sample_ids"][start:end].clone(),
                    state["sample_logprobs"][start:end].clone(),
                )

    def load_json_state(self, state: dict) -> None:
        """A checkpoint written before the tracker was kept as tensors (rl_state.json held every prompt's belief
        and sample as JSON lists)."""
        for key, alpha in state["alpha"].items():
            if self.owns(int(key)):
                slot = self._slot(int(key))
                self.alpha[slot], self.beta[slot] = float(alpha), float(state["beta"][key])
        for key, (ids, logprobs) in state["samples"].items():
            if self.owns(int(key)):
                self.samples[int(key)] = (
                    torch.tensor(ids, dtype=torch.int32),
                    torch.tensor(logprobs, dtype=torch.float32),
                )


class GlobalBetaBaseline(_BetaBelief):
    """MiniMind's simplified SPO baseline (its AutoAdaptiveValueTracker): one Beta belief for all prompts.

    Each update forgets old evidence by rho, then adds the batch's mean normalised reward as one observation.
    rho = `forgetting_factor`(|mean token log-prob now - at the last update|): the batches hold different prompts,
    so this compares unrelated samples and mostly follows noise; the per-prompt tracker measures D on one sample.
    The first update (nothing to compare with) and ``rho_mode="constant"`` use ``rho_const``. The prior has
    effective sample size N = 1 / (1 - clip_lower) (the steady-state evidence when rho sits at clip_lower), split
    evenly: alpha = beta = N / 2, so the first baseline is the middle of the reward range.
    """

    def __init__(
        self,
        clip_lower: float = 0.5,
        clip_upper: float = 0.96,
        half_life: float = 0.06,
        rho_const: float = 0.9,
        reward_scale: float = 3.0,
        rho_mode: str = "kl",
        reward_range: tuple[float, float] | None = None,
    ):
        super().__init__(clip_lower, clip_upper, half_life, rho_const, reward_scale, rho_mode, reward_range)
        n_init = 1.0 / (1.0 - self.clip_lower)
        self.alpha = self.beta = 0.5 * n_init
        self.last_mean_logprob: float | None = None

    @property
    def mean(self) -> float:
        """The Beta mean, in [0, 1]."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def baseline(self) -> float:
        """The baseline in reward units (what advantages subtract)."""
        return self.denormalize(self.mean)

    def rho(self, mean_logprob: float) -> float:
        if self.rho_mode == "constant" or self.last_mean_logprob is None:
            return self.rho_const
        return forgetting_factor(
            mean_logprob - self.last_mean_logprob, self.half_life, self.clip_lower, self.clip_upper
        )

    def update(self, rewards: Iterable[float], mean_logprob: float) -> float:
        """Fold one batch of rewards (reward units) into the belief; returns the rho used."""
        normalized = [self.normalize(r) for r in rewards]
        if not normalized:
            raise ValueError("GlobalBetaBaseline.update needs at least one reward")
        rho = self.rho(mean_logprob)
        avg = sum(normalized) / len(normalized)
        self.alpha = rho * self.alpha + avg
        self.beta = rho * self.beta + (1.0 - avg)
        self.last_mean_logprob = float(mean_logprob)
        return rho

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "last_mean_logprob": self.last_mean_logprob}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])
        last = state.get("last_mean_logprob")
        self.last_mean_logprob = None if last is None else float(last)
