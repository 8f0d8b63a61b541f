"""Local Hugging Face text models (T5 for Infinity, Qwen2 for HART): loading with clear errors."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FastVARError


def load_text_model(folder: str | Path, model_class: str, what: str, device: torch.device | str,
                    dtype: torch.dtype | None, **tokenizer_kwargs):
    """(tokenizer, model in eval mode on ``device``) from a local folder; ``model_class`` names a ``transformers``
    class. ``dtype`` None: float16 on CUDA (as the official code runs its text models), float32 elsewhere."""
    try:
        import transformers
    except ImportError:
        raise FastVARError("text prompts need `transformers` (pip install 'fastvar-ctp[text]'); "
                           "or pass prompt_embeds=") from None
    folder, device = Path(folder), torch.device(device)
    if not folder.is_dir():
        raise FastVARError(f"{what} folder not found: {folder}")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **tokenizer_kwargs)
        model = getattr(transformers, model_class).from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FastVARError(f"cannot load a {what} from {folder}: {first}") from None
    return tokenizer, model.to(device=device, dtype=dtype).eval().requires_grad_(False)
