"""Train the built-in demo model: a small Infinity (BSQ-VAE, then transformer + byte text encoder) on Noto emoji.

    fastvar train-demo --out runs/demo --vae-steps 800 --steps 700            # = python -m fastvar.demo.train ...
    fastvar train-demo --out runs/demo --vae-steps 800 --steps 950 --lr 5e-4 --scale-weighting-from 700 \
        --export src/fastvar/demo                                             # resumes at 700; the shipped weights

Stage 1 trains the VAE (L1 + L2 reconstruction through the multi-scale BSQ quantiser with its straight-through
estimator ``z + (zhat - z).detach()``). Stage 2 encodes every image once into per-scale bits and trains the
transformer with teacher forcing on them (bit cross-entropy, as Infinity's bit labels; optionally every scale weighted
the same) with 10 % condition dropout to the learned ``cfg_uncond`` (for CFG), jointly with the text encoder. Both
stages log to ``<out>/log.tsv``, checkpoint every ``--ckpt-every`` steps and resume from ``<out>`` (batches come from
per-step seeds, so a resumed run sees the data a straight run would).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.infinity.config import InfinityConfig, InfinityModelSpec
from ..backbones.infinity.model import Infinity
from ..backbones.infinity.text import TextCondition
from ..backbones.infinity.vae import InfinityVAE, InfinityVAEConfig
from ..errors import FastVARError
from .data import PACKAGE, VERSION, EmojiSet, load_emoji
from .text import ByteTextConfig, ByteTextEncoder

SCALES = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]  # the 1:1 "0.06M" schedule: 521 tokens
ROPE_GRID = (64, 64)  # schedules.rope_grid(1.0)
VAE_CATEGORIES = ("Food & Drink", "Animals & Nature")  # 290 images: the tokenizer sees more shapes
CATEGORIES = ("Food & Drink",)  # 131 images: what the transformer learns to draw (more epochs per subject)
VAE_CFG = InfinityVAEConfig(codebook_dim=16, patch_size=4, encoder_ch_mult=(1, 2, 2), decoder_ch_mult=(1, 2, 2),
                            base_ch=24, num_res_blocks=1)
TEXT_CFG = ByteTextConfig(width=128, depth=2, num_heads=4, max_len=64)
INFINITY_CFG = InfinityConfig(text_channels=128, text_maxlen=64, embed_dim=192, depth=6, num_heads=3,
                              mlp_ratio=4.0, block_chunks=1, pn="0.06M", drop_path_rate=0.0)


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, constant, then linear decay to 10 % over the last 30 % of the steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_from = int(0.7 * total)
    if step < decay_from:
        return peak
    return peak * (1 - 0.9 * (step - decay_from) / max(1, total - decay_from))


def step_seed(seed: int, step: int) -> int:
    """The seed of one training step's draws: a resumed run sees the batches a straight run would."""
    return seed * 1_000_003 + step


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def flipped_batch(images: torch.Tensor, batch: int, g: torch.Generator) -> torch.Tensor:
    """``batch`` images drawn with ``g``, each mirrored horizontally with probability 1/2."""
    img = images[torch.randint(len(images), (batch,), generator=g)]
    return torch.where(torch.rand(batch, 1, 1, 1, generator=g) < 0.5, img, img.flip(-1))


class Log:
    def __init__(self, path: Path):
        self.path, self.t0 = path, time.time()

    def __call__(self, stage: str, step: int, total: int, **values: float) -> None:
        line = "\t".join([stage, str(step), f"{time.time() - self.t0:.1f}"] + [f"{k}={v:.5f}" for k, v in values.items()])
        with self.path.open("a") as f:
            f.write(line + "\n")
        print(f"[{stage} {step}/{total} {time.time() - self.t0:.0f}s] " + " ".join(f"{k} {v:.4f}" for k, v in values.items()),
              flush=True)


def _save(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------- stage 1: VAE


def vae_loss(vae: InfinityVAE, img: torch.Tensor) -> tuple[torch.Tensor, dict]:
    _, zq = vae.quantize(vae.encode_raw(img), SCALES)
    rec = vae.decoder(zq)
    l1, l2 = (rec - img).abs().mean(), (rec - img).pow(2).mean()
    return l1 + l2, {"l1": l1.item(), "l2": l2.item()}


def train_vae(data: EmojiSet, out: Path, steps: int, batch: int, lr: float, seed: int, log: Log, ckpt_every: int) -> InfinityVAE:
    torch.manual_seed(seed)
    vae = InfinityVAE(VAE_CFG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    ckpt, start = out / "vae_ckpt.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    for step in range(start, steps):
        img = flipped_batch(data.images, batch, torch.Generator().manual_seed(step_seed(seed, step)))
        set_lr(opt, lr_at(step, steps, lr))
        loss, parts = vae_loss(vae, img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            log("vae", step, steps, loss=loss.item(), **parts)
        if (step + 1) % ckpt_every == 0 or step == steps - 1:
            _save(ckpt, model=vae.state_dict(), opt=opt.state_dict(), rng=torch.get_rng_state(), step=step + 1)
    return vae.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ stage 2: transformer


@torch.no_grad()
def encode_dataset(vae: InfinityVAE, images: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image -> teacher-forcing inputs (N, L - 1, d) float and target bits (N, L, d) uint8."""
    xs, ys = [], []
    for i in range(0, len(images), chunk):
        bits, _ = vae.encode_bits(images[i:i + chunk], SCALES)
        xs.append(vae.teacher_forcing_input(bits, SCALES))
        ys.append(torch.cat(bits, dim=1))
    return torch.cat(xs), torch.cat(ys)


def init_transformer(model: nn.Module, free: tuple[nn.Parameter, ...], std: float = 0.02) -> None:
    """Small normal init (official ``init_weights`` spirit): linears/embeddings and the ``free`` parameters (start
    token, learned positions or unconditional rows) N(0, std), zero biases, a 10x smaller head."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
    for p in free:
        nn.init.normal_(p, std=std)
    model.head.weight.data.mul_(0.1)


def drop_conditions(text: TextCondition, cfg_uncond: torch.Tensor, drop: torch.Tensor) -> TextCondition:
    """Rows with ``drop[i]`` get the learned unconditional features ``cfg_uncond[:len_i]`` (official cond dropout)."""
    rows = torch.split(text.features, text.lens)
    feats = [cfg_uncond[:n] if d else r for r, n, d in zip(rows, text.lens, drop.tolist())]
    return TextCondition(torch.cat(feats), text.lens)


def scale_weights(scales=SCALES) -> torch.Tensor:
    """Per-token loss weights giving every scale the same total weight (official ``reweight_loss_by_scale``): (L,)."""
    return torch.cat([torch.full((h * w,), 1.0 / (len(scales) * h * w)) for h, w in scales])


def train_transformer(data: EmojiSet, vae: InfinityVAE, out: Path, steps: int, batch: int, lr: float, seed: int,
                      log: Log, ckpt_every: int, cond_drop: float = 0.1,
                      scale_weighting_from: int = 0) -> tuple[Infinity, ByteTextEncoder]:
    """Teacher-forced bit cross-entropy; from step ``scale_weighting_from`` on, every scale weighs the same (without
    it the 1x1 and 2x2 steps, which alone carry the prompt's content, are 1/521 and 4/521 of the loss)."""
    x_all, y_all = encode_dataset(vae, data.images)
    torch.manual_seed(seed)
    model, text_enc = Infinity(INFINITY_CFG, vae), ByteTextEncoder(TEXT_CFG)
    init_transformer(model, (model.cfg_uncond, model.pos_start))
    params = list(model.parameters()) + list(text_enc.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.97))
    ckpt, start = out / "transformer_ckpt.pt", 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), text_enc.load_state_dict(state["text"]), opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    d, w_scale = vae.cfg.token_dim, scale_weights()
    for step in range(start, steps):
        idx, drop, prompts = _transformer_batch(len(data.images), batch, step_seed(seed, step), data, cond_drop)
        set_lr(opt, lr_at(step, steps, lr))
        text = drop_conditions(text_enc(prompts), model.cfg_uncond, drop)
        logits = model.teacher_forced_logits(text, x_all[idx], SCALES, ROPE_GRID)  # (B, L, 2d)
        ce = F.cross_entropy(logits.reshape(-1, 2), y_all[idx].reshape(-1).long(), reduction="none")  # bit labels
        ce = ce.view(batch, -1, d).mean(dim=(0, 2))  # (L,) per position
        loss = (ce * w_scale).sum() if step >= scale_weighting_from else ce.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            with torch.no_grad():
                acc = (logits.view(batch, -1, d, 2).argmax(-1) == y_all[idx]).float().mean().item()
            log("transformer", step, steps, loss=loss.item(), bit_acc=acc, lr=lr_at(step, steps, lr))
        if (step + 1) % ckpt_every == 0 or step == steps - 1:
            _save(ckpt, model=model.state_dict(), text=text_enc.state_dict(), opt=opt.state_dict(),
                  rng=torch.get_rng_state(), step=step + 1)
    return model.eval().requires_grad_(False), text_enc.eval().requires_grad_(False)


def _transformer_batch(n: int, batch: int, seed: int, data: EmojiSet, cond_drop: float):
    """Images, condition-dropout flags and prompt variants of one step, drawn from the step's own seed."""
    g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    idx = torch.randint(n, (batch,), generator=g)
    drop = torch.rand(batch, generator=g) < cond_drop
    return idx, drop, data.sample_prompts(idx.tolist(), rng)


# ----------------------------------------------------------------------------------------------------- export


def spec() -> InfinityModelSpec:
    return InfinityModelSpec(VAE_CFG, INFINITY_CFG)


def export(out: Path, dest: Path, data: EmojiSet, info: dict) -> None:
    """Write ``weights/{vae,transformer,text_encoder}.safetensors`` and ``demo.json`` from the run's checkpoints."""
    from safetensors.torch import save_file

    vae_state = torch.load(out / "vae_ckpt.pt", weights_only=False)
    tf_state = torch.load(out / "transformer_ckpt.pt", weights_only=False)
    (dest / "weights").mkdir(parents=True, exist_ok=True)
    for name, sd in (("vae", vae_state["model"]), ("transformer", tf_state["model"]), ("text_encoder", tf_state["text"])):
        path = dest / "weights" / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        path.chmod(0o644)  # package data: readable by everyone
    config = spec().to_json()
    config["text_encoder"] = TEXT_CFG.__dict__
    config["data"] = {"npm": f"{PACKAGE}@{VERSION}", "vae_categories": list(VAE_CATEGORIES),
                      "categories": list(CATEGORIES), "images": len(data.images)}
    config["training"] = dict(info, vae_steps=vae_state["step"], transformer_steps=tf_state["step"])
    (dest / "demo.json").write_text(json.dumps(config, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fastvar train-demo", description=__doc__.split("\n\n")[0])
    add_args(p)
    run(p.parse_args(argv))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", choices=("infinity", "var"), default="infinity",
                   help="infinity: the shipped text-to-image demo; var: the class-conditional VAR of fastvar.demo.train_var")
    p.add_argument("--out", required=True, help="run folder: checkpoints and log.tsv (resumes from it)")
    p.add_argument("--vae-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=600, help="transformer steps")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-weighting-from", type=int, default=0,
                   help="transformer step from which every scale weighs the same in the loss (0: always)")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--export", help="write the weights + config into this folder (the demo's: src/fastvar/demo)")


def run(args: argparse.Namespace) -> None:
    """Both stages and the export, for the Infinity demo or (``--backbone var``) the class-conditional VAR."""
    if args.backbone == "var":
        from . import train_var as stages

        if args.scale_weighting_from:
            raise FastVARError("--scale-weighting-from is an option of the Infinity demo; VAR weighs scales by "
                               "train_var.token_weights() from the first step")
        extra = {}
    else:
        stages, extra = sys.modules[__name__], {"scale_weighting_from": args.scale_weighting_from}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.tsv")
    print(f"data: {PACKAGE}@{VERSION}; torch threads {torch.get_num_threads()}")
    vae_data = load_emoji(VAE_CATEGORIES)
    print(f"tokenizer: {len(vae_data.images)} images of {list(VAE_CATEGORIES)}")
    vae = stages.train_vae(vae_data, out, args.vae_steps, args.vae_batch, args.vae_lr, args.seed, log, args.ckpt_every)
    data = load_emoji(CATEGORIES)
    print(f"transformer: {len(data.images)} images of {list(CATEGORIES)}")
    stages.train_transformer(data, vae, out, args.steps, args.batch, args.lr, args.seed, log, args.ckpt_every, **extra)
    if args.export:
        info = {k: getattr(args, k) for k in ("vae_batch", "batch", "vae_lr", "lr", "seed")} | extra
        stages.export(out, Path(args.export), data, info)
        print(f"exported the {args.backbone} model to {args.export}")


if __name__ == "__main__":
    main()
