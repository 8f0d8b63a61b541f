"""Text-to-image Infinity generation from the official checkpoints (``tools/run_infinity.py gen_one_img``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...core.loading import StateDict, build_and_load, move_parameters, read_state_dict, release_hint
from ...core.sampling import check_sampling_args
from ...errors import CheckpointError, FastVARError
from ...outputs import GenerationOutput, check_output_type
from ...pipeline import Pipeline, StepCallback, resolve_generator
from ...pruning import PruningSchedule
from ..common import in_blocks, quantized_layers
from . import schedules
from .config import CONFIGS, InfinityModelSpec, load_spec
from .model import Infinity, InfinityState, per_step
from .text import T5TextEncoder, TextCondition, as_text_condition
from .vae import DERIVED_KEYS as VAE_DERIVED
from .vae import InfinityVAE

# buffers the official code recomputes or pops in Infinity.load_state_dict
INFINITY_DERIVED = [r".*zero_k_bias", r"lvl_1L", r"attn_bias_for_masking", r"Infinity_visible_kvlen",
                    r"Infinity_invisible_qlen"]


def weight_dtypes(dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-parameter dtype of the transformer: ``dtype`` for the blocks (the official ``--bf16 1`` casts only them),
    float32 for text pooling, embeddings and head."""
    return lambda name: dtype if in_blocks(name) else torch.float32


def guess_release(sd: StateDict) -> str:
    """A hint naming the release an Infinity transformer state dict looks like (for error messages)."""
    if "word_embed.weight" not in sd or "cfg_uncond" not in sd:
        return "this does not look like an Infinity transformer checkpoint (no word_embed.weight / cfg_uncond)"
    blocks = {k.rsplit(".sa.", 1)[0] for k in sd if ".sa.mat_qkv." in k}
    releases = {n: (s.infinity.depth, s.infinity.embed_dim) for n, s in CONFIGS.items()}
    return release_hint(len(blocks), sd["word_embed.weight"].shape[0], releases)


class InfinityPipeline(Pipeline):
    def __init__(self, spec: InfinityModelSpec, vae: InfinityVAE, model: Infinity, device: torch.device,
                 text_encoder: T5TextEncoder | None = None):
        self.spec, self.vae, self.model, self.device, self.text_encoder = spec, vae, model, device, text_encoder

    @classmethod
    def from_files(cls, vae: str | Path | None = None, transformer: str | Path | None = None,
                   config: str | Path | dict = "infinity-2b", text_encoder: str | Path | None = None,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   random_weights: bool = False, text_encoder_device: str | torch.device | None = None,
                   quantize: str | None = None) -> InfinityPipeline:
        """Load the BSQ-VAE, the transformer and (optionally) a local T5 folder (Flan-T5-XL for the releases).

        ``dtype`` applies to the transformer blocks (the official ``--bf16 1`` casts the blocks to bfloat16); text
        pooling, embeddings, head and VAE weights stay float32, and with bfloat16 the VAE decodes under bfloat16
        autocast (see ``decode``). Use float32 on CPU. ``random_weights=True`` builds the
        architecture with seeded random weights (benchmarks; images are noise). ``text_encoder_device``: where the
        T5 encoder runs (default ``device``); ``"cpu"`` keeps its weights (about 2.9 GB for Flan-T5-XL's
        encoder in float16) off the GPU. ``quantize="int8"``: the blocks' linear layers keep int8 weights
        (``fastvar.core.quantize``; not exact).
        """
        int8_layers = quantized_layers(quantize)
        if dtype not in (torch.float32, torch.bfloat16):
            raise FastVARError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        spec = load_spec(config)
        device = torch.device(device)
        if random_weights:
            if vae is not None or transformer is not None or text_encoder is not None:
                raise FastVARError("random_weights=True takes no checkpoint paths (nor a text encoder)")
            with torch.random.fork_rng(devices=[]), torch.device(device):
                torch.manual_seed(0)
                bsq = InfinityVAE(spec.vae).eval().requires_grad_(False)
                model = Infinity(spec.infinity, bsq).eval().requires_grad_(False)
            return cls(spec, bsq, move_parameters(model, device, weight_dtypes(dtype), int8_layers), device)
        if vae is None or transformer is None:
            raise FastVARError("Infinity needs vae= (e.g. infinity_vae_d32reg.pth) and transformer= checkpoints")
        vae_sd = read_state_dict(vae, what="Infinity VAE", unwrap=("vae",))
        if "cfg_uncond" in vae_sd:
            raise CheckpointError(f"{vae} is an Infinity transformer checkpoint, not the VAE "
                                  "(swap vae= and transformer=?)")
        hint = f"expected an Infinity BSQ-VAE with codebook_dim={spec.vae.codebook_dim}"
        bsq = build_and_load(lambda: InfinityVAE(spec.vae), vae_sd, what="Infinity VAE", derived=VAE_DERIVED,
                             hint=hint, device=device)
        sd = read_state_dict(transformer, what="Infinity transformer")
        model = build_and_load(lambda: Infinity(spec.infinity, bsq), sd, what="Infinity transformer",
                               derived=INFINITY_DERIVED, hint=guess_release(sd), device=device,
                               dtype=weight_dtypes(dtype), quantize=int8_layers)
        encoder = None
        if text_encoder is not None:
            encoder = T5TextEncoder(text_encoder, device=text_encoder_device or device)
            if encoder.channels != spec.infinity.text_channels:
                raise FastVARError(f"text encoder has {encoder.channels} channels, the transformer expects "
                                   f"{spec.infinity.text_channels}")
        return cls(spec, bsq, model, device, encoder)

    def __call__(
        self,
        prompts: str | Sequence[str] | None = None,
        *,
        prompt_embeds: TextCondition | torch.Tensor | Sequence[torch.Tensor] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_prompt_embeds: TextCondition | torch.Tensor | Sequence[torch.Tensor] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        cfg: float | Sequence[float] = 3.0,
        tau: float | Sequence[float] = 0.5,
        top_k: int = 900,
        top_p: float = 0.97,
        h_div_w: float = 1.0,
        resolution: int | str = 1024,
        scale_schedule: Sequence[Sequence[int]] | None = None,
        pruning: None | str | PruningSchedule = None,
        cfg_off_last: int = 0,
        output_type: str = "pil",
        return_tokens: bool = False,
        timed: bool = False,
        on_step: StepCallback | None = None,
    ) -> GenerationOutput:
        """Generate one image per prompt (``autoregressive_infer_cfg`` as ``gen_one_img`` calls it: CFG on logits).

        Official settings: Infinity-2B cfg 3 (notebook) or 4 (``infer.sh``), tau 0.5; Infinity-8B cfg 3, tau 1.0;
        top_k 900, top_p 0.97 everywhere. ``cfg`` and ``tau`` take one value or one per scale step (the official
        ``cfg_list``/``tau_list``); a step with cfg 1 samples the conditional logits, and trailing such steps forward
        only the conditional rows (as ``cfg_off_last``). The schedule is the template nearest to ``h_div_w`` at
        ``resolution`` (256/512/768/1024 or "0.06M"/"0.25M"/"0.60M"/"1M"; zero-shot 1344/1664/2048, see ``schedules``), or
        ``scale_schedule`` given as (h, w) token grids (a prefix of a template's list; it overrides ``h_div_w`` and
        ``resolution``).
        Returns RGB images; ``tokens`` are the sampled bits (B, h*w, d) uint8 of every computed step, and
        ``stats`` names the template and schedule. ``cfg_off_last=N``: the last N scale steps unguided (official
        ``cfg_list`` with 1 there), forwarding only the conditional rows (see ``Pipeline.run``).
        """
        check_output_type(output_type)
        if scale_schedule is not None:
            scales, template = schedules.check_schedule(scale_schedule)
        else:
            template = schedules.nearest_template(h_div_w)
            scales = schedules.scale_schedule(template, resolution)
        cfgs, taus = per_step(cfg, len(scales), "cfg"), per_step(tau, len(scales), "tau")
        for value in cfgs:
            check_sampling_args(value, top_k, top_p)
        if not all(t > 0 for t in taus):
            raise FastVARError(f"tau must be > 0 (at every scale step), got {tau!r}")
        stages = self.stage_timer(timed)
        text = self._condition(prompts, prompt_embeds, "prompts", "prompt_embeds")
        negative = None
        if negative_prompt is not None or negative_prompt_embeds is not None:
            negative = self._condition(negative_prompt, negative_prompt_embeds, "negative_prompt",
                                       "negative_prompt_embeds")
            if len(negative) == 1 and len(text) > 1:
                negative = negative.repeat(len(text))
        rng = resolve_generator(seed, generator, self.device)
        state = self.model.prepare(text, scales, schedules.rope_grid(template), negative=negative, cfg=cfgs, tau=taus,
                                   top_k=top_k, top_p=top_p)
        out = self.run_and_decode(state, scales, pruning=pruning, generator=rng, stages=stages, on_step=on_step,
                                  cfg_off_last=max(cfg_off_last, state.unguided_tail), output_type=output_type,
                                  return_tokens=return_tokens)
        out.stats.update(h_div_w_template=template, scale_schedule=[list(s) for s in scales])
        return out

    def decode(self, summed_codes: torch.Tensor) -> torch.Tensor:
        """VAE decode to float32 images in [-1, 1]. With bfloat16 blocks it runs under bfloat16 autocast, as the
        official ``gen_one_img`` decodes inside its autocast: convolutions in bfloat16, GroupNorm in float32, about
        half the activation memory of a float32 decode (the peak of a 2048² call)."""
        bf16 = self.model.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.vae.decode(summed_codes).float()

    def images(self, state: InfinityState) -> torch.Tensor:
        return self.decode(state.summed_codes).add(1).div(2)

    def bench_config(self, batch: int, resolution: int | None, text_tokens: int = 64) -> dict:
        """Call arguments and work-count facts for ``fastvar bench``: random text features of the right width."""
        g = torch.Generator().manual_seed(0)
        feats = [torch.randn(text_tokens, self.spec.infinity.text_channels, generator=g) for _ in range(batch)]
        resolution = resolution or 1024
        return {"kwargs": {"prompt_embeds": [f.to(self.device) for f in feats], "seed": 0, "resolution": resolution},
                "text_tokens": text_tokens, "resolution": resolution}

    def _condition(self, prompts, embeds, what: str, what_embeds: str) -> TextCondition:
        if (prompts is None) == (embeds is None):
            raise FastVARError(f"pass exactly one of {what}= or {what_embeds}=")
        if embeds is not None:
            return as_text_condition(embeds, what_embeds)
        if self.text_encoder is None:
            raise FastVARError(f"text {what} need a text encoder: load the pipeline with text_encoder=<T5 folder>, "
                               f"or pass {what_embeds}=")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise FastVARError(f"{what} must be a string or a non-empty list of strings")
        return self.text_encoder(prompts)
