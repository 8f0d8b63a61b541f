"""The demo model's text encoder: UTF-8 bytes -> a small pre-norm transformer -> per-byte features.

No pretrained text model can be downloaded offline, so the demo trains this encoder jointly with its Infinity
transformer. It plays T5's part: ``encoder(prompts) -> TextCondition`` (packed features, one row per byte plus a
leading BOS row), which ``InfinityPipeline`` consumes as ``text_encoder``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.infinity.text import TextCondition
from ..errors import FastVARError

BOS = 256  # byte values are 0..255


@dataclass(frozen=True)
class ByteTextConfig:
    width: int = 128  # = the transformer's text_channels
    depth: int = 2
    num_heads: int = 4
    max_len: int = 64  # BOS + up to 63 bytes (the transformer's text_maxlen)


class ByteBlock(nn.Module):
    """Pre-norm self-attention over the prompt's bytes (padding masked) + GELU MLP."""

    def __init__(self, cfg: ByteTextConfig):
        super().__init__()
        C = cfg.width
        self.num_heads = cfg.num_heads
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc1, self.fc2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, L, hd)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, C))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ByteTextEncoder(nn.Module):
    def __init__(self, cfg: ByteTextConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(257, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.max_len, cfg.width))
        self.blocks = nn.ModuleList(ByteBlock(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width)

    @property
    def channels(self) -> int:
        return self.cfg.width

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """BOS + UTF-8 bytes, right-padded: ids (B, Lmax) int64 and the lengths (prompts over max_len are cut)."""
        if isinstance(prompts, str) or not prompts:
            raise FastVARError("the demo text encoder takes a non-empty list of prompts")
        rows = [[BOS, *p.strip().lower().encode("utf-8")][: self.cfg.max_len] for p in prompts]
        lens = [len(r) for r in rows]
        ids = torch.zeros(len(rows), max(lens), dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, lens

    def forward(self, prompts: Sequence[str]) -> TextCondition:
        """Prompts -> packed features (sum(len_i), width), prompt i's rows = BOS + its bytes."""
        ids, lens = self.tokenize(prompts)
        ids = ids.to(self.pos_embed.device)
        L = ids.shape[1]
        mask = torch.arange(L, device=ids.device)[None, :] < torch.tensor(lens, device=ids.device)[:, None]  # (B, L)
        x = self.tok_embed(ids) + self.pos_embed[:L]
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        return TextCondition(x[mask], lens)  # mask rows are leading: x[mask] packs prompt after prompt
