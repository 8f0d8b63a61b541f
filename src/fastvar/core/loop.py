"""The one next-scale sampling loop shared by every backbone.

A backbone prepares a ``state`` (condition, CFG-doubled batch, accumulated latent), then per scale step the loop asks
it for the step's input tokens, runs its blocks over them (each block reads ``ctx`` for the KV cache and pruning),
and lets it sample tokens and fold them into the state. The loop knows no backbone and no pruning rule: it only asks
the context's pruner whether a step is skipped. Trailing skipped steps simply end the loop; the backbone then decodes
what was accumulated. At the unguided last steps (``ctx.guided``) the backbone first drops its unconditional rows.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .context import GenerationContext


class NextScaleModel(Protocol):
    blocks: Sequence[torch.nn.Module]  # each: block(x, state, ctx) -> x

    def scale_input(self, state: Any, ctx: GenerationContext) -> torch.Tensor: ...  # (B', l, C) tokens of ctx.si

    def sample(self, x: torch.Tensor, state: Any, ctx: GenerationContext) -> torch.Tensor: ...  # head, CFG, draw

    def update(self, state: Any, tokens: torch.Tensor, ctx: GenerationContext) -> None: ...  # accumulate

    def drop_guidance(self, state: Any) -> None: ...  # keep only the conditional rows (idempotent)


@torch.inference_mode()
def run_scales(model: NextScaleModel, state: Any, ctx: GenerationContext, *, progress: bool = False,
               on_step: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Run every scale step of ``ctx.scales``; returns the sampled tokens of each computed step. ``on_step(si)`` is
    called after each computed step has updated the state (outside the step's time)."""
    tokens: list[torch.Tensor] = []
    for si in tqdm(range(len(ctx.scales)), desc="scales", disable=not progress, leave=False):
        if ctx.pruner.skips(si):
            ctx.skip_step(si)
            continue
        ctx.begin_step(si)
        if not ctx.guided(si):
            model.drop_guidance(state)
        x = model.scale_input(state, ctx)
        for block in model.blocks:
            x = block(x, state, ctx)
        ctx.blocks_done()
        step_tokens = model.sample(x, state, ctx)
        model.update(state, step_tokens, ctx)
        tokens.append(step_tokens)
        ctx.end_step(rows=x.shape[0])
        if on_step is not None:
            on_step(si)
    return tokens
