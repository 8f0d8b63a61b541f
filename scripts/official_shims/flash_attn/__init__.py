"""Stand-in for ``flash_attn`` (see ../README.md): the two attention functions the official Infinity imports.

Both compute softmax attention in float32 on the given values and return the input dtype, like the kernels
(which take bf16/fp16 inputs, accumulate in float32 and write the input dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """q, k, v (B, L, H, hd) -> (B, Lq, H, hd)."""
    out = F.scaled_dot_product_attention(q.float().transpose(1, 2), k.float().transpose(1, 2),
                                         v.float().transpose(1, 2), is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).to(q.dtype)


def _padded_index(cu_seqlens: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed-row index (B, max_seqlen) of every sequence position, and its validity mask."""
    cu = cu_seqlens.long()
    lens = cu[1:] - cu[:-1]
    ar = torch.arange(int(max_seqlen), device=cu.device)
    valid = ar[None, :] < lens[:, None]
    return torch.where(valid, cu[:-1, None] + ar[None, :], 0), valid


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, **_):
    """q (Nq, H, hd), kv (Nk, 2, H, hd) packed per sequence -> (Nq, H, hd): sequence i attends only to its keys."""
    iq, valid_q = _padded_index(cu_seqlens_q, max_seqlen_q)
    ik, valid_k = _padded_index(cu_seqlens_k, max_seqlen_k)
    k, v = kv[ik].float().unbind(2)  # each (B, Lk, H, hd)
    out = F.scaled_dot_product_attention(q[iq].float().transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=valid_k[:, None, None, :], scale=softmax_scale)
    return out.transpose(1, 2)[valid_q].to(q.dtype)  # (B, Lq, H, hd) -> the valid query rows
