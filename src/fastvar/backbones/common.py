"""What the backbones share: official modules (``SharedAdaLin``, ``AdaLNBeforeHead``, RMSNorm, the GELU FFN) and which
parameters lie in the blocks (their dtype, int8 storage)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.quantize import check_quantize


def in_blocks(name: str) -> bool:
    """Whether a parameter or module name of a transformer lies in its blocks (``blocks.i``, or Infinity's
    ``block_chunks.k.module.j``)."""
    return name.startswith(("blocks.", "block_chunks."))


def quantized_layers(quantize: str | None) -> Callable[[str], bool] | None:
    """Which linear layers ``quantize`` stores in int8: those in the blocks for ``"int8"``, none for None."""
    return in_blocks if check_quantize(quantize) else None


def weight_dtype_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """A linear layer in its weight's dtype (bfloat16 blocks take float32 activations, like autocast). The weight is
    read once: an ``Int8Linear`` expands it on each read."""
    weight = layer.weight
    return F.linear(x.to(weight.dtype), weight, layer.bias)


class FFN(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (VAR's and Infinity's ``FFN``), in the weights' dtype."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return weight_dtype_linear(F.gelu(weight_dtype_linear(x, self.fc1), approximate="tanh"), self.fc2)


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


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) in float32, cast back to x's dtype, times the weight (Infinity's ``FastRMSNorm`` on
    the T5 features; HART's ``LlamaRMSNormFused``, whose weight exists even where its code says no affine)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)
