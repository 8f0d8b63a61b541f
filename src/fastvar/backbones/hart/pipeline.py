"""Text-to-image HART generation from the official checkpoint folders (``tokenizer/``, ``llm/``, a Qwen2 folder)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...core.loading import StateDict, build_and_load, move_parameters, read_state_dict, release_hint
from ...core.sampling import check_sampling_args, make_generator
from ...errors import CheckpointError, FastVARError
from ...outputs import GenerationOutput, check_output_type
from ...pipeline import Pipeline, StepCallback, resolve_generator
from ...pruning import PruningSchedule
from ..common import quantized_layers
from .config import CONFIGS, PATCH_NUMS_1024, HARTModelSpec, load_spec
from .model import HARTForT2I, HARTState
from .text import Qwen2TextEncoder, context_position_ids
from .tokenizer import HARTTokenizer

TOKENIZER_FILES = ("pytorch_model.bin", "model.safetensors")
TRANSFORMER_FILES = ("ema_model.bin", "model.safetensors", "pytorch_model.bin")  # sample.py loads the EMA weights
TOKENIZER_DERIVED = [r"quantize\.ema_vocab_hit_SV"]
DOUBLE_DECODER = [r"decoder2\..*", r"post_quant_conv2\..*"]  # training-only second decoder
TRANSFORMER_DERIVED = [r"lvl_1L", r"attn_bias_for_masking", r"blocks\.\d+\.attn\.zero_k_bias"]


def weight_dtypes(dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-parameter dtype of the transformer: ``dtype``, except the diffusion head, which stays float32."""
    return lambda name: torch.float32 if name.startswith("diffloss.") else dtype


def checkpoint_dir(path: str | Path, what: str) -> Path:
    """The folder holding ``config.json``: ``path`` itself, or the folder of a weights file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} folder not found: {path}")
    return path if path.is_dir() else path.parent


def find_weights(path: str | Path, names: Sequence[str], what: str) -> Path:
    """The weights file of a checkpoint folder (first of ``names``, else a sharded-safetensors folder), or ``path``
    itself when it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    if any(path.glob("*.safetensors.index.json")):
        return path
    raise CheckpointError(f"no {what} weights in {path} (expected {' or '.join(names)})")


def tokenizer_state_dict(sd: StateDict, path: Path) -> StateDict:
    """``HARTAutoEncoderWithDisc`` keys -> the autoencoder's: strip ``vae.``, skip the GAN discriminator ``disc.*``."""
    if "word_embed.weight" in sd or "context_embed.weight" in sd:
        raise CheckpointError(f"{path} is a HART transformer checkpoint, not the tokenizer "
                              "(swap vae= and transformer=?)")
    return {k.removeprefix("vae."): v for k, v in sd.items() if not k.startswith("disc.")}


def tokenizer_hint(sd: StateDict) -> str:
    """What a tokenizer state dict holds (for error messages)."""
    codebook, conv_in = sd.get("quantize.embedding.weight"), sd.get("encoder.conv_in.weight")
    if codebook is None or conv_in is None:
        return "this does not look like a HART tokenizer checkpoint"
    return (f"the checkpoint has vocab {codebook.shape[0]}, Cvae {codebook.shape[1]}, ch {conv_in.shape[0]} "
            "(config=None reads the folder's config.json)")


def guess_release(sd: StateDict) -> str:
    """A hint naming what a transformer state dict looks like (for error messages)."""
    if any(k.startswith(("vae.", "encoder.", "quantize.")) for k in sd):
        return "this is a tokenizer checkpoint, not the HART transformer (swap vae= and transformer=?)"
    if "context_embed.weight" not in sd:
        return "this does not look like a HART text-to-image transformer (no context_embed.weight)"
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    width, context_dim = sd["context_embed.weight"].shape
    releases = {n: (s.transformer.depth, s.transformer.embed_dim) for n, s in CONFIGS.items()}
    return release_hint(depth, width, releases, details=f", context_dim {context_dim}",
                        otherwise=" (config=None reads the folder's config.json)")


class HARTPipeline(Pipeline):
    def __init__(self, spec: HARTModelSpec, vae: HARTTokenizer, model: HARTForT2I, device: torch.device,
                 text_encoder: Qwen2TextEncoder | None = None):
        self.spec, self.vae, self.model, self.device, self.text_encoder = spec, vae, model, device, text_encoder

    @classmethod
    def from_files(cls, vae: str | Path | None = None, transformer: str | Path | None = None,
                   config: str | Path | dict | None = None, text_encoder: str | Path | None = None,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   random_weights: bool = False, text_encoder_device: str | torch.device | None = None,
                   quantize: str | None = None) -> HARTPipeline:
        """Load the release folders strictly: ``vae`` = ``tokenizer/`` (``pytorch_model.bin`` or
        ``model.safetensors``), ``transformer`` = ``llm/`` (``ema_model.bin``, as sample.py), ``text_encoder`` = the
        Qwen2 folder (optional: without it pass ``prompt_embeds``). ``config=None`` reads the folders' config.json.
        ``text_encoder_device``: where the text model runs (default ``device``); ``"cpu"`` keeps its weights (about
        6 GB for Qwen2-VL-1.5B: float32, as the official code loads them) off the GPU.

        ``random_weights=True`` builds the architecture (``config``, default ``"hart-0.7b"``) with seeded random
        weights instead (for benchmarks and smoke tests: the images are noise). ``dtype`` applies to the transformer;
        the tokenizer and the diffusion head stay float32 (the head's weights are never rounded to ``dtype``).
        ``quantize="int8"``: the blocks' linear layers keep int8 weights (``fastvar.core.quantize``; not exact).
        """
        int8_layers = quantized_layers(quantize)
        device = torch.device(device)
        if random_weights:
            if vae is not None or transformer is not None or text_encoder is not None:
                raise FastVARError("random_weights=True takes no checkpoint paths (nor a text encoder)")
            spec = load_spec("hart-0.7b" if config is None else config)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                tokenizer = HARTTokenizer(spec.tokenizer).to(device).eval().requires_grad_(False)
                model = HARTForT2I(spec.transformer, tokenizer)
            model = move_parameters(model, device, weight_dtypes(dtype), int8_layers)
        else:
            if vae is None or transformer is None:
                raise FastVARError("HART needs vae= (the tokenizer/ folder) and transformer= (the llm/ folder)")
            spec = load_spec(config, checkpoint_dir(vae, "HART tokenizer"),
                             checkpoint_dir(transformer, "HART transformer"))
            vae_file = find_weights(vae, TOKENIZER_FILES, "HART tokenizer")
            llm_file = find_weights(transformer, TRANSFORMER_FILES, "HART transformer")
            derived = TOKENIZER_DERIVED + (DOUBLE_DECODER if spec.tokenizer.double_decoder else [])
            vae_sd = tokenizer_state_dict(read_state_dict(vae_file, what="HART tokenizer"), vae_file)
            tokenizer = build_and_load(lambda: HARTTokenizer(spec.tokenizer), vae_sd, what="HART tokenizer",
                                       derived=derived, hint=tokenizer_hint(vae_sd), device=device,
                                       dtype=torch.float32)
            llm_sd = read_state_dict(llm_file, what="HART transformer")
            model = build_and_load(lambda: HARTForT2I(spec.transformer, tokenizer), llm_sd, what="HART transformer",
                                   derived=TRANSFORMER_DERIVED, hint=guess_release(llm_sd), device=device,
                                   dtype=weight_dtypes(dtype), quantize=int8_layers)
        model.eval().requires_grad_(False)
        encoder = None
        if text_encoder is not None:
            encoder = Qwen2TextEncoder(text_encoder, device=text_encoder_device or device)
            if encoder.channels != spec.transformer.context_dim:
                raise FastVARError(f"the text model in {text_encoder} has hidden size {encoder.channels}, the HART "
                                   f"transformer expects context_dim {spec.transformer.context_dim}")
        return cls(spec, tokenizer, model, device, encoder)

    def __call__(
        self,
        prompts: Sequence[str] | None = None,
        *,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        diffusion_seed: int | None = None,
        cfg: float = 4.5,
        top_k: int | None = None,
        top_p: float = 0.0,
        more_smooth: bool = True,
        diffusion: bool = True,
        resolution: int | None = None,
        scale_schedule: Sequence[int | tuple[int, int]] | None = None,
        pruning: None | str | PruningSchedule = None,
        cfg_off_last: int = 0,
        output_type: str = "pil",
        return_tokens: bool = False,
        timed: bool = False,
        on_step: StepCallback | None = None,
    ) -> GenerationOutput:
        """Generate one image per prompt (official ``autoregressive_infer_cfg`` as ``sample.py`` runs it).

        ``prompts`` need a text encoder; or pass Qwen2 features ``prompt_embeds`` (B, context_token, context_dim) and
        ``prompt_attention_mask`` (B, context_token) bool (None: every position is a prompt token). ``seed`` drives
        token sampling, ``diffusion_seed`` (default: ``seed``) the diffusion head's noise. ``top_k=None`` is the
        official rule (600 for scales < 7, else 300); an int overrides every scale. ``more_smooth`` (Gumbel-soft
        codebook mix) is on in the official sample.py. ``diffusion=False`` skips the residual diffusion head
        (official ``final_stage=1``). ``resolution`` (1024) or ``scale_schedule`` (square sides, first 1) choose the
        schedule; default: the transformer config's ``patch_nums``. ``cfg_off_last=N``: the last N scale steps
        unguided (conditional rows only, see ``Pipeline.run``); an unguided final step uses the diffusion head's
        unguided sampler.
        """
        check_sampling_args(cfg, 0 if top_k is None else top_k, top_p)
        check_output_type(output_type)
        stages = self.stage_timer(timed)
        context, mask = self._condition(prompts, prompt_embeds, prompt_attention_mask)
        patch_nums = self._schedule(resolution, scale_schedule)
        rng = resolve_generator(seed, generator, self.device)
        state = self.model.prepare(context, context_position_ids(mask), patch_nums, cfg=cfg, top_k=top_k,
                                   top_p=top_p, more_smooth=more_smooth, diffusion=diffusion,
                                   diffusion_generator=self._diffusion_generator(seed, diffusion_seed))
        return self.run_and_decode(state, [(pn, pn) for pn in patch_nums], pruning=pruning, generator=rng,
                                   cfg_off_last=cfg_off_last, stages=stages, on_step=on_step,
                                   output_type=output_type, return_tokens=return_tokens)

    def images(self, state: HARTState) -> torch.Tensor:
        return self.vae.fhat_to_img(state.f_hat).add(1).mul(0.5)

    def bench_config(self, batch: int, resolution: int | None) -> dict:
        """Call arguments and work-count facts for ``fastvar bench``: random context features, every token real."""
        t = self.spec.transformer
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(batch, t.context_token, t.context_dim, generator=g)
        patch_nums = self._schedule(resolution, None)
        return {"kwargs": {"prompt_embeds": feats, "seed": 0, "scale_schedule": list(patch_nums)},
                "prefix_tokens": t.context_token - 1, "resolution": 16 * patch_nums[-1]}

    def _condition(self, prompts, prompt_embeds, prompt_attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, context_token, context_dim) float features and (B, context_token) bool mask on the device."""
        Lc, Cc = self.spec.transformer.context_token, self.spec.transformer.context_dim
        if (prompts is None) == (prompt_embeds is None):
            raise FastVARError("pass either prompts=[...] or prompt_embeds=, not both (nor neither)")
        if prompts is not None:
            if self.text_encoder is None:
                raise FastVARError("prompts need a Qwen2 text encoder: load with text_encoder=FOLDER, or pass "
                                   "prompt_embeds=")
            features, mask = self.text_encoder(prompts, Lc)
            return features.to(self.device), mask.to(self.device)
        if not isinstance(prompt_embeds, torch.Tensor) or tuple(prompt_embeds.shape[1:]) != (Lc, Cc):
            shape = tuple(prompt_embeds.shape) if isinstance(prompt_embeds, torch.Tensor) else type(prompt_embeds)
            raise FastVARError(f"prompt_embeds must be (B, {Lc}, {Cc}) (context_token, context_dim), got {shape}")
        B = prompt_embeds.shape[0]
        if prompt_attention_mask is None:
            mask = torch.ones(B, Lc, dtype=torch.bool)
        else:
            mask = torch.as_tensor(prompt_attention_mask)
            if mask.shape != (B, Lc):
                raise FastVARError(f"prompt_attention_mask must be (B, {Lc}) = {(B, Lc)}, got {tuple(mask.shape)}")
            mask = mask.bool()
        return prompt_embeds.to(self.device, torch.float32), mask.to(self.device)

    def _schedule(self, resolution: int | None, scale_schedule) -> tuple[int, ...]:
        """Square patch sides of every scale step; the first must be 1 (the token sampled after the context)."""
        if resolution is not None and scale_schedule is not None:
            raise FastVARError("pass either resolution= or scale_schedule=, not both")
        down = self.vae.cfg.downsample
        if scale_schedule is not None:
            sides = []
            for s in scale_schedule:
                h, w = (s, s) if isinstance(s, int) else tuple(s)
                if h != w or h < 1:
                    raise FastVARError(f"HART scale steps must be square (h == w >= 1), got {s!r}")
                sides.append(int(h))
            if len(sides) < 2 or sides[0] != 1:
                raise FastVARError(f"a HART schedule needs >= 2 steps starting with 1x1, got {sides}")
            return tuple(sides)
        known = {down * pns[-1]: pns for pns in (PATCH_NUMS_1024, self.spec.transformer.patch_nums)}
        if resolution is None:
            return self.spec.transformer.patch_nums
        if resolution not in known:
            raise FastVARError(f"no HART schedule for resolution {resolution}; known: {sorted(known)} "
                               "(or pass scale_schedule=)")
        return known[resolution]

    def _diffusion_generator(self, seed: int | None, diffusion_seed: int | None) -> torch.Generator:
        """The diffusion head's noise generator: ``diffusion_seed``, else ``seed``, else a randomly seeded one."""
        s = diffusion_seed if diffusion_seed is not None else seed
        if s is not None:
            return make_generator(s, self.device)
        g = torch.Generator(device=self.device)
        g.seed()
        return g
