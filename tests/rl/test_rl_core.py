"""The PPO/SPO math against values worked out by hand (the arithmetic is written out beside each)."""

from __future__ import annotations

import math

import pytest
import torch

from align_recipes.rl import core


def close(actual, expected, tol=1e-5):
    assert torch.allclose(
        torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32), atol=tol
    ), (actual, expected)


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # kept values: 1, 2, 4


def test_masked_mean_and_sum():
    close(core.masked_sum(X, M), 7.0)
    close(core.masked_mean(X, M), 7.0 / 3)  # (1 + 2 + 4) / 3
    close(core.masked_mean(X, M, dim=1), [1.5, 4.0])  # (1 + 2) / 2, 4 / 1
    close(core.masked_mean(X, torch.zeros_like(M)), 0.0)  # nothing kept: 0, not NaN


def test_masked_var():
    # deviations from 7/3: -4/3, -1/3, 5/3 -> squares 16/9, 1/9, 25/9, sum 42/9
    close(core.masked_var(X, M, unbiased=False), 42 / 9 / 3)
    close(core.masked_var(X, M), 42 / 9 / 2)


def test_masked_whiten():
    std = math.sqrt(42 / 9 / 2)
    expected = [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]]
    close(core.masked_whiten(X, M), expected, tol=1e-4)
    kept = [[e + 7 / 3 if m else 0.0 for e, m in zip(row, mrow)] for row, mrow in zip(expected, M.tolist())]
    close(core.masked_whiten(X, M, shift_mean=False), kept, tol=1e-4)


def test_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])  # p = [.5, .5] and [.25, .75]
    close(core.logprobs_from_logits(logits, torch.tensor([[0, 1]])), [[math.log(0.5), math.log(0.75)]])
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623
    close(core.entropy_from_logits(logits), [[math.log(2.0), h2]])
    # temperature 2 halves the logits: [0, 2 ln 3] / 2 -> [0, ln 3], the same distribution as above
    close(core.entropy_from_logits(torch.tensor([[[0.0, 2 * math.log(3.0)]]]), temperature=2.0), [[h2]])
    close(
        core.logprobs_from_logits(torch.tensor([[[0.0, 2 * math.log(3.0)]]]), torch.tensor([[1]]), 2.0),
        [[math.log(0.75)]],
    )


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(0.25) - math.log(0.5)  # log ratio ref/policy = -ln 2
    close(core.kl_estimate(logp, ref, "k1"), [-r])  # 0.6931
    close(core.kl_estimate(logp, ref, "k2"), [0.5 * r * r])  # 0.2402
    close(core.kl_estimate(logp, ref, "k3"), [math.exp(r) - 1 - r])  # 0.5 - 1 + 0.6931 = 0.1931
    close(core.kl_estimate(ref, ref, "k3"), [0.0])
    with pytest.raises(ValueError, match="k1, k2, k3"):
        core.kl_estimate(logp, ref, "k4")


def test_last_token_index_and_shaped_rewards():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert core.last_token_index(mask).tolist() == [2, 1, -1]
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0]])
    rewards = core.shaped_rewards(torch.tensor([2.0, -1.0, 7.0]), kl, mask, kl_coef=0.5)
    close(
        rewards,
        [
            [-0.05, -0.10, -0.15 + 2.0],  # -0.5 * kl, score on the last token
            [-0.20, -0.25 - 1.0, 0.0],  # padding gets nothing
            [0.0, 0.0, 0.0],
        ],
    )  # an empty row gets nothing


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = core.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 - .7 = .3 -> A2 = .3; d1 = .7 - .6 = .1 -> A1 = .1 + .5 * .3 = .25; d0 = .6 - .5 = .1 -> A0 = .225
    # row 1: position 2 is padding (reward 9 and value 5 ignored); d1 = 2 + 0 - 1 = 1 -> A1 = 1; d0 = 1 - 1 = 0 -> .5
    close(adv, [[0.225, 0.25, 0.3], [0.5, 1.0, 0.0]])
    close(ret, [[0.725, 0.85, 1.0], [1.5, 2.0, 0.0]])  # returns = A + V on real tokens


def test_gae_discount_is_monte_carlo_when_lam_is_one():
    adv, ret = core.gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=1.0)
    close(adv, [[0.9, 1.0]])  # A0 = 0 + 0.9 * V1 - V0 + 0.9 * A1 = 0.9
    close(ret, [[0.9, 1.0]])


def test_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    new = torch.tensor(
        [[math.log(1.5), math.log(0.5), 0.0, 5.0]], requires_grad=True
    )  # ratios 1.5, .5, 1, e^5
    adv = torch.tensor([[1.0, -1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    loss, clipfrac, approx_kl = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1 * 1.5, -1 * 1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: -2
    close(loss, (-1.2 + 0.8 - 2.0) / 3)
    close(clipfrac, 2 / 3)
    close(approx_kl, 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + 0.0) / 3)
    loss.backward()
    # clipped tokens get no gradient; token 2: d(-A * exp(x)) / dx / 3 = -2 / 3
    close(new.grad, [[0.0, 0.0, -2.0 / 3, 0.0]])


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 3.0]])
    old = torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = core.value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: clip(1.0, .3, .7) = .7; max((1-2)^2, (.7-2)^2) = 1.69 (clipped wins)
    # token 1: clip(0, -.2, .2) = 0; both (0 - .3)^2 = .09
    close(loss, 0.5 * (1.69 + 0.09) / 2)
    close(clipfrac, 0.5)


def test_spo_advantages_and_kl_loss():
    close(core.spo_advantages(torch.tensor([1.0, -4.0, 9.0]), baseline=0.5, clip=5.0), [0.5, -4.5, 5.0])
    logp = torch.tensor([[math.log(0.5), 0.0]])
    ref = torch.tensor([[math.log(0.25), 7.0]])
    r = math.log(0.5)  # only the first token is kept
    close(core.kl_penalty_loss(logp, ref, torch.tensor([[1.0, 0.0]])), math.exp(r) - 1 - r)


def test_mask_from_lengths():
    close(core.mask_from_lengths(torch.tensor([3, 0, 1]), 4), [[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])


def test_spo_advantages_normalised_over_the_batch():
    # scores - per-prompt baselines: [1 - .5, 0 - .25, 1 - .75] = [.5, -.25, .25]; mean 1/6
    # deviations 1/3, -5/12, 1/12; population variance (16 + 25 + 1) / 144 / 3 = 42 / 432
    std = math.sqrt(42 / 432)
    got = core.spo_advantages(
        torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.5, 0.25, 0.75]), clip=5.0, normalize=True
    )
    close(got, [(1 / 3) / std, (-5 / 12) / std, (1 / 12) / std], tol=1e-4)
    close(
        core.spo_advantages(torch.tensor([1.0, 0.0]), 0.0, clip=0.5, normalize=True), [0.5, -0.5]
    )  # +-1, clipped


def test_mean_abs_log_ratio():
    now = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    then = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(core.mean_abs_log_ratio(now, then, mask), [(0.5 + 1.0) / 2, 0.0])  # padding ignored


def test_truncated_importance_weights_and_weighted_policy_loss():
    old = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.3)]])
    sampler = torch.tensor([[math.log(0.25), math.log(0.9), math.log(0.6)]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w = core.truncated_importance_weights(old, sampler, cap=1.5, mask=mask)
    close(w, [[1.5, 1.0, 0.0]])  # 0.5 / 0.25 = 2 capped at 1.5; 1; padding 0
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    loss, _, _ = core.policy_loss(old, old, adv, mask, 0.2, weights=w)  # ratio 1: per token -A
    close(loss, (1.5 * -1.0 + 1.0 * 2.0) / 2)


def test_k3_loss_value_is_kl_policy_ref_but_its_gradient_is_kl_ref_policy():
    """Exact expectations over a 3-token vocabulary: E_{y ~ pi}[k3] = KL(pi || ref), while
    E_{y ~ pi}[d k3(y) / d theta] (the gradient the loss term gives, samples not reparameterised) equals
    d KL(ref || pi) / d theta, not d KL(pi || ref) / d theta."""
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    ref = torch.tensor([0.2, 0.5, 0.3])
    pi = theta.softmax(-1)
    logp = pi.log()
    k3 = [
        core.kl_penalty_loss(logp[y].reshape(1, 1), ref[y].log().reshape(1, 1), torch.ones(1, 1), "k3")
        for y in range(3)
    ]
    expected_value = sum(pi[y].detach() * k3[y].detach() for y in range(3))
    close(expected_value, (pi * (pi / ref).log()).sum().detach())
    grad = sum(pi[y].detach() * torch.autograd.grad(k3[y], theta, retain_graph=True)[0] for y in range(3))
    grad_ref_pi = torch.autograd.grad((ref * (ref / pi).log()).sum(), theta, retain_graph=True)[0]
    grad_pi_ref = torch.autograd.grad((pi * (pi / ref).log()).sum(), theta)[0]
    close(grad, grad_ref_pi)
    assert not torch.allclose(grad, grad_pi_ref, atol=1e-3)
