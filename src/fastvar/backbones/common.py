"""Modules VAR and Infinity share (official ``SharedAdaLin`` and ``AdaLNBeforeHead``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SharedAdaLin(nn.Linear):
    """The shared AdaLN projection: (B, D) condition -> (B, 1, 6, C) gamma1, gamma2, scale1, scale2, shift1, shift2."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).reshape(-1, 1, 6, self.weight.shape[0] // 6)


class AdaLNBeforeHead(nn.Module):
    """LN(x) * (1 + scale) + shift before the head, (scale, shift) = SiLU -> Linear(D, 2C) of the condition."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C, self.eps = C, eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return F.layer_norm(x, (self.C,), eps=self.eps).mul(scale.add(1)).add_(shift)
