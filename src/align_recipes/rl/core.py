"""The numbers of PPO and SPO: small pure torch functions, no model, no state.

Shapes: ``B`` sequences (completions) by ``T`` response positions. ``mask`` is 1.0 on the tokens the
policy generated (the generator says how many: `mask_from_lengths`) and 0.0 on the padding after them. Every
function ignores masked-out positions, so padding never leaks into a statistic, a loss or an
advantage. Each function is unit-tested against hand-computed values in tests/rl/test_rl_core.py.
"""

from __future__ import annotations

import torch

from align_recipes.rl.logprobs import token_entropy, token_logprobs

KL_ESTIMATORS = ("k1", "k2", "k3")

#: Whitening and SPO's batch normalisation leave a batch alone when its standard deviation is below this share of
#: (1 + |mean|): a batch of equal rewards has a spread of float rounding only, and dividing by it (plus eps) would
#: turn the rounding into unit-variance noise, a random full-size update (binary rewards often start all equal).
MIN_RELATIVE_SPREAD = 1e-6


def _no_spread(var: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Whether a variance is float rounding only (see `MIN_RELATIVE_SPREAD`); a tensor, so no device sync."""
    return var <= (MIN_RELATIVE_SPREAD * (1.0 + mean.abs())) ** 2


# ------------------------------------------------------------------------------ masked statistics


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 (0 when nothing is masked in)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1e-8)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked-in positions; ``unbiased`` applies Bessel's correction n / (n - 1)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, sum_over_ranks=None
) -> torch.Tensor:
    """(x - mean) / std over the masked-in positions; ``shift_mean=False`` keeps the mean (only rescales).
    Masked-out positions come back as 0. A batch with no spread (`MIN_RELATIVE_SPREAD`) carries no signal: it
    comes back as 0 everywhere (or unchanged with ``shift_mean=False``) instead of as rescaled rounding noise.
    With ``sum_over_ranks`` (a function summing a tensor over the processes) the mean and the unbiased variance
    are those of every process's positions together: each process contributes its (count, sum, sum of squares),
    and one all-reduce adds them up."""
    if sum_over_ranks is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:
        mean, var = global_masked_moments(values, mask, sum_over_ranks)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    unchanged = values if not shift_mean else torch.zeros_like(values)
    return torch.where(_no_spread(var, mean), unchanged, whitened) * mask


def global_masked_moments(
    values: torch.Tensor, mask: torch.Tensor, sum_over_ranks
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) of the masked-in positions of every process, from the all-reduced
    (count, sum, sum of squares), accumulated in float64 so that sum-of-squares loses no precision."""
    x, m = values.double(), mask.double()
    local = torch.stack([m.sum(), (x * m).sum(), (x * x * m).sum()])
    count, total, squares = sum_over_ranks(local).unbind()
    mean = total / count.clamp(min=1e-8)
    var = (squares - count * mean * mean).clamp(min=0) / (count - 1).clamp(min=1)
    return mean.to(values.dtype), var.to(values.dtype)


def mask_from_lengths(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B] generated-token counts -> [B, width] float mask, 1.0 on the first ``lengths[i]`` positions.
    The generator knows why each row stopped (EOS, a stop string, the token cap); scanning for EOS does
    not (a row that stopped without EOS is followed by padding, which may even be the EOS id)."""
    positions = torch.arange(width, device=lengths.device)
    return (positions.unsqueeze(0) < lengths.unsqueeze(1)).float()


# ------------------------------------------------------------------------------- log-probabilities


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature); [B, T, V], [B, T] -> [B, T] (float32). Chunked over
    positions: no full-vocabulary float32 copy is made (`rl.logprobs`)."""
    return token_logprobs(logits, tokens, temperature)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position: [B, T, V] -> [B, T] (nats), chunked."""
    return token_entropy(logits, temperature)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probabilities of tokens the policy sampled.

    With r = log p_ref - log p_policy:  k1 = -r (unbiased, can be negative); k2 = r^2 / 2 (biased, >= 0);
    k3 = exp(r) - 1 - r (unbiased, >= 0, low variance; GRPO's and MiniMind's choice). These are statements
    about the *value*. Differentiated as a loss (`kl_penalty_loss`), k3's expected gradient is that of the
    other direction, KL(reference || policy) (tests/rl/test_rl_core.py checks this exactly).
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use one of {', '.join(KL_ESTIMATORS)}")


# ----------------------------------------------------------------------------- rewards, advantages


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last masked-in position of each row ([B, T] -> [B]); -1 for an empty row."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values


def shaped_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """PPO's per-token reward: -kl_coef * KL on every generated token, plus the sequence score on the
    last generated token. [B], [B, T], [B, T] -> [B, T]."""
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] += scores[rows].to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},  returns = A + V.
    Positions after the last generated token count as terminal (value 0, reward 0, advantage 0).
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def spo_advantages(
    scores: torch.Tensor,
    baseline: float | torch.Tensor,
    clip: float,
    normalize: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """SPO: score minus the tracked baseline (both in reward units; one number, or one per prompt), then
    optionally normalised over the batch to mean 0, std 1 (the SPO paper's global advantage normalisation;
    population std), then clipped to [-clip, clip]; a batch with no spread (`MIN_RELATIVE_SPREAD`) normalises to
    0. [B] -> [B]."""
    advantages = scores - baseline
    if normalize and advantages.numel() > 1:
        mean, std = advantages.mean(), advantages.std(unbiased=False)
        normalized = (advantages - mean) / (std + eps)
        advantages = torch.where(_no_spread(std**2, mean), torch.zeros_like(advantages), normalized)
    return advantages.clamp(-clip, clip)


def mean_abs_log_ratio(
    logprobs: torch.Tensor, other_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per row, the mean over its tokens of |log p - log q|: how far two policies are apart on one sample.
    The SPO authors' per-token divergence D(x) for the forgetting factor. [B, T] x 2, [B, T] -> [B]."""
    return masked_mean((logprobs - other_logprobs).abs(), mask, dim=1)


def truncated_importance_weights(
    logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float, mask: torch.Tensor
) -> torch.Tensor:
    """Truncated importance sampling (TIS) for a sampler that is not exactly the trained policy (vLLM's kernels,
    precision): w = min(pi_old / pi_sampler, cap) per token, 0 on padding. [B, T] -> [B, T]."""
    return torch.exp(logprobs - sampler_logprobs).clamp(max=cap) * mask


# ------------------------------------------------------------------------------------------ losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    weights: torch.Tensor | None = None,
    cliprange_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, token-averaged: mean(w * max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).

    ``weights`` (default 1) are per-token importance weights for a sampler other than pi_old
    (`truncated_importance_weights`). ``cliprange_high`` (default: ``cliprange``) is the upper clip, 1 + its value
    (DAPO's clip higher, the SPO authors' 0.28). Returns (loss, clipfrac, approx_kl): clipfrac is the share of tokens
    where the clipped term won; approx_kl = mean(0.5 * (log ratio)^2), how far this update moved the policy.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    high = cliprange if cliprange_high is None else cliprange_high
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights
    loss = masked_mean(per_token, mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio.detach() ** 2, mask)
    return loss, clipfrac.detach(), approx_kl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (clip(V, V_old +- eps) - R)^2)); returns (loss, vf_clipfrac)."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clipfrac.detach()


def kl_penalty_loss(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "k3"
) -> torch.Tensor:
    """Token-averaged KL estimate used as a loss term (SPO / GRPO style), differentiable in ``logprobs``.

    With k3 on tokens the policy sampled, the value estimates KL(policy || reference) but the gradient is, in
    expectation, that of KL(reference || policy): the mass-covering direction (as in GRPO)."""
    return masked_mean(kl_estimate(logprobs, ref_logprobs, kind), mask)
