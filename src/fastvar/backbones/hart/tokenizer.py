"""HART's hybrid tokenizer: VAR's multi-scale residual VQ-VAE whose last scale gets no Phi, plus a continuous residual.

Reproduces mit-han-lab/hart ``hart/modules/models/autoencoder/hart_autoencoder.py`` (``HARTAutoEncoder``, the
``vae.*`` part of ``HARTAutoEncoderWithDisc``) and ``quantize/hart_hybrid_quantize.py`` (``HARTHybridQuantizer``:
``f_to_idxBl_and_frest``, ``get_next_autoregressive_input``). Encoder, decoder, codebook, Phi convolutions and the
teacher-forcing input are VAR's (``fastvar.backbones.var.vqvae``); module names equal the official keys after the
``vae.`` prefix.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..var.vqvae import VQVAE, MultiScaleQuantizer
from .config import HARTTokenizerConfig


class HybridQuantizer(MultiScaleQuantizer):
    """``HARTHybridQuantizer``: as VAR's quantizer except that the last scale is added without Phi (inference and
    tokenisation), so the inherited accumulation (``next_autoregressive_input``, ``idx_to_fhat``) is HART's."""

    def phi(self, si: int, num_scales: int, h: Tensor) -> Tensor:
        return h if si == num_scales - 1 else super().phi(si, num_scales, h)


class HARTTokenizer(VQVAE):
    """``HARTAutoEncoder``: images in [-1, 1] <-> per-scale token indices + the continuous residual of the last scale.

    Latents are (B, Cvae, pn_last, pn_last); token indices per scale (B, pn*pn) int64 row-major; the residual is
    (B, pn_last^2, Cvae) in the same token order.
    """

    def __init__(self, cfg: HARTTokenizerConfig):
        super().__init__(cfg)
        self.quantize = HybridQuantizer(
            cfg.vocab_size, cfg.z_channels, v_patch_nums=cfg.v_patch_nums, using_znorm=cfg.using_znorm,
            quant_resi=cfg.quant_resi, share_quant_resi=cfg.share_quant_resi,
            default_qresi_counts=cfg.default_qresi_counts,
        )  # fmt: skip

    def img_to_idx_and_rest(self, img: Tensor, patch_nums: Sequence[int] | None = None) -> tuple[list[Tensor], Tensor]:
        """Official ``img_to_idxBl_and_frest``: indices of every scale and the quantisation rest before the last
        scale's codes are subtracted, (B, pn_last^2, Cvae). The rest is computed as f minus the accumulated discrete
        latent of scales 0..K-2 (the official code subtracts scale by scale: equal up to float rounding)."""
        f = self.img_to_f(img)
        idx, fhat = self.quantize.f_to_idx_and_fhat(f, patch_nums)
        rest = f - fhat[-2]  # (B, Cvae, H, W)
        return idx, rest.permute(0, 2, 3, 1).reshape(f.shape[0], -1, self.Cvae)

    def encode(self, img: Tensor, patch_nums: Sequence[int] | None = None) -> tuple[list[Tensor], Tensor]:
        """Image -> (indices per scale, continuous residual (B, pn_last^2, Cvae) = rest - codebook[last indices]),
        the targets of HART's transformer and diffusion head (``HARTForT2I.forward``)."""
        idx, rest = self.img_to_idx_and_rest(img, patch_nums)
        return idx, rest - self.embed_idx(idx[-1])

    def idx_to_fhat(self, idx: Sequence[Tensor], patch_nums: Sequence[int] | None = None,
                    resid: Tensor | None = None) -> Tensor:
        """Accumulated latent (B, Cvae, H, W) of the indices (``get_next_autoregressive_input`` chained), with the
        last scale's tokens = codebook vectors + ``resid`` (B, pn_last^2, Cvae) when given."""
        if resid is None:
            return self.quantize.idx_to_fhat(idx, patch_nums)
        pns = tuple(patch_nums or self.patch_nums)
        B, K = idx[0].shape[0], len(pns)
        f_hat = resid.new_zeros(B, self.Cvae, pns[-1], pns[-1])
        for si, pn in enumerate(pns):
            if si < K - 1:
                h = self.quantize.code_map(idx[si])
            else:  # hybrid last-scale tokens, laid out like the official (B, l, Cvae) -> (B, Cvae, pn, pn) view
                h = (self.embed_idx(idx[si]) + resid).transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            f_hat, _ = self.quantize.next_autoregressive_input(si, pns, f_hat, h)
        return f_hat

    def decode(self, idx: Sequence[Tensor], resid: Tensor | None = None,
               patch_nums: Sequence[int] | None = None) -> Tensor:
        """Indices (+ residual) -> image in [-1, 1] (B, 3, H, W) (official ``fhat_to_img``)."""
        return self.fhat_to_img(self.idx_to_fhat(idx, patch_nums, resid))
