"""Chunked log-probs and entropies (rl/logprobs.py) against the naive full log-softmax: values and gradients,
with padded rows, non-contiguous logits, temperatures and chunk sizes that do not divide the length."""

from __future__ import annotations

import pytest
import torch

from align_recipes.rl import core
from align_recipes.rl.logprobs import _chunks, chunk_positions, token_entropy, token_logprobs


def naive_logprobs(logits, tokens, temperature=1.0):
    logp = (logits.float() / temperature).log_softmax(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def naive_entropy(logits, temperature=1.0):
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _batch(seed=0, batch=3, length=7, vocab=50, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    # One column more than used and sliced off, as `response_logits` does: a non-contiguous view.
    logits = (torch.randn(batch, length + 1, vocab, generator=g) * scale)[:, :-1]
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length)
    mask[1, 4:] = 0  # a padded row: padding after 4 tokens (its ids are the pad id 0)
    mask[2, :] = 0  # an empty row
    tokens = torch.where(mask > 0, tokens, torch.zeros_like(tokens))
    return logits, tokens, mask


def test_chunks_cover_every_position_once():
    for shape, positions in [
        ((3, 7, 5), 2),
        ((3, 7, 5), 7),
        ((3, 7, 5), 15),
        ((1, 1, 5), 1),
        ((4, 5, 2), 100),
    ]:
        seen = torch.zeros(shape[:2])
        for rows, cols in _chunks(torch.Size(shape), positions):
            seen[rows, cols] += 1
            assert seen[rows, cols].numel() <= max(positions, shape[1])
        assert (seen == 1).all(), (shape, positions)
    assert chunk_positions(151_936) == 220 and chunk_positions(10**9) == 1


@pytest.mark.parametrize("positions", [1, 3, 7, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_equal_the_naive_ones(positions, temperature):
    logits, tokens, mask = _batch()
    got = token_logprobs(logits, tokens, temperature, positions=positions)
    assert got.dtype == torch.float32 and got.shape == tokens.shape
    torch.testing.assert_close(got, naive_logprobs(logits, tokens, temperature), rtol=1e-6, atol=1e-6)
    entropy = token_entropy(logits, temperature, positions=positions)
    torch.testing.assert_close(entropy, naive_entropy(logits, temperature), rtol=1e-6, atol=1e-6)
    # masked positions are not special: the same numbers, which the losses then multiply by 0
    assert torch.isfinite(got[mask == 0]).all()


@pytest.mark.parametrize("positions", [2, 100])
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_gradients_equal_the_naive_ones(positions, temperature):
    base, tokens, mask = _batch(seed=1)
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(2))
    grads = {}
    for name, logprob_fn, entropy_fn in [
        ("naive", naive_logprobs, naive_entropy),
        (
            "chunked",
            lambda x, t, T: token_logprobs(x, t, T, positions=positions),
            lambda x, T: token_entropy(x, T, positions=positions),
        ),
    ]:
        logits = base.clone().requires_grad_(True)
        lp = logprob_fn(logits, tokens, temperature)
        (core.masked_sum(lp * weights, mask)).backward()
        g_lp = logits.grad.clone()
        logits.grad = None
        (entropy_fn(logits, temperature) * weights).sum().backward()
        grads[name] = (g_lp, logits.grad.clone())
    torch.testing.assert_close(grads["chunked"][0], grads["naive"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads["chunked"][1], grads["naive"][1], rtol=1e-6, atol=1e-6)
    assert (grads["chunked"][0][2] == 0).all()  # the empty row gets no gradient from the masked loss


def test_gradient_flows_to_the_layer_below_in_its_dtype():
    """bf16 logits (a bf16 lm head) get a bf16 gradient; the values match the naive float32 ones to bf16's step."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40).to(torch.bfloat16)
    hidden = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    tokens = torch.randint(0, 40, (2, 5))
    logits = head(hidden)
    lp = token_logprobs(logits, tokens, positions=3)
    torch.testing.assert_close(lp, naive_logprobs(logits.detach(), tokens), rtol=1e-6, atol=1e-6)
    lp.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.dtype == torch.bfloat16


def test_hand_values_and_core_entry_points():
    """softmax([0, log 3]) = (1/4, 3/4): log-probs log 1/4 and log 3/4, entropy -(1/4 log 1/4 + 3/4 log 3/4)."""
    import math

    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    tokens = torch.tensor([[0, 1]])
    expected = [[math.log(0.25), math.log(0.75)]]
    torch.testing.assert_close(core.logprobs_from_logits(logits, tokens), torch.tensor(expected))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(core.entropy_from_logits(logits), torch.tensor([[h, h]]))
