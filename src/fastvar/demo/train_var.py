"""Train a small class-conditional VAR (multi-scale VQ-VAE, then transformer) on Noto emoji.

    fastvar train-demo --backbone var --out runs/var-emoji --vae-steps 1500 --steps 900 --export runs/var-emoji/model

It is the model the VAR pruning preset is measured on (no official VAR weights exist here): the project's VAR
architecture unchanged, images 64x64 from VAR's own 256px scale schedule (1, 2, 3, 4, 5, 6, 8, 10, 13, 16; the VQ-VAE
downsamples 4x instead of 16x), one class per "Food & Drink" emoji. Stage 1 trains the VQ-VAE with the official
``VectorQuantizer2`` losses (per-scale commitment/codebook MSE, straight-through estimator) plus L1 + L2
reconstruction, restarting unused codes from encoder outputs. Stage 2 encodes every image (and its mirror image) once
and trains the transformer with teacher forcing (cross-entropy over the codebook, 10 % class dropout to the
unconditional class as the official ``cond_drop_rate``). ``fastvar.demo.train.run`` drives both stages (logging,
checkpoints and resuming as for the Infinity demo).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.var.config import PATCH_NUMS, VARConfig, VARModelSpec
from ..backbones.var.model import VAR
from ..backbones.var.vqvae import VQVAE, VQVAEConfig
from .data import PACKAGE, VERSION, EmojiSet
from .train import (CATEGORIES, VAE_CATEGORIES, Log, _save, flipped_batch, init_transformer, lr_at, set_lr,
                    step_seed)

PATCHES = PATCH_NUMS[256]  # 680 tokens, final map 16x16
VAE_CFG = VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, v_patch_nums=PATCHES)
BETA = 0.25  # official commitment weight
RESTART_EVERY = 50  # VAE steps between restarts of the codes no batch used since the last restart


def var_config(num_classes: int) -> VARConfig:
    return VARConfig(num_classes=num_classes, depth=6, embed_dim=192, num_heads=3, attn_l2_norm=True,
                     patch_nums=PATCHES, drop_path_rate=0.0)


# ------------------------------------------------------------------------------------------------- stage 1: VAE


def vqvae_loss(vae: VQVAE, img: torch.Tensor) -> tuple[torch.Tensor, dict, list[torch.Tensor], torch.Tensor]:
    """Official ``VectorQuantizer2.forward`` losses + reconstruction; returns (loss, parts, indices, latent f)."""
    f = vae.img_to_f(img)
    with torch.no_grad():
        idx, _ = vae.quantize.f_to_idx_and_fhat(f)
    f_hat, vq = torch.zeros_like(f), 0.0
    for si in range(len(PATCHES)):  # the same residual sum the quantiser built, now differentiable in codes and phis
        f_hat, _ = vae.next_autoregressive_input(si, PATCHES, f_hat, vae.quantize.code_map(idx[si]))
        vq = vq + F.mse_loss(f_hat, f.detach()) + BETA * F.mse_loss(f_hat.detach(), f)
    vq = vq / len(PATCHES)
    rec = vae.decoder(vae.post_quant_conv(f + (f_hat - f).detach()))  # straight-through to the encoder
    l1, l2 = (rec - img).abs().mean(), (rec - img).pow(2).mean()
    return l1 + l2 + vq, {"l1": l1.item(), "l2": l2.item(), "vq": vq.item()}, idx, f.detach()


def restart_codes(codebook: torch.Tensor, unused: torch.Tensor, f: torch.Tensor, g: torch.Generator) -> None:
    """Set the ``unused`` codes to randomly chosen latent vectors of the batch ``f`` (B, C, H, W)."""
    vectors = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    pick = torch.randint(len(vectors), (int(unused.sum()),), generator=g)
    codebook[unused] = vectors[pick]


def train_vae(data: EmojiSet, out: Path, steps: int, batch: int, lr: float, seed: int, log: Log, ckpt_every: int) -> VQVAE:
    torch.manual_seed(seed)
    vae = VQVAE(VAE_CFG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    used = torch.zeros(VAE_CFG.vocab_size, dtype=torch.bool)
    ckpt, start = out / "vae_ckpt.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        used, start = state["used"], state["step"]
    codebook = vae.quantize.embedding.weight
    for step in range(start, steps):
        g = torch.Generator().manual_seed(step_seed(seed, step))
        img = flipped_batch(data.images, batch, g)
        if step == 0:  # codes start as encoder outputs, so every code is near the data
            with torch.no_grad():
                restart_codes(codebook.data, torch.ones_like(used), vae.img_to_f(img), g)
        set_lr(opt, lr_at(step, steps, lr))
        loss, parts, codes, f = vqvae_loss(vae, img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[torch.cat(codes, dim=1).unique()] = True
        if (step + 1) % RESTART_EVERY == 0 and step + 1 < 0.8 * steps:  # no restarts during the final decay
            parts["restarted"] = float((~used).sum())
            with torch.no_grad():
                restart_codes(codebook.data, ~used, f, g)
            used.zero_()
        if step % 20 == 0 or step == steps - 1:
            log("vae", step, steps, loss=loss.item(), **parts)
        if (step + 1) % ckpt_every == 0 or step == steps - 1:
            _save(ckpt, model=vae.state_dict(), opt=opt.state_dict(), used=used, step=step + 1)
    return vae.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ stage 2: transformer


@torch.no_grad()
def encode_dataset(vae: VQVAE, images: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image and its mirror -> teacher-forcing inputs (2N, L - 1, Cvae) and target tokens (2N, L)."""
    images = torch.cat((images, images.flip(-1)))
    xs, ys = [], []
    for i in range(0, len(images), chunk):
        idx = vae.img_to_idx(images[i:i + chunk])
        xs.append(vae.idx_to_var_input(idx))
        ys.append(torch.cat(idx, dim=1))
    return torch.cat(xs), torch.cat(ys)


def token_weights() -> torch.Tensor:
    """(L,) loss weights: half VAR's uniform 1/L, half every scale the same (the 1x1..3x3 steps that fix the
    subject are 14 of 680 tokens; see docs/demo-model.md for what uniform weighting did to the Infinity demo)."""
    L = sum(pn * pn for pn in PATCHES)
    per_scale = torch.cat([torch.full((pn * pn,), 1.0 / (len(PATCHES) * pn * pn)) for pn in PATCHES])
    return 0.5 / L + 0.5 * per_scale


def train_transformer(data: EmojiSet, vae: VQVAE, out: Path, steps: int, batch: int, lr: float, seed: int, log: Log,
                      ckpt_every: int, cond_drop: float = 0.1) -> VAR:
    x_all, y_all = encode_dataset(vae, data.images)
    labels_all = torch.arange(len(data.images)).repeat(2)
    torch.manual_seed(seed)
    model = VAR(var_config(len(data.images)), vae)
    init_transformer(model, (model.pos_start, model.pos_1LC))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.97))
    ckpt, start = out / "transformer_ckpt.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        start = state["step"]
    weights = token_weights()
    for step in range(start, steps):
        g = torch.Generator().manual_seed(step_seed(seed, step))
        idx = torch.randint(len(x_all), (batch,), generator=g)
        labels = torch.where(torch.rand(batch, generator=g) < cond_drop, model.cfg.num_classes, labels_all[idx])
        set_lr(opt, lr_at(step, steps, lr))
        logits = model(labels, x_all[idx])  # (B, L, V)
        ce = F.cross_entropy(logits.transpose(1, 2), y_all[idx], reduction="none").mean(0)  # (L,)
        loss = (ce * weights).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            with torch.no_grad():
                right = logits.argmax(-1) == y_all[idx]
            log("transformer", step, steps, loss=loss.item(), acc=right.float().mean().item(),
                acc_first3=right[:, :14].float().mean().item(), lr=lr_at(step, steps, lr))
        if (step + 1) % ckpt_every == 0 or step == steps - 1:
            _save(ckpt, model=model.state_dict(), opt=opt.state_dict(), step=step + 1)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------- export


def export(out: Path, dest: Path, data: EmojiSet, info: dict) -> None:
    """Write ``vae.safetensors``, ``var.safetensors`` and ``config.json`` (the golden config format, plus the class
    names and the training record): ``load_pipeline("var", vae=..., transformer=..., config=...)`` loads them."""
    from safetensors.torch import save_file

    vae_state = torch.load(out / "vae_ckpt.pt", weights_only=False)
    tf_state = torch.load(out / "transformer_ckpt.pt", weights_only=False)
    dest.mkdir(parents=True, exist_ok=True)
    for name, sd in (("vae", vae_state["model"]), ("var", tf_state["model"])):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / f"{name}.safetensors"))
    config = VARModelSpec(VAE_CFG, var_config(len(data.names))).to_json()
    config["classes"] = data.names
    config["data"] = {"npm": f"{PACKAGE}@{VERSION}", "vae_categories": list(VAE_CATEGORIES),
                      "categories": list(CATEGORIES)}
    config["training"] = dict(info, vae_steps=vae_state["step"], transformer_steps=tf_state["step"])
    (dest / "config.json").write_text(json.dumps(config, indent=1) + "\n")
