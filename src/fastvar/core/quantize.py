"""Opt-in weight-only int8 storage of the transformer blocks' linear layers (``quantize="int8"``).

Each selected ``nn.Linear`` becomes an ``Int8Linear``: its weight is kept as int8 with one scale per output row
(symmetric, round to nearest: ``weight ~ qweight * scale``) and expanded back to the layer's dtype when used, one
layer at a time. That halves the blocks' weights against bfloat16 (a quarter against float32). It is not exact: the
outputs drift from the unquantized model's (measured in docs/fidelity.md), so it is off unless asked for.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FastVARError

QUANTIZATIONS = ("int8",)


def check_quantize(quantize: str | None) -> bool:
    """Whether to quantize: ``None`` (no) or ``"int8"``; anything else is an error."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise FastVARError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZATIONS)} (or none)")
    return quantize is not None


class Int8Linear(nn.Module):
    """A linear layer whose weight is stored as int8 rows times a per-row scale (in the layer's dtype)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: nn.Parameter | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.qweight = nn.Parameter(qweight, requires_grad=False)  # (out, in) int8
        self.scale = nn.Parameter(scale, requires_grad=False)  # (out,) float
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, device: torch.device | str) -> Int8Linear:
        """Quantize ``linear``'s weight on ``device`` (in float32; the scale keeps the weight's dtype)."""
        weight = linear.weight.detach().to(device=device, dtype=torch.float32)  # may share the layer's storage
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        qweight = (weight / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        return cls(qweight, scale.to(linear.weight.dtype), linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The expanded weight (out, in) in the scale's dtype: what ``nn.Linear.weight`` would hold."""
        return self.qweight.to(self.scale.dtype).mul_(self.scale[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, per-row scale"


def quantize_linears(model: nn.Module, select: Callable[[str], bool], device: torch.device | str) -> nn.Module:
    """Replace (in place) every ``nn.Linear`` of ``model`` whose qualified name ``select`` accepts by an
    ``Int8Linear`` on ``device``, one layer at a time (the full-precision weight of one layer is the only extra)."""
    chosen = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and select(name)]
    for name, linear in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Int8Linear.from_linear(linear, device))
    return model
