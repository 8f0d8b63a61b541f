"""Infinity's BSQ multi-scale VAE (image tokenizer and decoder), numerically equal to the official code.

Reproduces FoundationVision/Infinity ``infinity/models/bsq_vae/flux_vqgan.py`` (``AutoEncoder``, ``Encoder``,
``Decoder``, ``ResnetBlock``, ``Downsample``, ``Upsample``, ``Normalize``), ``conv.py`` (``Conv``, 2-D only),
``multiscale_bsq.py`` (``MultiScaleBSQ.forward``, ``BSQ.forward``/``quantize_new``/``indices_to_codes``), the
next-scale input of ``Infinity.autoregressive_infer_cfg`` and ``bitwise_self_correction.py``
(``BitwiseSelfCorrection.flip_requant`` with noise off). Module and parameter names equal the official ones, so
official checkpoints load 1:1; the buffer ``quantizer.lfq.mask`` (and its alias ``quantize.lfq.mask``) is derived and
dropped at load. Inference only (no losses, no video/3-D convolutions, no ``cnn_attention``).

Scales are given in TOKEN grid units, as the transformer sees them. With ``apply_spatial_patchify`` (Infinity-8B) the
VAE latent of a token grid (h, w) is (2h, 2w) and a token holds the 2x2 pixel-unshuffle of its latent bits/codes
(``token_dim = 4 * codebook_dim``); otherwise latent grid = token grid and ``token_dim = codebook_dim``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.config import config_from_kwargs
from ...core.loading import build_and_load, read_state_dict
from ...errors import FastVARError

# official buffers recomputed here: BSQ's bit mask 2^(d-1..0), stored twice (``AutoEncoder.quantize = quantizer``)
DERIVED_KEYS = (r"quantizer\.lfq\.mask", r"quantize\.lfq\.mask")


@dataclass(frozen=True)
class InfinityVAEConfig:
    """Arguments of the official ``vae_model`` plus the two values its argparse namespace hard-codes.

    Defaults are ``tools/run_infinity.py load_visual_tokenizer`` for a non-patchified VAE (patch 16, ch_mult
    [1,2,4,4,4] for encoder and decoder) with ``vae_model``'s ``base_ch=128``, ``num_res_blocks=2``.
    """

    codebook_dim: int = 32
    codebook_size: int | None = None  # official: 2**codebook_dim (anything else would add projections)
    patch_size: int = 16  # image pixels per latent pixel
    encoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    base_ch: int = 128
    num_res_blocks: int = 2
    apply_spatial_patchify: bool = False  # run_infinity/Infinity flag: tokens are 2x2 latent patches
    schedule_mode: str = "dynamic"  # official default-schedule table; no effect here (schedules are explicit)
    test_mode: bool = True  # official: eval mode, no grad (always the case here)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_ch_mult", tuple(self.encoder_ch_mult))  # frozen dataclass
        object.__setattr__(self, "decoder_ch_mult", tuple(self.decoder_ch_mult))
        if self.codebook_size is None:
            object.__setattr__(self, "codebook_size", 2**self.codebook_dim)
        if self.codebook_size != 2**self.codebook_dim:
            raise FastVARError(
                f"codebook_size {self.codebook_size} must be 2**codebook_dim = {2**self.codebook_dim} "
                "(BSQ with projections is not supported)"
            )
        n_down = int(math.log2(self.patch_size))
        if 2**n_down != self.patch_size:
            raise FastVARError(f"patch_size {self.patch_size} is not a power of 2")
        for name in ("encoder_ch_mult", "decoder_ch_mult"):
            if len(getattr(self, name)) != n_down + 1:
                raise FastVARError(f"{name} {list(getattr(self, name))} needs log2(patch_size) + 1 = {n_down + 1} levels")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> InfinityVAEConfig:
        """Build from official argument names (e.g. golden ``loader_args`` without ``vqgan_ckpt``); lists -> tuples."""
        return config_from_kwargs(cls, kwargs, "Infinity VAE")

    @property
    def token_dim(self) -> int:
        """Bits per transformer token (the transformer's ``d_vae``)."""
        return 4 * self.codebook_dim if self.apply_spatial_patchify else self.codebook_dim

    @property
    def token_stride(self) -> int:
        """Image pixels per transformer token."""
        return 2 * self.patch_size if self.apply_spatial_patchify else self.patch_size


def _patchify_release(codebook_dim: int) -> InfinityVAEConfig:
    """``load_visual_tokenizer`` with ``apply_spatial_patchify=1``: patch 8, ch_mult [1,2,4,4]."""
    return InfinityVAEConfig(codebook_dim=codebook_dim, patch_size=8, encoder_ch_mult=(1, 2, 4, 4),
                             decoder_ch_mult=(1, 2, 4, 4), apply_spatial_patchify=True)


VAE_PRESETS: dict[str, InfinityVAEConfig] = {
    # load_visual_tokenizer accepts vae_type in [14, 16, 18, 20, 24, 32, 64] (codebook_dim = vae_type)
    "infinity-vae-d16": InfinityVAEConfig(codebook_dim=16),
    "infinity-vae-d24": InfinityVAEConfig(codebook_dim=24),
    "infinity-vae-d32": InfinityVAEConfig(codebook_dim=32),  # infinity_vae_d32reg.pth (Infinity-2B, vae_type=32)
    "infinity-vae-d64": InfinityVAEConfig(codebook_dim=64),
    # infinity_vae_d56_f8_14_patchify.pth (Infinity-8B: vae_type=14, apply_spatial_patchify=1 -> 4*14 = 56 bits/token)
    "infinity-vae-d56": _patchify_release(14),
}


# ----------------------------------------------------------------------------------- encoder / decoder (flux_vqgan.py)


def swish(x: Tensor) -> Tensor:
    """Official ``swish`` (x * sigmoid(x), not F.silu, to keep the rounding); without autograd the product is
    written into the sigmoid's buffer (the same floats, one full-resolution tensor less at 2048²)."""
    s = torch.sigmoid(x)
    return x * s if s.requires_grad else s.mul_(x)


NORM_CHUNKS = 8  # group chunks of an autocast GroupNorm: a float32 copy of 1/8 of a map at a time


def norm_swish(norm: Normalize, x: Tensor) -> Tensor:
    """``swish(norm(x))``. Under autocast (bf16 pipelines) as CUDA autocast runs it, GroupNorm and swish in float32
    with the result in the autocast dtype for the next convolution, but computed a few groups at a time (each group
    is normalised on its own): no float32 copy of a whole map exists, where CUDA autocast would make two (at 2048² the
    decoder's 256-channel map is 4 GiB in float32). Without autocast: exactly ``swish(norm(x))``."""
    device = x.device.type
    if x.requires_grad or not torch.is_autocast_enabled(device):
        return swish(norm(x))
    gn = norm.norm
    out = torch.empty_like(x, dtype=torch.get_autocast_dtype(device))
    per_group, groups = gn.num_channels // gn.num_groups, max(1, gn.num_groups // NORM_CHUNKS)
    with torch.autocast(device, enabled=False):
        for g in range(0, gn.num_groups, groups):
            c = slice(g * per_group, min(g + groups, gn.num_groups) * per_group)
            n = (c.stop - c.start) // per_group
            out[:, c] = swish(F.group_norm(x[:, c].float(), n, gn.weight[c].float(), gn.bias[c].float(), gn.eps))
    return out


class Conv(nn.Module):
    """Official ``conv.Conv`` with ``cnn_type='2d'``: a Conv2d under the key ``.conv``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """Official ``Normalize``: GroupNorm (32 groups if channels % 32 == 0, else 24), eps 1e-6, under ``.norm``."""

    def __init__(self, channels: int):
        super().__init__()
        groups = 32 if channels % 32 == 0 else 24 if channels % 24 == 0 else 0
        if not groups:
            raise FastVARError(f"VAE channel count {channels} is not a multiple of 32 or 24 (official GroupNorm)")
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = Normalize(cin)
        self.conv1 = Conv(cin, cout, 3, padding=1)
        self.norm2 = Normalize(cout)
        self.conv2 = Conv(cout, cout, 3, padding=1)
        self.nin_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(norm_swish(self.norm1, x))
        h = self.conv2(norm_swish(self.norm2, h))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))  # in place: the same sums


class Downsample(nn.Module):
    """Pad right/bottom by 1, then conv3x3 stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    """Nearest x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _level(blocks: list[ResnetBlock], resample: nn.Module | None, name: str) -> nn.Module:
    """One resolution level: ``.block`` (ResnetBlocks) and optionally ``.downsample``/``.upsample``."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    if resample is not None:
        setattr(level, name, resample)
    return level


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


class Encoder(nn.Module):
    """Official ``Encoder`` (2-D, no attention): image (B,3,H,W) -> latent (B, codebook_dim, H/p, W/p)."""

    def __init__(self, cfg: InfinityVAEConfig):
        super().__init__()
        ch, n_down = cfg.base_ch, int(math.log2(cfg.patch_size))
        self.conv_in = Conv(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        in_mult = (1, *cfg.encoder_ch_mult)
        for i, mult in enumerate(cfg.encoder_ch_mult):
            block_in, block_out = ch * in_mult[i], ch * mult
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out) for j in range(cfg.num_res_blocks)]
            self.down.append(_level(blocks, Downsample(block_out) if i < n_down else None, "downsample"))
        self.mid = _mid(block_out)
        self.norm_out = Normalize(block_out)
        self.conv_out = Conv(block_out, cfg.codebook_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(norm_swish(self.norm_out, h))


class Decoder(nn.Module):
    """Official ``Decoder`` (2-D, no attention, nearest upsampling): latent -> image (B,3,H,W), not clamped."""

    def __init__(self, cfg: InfinityVAEConfig):
        super().__init__()
        ch, mults, n_up = cfg.base_ch, cfg.decoder_ch_mult, int(math.log2(cfg.patch_size))
        block_in = ch * mults[-1]
        self.conv_in = Conv(cfg.codebook_dim, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        levels = []
        for i in reversed(range(len(mults))):  # built coarse -> fine, stored fine -> coarse (official insert(0, .))
            block_out = ch * mults[i]
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out) for j in range(cfg.num_res_blocks + 1)]
            block_in = block_out
            levels.insert(0, _level(blocks, Upsample(block_out) if 1 <= i <= n_up else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv(block_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(norm_swish(self.norm_out, h))


# ----------------------------------------------------------------------------------- the VAE with its BSQ quantiser


class InfinityVAE(nn.Module):
    """Official ``AutoEncoder`` (``vae_model``) with ``MultiScaleBSQ`` (no parameters: d = log2(codebook_size)).

    Bits are uint8 0/1, tokens row-major, ``(B, h*w, token_dim)`` per scale. Codes and code sums are latent-grid
    tensors ``(B, codebook_dim, H, W)``; resizes run on ``(B, d, 1, H, W)`` like the official ``trilinear``/``area``
    calls (memory layouts are kept as the official code has them, so the same interpolation kernels run).
    """

    def __init__(self, cfg: InfinityVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    # ---- helpers
    def _latent_hw(self, hw: Sequence[int]) -> tuple[int, int]:
        """Token grid (h, w) -> latent grid (x2 with spatial patchify)."""
        k = 2 if self.cfg.apply_spatial_patchify else 1
        return k * int(hw[0]), k * int(hw[1])

    @staticmethod
    def schedule_hw(scale_schedule: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """Accept (h, w) or the official (t, h, w) with t == 1; return [(h, w), ...]."""
        out = []
        for s in scale_schedule:
            if len(s) not in (2, 3) or (len(s) == 3 and s[0] != 1):
                raise FastVARError(f"scale {tuple(s)} is neither (h, w) nor (1, h, w)")
            out.append((int(s[-2]), int(s[-1])))
        if not out:
            raise FastVARError("empty scale schedule")
        return out

    def _tokens_of_bits(self, bits: Tensor) -> Tensor:
        """Latent bits (B, H, W, d) -> tokens (B, h*w, token_dim) (flip_requant's gt_ms_idx_Bl layout)."""
        B = bits.shape[0]
        if self.cfg.apply_spatial_patchify:
            bits = F.pixel_unshuffle(bits.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # (B, H/2, W/2, 4d)
        return bits.reshape(B, -1, self.cfg.token_dim).contiguous()

    def _bsq(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``BSQ.forward`` (new_quant): (B,d,1,h,w) -> (quantized (B,d,1,h,w), bits (B,h,w,d) uint8)."""
        B, d, _, h, w = x.shape
        z = F.normalize(x.permute(0, 2, 3, 4, 1).reshape(B, -1, d), dim=-1)  # (B, h*w, d), contiguous copy
        zhat = torch.where(z > 0, torch.ones((), dtype=z.dtype), -torch.ones((), dtype=z.dtype)) * (1.0 / d**0.5)
        quantized = z + (zhat - z).detach()  # official straight-through estimator: not bitwise equal to zhat
        bits = (quantized > 0).to(torch.uint8).reshape(B, h, w, d)
        return quantized.reshape(B, 1, h, w, d).permute(0, 4, 1, 2, 3), bits  # (B, d, 1, h, w) channels-last view

    # ---- encoding
    def encode_raw(self, img: Tensor) -> Tensor:
        """``AutoEncoder.encode_for_raw_features``: image (B,3,H,W) in [-1,1] -> raw latent (B, d, H/p, W/p)."""
        s = self.cfg.token_stride
        if img.ndim != 4 or img.shape[1] != 3 or img.shape[2] % s or img.shape[3] % s:
            raise FastVARError(f"VAE input must be (B, 3, H, W) with H, W multiples of {s}; got {tuple(img.shape)}")
        return self.encoder(img)

    def quantize(self, raw: Tensor, scale_schedule: Sequence[Sequence[int]]) -> tuple[list[Tensor], Tensor]:
        """``MultiScaleBSQ.forward``: raw latent -> (bits per scale (B, h*w, token_dim), z_quantized (B,d,H,W)).

        Per scale: area-resize the residual (not at the full size), L2-normalise each d-vector, quantise to
        sign/sqrt(d), upsample the codes back trilinearly, subtract them from the residual and add them to z.
        """
        schedule = self.schedule_hw(scale_schedule)
        H, W = raw.shape[-2:]
        if self._latent_hw(schedule[-1]) != (H, W):
            raise FastVARError(f"last scale {schedule[-1]} does not match the VAE latent grid {(H, W)}")
        residual = raw.unsqueeze(2)  # (B, d, 1, H, W)
        z_q: Tensor | float = 0.0
        bits = []
        for hw in schedule:
            size = (1, *self._latent_hw(hw))
            full = size == (1, H, W)
            quantized, b = self._bsq(residual if full else F.interpolate(residual, size=size, mode="area"))
            if not full:
                quantized = F.interpolate(quantized, size=(1, H, W), mode="trilinear").contiguous()
            residual = residual - quantized
            z_q = z_q + quantized
            bits.append(self._tokens_of_bits(b))
        return bits, z_q.squeeze(2).contiguous()

    def encode_bits(self, img: Tensor, scale_schedule: Sequence[Sequence[int]]) -> tuple[list[Tensor], Tensor]:
        """``AutoEncoder.encode``: image -> (bits per scale (B, h*w, token_dim) uint8, raw latent (B, d, H, W))."""
        raw = self.encode_raw(img)
        return self.quantize(raw, scale_schedule)[0], raw

    # ---- codes, resizes, teacher forcing
    def bits_to_codes(self, bits: Tensor, hw: Sequence[int] | None = None) -> Tensor:
        """``BSQ.indices_to_codes(label_type='bit_label')``: tokens' bits -> codes (B, d, H, W) on the latent grid.

        ``bits``: (B, h, w, token_dim), or (B, h*w, token_dim) with ``hw`` given. Bit -> (2b-1)/sqrt(d), then each
        d-vector is L2-normalised. With spatial patchify the tokens are pixel-shuffled back to (2h, 2w) first.
        """
        if bits.ndim == 3:
            if hw is None:
                raise FastVARError("bits_to_codes needs hw=(h, w) for flattened (B, h*w, d) bits")
            bits = bits.reshape(bits.shape[0], int(hw[0]), int(hw[1]), bits.shape[-1])
        bits = bits.contiguous()  # as the AR loop's sampled bits (the layout decides later kernels)
        if bits.shape[-1] != self.cfg.token_dim:
            raise FastVARError(f"bits have {bits.shape[-1]} channels, the VAE expects {self.cfg.token_dim}")
        if self.cfg.apply_spatial_patchify:
            bits = F.pixel_shuffle(bits.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # (B, 2h, 2w, d)
        B, H, W, d = bits.shape
        scale = 1.0 / math.sqrt(d)
        # the official shape (B, 1, H, W, 1, d): it decides the memory layout of the result, hence later kernels
        codes = F.normalize(bits[:, None, :, :, None, :].float() * scale * 2 - scale, dim=-1)
        return codes.reshape(B, H, W, d).permute(0, 3, 1, 2)  # (B, d, H, W)

    def upsample_codes(self, codes: Tensor, size: Sequence[int]) -> Tensor:
        """Codes (B,d,h,w) -> latent grid of token grid ``size`` (the official trilinear on (B,d,1,h,w))."""
        out = F.interpolate(codes.unsqueeze(2), size=(1, *self._latent_hw(size)), mode="trilinear")
        return out.squeeze(2)

    def next_scale_input(self, summed_codes: Tensor, size: Sequence[int]) -> Tensor:
        """Running code sum (B,d,H,W) -> next scale's input (B, token_dim, h, w): trilinear resize (+ patchify)."""
        x = F.interpolate(summed_codes.unsqueeze(2), size=(1, *self._latent_hw(size)), mode="trilinear").squeeze(2)
        return F.pixel_unshuffle(x, 2) if self.cfg.apply_spatial_patchify else x

    def teacher_forcing_input(self, bits: Sequence[Tensor], scale_schedule: Sequence[Sequence[int]]) -> Tensor:
        """``BitwiseSelfCorrection.flip_requant`` with noise off: (B, L - h0*w0, token_dim) inputs of scales 2..K.

        Codes are rebuilt from ``bits`` (as the AR loop does); flip_requant uses the quantiser's own codes, which
        differ from these in the last float bit.
        """
        schedule = self.schedule_hw(scale_schedule)
        if len(bits) != len(schedule):
            raise FastVARError(f"{len(bits)} bit tensors for a schedule of {len(schedule)} scales")
        cum: Tensor | float = 0.0
        inputs = []
        for si, (b, hw) in enumerate(zip(bits, schedule)):
            cum = cum + self.upsample_codes(self.bits_to_codes(b, hw), schedule[-1]).contiguous()
            if si < len(schedule) - 1:
                x = self.next_scale_input(cum, schedule[si + 1])
                inputs.append(x.flatten(2).transpose(1, 2))  # (B, h*w, token_dim)
        return torch.cat(inputs, dim=1)

    # ---- decoding
    def decode(self, summed_codes: Tensor) -> Tensor:
        """``AutoEncoder.decode``: latent (B, d, H, W) -> image (B, 3, H*p, W*p) clamped to [-1, 1]."""
        return self.decoder(summed_codes).clamp(-1, 1)


def load_infinity_vae(
    path: str | Path,
    cfg: InfinityVAEConfig | str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InfinityVAE:
    """Read an official VAE checkpoint (``{'vae': state_dict}`` or a bare state_dict) and load it strictly."""
    if isinstance(cfg, str):
        if cfg not in VAE_PRESETS:
            raise FastVARError(f"unknown Infinity VAE preset {cfg!r}; known: {', '.join(VAE_PRESETS)}")
        cfg = VAE_PRESETS[cfg]
    sd = read_state_dict(path, what="Infinity VAE", unwrap=("vae",))
    hint = f"expected an Infinity BSQ-VAE with codebook_dim={cfg.codebook_dim}, base_ch={cfg.base_ch}, patch_size={cfg.patch_size}"
    return build_and_load(lambda: InfinityVAE(cfg), sd, what="Infinity VAE", derived=DERIVED_KEYS, hint=hint,
                          device=device, dtype=dtype)
