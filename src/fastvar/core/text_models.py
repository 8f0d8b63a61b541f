"""Local Hugging Face text models (T5 for Infinity, Qwen2 for HART): loading with clear errors."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FastVARError


def load_text_model(folder: str | Path, model_class: str, what: str, device: torch.device | str,
                    dtype: torch.dtype, **tokenizer_kwargs):
    """(tokenizer, model in eval mode on ``device``) from a local folder; ``model_class`` names a ``transformers``
    class. The weights are read in ``dtype`` (``from_pretrained(torch_dtype=...)``, as the official code loads them:
    the model class's own float32 exceptions apply, e.g. T5's ``wo`` projections) and then moved to ``device``."""
    try:
        import transformers
    except ImportError:
        raise FastVARError("text prompts need `transformers` (pip install 'fastvar-ctp[text]'); "
                           "or pass prompt_embeds=") from None
    folder, device = Path(folder), torch.device(device)
    if not folder.is_dir():
        raise FastVARError(f"{what} folder not found: {folder}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **tokenizer_kwargs)
        model = getattr(transformers, model_class).from_pretrained(str(folder), torch_dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FastVARError(f"cannot load a {what} from {folder}: {first}") from None
    return tokenizer, model.to(device).eval().requires_grad_(False)
