"""``fastvar info``: say what a checkpoint is (model kind, size, keys) without building a model."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .core.loading import StateDict, read_state_dict


def _kind(sd: StateDict) -> tuple[str, dict]:
    """Recognise the official layouts by their characteristic keys."""
    keys = set(sd)
    blocks = {k.split(".")[1] for k in keys if k.startswith("blocks.")}
    if "class_emb.weight" in keys and "word_embed.weight" in keys:
        from .backbones.var.pipeline import guess_release

        return "VAR transformer", {"depth": len(blocks), "width": sd["class_emb.weight"].shape[1],
                                   "classes": sd["class_emb.weight"].shape[0] - 1, "hint": guess_release(sd)}
    if "quantize.embedding.weight" in keys and any(k.startswith("encoder.") for k in keys):
        vocab, cvae = sd["quantize.embedding.weight"].shape
        return "VAR VQ-VAE", {"vocab_size": vocab, "z_channels": cvae}
    if "text_proj_for_sos.ca.mat_q" in keys or any(k.startswith("block_chunks.") for k in keys):
        from .backbones.infinity.pipeline import guess_release

        depth = len({tuple(k.split(".")[1:4:2]) for k in keys if k.startswith("block_chunks.")}) or len(blocks)
        return "Infinity transformer", {"depth": depth, "width": sd["word_embed.weight"].shape[0],
                                        "hint": guess_release(sd)}
    if "quantizer.lfq.mask" in keys or (any(k.startswith("encoder.") for k in keys)
                                        and any(k.startswith("decoder.") for k in keys)):
        return "Infinity VAE (BSQ)" if "quantizer.lfq.mask" in keys else "autoencoder", {}
    if "context_embed.weight" in keys or any(k.startswith("diffloss.") for k in keys):
        from .backbones.hart.pipeline import guess_release

        return "HART transformer", {"depth": len(blocks), "hint": guess_release(sd)}
    if any(k.startswith("vae.") for k in keys):
        return "HART tokenizer", {}
    return "unknown", {}


def describe(path: str | Path) -> dict:
    path = Path(path)
    config = None
    target = path
    if path.is_dir() and (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
        files = [f for f in ("ema_model.bin", "pytorch_model.bin", "model.safetensors") if (path / f).exists()]
        target = path / files[0] if files else path
    sd = read_state_dict(target, what="input", unwrap=("vae", "state_dict", "model"))
    kind, details = _kind(sd)
    if config and "model_type" in config:
        kind = {"hart_transformer_t2i": "HART transformer", "hart_autoencoder_with_disc": "HART tokenizer"}.get(
            config["model_type"], kind)
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in sd.values())
    prefixes = Counter(k.split(".")[0] for k in sd)
    return {
        "path": str(path),
        "kind": kind,
        **details,
        "tensors": len(sd),
        "parameters": sum(t.numel() for t in sd.values() if t.is_floating_point()),
        "dtypes": dict(dtypes),
        "key_prefixes": dict(prefixes.most_common(12)),
    }


def format_description(d: dict) -> str:
    lines = [f"{d['path']}: {d['kind']}"]
    for key, value in d.items():
        if key not in ("path", "kind"):
            if key == "parameters":
                value = f"{value:,} ({value / 1e6:.1f}M, floating-point tensors incl. buffers)"
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)
