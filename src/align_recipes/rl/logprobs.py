"""Log-probabilities and entropies of sampled tokens without a full-vocabulary float32 copy of the logits.

The naive ``log_softmax(logits.float() / T).gather(...)`` materialises B x T x V float32 values (and autograd
keeps them, plus their gradient): at Qwen's vocabulary (151,936) and 1,024-token answers that is 0.6 GB per
sequence per copy. Here the token's log-probability is its scaled logit minus the row's logsumexp, computed over
chunks of positions, so the float32 working set is one chunk x V at a time. The backward recomputes each chunk's
softmax from the saved logits (in their own dtype) and the per-row logsumexp, so autograd keeps no float32 copy
either; the only full-size tensor it creates is the logits' gradient, in the logits' dtype (the lm head needs it).
tests/rl/test_rl_logprobs.py compares values and gradients with the naive form.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Float32 values per chunk: 2**25 (128 MB) is about 220 positions at a 151,936-token vocabulary. A handful of such
# temporaries are alive at once (the float32 chunk, its exp, the gradient chunk): `WORKING_CHUNKS`.
CHUNK_ELEMENTS = 1 << 25
WORKING_CHUNKS = 3


def chunk_positions(vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Positions per chunk for a vocabulary of ``vocab`` tokens."""
    return max(1, chunk_elements // max(vocab, 1))


def _chunks(shape: torch.Size, positions: int) -> Iterator[tuple[slice, slice]]:
    """(rows, positions) slices of a [B, T, V] tensor covering it in pieces of about ``positions`` positions.
    Slicing (not reshaping) keeps a non-contiguous view such as ``logits[:, :-1]`` uncopied."""
    batch, length = shape[0], shape[1]
    if positions >= length:
        rows = max(1, positions // max(length, 1))
        for b in range(0, batch, rows):
            yield slice(b, b + rows), slice(None)
        return
    for b in range(batch):
        for t in range(0, length, positions):
            yield slice(b, b + 1), slice(t, t + positions)


def _scaled(chunk: torch.Tensor, temperature: float, writable: bool = False) -> torch.Tensor:
    """The chunk in float32 divided by the temperature; ``writable``: never the caller's own tensor."""
    x = chunk.float()
    if temperature != 1.0:
        return x / temperature
    return x.clone() if writable and x is chunk else x


def _chunked_forward(logits, temperature, positions, writable, per_chunk):
    """(per-position values, logsumexp) over [B, T] in float32, one chunk at a time: ``per_chunk(x, lse, rows,
    cols)`` gets the chunk's scaled logits x (its own copy when ``writable``) and their logsumexp."""
    out = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(out)
    with torch.autocast(logits.device.type, enabled=False):
        for rows, cols in _chunks(logits.shape, positions):
            x = _scaled(logits[rows, cols], temperature, writable)
            lse[rows, cols] = torch.logsumexp(x, -1)
            out[rows, cols] = per_chunk(x, lse[rows, cols].unsqueeze(-1), rows, cols)
    return out, lse


def _chunked_backward(logits, lse, temperature, positions, per_chunk):
    """The gradient in the logits' dtype, one chunk at a time: ``per_chunk(logp, rows, cols)`` turns the chunk's
    log-softmax (float32, its own copy) into d/dz in place, z = logits / T; the 1/T is applied here."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    with torch.autocast(logits.device.type, enabled=False):
        for rows, cols in _chunks(logits.shape, positions):
            logp = _scaled(logits[rows, cols], temperature, writable=True).sub_(lse[rows, cols].unsqueeze(-1))
            g = per_chunk(logp, rows, cols)
            if temperature != 1.0:
                g.div_(temperature)
            grad[rows, cols] = g.to(grad.dtype)
    return grad


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / T)[token] per position, chunked in the forward and in the backward."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, positions):
        def picked(x, lse, rows, cols):
            return x.gather(-1, tokens[rows, cols].unsqueeze(-1)).squeeze(-1) - lse.squeeze(-1)

        out, lse = _chunked_forward(logits, temperature, positions, False, picked)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.positions = temperature, positions
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, tokens, lse = ctx.saved_tensors

        def chunk_grad(logp, rows, cols):
            # d/dz [z_k - logsumexp(z)] = onehot(k) - softmax(z)
            g_row = grad_out[rows, cols].float().unsqueeze(-1)
            g = logp.exp_().mul_(-g_row)
            return g.scatter_add_(-1, tokens[rows, cols].unsqueeze(-1), g_row)

        return _chunked_backward(logits, lse, ctx.temperature, ctx.positions, chunk_grad), None, None, None


class _Entropy(torch.autograd.Function):
    """Entropy of softmax(logits / T) per position, chunked in the forward and in the backward."""

    @staticmethod
    def forward(ctx, logits, temperature, positions):
        def entropy(x, lse, rows, cols):
            logp = x.sub_(lse)
            return -(logp.exp() * logp).sum(-1)

        out, lse = _chunked_forward(logits, temperature, positions, True, entropy)
        ctx.save_for_backward(logits, lse, out)
        ctx.temperature, ctx.positions = temperature, positions
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, lse, entropy = ctx.saved_tensors

        def chunk_grad(logp, rows, cols):
            # dH/dz_j = -p_j (log p_j + H)
            probs = logp.exp()
            g = logp.add_(entropy[rows, cols].unsqueeze(-1)).mul_(probs)
            return g.mul_(-grad_out[rows, cols].float().unsqueeze(-1))

        return _chunked_backward(logits, lse, ctx.temperature, ctx.positions, chunk_grad), None, None


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, positions: int | None = None
) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature): [B, T, V], [B, T] -> [B, T] float32, differentiable in
    ``logits``. ``positions`` per chunk defaults to `chunk_positions` of the vocabulary."""
    positions = positions or chunk_positions(logits.shape[-1])
    return _TokenLogprobs.apply(logits, tokens.long(), float(temperature), positions)


def token_entropy(
    logits: torch.Tensor, temperature: float = 1.0, positions: int | None = None
) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / temperature) at each position: [B, T, V] -> [B, T] float32."""
    positions = positions or chunk_positions(logits.shape[-1])
    return _Entropy.apply(logits, float(temperature), positions)
