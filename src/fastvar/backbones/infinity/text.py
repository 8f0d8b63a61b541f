"""Text conditions for Infinity: packed T5 features, and a Flan-T5 encoder read from a local folder.

Reproduces ``tools/run_infinity.py encode_prompt``: tokenise to 512 tokens (``padding='max_length'``), run the T5
encoder with the attention mask, keep the first ``len_i`` feature rows of every prompt and concatenate them
(``kv_compact``; the official tuple also carries ``lens``, ``cu_seqlens_k`` and ``max_seqlen_k``). ``transformers`` is
an optional dependency (``pip install fastvar-ctp[text]``); precomputed features can be passed instead.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...core.text_models import load_text_model
from ...errors import FastVARError

TEXT_MAXLEN = 512


@dataclass
class TextCondition:
    """B prompts as packed T5 features: ``features`` (sum(lens), Ct5), prompt i in rows cu[i]:cu[i+1]."""

    features: torch.Tensor
    lens: list[int]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or not self.lens or sum(self.lens) != self.features.shape[0]:
            raise FastVARError(f"packed text features {tuple(self.features.shape)} do not match lengths {self.lens}")
        if min(self.lens) < 1:
            raise FastVARError(f"every prompt needs at least one token, got lengths {self.lens}")

    def __len__(self) -> int:
        return len(self.lens)

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """int32 (B+1,) = F.pad(cumsum(lens), (1, 0)), the official ``cu_seqlens_k``."""
        return F.pad(torch.tensor(self.lens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))

    @classmethod
    def from_padded(cls, features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextCondition:
        """(B, L, Ct5) encoder output + (B, L) mask of leading valid tokens (None: all L valid)."""
        if features.ndim != 3:
            raise FastVARError(f"padded text features must be (B, L, Ct5), got {tuple(features.shape)}")
        if attention_mask is None:
            lens = [features.shape[1]] * features.shape[0]
        else:
            lens = attention_mask.sum(dim=-1).tolist()
        return cls(torch.cat([f[:n] for f, n in zip(features.unbind(0), lens)]), [int(n) for n in lens])

    @classmethod
    def from_list(cls, features: Sequence[torch.Tensor]) -> TextCondition:
        """One (len_i, Ct5) tensor per prompt."""
        if not features or any(f.ndim != 2 for f in features):
            raise FastVARError("prompt_embeds as a list needs one (len_i, Ct5) tensor per prompt")
        return cls(torch.cat(list(features)), [f.shape[0] for f in features])

    def repeat(self, n: int) -> TextCondition:
        """The same prompts n times (a single negative prompt for a batch)."""
        return TextCondition(self.features.repeat(n, 1), self.lens * n)

    def to(self, device: torch.device | str) -> TextCondition:
        return TextCondition(self.features.to(device=device, dtype=torch.float32), self.lens)


def as_text_condition(embeds, what: str = "prompt_embeds") -> TextCondition:
    """Accept a TextCondition, a (B, L, Ct5) tensor (all rows valid), or a list of (len_i, Ct5) tensors."""
    if isinstance(embeds, TextCondition):
        return embeds
    if isinstance(embeds, torch.Tensor):
        return TextCondition.from_padded(embeds)
    if isinstance(embeds, (list, tuple)) and all(isinstance(e, torch.Tensor) for e in embeds):
        return TextCondition.from_list(embeds)
    raise FastVARError(f"{what} must be a TextCondition, a (B, L, C) tensor or a list of (len_i, C) tensors")


class T5TextEncoder:
    """Tokenizer + ``T5EncoderModel`` from a local folder (``load_tokenizer`` of run_infinity.py: Flan-T5-XL there).

    ``dtype``: default float16 on CUDA, as the official ``T5EncoderModel.from_pretrained(t5_path,
    torch_dtype=torch.float16)`` (which keeps the feed-forward ``wo`` projections in float32), float32 elsewhere.
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        self.device = torch.device(device)
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer, self.model = load_text_model(folder, "T5EncoderModel", "T5 text encoder", self.device,
                                                     dtype, legacy=True)
        self.tokenizer.model_max_length = TEXT_MAXLEN

    @property
    def channels(self) -> int:
        return self.model.config.d_model

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str]) -> TextCondition:
        """``encode_prompt`` for a batch: max-length padding, masked encoder, first len_i rows of each prompt.

        Prompts longer than 512 tokens are truncated, as the official code does (with a warning here).
        """
        too_long = [i for i, ids in enumerate(self.tokenizer(text=list(prompts)).input_ids) if len(ids) > TEXT_MAXLEN]
        if too_long:
            warnings.warn(f"prompt(s) {too_long} exceed {TEXT_MAXLEN} T5 tokens and are truncated", stacklevel=2)
        tokens = self.tokenizer(text=list(prompts), max_length=TEXT_MAXLEN, padding="max_length", truncation=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        features = self.model(input_ids=tokens.input_ids.to(self.device), attention_mask=mask)["last_hidden_state"]
        return TextCondition.from_padded(features.float(), mask)
