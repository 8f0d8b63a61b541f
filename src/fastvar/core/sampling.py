"""Token sampling as small pure functions, drawing from an explicit generator in the official order.

Reproduces ``sample_with_top_k_top_p_`` and ``gumbel_softmax_with_rng`` of the official VAR code (shared verbatim in
spirit by Infinity and HART): top-k keeps entries not strictly below the k-th largest logit; top-p sorts ascending
and removes entries whose cumulative probability is <= 1 - top_p, always keeping the largest; then one
``torch.multinomial`` over the flattened (B*l, V) probabilities, so a seeded generator yields the official samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FastVARError


def check_sampling_args(cfg: float, top_k: int, top_p: float) -> None:
    """Reject values the official sampler would silently misuse."""
    if not (isinstance(cfg, (int, float)) and cfg >= 0):
        raise FastVARError(f"cfg must be a number >= 0, got {cfg!r}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise FastVARError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0.0 <= top_p <= 1.0):
        raise FastVARError(f"top_p must be in [0, 1] (0 = off), got {top_p!r}")


def filter_top_k_top_p_(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """In place: set logits outside the top-k / nucleus to -inf. ``logits``: (..., V)."""
    V = logits.shape[-1]
    if top_k > 0:
        kth = logits.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        sorted_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        sorted_remove[..., -1:] = False
        logits.masked_fill_(sorted_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_remove), -torch.inf)
    return logits


def sample_top_k_top_p(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Filter (in place) and draw one index per row: (B, l, V) logits -> (B, l) int64."""
    B, l, V = logits.shape
    probs = filter_top_k_top_p_(logits, top_k, top_p).softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator).view(B, l)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None) -> torch.Tensor:
    """Soft Gumbel-softmax over the last dim with an explicit generator (official ``gumbel_softmax_with_rng``)."""
    if generator is None:
        return F.gumbel_softmax(logits, tau=tau, hard=False, dim=-1)
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(-1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded like the official code (``manual_seed(seed)`` on the model device); None for no seed."""
    if seed is None:
        return None
    if not isinstance(seed, int):
        raise FastVARError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)
