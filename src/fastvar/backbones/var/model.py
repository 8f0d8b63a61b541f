"""The VAR class-conditional transformer (FoundationVision/VAR ``models/var.py`` + ``models/basic_var.py``).

Module names equal the official checkpoint keys. Reads top to bottom: attention -> FFN -> AdaLN block -> head ->
the model, which implements the next-scale protocol of ``fastvar.core.loop`` (``scale_input``/``sample``/``update``)
and a teacher-forced ``forward`` used to check numerics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.attention import attend, qkv_heads
from ...core.context import GenerationContext
from ...core.sampling import gumbel_softmax, sample_top_k_top_p
from ..common import FFN, AdaLNBeforeHead, SharedAdaLin
from .config import VARConfig
from .vqvae import VQVAE


class SelfAttention(nn.Module):
    """Multi-head attention with VAR's optional cosine attention (``attn_l2_norm``): q, k L2-normalised per head,
    q scaled by exp(min(scale_mul, log 100)), softmax scale 1. q/v biases; k has none."""

    def __init__(self, layer: int, embed_dim: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, ctx: GenerationContext) -> torch.Tensor:
        q, k, v = qkv_heads(x, self.mat_qkv.weight, self.q_bias, self.v_bias, self.num_heads)  # each (B, H, L, hd)
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        return self.proj(attend(q, k, v, ctx, self.layer, self.scale))


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block; AdaLN gives (gamma1, gamma2, scale1, scale2, shift1, shift2) from the class condition."""

    def __init__(self, layer: int, cfg: VARConfig):
        super().__init__()
        C = cfg.embed_dim
        self.layer, self.C, self.eps, self.shared_aln = layer, C, cfg.norm_eps, cfg.shared_aln
        self.attn = SelfAttention(layer, C, cfg.num_heads, cfg.attn_l2_norm)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def norm(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.C,), eps=self.eps).mul(scale.add(1)).add_(shift)

    def forward(self, x: torch.Tensor, state: VARState, ctx: GenerationContext) -> torch.Tensor:
        if self.shared_aln:
            ada = self.ada_gss + state.ada_cond  # (B, 1, 6, C)
        else:
            ada = self.ada_lin(state.ada_cond).view(-1, 1, 6, self.C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)  # each (B, 1, C)
        x = x + ctx.branch(self.layer, "attn", lambda z: self.attn(self.norm(z, scale1, shift1), ctx).mul_(gamma1), x)
        x = x + ctx.branch(self.layer, "ffn", lambda z: self.ffn(self.norm(z, scale2, shift2)).mul(gamma2), x)
        return x


@dataclass
class VARState:
    """Per-call state of a VAR generation (B images, CFG-doubled to 2B rows in the transformer)."""

    B: int
    cond_BD: torch.Tensor  # (2B, C) class embeddings: conditional rows, then unconditional
    ada_cond: torch.Tensor  # what the blocks' AdaLN reads (shared_ada_lin(cond) for shared AdaLN)
    f_hat: torch.Tensor  # (B, Cvae, pn_last, pn_last) accumulated latent
    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool
    step_embedding: torch.Tensor | None = None  # (B, l, Cvae) codebook vectors of the last sampled step
    lvl_pos: torch.Tensor | None = None  # (1, L, C) level + position embedding, made once (no per-step host copy)

    @property
    def rows(self) -> int:
        """Transformer rows: 2B while guided, B after ``drop_guidance``."""
        return self.cond_BD.shape[0]


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig, vae: VQVAE):
        super().__init__()
        self.cfg = cfg
        self.vae = (vae,)  # not a submodule: the VAE has its own checkpoint
        C, self.Cvae, self.V = cfg.embed_dim, vae.cfg.z_channels, vae.cfg.vocab_size
        self.patch_nums = cfg.patch_nums
        self.first_l = cfg.patch_nums[0] ** 2
        self.word_embed = nn.Linear(self.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, sum(pn * pn for pn in cfg.patch_nums), C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList(AdaLNSelfAttn(i, cfg) for i in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)

    @property
    def scales(self) -> list[tuple[int, int]]:
        return [(pn, pn) for pn in self.patch_nums]

    def lvl_pos(self) -> torch.Tensor:
        """(1, L, C) level + position embedding of every token."""
        levels = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).to(self.pos_1LC.device)
        return self.lvl_embed(levels).unsqueeze(0) + self.pos_1LC

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(x, cond_BD)).float()

    # ---- next-scale protocol -------------------------------------------------------------------------------
    def prepare(self, labels: torch.Tensor, *, cfg: float, top_k: int, top_p: float, more_smooth: bool) -> VARState:
        B = labels.shape[0]
        cond_BD = self.class_emb(torch.cat((labels, torch.full_like(labels, self.cfg.num_classes))))
        pn = self.patch_nums[-1]
        return VARState(B=B, cond_BD=cond_BD, ada_cond=self.shared_ada_lin(cond_BD),
                        f_hat=torch.zeros(B, self.Cvae, pn, pn, device=cond_BD.device), cfg=cfg, top_k=top_k, top_p=top_p,
                        more_smooth=more_smooth, lvl_pos=self.lvl_pos())

    def scale_input(self, state: VARState, ctx: GenerationContext) -> torch.Tensor:
        si, off = ctx.si, ctx.token_offset
        pn = self.patch_nums[si]
        lvl_pos = state.lvl_pos[:, off:off + pn * pn]
        if si == 0:  # start token: class embedding + pos_start
            B2 = state.cond_BD.shape[0]
            return state.cond_BD.unsqueeze(1).expand(B2, self.first_l, -1) + self.pos_start.expand(B2, -1, -1) + lvl_pos
        tokens = F.interpolate(state.f_hat, size=(pn, pn), mode="area").view(state.B, self.Cvae, -1).transpose(1, 2)
        x = self.word_embed(tokens.to(lvl_pos.dtype)) + lvl_pos
        return x.repeat(state.rows // state.B, 1, 1)  # both CFG halves see the same input

    def drop_guidance(self, state: VARState) -> None:
        state.cond_BD, state.ada_cond = state.cond_BD[: state.B], state.ada_cond[: state.B]

    def sample(self, x: torch.Tensor, state: VARState, ctx: GenerationContext) -> torch.Tensor:
        B, ratio = state.B, ctx.si / (len(self.patch_nums) - 1)
        logits = self.logits(x, state.cond_BD)
        if state.rows > B:
            t = state.cfg * ratio
            logits = (1 + t) * logits[:B] - t * logits[B:]
        idx = sample_top_k_top_p(logits, state.top_k, state.top_p, ctx.generator)  # (B, l)
        codebook = self.vae[0].quantize.embedding.weight
        if state.more_smooth:  # soft codebook mix, as the official visualisation option
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            state.step_embedding = gumbel_softmax(logits.mul(1 + ratio), tau, ctx.generator) @ codebook.unsqueeze(0)
        else:
            state.step_embedding = F.embedding(idx, codebook)
        return idx

    def update(self, state: VARState, tokens: torch.Tensor, ctx: GenerationContext) -> None:
        si, K = ctx.si, len(self.patch_nums)
        pn, pn_last = self.patch_nums[si], self.patch_nums[-1]
        h = state.step_embedding.transpose(1, 2).reshape(state.B, self.Cvae, pn, pn)
        if si != K - 1:
            h = F.interpolate(h, size=(pn_last, pn_last), mode="bicubic")
        state.f_hat.add_(self.vae[0].phi(si, K, h))

    # ---- teacher forcing (training forward; also checks numerics against the official one) ---------------------
    def forward(self, labels: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) for every position given the ground-truth next-scale inputs (official ``VAR.forward``
        without its condition dropout: pass ``num_classes`` as the label of a dropped row). Differentiable."""
        B = labels.shape[0]
        cond_BD = self.class_emb(labels)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.to(sos.dtype))), dim=1) + self.lvl_pos()
        levels = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).to(x.device)
        ctx = GenerationContext(self.scales)
        ctx.attn_mask = torch.where(levels[:, None] >= levels[None, :], 0.0, -torch.inf).to(x.dtype)  # (L, L)
        state = VARState(B=B, cond_BD=cond_BD, ada_cond=self.shared_ada_lin(cond_BD), f_hat=x.new_zeros(0),
                         cfg=0.0, top_k=0, top_p=0.0, more_smooth=False)
        for block in self.blocks:
            x = block(x, state, ctx)
        return self.logits(x, cond_BD)
