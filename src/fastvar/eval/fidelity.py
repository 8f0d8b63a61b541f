"""Fidelity of an accelerated generation to the unaccelerated one: PSNR, SSIM, token agreement, detail kept.

No pretrained image network is needed: quality is measured against the backbone's own unpruned output. PSNR and SSIM
against a sampled reference favour blur (a blurred image is closer on average than one with different sampled
detail), so ``detail_ratio`` says separately how much high-frequency energy an output keeps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB of (B, C, H, W) images in [0, 1] (inf where identical)."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1),
    averaged over channels and valid window positions, for (B, C, H, W) images in [0, 1]."""
    C = a.shape[1]
    w = _gaussian_window().to(a.device)[None, None].expand(C, 1, -1, -1)
    a, b = a.double(), b.double()
    blur = lambda t: F.conv2d(t, w, groups=C)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Per image mean squared 4-neighbour Laplacian of (B, C, H, W) images (interior pixels, all channels)."""
    x = x.double()
    lap = (x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4 * x[..., 1:-1, 1:-1])
    return lap.square().flatten(1).mean(1)


def detail_ratio(a: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image high-frequency energy of ``a`` relative to ``reference``: 1 = as detailed, < 1 = blurrier."""
    return high_frequency_energy(a) / high_frequency_energy(reference)


def token_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of token positions where two (B, l) index maps or (B, l, d) bit maps agree (all bits of a token)."""
    equal = a == b
    if equal.ndim == 3:
        equal = equal.all(-1)
    return equal.float().mean().item()
