"""The Infinity text-to-image transformer (FoundationVision/Infinity ``infinity/models/infinity.py`` + ``basic.py``).

Module names equal the official checkpoint keys (blocks under ``block_chunks.<k>.module.<j>`` when
``block_chunks > 1``, else ``blocks.<i>``); the zero key-bias buffers are derived. Reads top to bottom: RoPE ->
attention over text -> self-attention -> block -> text pooling -> the model, which implements the next-scale
protocol of ``fastvar.core.loop`` (``scale_input``/``sample``/``update``) and a teacher-forced ``forward``.

Numerics follow the official float32 path, including its one reduced-precision step: cross-attention (blocks and
text pooling) rounds q and k/v to bfloat16 and returns a bfloat16 result (``flash_attn_varlen_kvpacked_func``).
With bfloat16 block weights (the official ``--bf16 1``) linear layers run in bfloat16 while norms, RoPE, AdaLN and
the residual stream stay float32, as under the official autocast.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.attention import attend, qkv_heads
from ...core.context import GenerationContext
from ...core.sampling import sample_top_k_top_p
from ...errors import FastVARError
from ..common import FFN, AdaLNBeforeHead, RMSNorm, SharedAdaLin, weight_dtype_linear
from .config import InfinityConfig
from .text import TextCondition
from .vae import InfinityVAE

MAX_SCALE_MUL = math.log(100)  # cosine-attention temperature clamp
NUM_LEVELS = 15  # rows of lvl_embed


def ada_layer_norm(x: torch.Tensor, eps: float, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``fused_op.fused_ada_layer_norm``: LN(x) * (1 + scale) + shift in float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).mul(scale.add(1)).add_(shift)


def per_step(value: float | Sequence[float], steps: int, name: str) -> tuple[float, ...]:
    """One value for every scale step, or exactly one per step (official ``cfg_list``/``tau_list``)."""
    values = (value,) * steps if isinstance(value, (int, float)) else tuple(value)
    if len(values) != steps or not all(isinstance(v, (int, float)) for v in values):
        raise FastVARError(f"{name} must be a number or a list of {steps} numbers (one per scale step), got {value!r}")
    return tuple(float(v) for v in values)


# ----------------------------------------------------------------------------------------------------- 2-D RoPE


class Rope2D:
    """cos/sin rows of every token of a schedule (``precompute_rope2d_freqs_grid``, ``rope2d_normalized_by_hw=2``).

    Token (r, c) of a (h, w) scale sits at (round(r*H/h), round(c*W/w)) on the (H, W) grid of its template's last
    1M scale; pair p < hd/4 of a head vector rotates by row*inv_freq[p], the rest by col*inv_freq[p - hd/4].
    """

    def __init__(self, scales: Sequence[tuple[int, int]], grid: tuple[int, int], head_dim: int, device: torch.device,
                 base: float = 10000.0):
        half = head_dim // 2
        inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))  # (hd/4,)
        uph, upw = grid
        pos = []
        for h, w in scales:
            pos.append(torch.stack([
                (torch.arange(h) * (uph / h)).reshape(h, 1).expand(h, w),
                (torch.arange(w) * (upw / w)).reshape(1, w).expand(h, w),
            ], dim=-1).round().int().reshape(-1, 2))  # (h*w, 2) row, col
        self.positions = torch.cat(pos)  # (L, 2)
        rows, cols = self.positions.float().unbind(-1)
        angle = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # (L, hd/2)
        self.cos, self.sin = angle.cos().to(device), angle.sin().to(device)

    def rows(self, ctx: GenerationContext, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for the L query tokens of this call, shaped to broadcast over (B, H, L, hd/2)."""
        if ctx.attn_mask is not None:  # teacher forcing: the whole sequence
            return self.cos[None, None, :L], self.sin[None, None, :L]
        if ctx.keep_idx is not None:  # pruned branch: each kept token at its original position, per batch row
            idx = ctx.token_offset + ctx.keep_idx  # (B, K)
            return self.cos[idx].unsqueeze(1), self.sin[idx].unsqueeze(1)
        off = ctx.token_offset
        return self.cos[None, None, off:off + L], self.sin[None, None, off:off + L]


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``apply_rotary_emb``: rotate interleaved pairs (2p, 2p+1) of (B, H, L, hd) q and k."""
    qk = torch.stack((q, k), dim=0)
    qk = qk.reshape(*qk.shape[:-1], -1, 2)  # (2, B, H, L, hd/2, 2)
    x0, x1 = qk[..., 0], qk[..., 1]
    qk = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return qk.reshape(*qk.shape[:-2], -1).unbind(0)  # 2 x (B, H, L, hd)


# --------------------------------------------------------------------------------------- attention over text


class PackedText:
    """Per-row variable-length keys: ``lens[i]`` packed rows per batch row, gathered into a padded layout + mask."""

    def __init__(self, lens: Sequence[int], device: torch.device):
        self.lens = list(lens)
        lens_t = torch.tensor(self.lens, device=device)
        starts = lens_t.cumsum(0) - lens_t
        ar = torch.arange(max(self.lens), device=device)
        valid = ar[None, :] < lens_t[:, None]  # (B, Lmax)
        self.index = torch.where(valid, starts[:, None] + ar[None, :], 0)  # (B, Lmax) row of each key
        self.mask = valid[:, None, None, :]  # (B, 1, 1, Lmax) broadcast over heads and queries

    def first(self, rows: int) -> PackedText:
        """The layout of the first ``rows`` prompts (the conditional ones): ``PackedText(lens[:rows])``, sliced on the
        device instead of built from the lengths, so no host-to-device copy synchronises the generation loop."""
        width = max(self.lens[:rows])
        text = copy.copy(self)
        text.lens, text.index, text.mask = self.lens[:rows], self.index[:rows, :width], self.mask[:rows, ..., :width]
        return text

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, Lmax, ...)."""
        return packed[self.index]


def text_attention(q: torch.Tensor, kv: torch.Tensor, text: PackedText, scale: float) -> torch.Tensor:
    """``flash_attn_varlen_kvpacked_func`` on float32 inputs: q (B, Lq, H, hd), packed kv (N, 2, H, hd).

    The official code casts q and kv to bfloat16 and gets a bfloat16 result; the softmax attention itself is
    computed in float32 on those values here. Returns (B, Lq, H*hd) bfloat16.
    """
    B, Lq, H, hd = q.shape
    k, v = text.pad(kv).unbind(2)  # each (B, Lmax, H, hd)
    bf16 = lambda t: t.to(torch.bfloat16).float().transpose(1, 2)  # noqa: E731  (B, H, *, hd)
    out = F.scaled_dot_product_attention(bf16(q), bf16(k), bf16(v), attn_mask=text.mask, scale=scale)
    return out.to(torch.bfloat16).transpose(1, 2).reshape(B, Lq, H * hd)


class CrossAttention(nn.Module):
    """Queries of the image tokens (or a learned query for pooling) attend to the row's own prompt."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int, for_attn_pool: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.scale = 1 / math.sqrt(self.head_dim)
        if for_attn_pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(embed_dim, embed_dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor | None, kv_compact: torch.Tensor, text: PackedText) -> torch.Tensor:
        """x (B, L, C) (None for pooling) and packed text (N, kv_dim) -> (B, L, C) (B, 1, C for pooling)."""
        w = self.mat_kv.weight
        bias = torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        kv = F.linear(kv_compact.to(w.dtype), w, bias).view(-1, 2, self.num_heads, self.head_dim)  # (N, 2, H, hd)
        if isinstance(self.mat_q, nn.Parameter):
            q = self.mat_q.expand(len(text.lens), -1, -1).unsqueeze(1)  # (B, 1, H, hd)
        else:
            B, L, _ = x.shape
            q = weight_dtype_linear(x, self.mat_q).view(B, L, self.num_heads, self.head_dim)
        return weight_dtype_linear(text_attention(q, kv, text, self.scale), self.proj)


class TextAttentivePool(nn.Module):
    """Pooled prompt vector (``cond_BD``): a learned query attends to each prompt's T5 features."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        heads = cfg.text_channels // cfg.text_pool_head_dim
        self.ca = CrossAttention(cfg.embed_dim, cfg.text_channels, heads, for_attn_pool=True)

    def forward(self, kv_compact: torch.Tensor, text: PackedText) -> torch.Tensor:
        return self.ca(None, kv_compact, text).squeeze(1)  # (B, C)


# ------------------------------------------------------------------------------------------ the transformer block


class SelfAttention(nn.Module):
    """Cosine attention (q, k L2-normalised, q scaled by exp(min(scale_mul, log 100)), softmax scale 1), q/v biases,
    2-D RoPE after the normalisation, KV cache over the coarser scales (or a full mask in teacher forcing)."""

    def __init__(self, layer: int, embed_dim: int, num_heads: int):
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, num_heads, embed_dim // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, state: InfinityState, ctx: GenerationContext) -> torch.Tensor:
        q, k, v = qkv_heads(x, self.mat_qkv.weight, self.q_bias, self.v_bias, self.num_heads)  # each (B, H, L, hd)
        scale_mul = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
        q = F.normalize(q.float(), dim=-1, eps=1e-12).mul(scale_mul)
        k = F.normalize(k.float(), dim=-1, eps=1e-12)
        q, k = apply_rope(q, k, *state.rope.rows(ctx, x.shape[1]))
        return weight_dtype_linear(attend(q.to(v.dtype), k.to(v.dtype), v, ctx, self.layer, scale=1.0), self.proj)


class CrossAttnBlock(nn.Module):
    """``CrossAttnBlock`` (fused-norm branch): AdaLN self-attention, cross-attention to the prompt, AdaLN FFN.

    Shared AdaLN: (gamma1, gamma2, scale1, scale2, shift1, shift2) = ada_gss + shared_ada_lin(cond); the
    cross-attention branch is ungated and uses its own affine LayerNorm ``ca_norm``.
    """

    def __init__(self, layer: int, cfg: InfinityConfig):
        super().__init__()
        C = cfg.embed_dim
        self.layer, self.eps = layer, cfg.norm_eps
        self.sa = SelfAttention(layer, C, cfg.num_heads)
        self.ca = CrossAttention(C, C, cfg.num_heads)
        self.ffn = FFN(C, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))

    def _ca_norm(self, x: torch.Tensor) -> torch.Tensor:
        n = self.ca_norm
        return F.layer_norm(x.float(), n.normalized_shape, n.weight.float(), n.bias.float(), n.eps)

    def forward(self, x: torch.Tensor, state: InfinityState, ctx: GenerationContext) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + state.ada_cond).unbind(2)  # each (B, 1, C)
        sa = lambda z: self.sa(ada_layer_norm(z, self.eps, scale1, shift1), state, ctx).mul_(gamma1)  # noqa: E731
        ca = lambda z: self.ca(self._ca_norm(z), state.ca_kv, state.text).float()  # noqa: E731
        ffn = lambda z: self.ffn(ada_layer_norm(z, self.eps, scale2, shift2)).mul(gamma2)  # noqa: E731
        x = x + ctx.branch(self.layer, "sa", sa, x)
        x = x + ctx.branch(self.layer, "ca", ca, x)
        return x + ctx.branch(self.layer, "ffn", ffn, x)


class MultipleLayers(nn.Module):
    """One ``block_chunks`` entry (only its key layout matters: ``block_chunks.<k>.module.<j>``)."""

    def __init__(self, blocks: Sequence[CrossAttnBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


# ------------------------------------------------------------------------------------------------------ the model


@dataclass
class InfinityState:
    """Per-call state of an Infinity generation: B images, ``rows`` = 2B transformer rows with CFG (cond, uncond)."""

    B: int
    rows: int
    cond_BD: torch.Tensor  # (rows, C) pooled prompts: AdaLN condition of the head; <sos> = cond_BD + pos_start
    ada_cond: torch.Tensor  # (rows, 1, 6, C) shared_ada_lin(cond_BD)
    ca_kv: torch.Tensor  # (N, C) packed text keys/values source of every cross-attention
    text: PackedText
    rope: Rope2D
    cfg: Sequence[float]  # guidance weight per scale step (official cfg_list)
    tau: Sequence[float]  # logit temperature per scale step (official tau_list)
    top_k: int
    top_p: float
    force_bits: Sequence[torch.Tensor] | None = None  # official gt_leak/gt_ls_Bl: bits that replace the samples
    summed_codes: torch.Tensor | None = None  # (B, d, H, W) running sum of upsampled codes on the last latent grid

    @property
    def unguided_tail(self) -> int:
        """Trailing steps whose cfg is 1: they need no unconditional rows (the loop's ``cfg_off_last``)."""
        return next((i for i, c in enumerate(reversed(self.cfg)) if c != 1), len(self.cfg))


class Infinity(nn.Module):
    def __init__(self, cfg: InfinityConfig, vae: InfinityVAE):
        super().__init__()
        self.cfg = cfg
        self.vae = (vae,)  # not a submodule: the VAE has its own checkpoint
        C, Ct5 = cfg.embed_dim, cfg.text_channels
        self.d_vae = vae.cfg.token_dim
        if bool(vae.cfg.apply_spatial_patchify) != bool(cfg.apply_spatial_patchify):
            raise FastVARError("the VAE and the transformer disagree on apply_spatial_patchify")
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, Ct5))
        self.text_norm = RMSNorm(Ct5, cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(cfg)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.lvl_embed = nn.Embedding(NUM_LEVELS, C)
        self.word_embed = nn.Linear(self.d_vae, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C))
        blocks = [CrossAttnBlock(i, cfg) for i in range(cfg.depth)]
        if cfg.block_chunks > 1:
            n = cfg.depth // cfg.block_chunks
            self.block_chunks = nn.ModuleList(MultipleLayers(blocks[i:i + n]) for i in range(0, cfg.depth, n))
            self.blocks = blocks  # plain list: the same modules, registered once under block_chunks
        else:
            self.blocks = nn.ModuleList(blocks)
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, 2 * self.d_vae)  # bit labels: (bit=0, bit=1) logits per bit

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """``get_logits``: AdaLN + linear head in float32 -> (B, l, 2d)."""
        return self.head(self.head_nm(x.float(), cond_BD.float()))

    # ---- next-scale protocol -------------------------------------------------------------------------------
    def prepare(self, text: TextCondition, scales: Sequence[tuple[int, int]], grid: tuple[int, int], *,
                negative: TextCondition | None = None, cfg: float | Sequence[float] = 3.0,
                tau: float | Sequence[float] = 0.5, top_k: int = 900, top_p: float = 0.97,
                force_bits: Sequence[torch.Tensor] | None = None) -> InfinityState:
        """Text conditioning of ``autoregressive_infer_cfg``: when some step's cfg != 1 the unconditional rows are
        ``cfg_uncond[:len_i]`` per prompt (or the negative prompts), appended after the conditional ones. ``cfg`` and
        ``tau``: one value, or one per scale step (the official ``cfg_list``/``tau_list``)."""
        device = self.pos_start.device
        B, kv, lens = len(text), text.features.to(device=device, dtype=torch.float32), list(text.lens)
        if kv.shape[1] != self.cfg.text_channels:
            raise FastVARError(f"text features have {kv.shape[1]} channels, the model expects {self.cfg.text_channels}")
        if max(lens) > self.cfg.text_maxlen:
            raise FastVARError(f"prompt of {max(lens)} tokens exceeds text_maxlen {self.cfg.text_maxlen}")
        cfg, tau = per_step(cfg, len(scales), "cfg"), per_step(tau, len(scales), "tau")
        if any(c != 1 for c in cfg):
            if negative is None:
                uncond = torch.cat([self.cfg_uncond[:n] for n in lens])
                negative = TextCondition(uncond, lens)
            if len(negative) != B:
                raise FastVARError(f"{len(negative)} negative prompts for {B} prompts")
            kv = torch.cat((kv, negative.features.to(device=device, dtype=torch.float32)))
            lens = lens + list(negative.lens)
        packed = PackedText(lens, device)
        kv = self.text_norm(kv)
        cond_BD = self.text_proj_for_sos(kv, packed).float()
        return InfinityState(
            B=B, rows=len(lens), cond_BD=cond_BD, ada_cond=self.shared_ada_lin(cond_BD).float(),
            ca_kv=self.text_proj_for_ca(kv), text=packed,
            rope=Rope2D(scales, grid, self.cfg.embed_dim // self.cfg.num_heads, device),
            cfg=cfg, tau=tau, top_k=top_k, top_p=top_p, force_bits=force_bits,
        )

    def scale_input(self, state: InfinityState, ctx: GenerationContext) -> torch.Tensor:
        """<sos> (cond_BD + pos_start) at step 0, else word_embed of the resized code sum; + lvl_embed[si]."""
        si = ctx.si
        if si == 0:
            x = state.cond_BD.unsqueeze(1) + self.pos_start  # (rows, 1, C)
        else:
            tokens = self.vae[0].next_scale_input(state.summed_codes, ctx.hw).flatten(2).transpose(1, 2)  # (B, l, d)
            x = self.word_embed(tokens).repeat(state.rows // state.B, 1, 1)  # both CFG halves see the same input
        return x + self.lvl_embed.weight[si]

    def drop_guidance(self, state: InfinityState) -> None:
        B = state.B
        if state.rows > B:
            state.ca_kv, state.text = state.ca_kv[: sum(state.text.lens[:B])], state.text.first(B)
            state.cond_BD, state.ada_cond, state.rows = state.cond_BD[:B], state.ada_cond[:B], B

    def guided_logits(self, x: torch.Tensor, state: InfinityState, si: int) -> torch.Tensor:
        """Tau-scaled logits, CFG-combined on the logits (``cfg_insertion_layer=[0]``): (B, l, 2d). A step whose
        cfg is 1 takes the conditional rows' logits alone, as the official code does."""
        B, cfg, tau = state.B, state.cfg[si], state.tau[si]
        if state.rows == B or cfg == 1:
            return self.logits(x[:B], state.cond_BD[:B]).mul(1 / tau)
        logits = self.logits(x, state.cond_BD).mul(1 / tau)
        return cfg * logits[:B] + (1 - cfg) * logits[B:]

    def sample(self, x: torch.Tensor, state: InfinityState, ctx: GenerationContext) -> torch.Tensor:
        """One multinomial draw per bit over (bit=0, bit=1) after top-k/top-p: bits (B, l, d) uint8."""
        logits = self.guided_logits(x, state, ctx.si)
        B, l, _ = logits.shape
        bits = sample_top_k_top_p(logits.reshape(B, l * self.d_vae, 2), state.top_k, state.top_p, ctx.generator)
        if state.force_bits is not None and ctx.si < len(state.force_bits):
            return state.force_bits[ctx.si].to(device=bits.device, dtype=torch.uint8).reshape(B, l, self.d_vae)
        return bits.view(B, l, self.d_vae).to(torch.uint8)

    def update(self, state: InfinityState, tokens: torch.Tensor, ctx: GenerationContext) -> None:
        """Codes of the bits, upsampled (trilinear) to the last scale's latent grid, added to the running sum."""
        vae = self.vae[0]
        codes = vae.bits_to_codes(tokens, ctx.hw)
        if ctx.si != len(ctx.scales) - 1:
            codes = vae.upsample_codes(codes, ctx.scales[-1])
        state.summed_codes = codes if state.summed_codes is None else state.summed_codes.add_(codes)

    # ---- teacher forcing (training-style forward, used to check numerics) -----------------------------------
    @torch.inference_mode()
    def forward(self, text: TextCondition, x_BLC_wo_prefix: torch.Tensor, scales: Sequence[tuple[int, int]],
                grid: tuple[int, int]) -> torch.Tensor:
        """Logits (B, L, 2d) of every position given the next-scale inputs of scales 2..K (``Infinity.forward``
        in eval mode without condition dropout). The official zero padding to a multiple of 128 is omitted: padded
        positions are invisible to real ones."""
        return self.teacher_forced_logits(text, x_BLC_wo_prefix, scales, grid)

    def teacher_forced_logits(self, text: TextCondition, x_BLC_wo_prefix: torch.Tensor,
                              scales: Sequence[tuple[int, int]], grid: tuple[int, int]) -> torch.Tensor:
        """``forward`` with autograd enabled (training, e.g. ``fastvar.demo.train``); condition dropout is the
        caller's: replace a row's text features by ``cfg_uncond[:len]``."""
        state = self.prepare(text, scales, grid, cfg=1.0)
        sos = state.cond_BD.unsqueeze(1) + self.pos_start
        x = torch.cat((sos, self.word_embed(x_BLC_wo_prefix.float())), dim=1)
        levels = torch.cat([torch.full((h * w,), i) for i, (h, w) in enumerate(scales)]).to(x.device)
        x = x + self.lvl_embed(levels)
        ctx = GenerationContext(scales)
        ctx.attn_mask = levels[:, None] >= levels[None, :]  # (L, L) block-causal: True = visible
        for block in self.blocks:
            x = block(x, state, ctx)
        return self.logits(x, state.cond_BD)
