"""HART configurations: the official constructor arguments, the released sizes, and the folders' ``config.json``.

Reproduces the argument sets of mit-han-lab/hart ``HARTForT2IConfig`` (transformer, ``llm/config.json``) and
``HARTAutoEncoderWithDiscConfig`` (hybrid tokenizer, ``tokenizer/config.json``). Only the variant the release uses is
implemented (llama blocks, no AdaLN in blocks, TimestepEmbedder level embedding, hybrid VAR tokenizer); other
switches are rejected with a clear error.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ...errors import FastVARError
from ..var.vqvae import VQVAEConfig

# The release's 1024px schedule (14 scales; sequence 300 + 9451 - 1 = 9750 tokens).
PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
TRANSFORMER_TYPE = "hart_transformer_t2i"
TOKENIZER_TYPES = ("hart_autoencoder_with_disc", "hart_autoencoder")
# keys every Hugging Face config.json may carry besides the model's own arguments
HF_KEYS = frozenset({"model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                     "auto_map", "vae_path"})


def _known_kwargs(cls, config: Mapping[str, Any], what: str, ignored: frozenset[str] = frozenset()) -> dict:
    """The keys of ``config`` that are fields of ``cls`` (lists -> tuples); warn once about unknown extra keys."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(k for k in config if k not in names and k not in HF_KEYS and k not in ignored)
    if unknown:
        warnings.warn(f"{what} config: ignoring unknown key(s) {unknown}", stacklevel=3)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names}


@dataclass(frozen=True)
class HARTTokenizerConfig(VQVAEConfig):
    """``HARTAutoEncoderConfig`` with ``quantizer_type="var_hybrid"``: VAR's VQ-VAE arguments plus ``double_decoder``
    (a second decoder used in training only; its keys are skipped). Defaults are the release's (vocab 4096, Cvae 32,
    ch 160, the 14-scale 1024px schedule)."""

    v_patch_nums: tuple[int, ...] = PATCH_NUMS_1024
    double_decoder: bool = False

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> HARTTokenizerConfig:
        model_type = config.get("model_type")
        if model_type == TRANSFORMER_TYPE:
            raise FastVARError("this is a HART transformer config, not the tokenizer's (swap vae= and transformer=?)")
        if model_type is not None and model_type not in TOKENIZER_TYPES:
            raise FastVARError(f"not a HART tokenizer config: model_type {model_type!r} "
                               f"(expected {TOKENIZER_TYPES[0]})")
        quantizer = config.get("quantizer_type", "var")
        if quantizer != "var_hybrid":
            raise FastVARError(f"HART needs the hybrid tokenizer (quantizer_type 'var_hybrid'), got {quantizer!r}")
        ignored = frozenset({"levels", "quantizer_type", "hybrid", "disable_quant_resi", "freeze_codebook_for_hybrid"})
        return cls.from_kwargs(_known_kwargs(cls, config, "HART tokenizer", ignored))


@dataclass
class HARTConfig:
    """``HARTForT2IConfig`` keyword arguments (official names and defaults; dropout/flash flags only matter in
    training). ``patch_nums`` is the schedule the checkpoint was configured with; any square schedule can be run."""

    context_token: int = 77
    context_dim: int = 768
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = False
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    flash_if_available: bool = True
    fused_if_available: bool = True
    mlp_type: str = "gpt2"
    attn_type: str = "gpt2"
    disable_aln: bool = False
    use_timestep_embed: bool = False
    sep_aln_pooling_mode: str = "max"
    use_cross_attn: bool = False
    diff_width: int = 1024
    diff_depth: int = 6
    num_sampling_steps: str = "8"
    diffusion_batch_mul: int = 4
    sampler: str = "iddpm"
    use_context_norm: bool = False
    context_norm_scale: float = 1.0
    diffusion_head_repeats: int = 1

    def __post_init__(self) -> None:
        self.patch_nums = tuple(self.patch_nums)
        self.num_sampling_steps = str(self.num_sampling_steps)
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise FastVARError(f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must give a head_dim "
                               "divisible by 4 (2-D RoPE)")
        if self.context_token < 1:
            raise FastVARError(f"context_token must be >= 1 for text-to-image HART, got {self.context_token}")
        release = {"attn_type": "llama", "mlp_type": "llama", "disable_aln": True, "shared_aln": False,
                   "use_timestep_embed": True, "use_cross_attn": False, "attn_l2_norm": False}
        unsupported = {k: getattr(self, k) for k, v in release.items() if getattr(self, k) != v}
        if unsupported:
            raise FastVARError(f"unsupported HART variant {unsupported}: fastvar implements the released architecture "
                               f"{release}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU width of the official ``LlamaMLP``: int(C * mlp_ratio * 2/3 + 255) // 256 * 256."""
        return int((self.embed_dim * self.mlp_ratio * 2) / 3 + 255) // 256 * 256

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> HARTConfig:
        model_type = config.get("model_type", TRANSFORMER_TYPE)
        if model_type in TOKENIZER_TYPES:
            raise FastVARError("this is a HART tokenizer config, not the transformer's (swap vae= and transformer=?)")
        if model_type != TRANSFORMER_TYPE:
            raise FastVARError(f"not a HART text-to-image transformer config: model_type {model_type!r} "
                               f"(expected {TRANSFORMER_TYPE!r})")
        return cls(**_known_kwargs(cls, config, "HART transformer"))


@dataclass
class HARTModelSpec:
    """A HART release: its hybrid tokenizer and transformer configs."""

    tokenizer: HARTTokenizerConfig
    transformer: HARTConfig

    def to_json(self) -> dict:
        return {"tokenizer": asdict(self.tokenizer), "transformer": asdict(self.transformer)}


CONFIGS: dict[str, HARTModelSpec] = {
    # mit-han-lab/hart-0.7b-1024px: 24 llama blocks of width 1536 (24 heads of 64), SwiGLU 4096, 300 Qwen2-1.5B
    # context tokens, 14 scales, diffusion MLP 1024 x 6; tokenizer = VAR's VQ-VAE sizes with the hybrid quantizer.
    # The release config.json is not in the git repo: these sizes reproduce the published 732M parameters.
    # use_context_norm is not documented; the folder's config.json decides when loading with config=None.
    "hart-0.7b": HARTModelSpec(
        tokenizer=HARTTokenizerConfig(),
        transformer=HARTConfig(
            context_token=300, context_dim=1536, depth=24, embed_dim=1536, num_heads=24, mlp_ratio=4.0,
            patch_nums=PATCH_NUMS_1024, mlp_type="llama", attn_type="llama", disable_aln=True,
            use_timestep_embed=True, use_context_norm=True, diff_width=1024, diff_depth=6,
        ),
    ),
}


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FastVARError(f"{what} config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FastVARError(f"{what} config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FastVARError(f"{what} config {path} must hold a JSON object")
    return data


def load_spec(config: str | Path | dict | None, tokenizer_dir: Path | None = None,
              transformer_dir: Path | None = None) -> HARTModelSpec:
    """A registry name (``hart-0.7b``); None: the folders' ``config.json`` files; or a transformer config (a JSON
    path or dict in the ``llm/config.json`` format) with the tokenizer config from its folder (else the release's)."""
    if isinstance(config, str) and config in CONFIGS:
        return CONFIGS[config]

    def tokenizer() -> HARTTokenizerConfig:
        if tokenizer_dir is None:
            return HARTTokenizerConfig()
        return HARTTokenizerConfig.from_json(read_json(tokenizer_dir / "config.json", "HART tokenizer"))

    if config is None:
        if transformer_dir is None:
            raise FastVARError(f"config=None reads the checkpoint folders' config.json; pass a folder or one of "
                               f"{', '.join(CONFIGS)}")
        return HARTModelSpec(tokenizer(), HARTConfig.from_json(read_json(transformer_dir / "config.json",
                                                                         "HART transformer")))
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FastVARError(f"unknown HART config {str(config)!r}: not one of {', '.join(CONFIGS)} nor a JSON file")
        config = read_json(path, "HART transformer")
    if not isinstance(config, dict):
        raise FastVARError(f"config must be a name, a JSON path or a dict, got {type(config).__name__}")
    return HARTModelSpec(tokenizer(), HARTConfig.from_json(config))
