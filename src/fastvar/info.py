"""``fastvar info``: say what a checkpoint is (model kind, size, keys) without building a model."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from .backbones.common import in_blocks
from .core.loading import StateDict, key_matcher, read_state_dict


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


def device_weights(sd: StateDict, kind: str) -> dict[str, int] | None:
    """Bytes a transformer checkpoint's weights take once loaded, for each ``dtype=`` choice and with int8 blocks
    (``quantize="int8"``): the backbone's own per-parameter dtypes, derived buffers left out. None for other kinds."""
    if kind == "VAR transformer":
        from .backbones.var.pipeline import VAR_DERIVED as derived

        rule = lambda dtype: lambda name: dtype  # noqa: E731  (VAR casts every weight)
    elif kind == "Infinity transformer":
        from .backbones.infinity.pipeline import INFINITY_DERIVED as derived
        from .backbones.infinity.pipeline import weight_dtypes as rule
    elif kind == "HART transformer":
        from .backbones.hart.pipeline import TRANSFORMER_DERIVED as derived
        from .backbones.hart.pipeline import weight_dtypes as rule
    else:
        return None
    is_derived = key_matcher(derived)
    weights = {k: t for k, t in sd.items() if t.is_floating_point() and not is_derived(k)}

    def size(dtype: torch.dtype, int8: bool) -> int:
        dtype_of, total = rule(dtype), 0
        for name, t in weights.items():
            width = dtype_of(name).itemsize
            if int8 and in_blocks(name) and name.endswith(".weight") and t.ndim == 2:  # a linear layer's weight
                total += t.numel() + t.shape[0] * width  # int8 codes + one scale per output row
            else:
                total += t.numel() * width
        return total

    return {"float32": size(torch.float32, False), "bfloat16": size(torch.bfloat16, False),
            "bfloat16 + int8 blocks": size(torch.bfloat16, True)}


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
    on_device = device_weights(sd, kind)
    if on_device is not None:
        details["device_weights_bytes"] = on_device
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


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_description(d: dict) -> str:
    lines = [f"{d['path']}: {d['kind']}"]
    for key, value in d.items():
        if key not in ("path", "kind"):
            if key == "parameters":
                value = f"{value:,} ({value / 1e6:.1f}M, floating-point tensors incl. buffers)"
            elif key == "device_weights_bytes":
                key, value = "weights once loaded", ", ".join(f"{k} {_size(v)}" for k, v in value.items())
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)
