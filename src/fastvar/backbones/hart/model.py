"""The HART text-to-image transformer (mit-han-lab/hart ``hart_transformer_t2i.py`` + ``basic_hart.py``).

Module names equal the official ``ema_model.bin`` keys (the derived buffers ``lvl_1L``, ``attn_bias_for_masking`` and
``blocks.N.attn.zero_k_bias`` are not kept: no 9750x9750 mask exists at inference). Reads top to bottom:
RoPE (1-D for the text context, HART's 2-D variant for image tokens) -> attention -> SwiGLU -> block -> head -> the
model, which implements the next-scale protocol of ``fastvar.core.loop``: step 0 runs the context tokens and samples
the 1x1 token from the last context position; the last step is HART's final stage (residual diffusion head, no
Phi). ``forward`` is the teacher-forced pass (``HARTForT2I.forward`` in eval) used to check numerics.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.attention import attend, qkv_heads
from ...core.context import GenerationContext
from ...core.sampling import gumbel_softmax, sample_top_k_top_p
from ..common import RMSNorm
from .config import HARTConfig
from .diffusion import (
    DiffusionHead,
    DiffusionHeadConfig,
    TimestepEmbedder,
    timestep_embedding,
)
from .tokenizer import HARTTokenizer

ROPE_BASE = 10000


# ------------------------------------------------------------------------------------------------------------ RoPE

_inv_freq_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def inv_freq(head_dim: int, stride: int, device: torch.device) -> torch.Tensor:
    """1 / 10000^(arange(0, hd, stride) / hd) in float32, computed on the CPU like the official module buffers."""
    key = (head_dim, stride, device)
    if key not in _inv_freq_cache:
        exponent = torch.arange(0, head_dim, stride, dtype=torch.int64).float() / head_dim
        _inv_freq_cache[key] = (1.0 / (ROPE_BASE**exponent)).to(device)
    return _inv_freq_cache[key]


def rope_1d(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``LlamaRotaryEmbedding1D`` for the context tokens: (B, L) positions -> cos, sin (B, L, hd)."""
    freqs = position_ids.float()[..., None] * inv_freq(head_dim, 2, position_ids.device)  # (B, L, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def image_positions(patch_nums: Sequence[int], si: int | None, offset: torch.Tensor) -> torch.Tensor:
    """Official ``get_position_ids`` (+ the last context position): (B, l, 2) float32 (row, col) positions of the
    tokens of scale ``si`` (None: scales 1..K-1 concatenated, teacher forcing), i / pn * pn_last (divide first),
    plus ``offset`` (B,) int64 on both coordinates."""
    pn_last = patch_nums[-1]
    coords = []
    for pn in (patch_nums[1:] if si is None else patch_nums[si:si + 1]):
        ar = torch.arange(pn, device=offset.device)
        grid = torch.stack(torch.meshgrid(ar, ar, indexing="ij"), dim=-1)  # (pn, pn, 2) int64
        coords.append((grid / pn * pn_last).reshape(-1, 2))
    return torch.cat(coords).unsqueeze(0) + offset[:, None, None]


def rope_2d(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``LlamaRotaryEmbedding`` (2-D): (B, l, 2) positions -> cos, sin (B, l, hd) laid out as
    [f(r), f(r), f(c), f(c)] with f = angles of hd/4 frequencies (stride 4)."""
    B, l, _ = positions.shape
    freqs = positions[..., None] * inv_freq(head_dim, 4, positions.device)  # (B, l, 2, hd/4)
    emb = torch.cat((freqs, freqs), dim=-1).reshape(B, l, head_dim)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, l, hd), cos/sin (B, l, hd). Dim j pairs with j + hd/2 even in the 2-D layout (official quirk)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


# ---------------------------------------------------------------------------------------------------------- blocks


class LlamaAttention(nn.Module):
    """Official ``LlamaAttention``: q/v biases (k none), RoPE on q and k, softmax scale 0.25/sqrt(head_dim)."""

    def __init__(self, layer: int, embed_dim: int, num_heads: int):
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, num_heads, embed_dim // num_heads
        self.scale = 0.25 / math.sqrt(self.head_dim)
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, state: HARTState, ctx: GenerationContext) -> torch.Tensor:
        q, k, v = qkv_heads(x, self.qkv_proj.weight, self.q_bias, self.v_bias, self.num_heads)  # each (B, H, L, hd)
        cos, sin = state.rope
        if ctx.keep_idx is not None:  # pruned branch: the kept tokens' original positions
            idx = ctx.keep_idx.unsqueeze(-1).expand(-1, -1, self.head_dim)
            cos, sin = cos.gather(1, idx), sin.gather(1, idx)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.proj(attend(q, k, v, ctx, self.layer, self.scale))


class LlamaMLP(nn.Module):
    """Official ``LlamaMLP``: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(embed_dim, hidden, bias=False)
        self.up_proj = nn.Linear(embed_dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HARTBlock(nn.Module):
    """Official ``AdaLNSelfAttn`` with disable_aln: x + attn(rms(x)), then x + ffn(rms(x)), ONE RMSNorm for both."""

    def __init__(self, layer: int, cfg: HARTConfig):
        super().__init__()
        self.layer = layer
        self.attn = LlamaAttention(layer, cfg.embed_dim, cfg.num_heads)
        self.ffn = LlamaMLP(cfg.embed_dim, cfg.ffn_hidden)
        self.ln_wo_grad = RMSNorm(cfg.embed_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, state: HARTState, ctx: GenerationContext) -> torch.Tensor:
        x = x + ctx.branch(self.layer, "attn", lambda z: self.attn(self.ln_wo_grad(z), state, ctx), x)
        x = x + ctx.branch(self.layer, "ffn", lambda z: self.ffn(self.ln_wo_grad(z)), x)
        return x


class AdaLNBeforeHead(nn.Module):
    """Official ``AdaLNBeforeHead``: rms(x) * (1 + scale) + shift from the context max-pooled over ALL positions."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = RMSNorm(C, eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        cond = cond_BD.max(dim=1, keepdim=True).values  # (B, 1, D)
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


# ----------------------------------------------------------------------------------------------------------- model


@dataclass
class HARTState:
    """Per-call state of a HART generation (B images, CFG-doubled to 2B rows: conditional, then unconditional)."""

    B: int
    cond_BD: torch.Tensor  # (2B, context_token, C) context embeddings (= sos)
    context_position_ids: torch.Tensor  # (2B, context_token) int64; unconditional rows are 0
    patch_nums: tuple[int, ...]
    lvl_pos: torch.Tensor  # (context_token + L - 1, C) level embedding of every sequence position
    f_hat: torch.Tensor  # (B, Cvae, pn_last, pn_last) accumulated latent, float32
    cfg: float = 0.0
    top_k: int | None = None  # None: the official rule 600 for scales < 7, else 300
    top_p: float = 0.0
    more_smooth: bool = False
    diffusion: bool = True  # False: the official final_stage=1 (no residual diffusion)
    diffusion_generator: torch.Generator | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin (2B, l, hd) of the current step's tokens
    step_embedding: torch.Tensor | None = None  # (B, l, Cvae) latent tokens of the last sampled step

    @property
    def rows(self) -> int:
        """Transformer rows: 2B while guided, B after ``drop_guidance``."""
        return self.cond_BD.shape[0]


class HARTForT2I(nn.Module):
    def __init__(self, cfg: HARTConfig, tokenizer: HARTTokenizer):
        super().__init__()
        self.cfg = cfg
        self.vae = (tokenizer,)  # not a submodule: the tokenizer has its own checkpoint
        C, self.Cvae, self.V = cfg.embed_dim, tokenizer.Cvae, tokenizer.cfg.vocab_size
        self.context_token = cfg.context_token
        self.word_embed = nn.Linear(self.Cvae, C)
        self.context_embed = nn.Linear(cfg.context_dim, C)
        self.context_norm = RMSNorm(cfg.context_dim, cfg.norm_eps) if cfg.use_context_norm else nn.Identity()
        self.lvl_embed = TimestepEmbedder(C)
        self.blocks = nn.ModuleList(HARTBlock(i, cfg) for i in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)
        self.decoder_norm = RMSNorm(C, cfg.norm_eps)
        self.diffloss = DiffusionHead(DiffusionHeadConfig(
            target_channels=self.Cvae, z_channels=C, diff_width=cfg.diff_width, diff_depth=cfg.diff_depth,
            num_sampling_steps=cfg.num_sampling_steps, sampler=cfg.sampler,
        ))  # fmt: skip

    @property
    def codebook(self) -> torch.Tensor:
        return self.vae[0].quantize.embedding.weight  # (V, Cvae)

    def levels(self, patch_nums: Sequence[int]) -> torch.Tensor:
        """Official ``lvl_1L``: level of every sequence position, (context_token + L - 1,) int64: 0 for the context,
        i for the tokens of scale i >= 1."""
        pns = patch_nums[1:]
        return torch.cat([torch.zeros(self.context_token, dtype=torch.int64)]
                         + [torch.full((pn * pn,), i + 1, dtype=torch.int64) for i, pn in enumerate(pns)])

    def level_embedding(self, patch_nums: Sequence[int]) -> torch.Tensor:
        """Official ``lvl_embed(lvl_1L)``: TimestepEmbedder output of every sequence position (context_token + L - 1,
        C). Computed for the whole sequence in one matmul like the official code: rows of a matmul can differ in the
        last bit with the number of rows."""
        levels = self.levels(patch_nums).to(self.word_embed.weight.device)
        emb = timestep_embedding(levels, self.lvl_embed.frequency_embedding_size)
        return self.lvl_embed.mlp(emb.to(self.word_embed.weight.dtype))

    def embed_context(self, context: torch.Tensor) -> torch.Tensor:
        """(B, context_token, context_dim) text features -> cond_BD (B, context_token, C)."""
        return self.context_embed(self.context_norm(context.to(self.context_embed.weight.dtype)))

    def get_logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Official ``get_logits``: head(head_nm(x, cond)) in float32 (the head runs in the model dtype)."""
        h = self.head_nm(x.float(), cond_BD)
        return self.head(h.to(self.head.weight.dtype)).float()

    # ---- next-scale protocol -------------------------------------------------------------------------------
    def prepare(self, context: torch.Tensor, context_position_ids: torch.Tensor, patch_nums: Sequence[int], *,
                cfg: float, top_k: int | None, top_p: float, more_smooth: bool, diffusion: bool = True,
                diffusion_generator: torch.Generator | None = None) -> HARTState:
        """State for B prompts: ``context`` (B, context_token, context_dim) features, positions (B, context_token)."""
        B = context.shape[0]
        cond_BD = self.embed_context(torch.cat((context, torch.zeros_like(context))))  # uncond context is all zeros
        positions = torch.cat((context_position_ids, torch.zeros_like(context_position_ids)))
        pn = patch_nums[-1]
        return HARTState(B=B, cond_BD=cond_BD, context_position_ids=positions, patch_nums=tuple(patch_nums),
                         lvl_pos=self.level_embedding(patch_nums),
                         f_hat=self.codebook.new_zeros(B, self.Cvae, pn, pn), cfg=cfg, top_k=top_k, top_p=top_p,
                         more_smooth=more_smooth, diffusion=diffusion, diffusion_generator=diffusion_generator)

    def scale_input(self, state: HARTState, ctx: GenerationContext) -> torch.Tensor:
        si, hd = ctx.si, self.cfg.head_dim
        if si == 0:  # context prefill: the context tokens (level 0) with 1-D RoPE
            ctx.kv_extra = self.context_token - ctx.scales[0][0] * ctx.scales[0][1]  # the context replaces the 1x1 map
            state.rope = rope_1d(state.context_position_ids, hd)
            return state.cond_BD + state.lvl_pos[: self.context_token]
        pn = state.patch_nums[si]
        start = self.context_token + sum(p * p for p in state.patch_nums[1:si])
        state.rope = rope_2d(image_positions(state.patch_nums, si, state.context_position_ids[:, -1]), hd)
        tokens = F.interpolate(state.f_hat, size=(pn, pn), mode="area").view(state.B, self.Cvae, -1).transpose(1, 2)
        x = self.word_embed(tokens.to(self.word_embed.weight.dtype)) + state.lvl_pos[start:start + pn * pn]
        return x.repeat(state.rows // state.B, 1, 1)  # both CFG halves see the same input

    def drop_guidance(self, state: HARTState) -> None:
        state.cond_BD, state.context_position_ids = state.cond_BD[: state.B], state.context_position_ids[: state.B]

    def sample(self, x: torch.Tensor, state: HARTState, ctx: GenerationContext) -> torch.Tensor:
        si, K, B = ctx.si, len(state.patch_nums), state.B
        final = si == K - 1
        ratio = (K - 2 if final else si) / (K - 1)  # the final stage keeps the previous step's ratio (official)
        t = state.cfg * ratio
        logits = self.get_logits(x, state.cond_BD)
        if state.rows > B:
            logits = (1 + t) * logits[:B] - t * logits[B:]
        if si == 0:  # the 1x1 token comes from the last context position, pad or not
            logits = logits[:, [-1], :]
        top_k = state.top_k if state.top_k is not None else (600 if si < 7 else 300)
        idx = sample_top_k_top_p(logits, top_k, state.top_p, ctx.generator)  # (B, l); filters logits in place
        codebook = self.codebook
        if state.more_smooth:  # soft codebook mix (official default in sample.py)
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            h = gumbel_softmax(logits.mul(1 + ratio), tau, ctx.generator) @ codebook.unsqueeze(0)
        else:
            h = F.embedding(idx, codebook)
        if final and state.diffusion:
            h = h + self.residual(x, idx, t, state.diffusion_generator)
        state.step_embedding = h
        return idx

    def residual(self, x: torch.Tensor, idx: torch.Tensor, t: float, generator: torch.Generator) -> torch.Tensor:
        """Final stage: the diffusion head's continuous residual (B, l, Cvae) given the block output x (2B, l, C)
        and the hard cond-half indices (used for BOTH CFG halves), guided with the same t as the logits. Unguided
        (x has B rows): the head's own unguided sampler (its ``cfg == 1`` path)."""
        B = idx.shape[0]
        discrete = self.word_embed(F.embedding(idx, self.codebook).to(x.dtype))
        z = self.decoder_norm(x + discrete.repeat(x.shape[0] // B, 1, 1))
        rows, l, C = z.shape
        h_diff = self.diffloss.sample(z.reshape(rows * l, C).float(), cfg=t if rows > B else 1.0, generator=generator)
        return h_diff.reshape(rows, l, -1)[:B]

    def update(self, state: HARTState, tokens: torch.Tensor, ctx: GenerationContext) -> None:
        pn = state.patch_nums[ctx.si]
        h = state.step_embedding.transpose(1, 2).reshape(state.B, self.Cvae, pn, pn)
        state.f_hat, _ = self.vae[0].quantize.next_autoregressive_input(ctx.si, state.patch_nums, state.f_hat, h)

    # ---- teacher forcing (training-style forward, used to check numerics) -----------------------------------
    @torch.inference_mode()
    def forward(self, context: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor, context_position_ids: torch.Tensor,
                patch_nums: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (B, L, V) of every image position given the ground-truth next-scale inputs (official
        ``HARTForT2I.forward`` in eval without MAR masking or condition dropout): position 0 from the last context
        token, then the image tokens of scales 0..K-2; block-causal attention by level (the context is level 0)."""
        pns = tuple(patch_nums or self.cfg.patch_nums)
        B, Lc = context.shape[:2]
        cond_BD = self.embed_context(context)
        x = torch.cat((cond_BD, self.word_embed(x_BLCv_wo_first_l.to(cond_BD.dtype))), dim=1)
        levels = self.levels(pns).to(x.device)
        x = x + self.level_embedding(pns)
        ctx = GenerationContext([(pn, pn) for pn in pns])
        ctx.attn_mask = torch.where(levels[:, None] >= levels[None, :], 0.0, -torch.inf).to(x.dtype)  # (L', L')
        cos_c, sin_c = rope_1d(context_position_ids, self.cfg.head_dim)
        cos_i, sin_i = rope_2d(image_positions(pns, None, context_position_ids[:, -1]), self.cfg.head_dim)
        state = HARTState(B=B, cond_BD=cond_BD, context_position_ids=context_position_ids, patch_nums=pns,
                          lvl_pos=x.new_zeros(0), f_hat=x.new_zeros(0),
                          rope=(torch.cat((cos_c, cos_i), dim=1), torch.cat((sin_c, sin_i), dim=1)))
        for block in self.blocks:
            x = block(x, state, ctx)
        return self.get_logits(x, cond_BD)[:, Lc - 1:]
