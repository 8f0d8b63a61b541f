"""What a pipeline call returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import FastVARError

OUTPUT_TYPES = ("pil", "pt", "np")


@dataclass
class GenerationOutput:
    """``images``: PIL images (default), a (B, 3, H, W) float tensor in [0, 1] ("pt"), or (B, H, W, 3) uint8 ("np").
    ``tokens``: per computed scale step the sampled tokens (None unless ``return_tokens=True``).
    ``stats``: per step map size, tokens forwarded, skipped/pruned steps, timings when measured.
    ``kept_masks``: per pruned step, (B, h, w) bool maps of the tokens FastVAR kept (first pruned branch)."""

    images: Any
    tokens: list[torch.Tensor] | None = None
    stats: dict = field(default_factory=dict)
    kept_masks: dict[int, torch.Tensor] = field(default_factory=dict)


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise FastVARError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def format_images(images: torch.Tensor, output_type: str):
    """(B, 3, H, W) float in [0, 1] -> the requested output type."""
    if output_type == "pt":
        return images
    u8 = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return u8
    return [Image.fromarray(np.ascontiguousarray(a)) for a in u8]


def mask_overlay(image: Image.Image, mask: torch.Tensor, dim: float = 0.25) -> Image.Image:
    """The image with the pruned slots of an (h, w) kept-token map dimmed (nearest upsampling to the image)."""
    kept = Image.fromarray(mask.numpy().astype(np.uint8) * 255).resize(image.size, Image.NEAREST)
    keep = np.asarray(kept, dtype=np.float32)[..., None] / 255.0
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((pixels * (dim + (1 - dim) * keep)).round().astype(np.uint8))
