"""The asymmetric ratio clip (`cliprange_high`, the SPO authors' 0.2 / 0.28) in `core.policy_loss`, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from align_recipes.rl import core


def test_the_upper_clip_moves_to_one_plus_cliprange_high_and_the_lower_stays():
    # token 1: ratio e^.25 = 1.2840 with advantage +1; token 2: ratio e^-.25 = .7788 with advantage -1
    logprobs, old = torch.tensor([[0.25, -0.25]]), torch.zeros(1, 2)
    advantages, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    symmetric, clipfrac, _ = core.policy_loss(logprobs, old, advantages, mask, 0.2)
    # max(-1.2840, -1.2) = -1.2 and max(.7788, .8) = .8: both tokens clipped
    assert symmetric.item() == pytest.approx((-1.2 + 0.8) / 2) and clipfrac.item() == 1.0
    higher, clipfrac, _ = core.policy_loss(logprobs, old, advantages, mask, 0.2, cliprange_high=0.28)
    # the upper bound is 1.28 now: max(-1.2840, -1.28) = -1.28; the lower token is as before
    assert higher.item() == pytest.approx((-1.28 + 0.8) / 2) and clipfrac.item() == 1.0
    inside, clipfrac, _ = core.policy_loss(logprobs, old, advantages, mask, 0.2, cliprange_high=0.3)
    assert inside.item() == pytest.approx((-math.exp(0.25) + 0.8) / 2) and clipfrac.item() == 0.5
