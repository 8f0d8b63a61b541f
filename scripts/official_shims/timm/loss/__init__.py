"""``SoftTargetCrossEntropy``: imported by ``infinity/models/__init__.py`` (training loss, unused here)."""
import torch
from torch import nn


class SoftTargetCrossEntropy(nn.Module):
    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sum(-target * x.log_softmax(dim=-1), dim=-1).mean()
