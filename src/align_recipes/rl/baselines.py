"""SPO's baselines: what a completion's score is compared with, kept across steps instead of a critic.

`PromptValueTracker` is the SPO paper's (Xu & Ding 2025, arXiv 2509.13232): one Beta belief per prompt,
forgetting at a rate set by how far the policy moved since it last sampled that prompt. `GlobalBetaBaseline`
is MiniMind's simplified variant: one Beta belief for all prompts. Both are plain Python numbers and lists,
identical on every process (the trainer feeds them the gathered batch) and saved as JSON in checkpoints.

Rewards enter the Beta beliefs normalised to [0, 1]: ``(r + reward_scale) / (2 * reward_scale)``, clipped; a
baseline goes back to reward units with the inverse map. With a forgetting factor rho, one observation r
updates a belief as ``alpha = rho * alpha + r``, ``beta = rho * beta + (1 - r)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def forgetting_factor(divergence: float, half_life: float, clip_lower: float, clip_upper: float) -> float:
    """rho = 2 ** (-divergence / half_life), clipped to [clip_lower, clip_upper]: a policy that moved by one
    half-life keeps half of the old evidence."""
    return min(max(2.0 ** (-abs(divergence) / half_life), clip_lower), clip_upper)


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
    ):
        if not 0.0 < clip_lower <= clip_upper < 1.0:
            raise ValueError(f"{type(self).__name__} needs 0 < clip_lower <= clip_upper < 1")
        if half_life <= 0 or reward_scale <= 0:
            raise ValueError(f"{type(self).__name__} needs half_life > 0 and reward_scale > 0")
        if rho_mode not in ("kl", "constant"):
            raise ValueError("rho_mode must be 'kl' or 'constant'")
        self.clip_lower, self.clip_upper = float(clip_lower), float(clip_upper)
        self.half_life, self.rho_const = float(half_life), float(rho_const)
        self.reward_scale, self.rho_mode = float(reward_scale), rho_mode

    def normalize(self, reward: float) -> float:
        value = (float(reward) + self.reward_scale) / (2.0 * self.reward_scale)
        if math.isnan(value):
            raise ValueError(f"{type(self).__name__} got a NaN reward")
        return min(max(value, 0.0), 1.0)

    def denormalize(self, value: float) -> float:
        return value * 2.0 * self.reward_scale - self.reward_scale


class PromptValueTracker(_BetaBelief):
    """The SPO paper's per-prompt value tracker.

    Each prompt (a dataset index) has Beta(alpha, beta), starting at the Jeffreys prior Beta(0.5, 0.5) (the SPO
    authors' start when no offline estimate is given): its first baseline is the middle of the reward range.
    When the prompt is sampled again, its belief decays by rho = `forgetting_factor`(D) before the new reward is
    added, where D is the mean over the earlier sample's tokens of |log pi_then - log pi_now|: the divergence of
    the policy now from the one that last sampled this prompt, measured on that same earlier sample (the trainer
    re-scores it; `stored_sample` / `update`). A prompt's first update, and every update with
    ``rho_mode="constant"``, uses ``rho_const``. The paper's prioritised prompt sampling is not implemented.
    """

    PRIOR = 0.5

    def __init__(
        self,
        clip_lower: float = 0.875,
        clip_upper: float = 0.96,
        half_life: float = 0.06,
        rho_const: float = 0.9,
        reward_scale: float = 3.0,
        rho_mode: str = "kl",
    ):
        super().__init__(clip_lower, clip_upper, half_life, rho_const, reward_scale, rho_mode)
        self.alpha: dict[int, float] = {}
        self.beta: dict[int, float] = {}
        self.samples: dict[int, tuple[list[int], list[float]]] = {}

    def mean(self, key: int) -> float:
        """The Beta mean of one prompt, in [0, 1]."""
        alpha, beta = self.alpha.get(key, self.PRIOR), self.beta.get(key, self.PRIOR)
        return alpha / (alpha + beta)

    def baselines(self, keys: Iterable[int]) -> list[float]:
        """Each prompt's baseline in reward units (what its advantage subtracts)."""
        return [self.denormalize(self.mean(int(k))) for k in keys]

    def stored_sample(self, key: int) -> tuple[list[int], list[float]] | None:
        """(completion token ids, their log-probs under the policy that sampled them) from the prompt's last visit."""
        return self.samples.get(int(key))

    def rho(self, key: int, divergence: float | None) -> float:
        if self.rho_mode == "constant" or int(key) not in self.samples or divergence is None:
            return self.rho_const
        return forgetting_factor(divergence, self.half_life, self.clip_lower, self.clip_upper)

    def update(
        self,
        keys: Sequence[int],
        rewards: Sequence[float],
        divergences: Sequence[float | None],
        samples: Sequence[tuple[list[int], list[float]]],
    ) -> list[float]:
        """Fold one batch in, in order (a prompt twice in a batch is updated twice); returns the rho of each row.
        ``divergences[i]`` is D for row i (None when its prompt has no earlier sample); ``samples[i]`` is row i's
        completion and its log-probs, kept for the prompt's next visit."""
        if not (len(keys) == len(rewards) == len(divergences) == len(samples)):
            raise ValueError("PromptValueTracker.update needs one reward, divergence and sample per key")
        rhos = []
        for key, reward, divergence, sample in zip(keys, rewards, divergences, samples):
            key = int(key)
            r, rho = self.normalize(reward), self.rho(key, divergence)
            self.alpha[key] = rho * self.alpha.get(key, self.PRIOR) + r
            self.beta[key] = rho * self.beta.get(key, self.PRIOR) + (1.0 - r)
            self.samples[key] = ([int(t) for t in sample[0]], [float(x) for x in sample[1]])
            rhos.append(rho)
        return rhos

    def state_dict(self) -> dict:
        return {
            "alpha": {str(k): v for k, v in self.alpha.items()},
            "beta": {str(k): v for k, v in self.beta.items()},
            "samples": {str(k): [ids, lps] for k, (ids, lps) in self.samples.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.alpha = {int(k): float(v) for k, v in state["alpha"].items()}
        self.beta = {int(k): float(v) for k, v in state["beta"].items()}
        self.samples = {
            int(k): ([int(t) for t in ids], [float(x) for x in lps])
            for k, (ids, lps) in state["samples"].items()
        }


class GlobalBetaBaseline(_BetaBelief):
    """MiniMind's simplified SPO baseline (its AutoAdaptiveValueTracker): one Beta belief for all prompts.

    Each update forgets old evidence by rho, then adds the batch's mean normalised reward as one observation.
    rho = `forgetting_factor`(|mean token log-prob now - at the last update|): the batches hold different prompts,
    so this compares unrelated samples and mostly follows noise; the per-prompt tracker measures D on one sample.
    The first update (nothing to compare with) and ``rho_mode="constant"`` use ``rho_const``. The prior has
    effective sample size N = 1 / (1 - clip_lower) (the steady-state evidence when rho sits at clip_lower), split
    evenly: alpha = beta = N / 2, so the first baseline is reward 0.
    """

    def __init__(
        self,
        clip_lower: float = 0.5,
        clip_upper: float = 0.96,
        half_life: float = 0.06,
        rho_const: float = 0.9,
        reward_scale: float = 3.0,
        rho_mode: str = "kl",
    ):
        super().__init__(clip_lower, clip_upper, half_life, rho_const, reward_scale, rho_mode)
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
