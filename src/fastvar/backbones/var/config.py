"""VAR configurations: the official constructor arguments, the released sizes, and the golden-style JSON format."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...core.config import config_from_kwargs
from ...errors import FastVARError
from .vqvae import VQVAEConfig

PATCH_NUMS = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}


@dataclass
class VARConfig:
    """``models.var.VAR`` keyword arguments (official names and defaults; dropout/flash flags only matter in training)."""

    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = False
    patch_nums: tuple[int, ...] = PATCH_NUMS[256]
    flash_if_available: bool = True
    fused_if_available: bool = True

    def __post_init__(self) -> None:
        self.patch_nums = tuple(self.patch_nums)
        if self.embed_dim % self.num_heads:
            raise FastVARError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> VARConfig:
        return config_from_kwargs(cls, kwargs, "VAR")


@dataclass
class VARModelSpec:
    """A VAR release: its VQ-VAE and transformer configs (the golden ``config.json`` layout)."""

    vae: VQVAEConfig
    var: VARConfig

    @property
    def image_size(self) -> int:
        return self.vae.downsample * self.var.patch_nums[-1]

    def to_json(self) -> dict:
        return {"vae_kwargs": asdict(self.vae), "var_kwargs": asdict(self.var)}


def _release(depth: int, resolution: int = 256, shared_aln: bool = False) -> VARModelSpec:
    """``models.build_vae_var``: heads = depth, width = 64 * depth, cosine attention; VAE vae_ch160v4096z32."""
    patch_nums = PATCH_NUMS[resolution]
    return VARModelSpec(
        vae=VQVAEConfig(v_patch_nums=patch_nums),
        var=VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24,
                      shared_aln=shared_aln, attn_l2_norm=True, patch_nums=patch_nums),
    )


CONFIGS: dict[str, VARModelSpec] = {
    "var-d16": _release(16),
    "var-d20": _release(20),
    "var-d24": _release(24),
    "var-d30": _release(30),
    "var-d36": _release(36, resolution=512, shared_aln=True),
}


def load_spec(config: str | Path | dict) -> VARModelSpec:
    """A registry name (``var-d16``), a JSON file in the golden ``config.json`` format, or that dict."""
    if isinstance(config, str) and config in CONFIGS:
        return CONFIGS[config]
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FastVARError(f"unknown VAR config {config!r}: not one of {', '.join(CONFIGS)} nor a JSON file")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FastVARError(f"config {path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "vae_kwargs" not in config or "var_kwargs" not in config:
        raise FastVARError("a VAR config JSON needs the keys 'vae_kwargs' and 'var_kwargs'")
    spec = VARModelSpec(VQVAEConfig.from_kwargs(config["vae_kwargs"]), VARConfig.from_kwargs(config["var_kwargs"]))
    if tuple(spec.vae.v_patch_nums) != spec.var.patch_nums:
        raise FastVARError(f"VAE patch_nums {spec.vae.v_patch_nums} differ from VAR patch_nums {spec.var.patch_nums}")
    return spec
