"""The small pieces of state an RL run carries between steps: the KL coefficient (PPO) and SPO's
adaptive baseline. Plain Python numbers, so that they are exactly the same on every process and can
be written to a checkpoint as JSON (`state_dict` / `load_state_dict`)."""

from __future__ import annotations

import math
from typing import Iterable


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): steer the measured KL towards ``target``.

    error = clip(current_kl / target - 1, -0.2, 0.2);  value *= 1 + error * n_steps / horizon.
    ``n_steps`` is the number of completions the KL was measured on; ``horizon`` sets how many
    completions it takes to close the gap (the larger, the slower the coefficient moves).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        super().__init__(init_kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0")
        self.target, self.horizon = float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class BetaBaselineTracker:
    """SPO's adaptive baseline: a Beta(alpha, beta) belief about the normalised reward.

    Rewards are mapped into [0, 1] with ``(r + reward_scale) / (2 * reward_scale)`` (clipped), so
    ``reward_scale`` is the reward magnitude that maps to the ends of the interval: rewards in
    [-3, 3] by default. The baseline is the Beta mean alpha / (alpha + beta), mapped back to reward
    units. Each update forgets old evidence by a factor rho, then adds the batch's mean normalised
    reward as one observation:  alpha = rho * alpha + r,  beta = rho * beta + (1 - r).

    rho adapts to how fast the policy moves: rho = 2 ** (-|mean logprob now - mean logprob at the last
    update| / half_life), clipped to [clip_lower, clip_upper]; a policy that changed a lot forgets
    faster. The first update (nothing to compare with) and ``rho_mode="constant"`` use ``rho_const``.
    The prior has effective sample size N = 1 / (1 - clip_lower) (the steady-state evidence when rho
    sits at clip_lower), split evenly: alpha = beta = N / 2, so the first baseline is reward 0.
    """

    def __init__(self, clip_lower: float = 0.5, clip_upper: float = 0.96, half_life: float = 0.06,
                 rho_const: float = 0.9, reward_scale: float = 3.0, rho_mode: str = "kl"):
        if not 0.0 < clip_lower <= clip_upper < 1.0:
            raise ValueError("BetaBaselineTracker needs 0 < clip_lower <= clip_upper < 1")
        if half_life <= 0 or reward_scale <= 0:
            raise ValueError("BetaBaselineTracker needs half_life > 0 and reward_scale > 0")
        if rho_mode not in ("kl", "constant"):
            raise ValueError("rho_mode must be 'kl' or 'constant'")
        self.clip_lower, self.clip_upper = float(clip_lower), float(clip_upper)
        self.half_life, self.rho_const = float(half_life), float(rho_const)
        self.reward_scale, self.rho_mode = float(reward_scale), rho_mode
        n_init = 1.0 / (1.0 - self.clip_lower)
        self.alpha = self.beta = 0.5 * n_init
        self.last_mean_logprob: float | None = None

    # --- reward scale <-> [0, 1]
    def normalize(self, reward: float) -> float:
        return min(max((reward + self.reward_scale) / (2.0 * self.reward_scale), 0.0), 1.0)

    def denormalize(self, value: float) -> float:
        return value * 2.0 * self.reward_scale - self.reward_scale

    # --- the baseline
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
        rho = 2.0 ** (-abs(mean_logprob - self.last_mean_logprob) / self.half_life)
        return min(max(rho, self.clip_lower), self.clip_upper)

    def update(self, rewards: Iterable[float], mean_logprob: float) -> float:
        """Fold one batch of rewards (reward units) into the belief; returns the rho used."""
        normalized = [self.normalize(float(r)) for r in rewards]
        if not normalized:
            raise ValueError("BetaBaselineTracker.update needs at least one reward")
        if any(math.isnan(r) for r in normalized):
            raise ValueError("BetaBaselineTracker.update got a NaN reward")
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
