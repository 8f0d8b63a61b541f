"""Infinity configurations: the official constructor arguments, the released sizes, and the golden-style JSON format."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...core.config import config_from_kwargs
from ...errors import FastVARError
from .vae import VAE_PRESETS, InfinityVAEConfig


@dataclass
class InfinityConfig:
    """``infinity.models.infinity.Infinity`` keyword arguments (official names).

    Architecture sizes default to the constructor's; the flags default to what ``tools/run_infinity.py
    load_infinity`` passes for every release (shared AdaLN, fused norm, bit labels, RoPE on every self-attention
    normalised by h/w mode 2, level embedding on the first block only). Training-only arguments (dropout, drop path,
    condition dropout, checkpointing, flex attention, batch size, ...) are accepted and have no effect here.
    """

    text_channels: int = 2048
    text_maxlen: int = 512
    embed_dim: int = 1024
    depth: int = 16
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    rms_norm: bool = False
    shared_aln: bool = True
    head_aln: bool = True
    cond_drop_rate: float = 0.1
    rand_uncond: bool = False
    cross_attn_layer_scale: float = -1.0
    nm0: bool = False
    tau: float = 1.0
    cos_attn: bool = True
    swiglu: bool = False
    raw_scale_schedule: tuple[int, ...] | None = None
    head_depth: int = 1
    top_p: float = 0.0
    top_k: float = 0.0
    customized_flash_attn: bool = False
    fused_mlp: bool = False
    fused_norm: bool = True
    block_chunks: int = 1
    checkpointing: str | None = "full-block"
    pad_to_multiplier: int = 128
    use_flex_attn: bool = False
    batch_size: int = 2
    add_lvl_embeding_only_first_block: int = 1
    use_bit_label: int = 1
    rope2d_each_sa_layer: int = 1
    rope2d_normalized_by_hw: int = 2
    pn: str | None = "1M"
    train_h_div_w_list: tuple[float, ...] | None = (1.0,)
    video_frames: int = 1
    always_training_scales: int = 20
    apply_spatial_patchify: int = 0
    inference_mode: bool = True

    # what fastvar implements: the architecture every release uses (other values change the maths or the keys)
    _REQUIRED = {
        "rms_norm": False, "shared_aln": True, "head_aln": True, "nm0": False, "cos_attn": True, "swiglu": False,
        "head_depth": 1, "customized_flash_attn": False, "add_lvl_embeding_only_first_block": 1,
        "use_bit_label": 1, "rope2d_each_sa_layer": 1, "rope2d_normalized_by_hw": 2,
    }

    def __post_init__(self) -> None:
        for name in ("raw_scale_schedule", "train_h_div_w_list"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        unsupported = {k: getattr(self, k) for k, v in self._REQUIRED.items() if getattr(self, k) != v}
        if unsupported:
            raise FastVARError(f"unsupported Infinity argument(s) {unsupported}; fastvar implements {self._REQUIRED}")
        if self.text_channels <= 0:
            raise FastVARError("text_channels must be > 0 (fastvar implements the text-to-image Infinity)")
        if self.cross_attn_layer_scale >= 0:
            raise FastVARError("cross_attn_layer_scale >= 0 (a learnable ca_gamma) is not supported")
        if self.embed_dim % self.num_heads:
            raise FastVARError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise FastVARError(f"head dim {self.embed_dim // self.num_heads} must be a multiple of 4 (2-D RoPE)")
        pool_heads = self.text_channels // self.text_pool_head_dim
        if self.text_channels % self.text_pool_head_dim or self.embed_dim % pool_heads:
            raise FastVARError(f"text_channels {self.text_channels} must be a multiple of {self.text_pool_head_dim} "
                               f"and embed_dim divisible by its {pool_heads} pooling heads")
        if self.block_chunks < 1 or self.depth % self.block_chunks:
            raise FastVARError(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")

    @property
    def text_pool_head_dim(self) -> int:
        """``TextAttentivePool``: T5 channels per pooling head (its heads = text_channels // this)."""
        return 64 if self.embed_dim > 4096 else 128

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> InfinityConfig:
        return config_from_kwargs(cls, kwargs, "Infinity")


@dataclass
class InfinityModelSpec:
    """An Infinity release: its BSQ-VAE and transformer configs (the golden ``config.json`` layout)."""

    vae: InfinityVAEConfig
    infinity: InfinityConfig
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if bool(self.vae.apply_spatial_patchify) != bool(self.infinity.apply_spatial_patchify):
            raise FastVARError("the VAE and the transformer disagree on apply_spatial_patchify")

    def to_json(self) -> dict:
        return {"vae": {"loader_args": asdict(self.vae)}, "infinity": {"kwargs": asdict(self.infinity)}}


def _release(vae: str, depth: int, embed_dim: int, num_heads: int, block_chunks: int,
             notes: str = "") -> InfinityModelSpec:
    """``run_infinity.load_transformer`` sizes + ``load_infinity`` flags (Flan-T5-XL text, 2048 channels)."""
    vae_cfg = VAE_PRESETS[vae]
    return InfinityModelSpec(
        vae=vae_cfg,
        infinity=InfinityConfig(depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=4.0,
                                drop_path_rate=0.1, block_chunks=block_chunks,
                                apply_spatial_patchify=int(vae_cfg.apply_spatial_patchify)),
        notes=notes,
    )


CONFIGS: dict[str, InfinityModelSpec] = {
    # scripts/infer.sh: infinity_2b_reg.pth + infinity_vae_d32_reg.pth, 1M, cfg 4 (notebook: 3), tau 0.5
    "infinity-2b": _release("infinity-vae-d32", 32, 2048, 16, 8, "cfg 3-4, tau 0.5, 1024px"),
    # interactive_infer_8b.ipynb: infinity_8b_weights + infinity_vae_d56_f8_14_patchify.pth, cfg 3, tau 1.0
    "infinity-8b": _release("infinity-vae-d56", 40, 3584, 28, 8, "cfg 3, tau 1.0, 1024px (512px weights: 0.25M)"),
    # the scaling-law sizes of run_infinity.load_transformer (no released weights)
    "infinity-layer12": _release("infinity-vae-d32", 12, 768, 8, 4),
    "infinity-layer16": _release("infinity-vae-d32", 16, 1152, 12, 4),
    "infinity-layer24": _release("infinity-vae-d32", 24, 1536, 16, 4),
    "infinity-layer32": _release("infinity-vae-d32", 32, 2080, 20, 4),
    "infinity-layer40": _release("infinity-vae-d32", 40, 2688, 24, 4),
    "infinity-layer48": _release("infinity-vae-d32", 48, 3360, 28, 4),
}


def _vae_from_json(vae: dict) -> InfinityVAEConfig:
    """Golden ``vae`` entry: ``loader_args`` (minus the checkpoint path) + hard-coded namespace values changed."""
    args = {k: v for k, v in vae.get("loader_args", {}).items() if k != "vqgan_ckpt"}
    for name, (_official, value) in vae.get("hard_coded_namespace_values_changed", {}).items():
        args[name] = value
    return InfinityVAEConfig.from_kwargs(args)


def load_spec(config: str | Path | dict) -> InfinityModelSpec:
    """A registry name (``infinity-2b``), a JSON file in the golden ``config.json`` format, or that dict."""
    if isinstance(config, InfinityModelSpec):
        return config
    if isinstance(config, str) and config in CONFIGS:
        return CONFIGS[config]
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FastVARError(f"unknown Infinity config {config!r}: not one of {', '.join(CONFIGS)} nor a JSON file")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FastVARError(f"config {path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "vae" not in config or "kwargs" not in config.get("infinity", {}):
        raise FastVARError("an Infinity config JSON needs 'vae' (with 'loader_args') and 'infinity' (with 'kwargs')")
    return InfinityModelSpec(_vae_from_json(config["vae"]), InfinityConfig.from_kwargs(config["infinity"]["kwargs"]))
