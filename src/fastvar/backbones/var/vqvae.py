"""VAR's multi-scale residual VQ-VAE (tokenizer and decoder), numerically equal to the official code.

Reproduces FoundationVision/VAR ``models/vqvae.py`` (``VQVAE``), ``models/quant.py`` (``VectorQuantizer2``, ``Phi``,
``PhiShared``, ``PhiPartiallyShared``, ``PhiNonShared``) and ``models/basic_vae.py`` (``Encoder``, ``Decoder`` and their
blocks). Module and parameter names equal the official ones, so official checkpoints load 1:1; the official buffer
``quantize.ema_vocab_hit_SV`` (training statistics) is not kept. Inference only: no training losses.

The encoder/decoder blocks and :class:`MultiScaleQuantizer` take plain arguments so other tokenizers (HART) reuse them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.config import config_from_kwargs
from ...errors import FastVARError


@dataclass(frozen=True)
class VQVAEConfig:
    """Arguments of the official ``VQVAE.__init__`` plus its fixed ``ddconfig`` (encoder/decoder shape).

    Defaults are those of the official release ``vae_ch160v4096z32.pth`` (``models.build_vae_var``): the official
    constructor's own default is ``ch=128``, the release passes ``ch=160``.
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    dropout: float = 0.0
    beta: float = 0.25  # commitment loss weight (training only; kept so official kwargs round-trip)
    using_znorm: bool = False  # nearest code by cosine similarity instead of L2 distance
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  # phi(h) = (1 - quant_resi) * h + quant_resi * conv(h)
    share_quant_resi: int = 4  # 0: one phi per scale, 1: one phi for all, n: n phis shared by nearest tick
    default_qresi_counts: int = 0  # number of phis when share_quant_resi == 0 (0: one per scale)
    v_patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    test_mode: bool = True  # official: eval mode, no grad (always the case here)
    # ddconfig of the official VQVAE (latent-diffusion vq-f16)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> VQVAEConfig:
        """Build from official constructor keyword arguments (e.g. a golden ``vae_kwargs``); lists become tuples."""
        return config_from_kwargs(cls, kwargs, "VQVAE")

    @property
    def downsample(self) -> int:
        """Image pixels per latent pixel (16 for the official ch_mult)."""
        return 2 ** (len(self.ch_mult) - 1)


# ----------------------------------------------------------------------------------- encoder / decoder (basic_vae.py)


def group_norm(channels: int) -> nn.GroupNorm:
    """Official ``Normalize``: GroupNorm with 32 groups, eps 1e-6."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Official ``Upsample2x``: nearest x2 then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """Official ``Downsample2x``: zero pad right/bottom by 1 then conv3x3 stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, pad=(0, 1, 0, 1), mode="constant", value=0))


def silu(x: Tensor) -> Tensor:
    """SiLU in place on the fresh normalised map when there is no autograd (the official ``inplace=True``: the same
    floats, one activation tensor less per call)."""
    return F.silu(x, inplace=not x.requires_grad)


class ResnetBlock(nn.Module):
    """Official ``ResnetBlock``: (GroupNorm, SiLU, conv3x3) x2 plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Official ``AttnBlock``: single-head self-attention over all pixels, scale C^-0.5, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # each (B, C, HW)
        # same bmm operands and memory layouts as the official code, so the float results match bit for bit
        w = torch.bmm(q.permute(0, 2, 1).contiguous(), k.contiguous()).mul_(C**-0.5).softmax(dim=2)  # (B, HWq, HWk)
        h = torch.bmm(v.contiguous(), w.permute(0, 2, 1).contiguous())  # (B, C, HWq)
        return x + self.proj_out(h.view(B, C, H, W))


class _Level(nn.Module):
    """One resolution of the encoder (``down.i``) or decoder (``up.i``): res blocks, each followed by its attention
    block when the level has them, plus a ``downsample``/``upsample`` module that the encoder/decoder applies."""

    def __init__(self, block: list[nn.Module], attn: list[nn.Module], **resample: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(block)
        self.attn = nn.ModuleList(attn)
        for name, module in resample.items():  # named as in the official checkpoint
            self.add_module(name, module)

    def forward(self, h: Tensor) -> Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    """Official ``mid``: res block, attention (or identity), res block."""

    def __init__(self, channels: int, dropout: float, using_mid_sa: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if using_mid_sa else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Official ``Encoder`` (double_z=False): image (B, in_channels, H, W) -> latent (B, z_channels, H/2^n, W/2^n)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        z_channels: int,
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        in_channels: int = 3,
        using_sa: bool = True,
        using_mid_sa: bool = True,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        last = len(ch_mult) - 1
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block, attn = [], []
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if i == last and using_sa:
                    attn.append(AttnBlock(block_in))
            self.down.append(_Level(block, attn, **({"downsample": Downsample(block_in)} if i != last else {})))
        self.mid = _Mid(block_in, dropout, using_mid_sa)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        return self.conv_out(silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Official ``Decoder``: latent (B, z_channels, h, w) -> image (B, in_channels, h*2^n, w*2^n), not clamped."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        z_channels: int,
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        in_channels: int = 3,
        using_sa: bool = True,
        using_mid_sa: bool = True,
    ):
        super().__init__()
        last = len(ch_mult) - 1
        block_in = ch * ch_mult[last]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, dropout, using_mid_sa)
        levels = []  # built from the coarsest level; stored finest first as in the official ``up`` list
        for i in reversed(range(len(ch_mult))):
            block, attn = [], []
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, ch * ch_mult[i], dropout))
                block_in = ch * ch_mult[i]
                if i == last and using_sa:
                    attn.append(AttnBlock(block_in))
            levels.insert(0, _Level(block, attn, **({"upsample": Upsample(block_in)} if i != 0 else {})))
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(silu(self.norm_out(h)))


# ------------------------------------------------------------------------------------------- quantizer (quant.py)


class Phi(nn.Conv2d):
    """Official ``Phi``: phi(h) = (1 - r) * h + r * conv3x3(h), r = |quant_resi|."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: Tensor) -> Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class _SharedPhi(nn.Module):
    """Official ``PhiShared`` (share_quant_resi=1): checkpoint key ``quant_resi.qresi``."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi


class _PartiallySharedPhi(nn.Module):
    """Official ``PhiPartiallyShared`` (share_quant_resi>1): checkpoint keys ``quant_resi.qresi_ls.N``."""

    def __init__(self, qresi_ls: list[nn.Module]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(qresi_ls)


def nearest_tick(at: float, count: int) -> int:
    """Index of the tick nearest to ``at`` in [0, 1], as the official ``PhiPartiallyShared.__getitem__``.

    Ticks are ``np.linspace(1/3/K, 1 - 1/3/K, K)`` for K == 4, else ``np.linspace(1/2/K, 1 - 1/2/K, K)``; computed
    here with numpy's float64 arithmetic (``start + i * step``, last tick = stop) so exact ties between two ticks are
    decided by the same rounding, first index on equal distances.
    """
    start = 1 / 3 / count if count == 4 else 1 / 2 / count
    stop = 1 - start
    ticks = [start + i * ((stop - start) / (count - 1)) for i in range(count - 1)] + [stop] if count > 1 else [start]
    dist = [abs(t - at) for t in ticks]
    return dist.index(min(dist))


class MultiScaleQuantizer(nn.Module):
    """Official ``VectorQuantizer2`` (inference): residual quantization over scales with shared phi convolutions.

    ``patch_nums`` (side of the square token map of every scale, coarse to fine; the last equals the latent side)
    default to ``v_patch_nums``. Latents are (B, Cvae, h, w); token indices per scale are (B, pn*pn) row-major.
    """

    def __init__(
        self,
        vocab_size: int,
        Cvae: int,
        *,
        v_patch_nums: Sequence[int],
        using_znorm: bool = False,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        default_qresi_counts: int = 0,
    ):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm = vocab_size, Cvae, using_znorm
        self.v_patch_nums = tuple(v_patch_nums)

        def make() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            count = default_qresi_counts or len(v_patch_nums)
            self.quant_resi: nn.Module = nn.ModuleList([make() for _ in range(count)])
            self._phis = list(self.quant_resi)
        elif share_quant_resi == 1:
            self.quant_resi = _SharedPhi(make())
            self._phis = [self.quant_resi.qresi]
        else:
            self.quant_resi = _PartiallySharedPhi([make() for _ in range(share_quant_resi)])
            self._phis = list(self.quant_resi.qresi_ls)
        # self._phis: the phi modules in official index order (a plain list; they are registered under quant_resi)
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def quant_resi_index(self, si: int, num_scales: int) -> int:
        """Which phi (index into the official ``quant_resi`` list) scale ``si`` of ``num_scales`` uses."""
        if num_scales < 2:
            raise FastVARError(f"the VQ-VAE needs at least 2 scales, got {num_scales}")
        return nearest_tick(si / (num_scales - 1), len(self._phis))

    def phi(self, si: int, num_scales: int, h: Tensor) -> Tensor:
        """Apply the phi of scale ``si`` to ``h`` (B, Cvae, h, w)."""
        return self._phis[self.quant_resi_index(si, num_scales)](h)

    def embed(self, idx: Tensor) -> Tensor:
        """Codebook lookup: (B, l) int64 -> (B, l, Cvae)."""
        return self.embedding(idx)

    def code_map(self, idx: Tensor) -> Tensor:
        """Token indices (B, pn*pn) -> code map (B, Cvae, pn, pn) (a strided view, like the official code)."""
        B, l = idx.shape
        pn = round(l**0.5)
        return self.embedding(idx).transpose(1, 2).view(B, self.Cvae, pn, pn)

    def f_to_idx_and_fhat(
        self, f: Tensor, patch_nums: Sequence[int] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Official ``f_to_idxBl_or_fhat`` (both outputs): latent f (B, Cvae, H, W) -> per scale the token indices
        (B, pn*pn) int64 and the accumulated f_hat (B, Cvae, H, W)."""
        pns = tuple(patch_nums or self.v_patch_nums)
        B, C, H, W = f.shape
        if (H, W) != (pns[-1], pns[-1]):
            raise FastVARError(f"latent size {H}x{W} does not match the last patch num {pns[-1]}")
        codebook = self.embedding.weight
        f_rest, f_hat = f.clone(), torch.zeros_like(f)
        idx_list, fhat_list = [], []
        for si, pn in enumerate(pns):
            rest = f_rest if si == len(pns) - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
            z = rest.permute(0, 2, 3, 1).reshape(-1, C)  # (B*pn*pn, C), row-major over the grid
            if self.using_znorm:
                idx = torch.argmax(F.normalize(z, dim=-1) @ F.normalize(codebook.T, dim=0), dim=1)
            else:
                d = z.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)  # (B*pn*pn, V)
                idx = torch.argmin(d.addmm_(z, codebook.T, alpha=-2, beta=1), dim=1)
            h = self.embedding(idx.view(B, pn, pn)).permute(0, 3, 1, 2)  # (B, C, pn, pn)
            if si != len(pns) - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = self.phi(si, len(pns), h.contiguous())  # contiguous as official: conv floats depend on the layout
            f_hat.add_(h)
            f_rest.sub_(h)
            idx_list.append(idx.reshape(B, pn * pn))
            fhat_list.append(f_hat.clone())
        return idx_list, fhat_list

    def next_autoregressive_input(
        self, si: int, patch_nums: Sequence[int], f_hat: Tensor, h: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Official ``get_next_autoregressive_input``: add scale ``si``'s code map ``h`` (B, Cvae, pn, pn) to ``f_hat``.

        ``h`` is bicubic-upsampled to the latent size (except at the last scale), passed through phi and added.
        Returns the new f_hat (B, Cvae, H, W) (a new tensor; the argument is not modified) and f_hat area-resized to
        the next scale (B, Cvae, pn_next, pn_next), or None after the last scale. Give ``h`` the official memory
        layout (``code_map(idx)``, i.e. ``embed(idx).transpose(1, 2).reshape(B, Cvae, pn, pn)``) for bit-equal floats.
        """
        H = patch_nums[-1]
        last = si == len(patch_nums) - 1
        f_hat = f_hat + self.phi(si, len(patch_nums), h if last else F.interpolate(h, size=(H, H), mode="bicubic"))
        if last:
            return f_hat, None
        pn_next = patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")

    def idx_to_var_input(self, idx: Sequence[Tensor], patch_nums: Sequence[int] | None = None) -> Tensor:
        """Official ``idxBl_to_var_input``: teacher-forcing input (B, L - pn0^2, Cvae) from every scale's indices."""
        pns = tuple(patch_nums or self.v_patch_nums)
        B = idx[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, pns[-1], pns[-1])
        inputs = []
        for si in range(len(pns) - 1):
            f_hat, nxt = self.next_autoregressive_input(si, pns, f_hat, self.code_map(idx[si]))
            inputs.append(nxt.view(B, self.Cvae, -1).transpose(1, 2))  # (B, pn_next^2, Cvae)
        return torch.cat(inputs, dim=1)

    def idx_to_fhat(self, idx: Sequence[Tensor], patch_nums: Sequence[int] | None = None) -> Tensor:
        """Official ``embed_to_fhat(all_to_max_scale=True, last_one=True)`` of the indices: f_hat (B, Cvae, H, W)."""
        pns = tuple(patch_nums or self.v_patch_nums)
        B = idx[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, pns[-1], pns[-1])
        for si in range(len(pns)):
            f_hat, _ = self.next_autoregressive_input(si, pns, f_hat, self.code_map(idx[si]))
        return f_hat


# ------------------------------------------------------------------------------------------------- VQVAE (vqvae.py)


class VQVAE(nn.Module):
    """Official ``VQVAE``: images in [-1, 1] (B, 3, 16*pn_last, 16*pn_last) <-> multi-scale token indices."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        dd = dict(
            ch=cfg.ch, ch_mult=cfg.ch_mult, z_channels=cfg.z_channels, num_res_blocks=cfg.num_res_blocks,
            dropout=cfg.dropout, in_channels=cfg.in_channels, using_sa=cfg.using_sa, using_mid_sa=cfg.using_mid_sa,
        )  # fmt: skip
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = MultiScaleQuantizer(
            cfg.vocab_size, cfg.z_channels, v_patch_nums=cfg.v_patch_nums, using_znorm=cfg.using_znorm,
            quant_resi=cfg.quant_resi, share_quant_resi=cfg.share_quant_resi,
            default_qresi_counts=cfg.default_qresi_counts,
        )  # fmt: skip
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)

    @property
    def Cvae(self) -> int:
        return self.cfg.z_channels

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.cfg.v_patch_nums

    def img_to_f(self, img: Tensor) -> Tensor:
        """Continuous latent quant_conv(encoder(img)): (B, 3, H, W) -> (B, Cvae, H/16, W/16)."""
        return self.quant_conv(self.encoder(img))

    def img_to_idx(self, img: Tensor, patch_nums: Sequence[int] | None = None) -> list[Tensor]:
        """Official ``img_to_idxBl``: image in [-1, 1] -> token indices per scale, each (B, pn*pn) int64."""
        return self.quantize.f_to_idx_and_fhat(self.img_to_f(img), patch_nums)[0]

    def idx_to_var_input(self, idx: Sequence[Tensor], patch_nums: Sequence[int] | None = None) -> Tensor:
        """Teacher-forcing input of VAR (B, L - pn0^2, Cvae) (official ``idxBl_to_var_input``)."""
        return self.quantize.idx_to_var_input(idx, patch_nums)

    def quant_resi_index(self, si: int, num_scales: int) -> int:
        """Index of the shared phi conv used at scale ``si`` of ``num_scales`` (official nearest-tick rule)."""
        return self.quantize.quant_resi_index(si, num_scales)

    def phi(self, si: int, num_scales: int, h: Tensor) -> Tensor:
        """Apply scale ``si``'s phi to ``h`` (B, Cvae, h, w)."""
        return self.quantize.phi(si, num_scales, h)

    def next_autoregressive_input(
        self, si: int, patch_nums: Sequence[int], f_hat: Tensor, h_BChw: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Official ``get_next_autoregressive_input``; see :meth:`MultiScaleQuantizer.next_autoregressive_input`."""
        return self.quantize.next_autoregressive_input(si, patch_nums, f_hat, h_BChw)

    def embed_idx(self, idx: Tensor) -> Tensor:
        """Codebook lookup (B, l) -> (B, l, Cvae)."""
        return self.quantize.embed(idx)

    def fhat_to_img(self, f_hat: Tensor) -> Tensor:
        """Official ``fhat_to_img``: decoder(post_quant_conv(f_hat)) clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def idx_to_fhat(self, idx: Sequence[Tensor], patch_nums: Sequence[int] | None = None) -> Tensor:
        """Final accumulated latent (B, Cvae, H, W) of the indices of all scales."""
        return self.quantize.idx_to_fhat(idx, patch_nums)

    def idx_to_img(self, idx: Sequence[Tensor], patch_nums: Sequence[int] | None = None) -> Tensor:
        """Official ``idxBl_to_img(same_shape=True, last_one=True)``: image in [-1, 1] (B, 3, H, W)."""
        return self.fhat_to_img(self.idx_to_fhat(idx, patch_nums))
