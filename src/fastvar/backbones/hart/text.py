"""HART's text condition: Qwen2 last hidden states of the prompt, encoded after HART's system prompt.

Reproduces mit-han-lab/hart ``hart/utils/tools.py`` ``encode_prompts`` as ``sample.py`` calls it
(``use_llm_system_prompt=True``, ``max_length=300``): every prompt is tokenised on its own with
``padding="max_length"`` and truncation, the system prompt (tokenised with ``padding="longest"``) is prepended with a
full attention mask, the Qwen2 model (``AutoModel``: no LM head) runs with the concatenated mask, and the last hidden
state at the prompt positions is kept as float32. The mask is ``tokens != pad_token_id`` and the position ids used
by HART are ``cumsum(mask) - 1``. ``transformers`` is an optional dependency (``pip install fastvar-ctp[text]``).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ...core.text_models import load_text_model
from ...errors import FastVARError

# hart/utils/constants.py llm_system_prompt (the text must match exactly: it changes the prompt features)
SYSTEM_PROMPT = """Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image generation.

Examples:
- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.
- User Prompt: A busy city street -> A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.

Please generate only the enhanced description for the prompt below and DO NOT include any additional sentences. Start your response with "Enhanced Prompt:".

User Prompt:\n"""


def context_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Official rule: cumsum(mask, 1) - 1 (B, L) int64 (left-padded rows start at -1)."""
    return torch.cumsum(mask.long(), dim=1) - 1


class Qwen2TextEncoder:
    """Tokenizer + Qwen2 model from a local folder (the release uses mit-han-lab/Qwen2-VL-1.5B-Instruct).

    As the official ``sample.py``: float32 weights (``dtype``), run under float16 autocast on CUDA (about 6 GB for
    Qwen2-VL-1.5B; ``dtype=torch.float16`` halves that, ``text_encoder_device="cpu"`` keeps it off the GPU).
    ``system_prompt=None`` encodes the prompts alone (official ``use_llm_system_prompt=False``).
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 system_prompt: str | None = SYSTEM_PROMPT):
        self.device = torch.device(device)
        self.tokenizer, self.model = load_text_model(folder, "AutoModel", "Qwen2 text model", self.device,
                                                     dtype)
        if self.tokenizer.pad_token_id is None:
            raise FastVARError(f"the tokenizer in {folder} has no pad token (HART pads prompts to a fixed length)")
        self.system_prompt = system_prompt

    @property
    def channels(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str], max_length: int, padding: str) -> list[torch.Tensor]:
        """Official ``tokenize_fn``: each text on its own, truncated to ``max_length``; (n,) int64 per text."""
        return [self.tokenizer(t, return_tensors="pt", padding=padding, max_length=max_length,
                               truncation=True).input_ids[0] for t in texts]

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> features (B, max_length, C) float32 and mask (B, max_length) bool (True = prompt token)."""
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise FastVARError("prompts must be a non-empty list of strings")
        for i, p in enumerate(prompts):
            n = len(self.tokenizer(p).input_ids)
            if n > max_length:
                warnings.warn(f"prompt {i} has {n} tokens; HART keeps the first {max_length} (official truncation)",
                              stacklevel=3)
        tokens = torch.stack(self.tokenize(prompts, max_length, "max_length")).to(self.device)
        mask = tokens != self.tokenizer.pad_token_id
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            if self.system_prompt is None:
                hidden = self.model(tokens, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            else:
                system = self.tokenize([self.system_prompt], max_length, "longest")[0].to(self.device)
                system = system.unsqueeze(0).repeat(tokens.shape[0], 1)
                system_mask = torch.ones_like(mask)[:, : system.shape[1]]
                out = self.model(torch.cat([system, tokens], dim=1),
                                 attention_mask=torch.cat([system_mask, mask], dim=1), output_hidden_states=True)
                hidden = out.hidden_states[-1][:, system.shape[1]:]
        return hidden.float(), mask
