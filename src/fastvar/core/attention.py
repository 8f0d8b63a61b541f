"""The attention steps every backbone shares: fused q/k/v with q and v biases, and attention over the KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .context import GenerationContext


def qkv_heads(x: torch.Tensor, weight: torch.Tensor, q_bias: torch.Tensor, v_bias: torch.Tensor,
              num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, C) -> q, k, v each (B, H, L, hd): ``x @ W^T + cat(q_bias, 0, v_bias)`` (keys have no bias)."""
    B, L, _ = x.shape
    bias = torch.cat((q_bias, torch.zeros_like(q_bias), v_bias))
    qkv = F.linear(x.to(weight.dtype), weight, bias).view(B, L, 3, num_heads, -1)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: GenerationContext, layer: int,
           scale: float) -> torch.Tensor:
    """Softmax attention of this step's (B, H, L, hd) queries over every cached key of the layer plus its own keys,
    which are appended to the cache, except at the final step (teacher forcing: over the whole sequence with
    ``ctx.attn_mask``). -> (B, L, C)."""
    if ctx.attn_mask is None:
        k, v = ctx.kv_cache(layer).append(k, v, store=ctx.si != ctx.final_step)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask, scale=scale)
    B, H, L, hd = out.shape
    return out.transpose(1, 2).reshape(B, L, H * hd)
