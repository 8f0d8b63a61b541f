"""Class-conditional VAR generation from the official checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from ...core.loading import StateDict, build_and_load, move_parameters, read_state_dict, release_hint
from ...core.sampling import check_sampling_args
from ...errors import CheckpointError, FastVARError
from ...outputs import GenerationOutput, check_output_type
from ...pipeline import Pipeline, StepCallback, resolve_generator
from ...pruning import PruningSchedule
from ..common import quantized_layers
from .config import CONFIGS, VARModelSpec, load_spec
from .model import VAR, VARState
from .vqvae import VQVAE

VAE_DERIVED = [r"quantize\.ema_vocab_hit_SV"]
VAR_DERIVED = [r"lvl_1L", r"attn_bias_for_masking", r"blocks\.\d+\.attn\.zero_k_bias"]


def guess_release(sd: StateDict) -> str:
    """A hint naming the release a VAR transformer state dict looks like (for error messages)."""
    if "class_emb.weight" not in sd:
        return "this does not look like a VAR transformer checkpoint (no class_emb.weight)"
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    releases = {n: (s.var.depth, s.var.embed_dim) for n, s in CONFIGS.items()}
    return release_hint(depth, sd["class_emb.weight"].shape[1], releases)


class VARPipeline(Pipeline):
    def __init__(self, spec: VARModelSpec, vae: VQVAE, model: VAR, device: torch.device):
        self.spec, self.vae, self.model, self.device = spec, vae, model, device

    @classmethod
    def from_files(cls, vae: str | Path | None = None, transformer: str | Path | None = None,
                   config: str | Path | dict = "var-d16", device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, random_weights: bool = False,
                   quantize: str | None = None) -> VARPipeline:
        """Load the official ``vae_ch160v4096z32.pth`` + ``var_dNN.pth`` (or safetensors) strictly.

        ``random_weights=True`` builds the architecture with seeded random weights instead (for benchmarks and smoke
        tests: the images are noise). ``quantize="int8"``: the blocks' linear layers keep int8 weights
        (``fastvar.core.quantize``; not exact).
        """
        int8_layers = quantized_layers(quantize)
        spec = load_spec(config)
        device = torch.device(device)
        if random_weights:
            if vae is not None or transformer is not None:
                raise FastVARError("random_weights=True takes no checkpoint paths")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                vqvae = VQVAE(spec.vae).to(device).eval().requires_grad_(False)
                model = VAR(spec.var, vqvae).eval().requires_grad_(False)
            return cls(spec, vqvae, move_parameters(model, device, dtype, int8_layers), device)
        if vae is None or transformer is None:
            raise FastVARError("VAR needs vae= (vae_ch160v4096z32.pth) and transformer= (var_dNN.pth) checkpoints")
        vae_sd = read_state_dict(vae, what="VAR VQ-VAE")
        if "class_emb.weight" in vae_sd:
            raise CheckpointError(f"{vae} is a VAR transformer checkpoint, not the VQ-VAE (swap vae= and transformer=?)")
        vqvae = build_and_load(lambda: VQVAE(spec.vae), vae_sd, what="VAR VQ-VAE", derived=VAE_DERIVED,
                               device=device, dtype=torch.float32)
        var_sd = read_state_dict(transformer, what="VAR transformer")
        model = build_and_load(lambda: VAR(spec.var, vqvae), var_sd, what="VAR transformer", derived=VAR_DERIVED,
                               hint=guess_release(var_sd), device=device, dtype=dtype,
                               quantize=int8_layers)
        return cls(spec, vqvae, model, device)

    def __call__(
        self,
        class_labels: list[int] | torch.Tensor | None = None,
        *,
        num_images: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        cfg: float = 4.0,
        top_k: int = 900,
        top_p: float = 0.95,
        more_smooth: bool = False,
        pruning: None | str | PruningSchedule = None,
        cfg_off_last: int = 0,
        output_type: str = "pil",
        return_tokens: bool = False,
        timed: bool = False,
        on_step: StepCallback | None = None,
    ) -> GenerationOutput:
        """Generate one image per class label (``autoregressive_infer_cfg`` of the official code).

        ``class_labels=None`` draws ``num_images`` (default 1) labels uniformly from the generator, as the official
        code does. Defaults follow the official demo (cfg 4, top-k 900, top-p 0.95). ``cfg_off_last=N``: the last N
        scale steps unguided (conditional rows only, see ``Pipeline.run``).
        """
        check_sampling_args(cfg, top_k, top_p)
        check_output_type(output_type)
        stages = self.stage_timer(timed)
        rng = resolve_generator(seed, generator, self.device)
        labels = self._labels(class_labels, num_images, rng)
        state = self.model.prepare(labels, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return self.run_and_decode(state, self.model.scales, pruning=pruning, generator=rng,
                                   cfg_off_last=cfg_off_last, stages=stages, on_step=on_step,
                                   output_type=output_type, return_tokens=return_tokens)

    def images(self, state: VARState) -> torch.Tensor:
        return self.vae.fhat_to_img(state.f_hat).add(1).mul(0.5)

    def bench_config(self, batch: int, resolution: int | None) -> dict:
        """Call arguments and work-count facts for ``fastvar bench`` (random labels; VAR's size is fixed)."""
        if resolution not in (None, self.spec.image_size):
            raise FastVARError(f"this VAR model generates {self.spec.image_size}px images only, not {resolution}")
        labels = torch.arange(batch) % self.spec.var.num_classes
        return {"kwargs": {"class_labels": labels.tolist(), "seed": 0},
                "resolution": self.spec.image_size}

    def _labels(self, class_labels, num_images: int | None, rng: torch.Generator | None) -> torch.Tensor:
        n = self.spec.var.num_classes
        if class_labels is None:
            B = 1 if num_images is None else num_images
            if B < 1:
                raise FastVARError(f"num_images must be >= 1, got {B}")
            uniform = torch.full((1, n), 1.0 / n, device=self.device)
            return torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0 or (num_images is not None and num_images != labels.numel()):
            raise FastVARError(f"got {labels.numel()} class labels for num_images={num_images}")
        bad = [int(c) for c in labels if not 0 <= c < n]
        if bad:
            raise FastVARError(f"class label(s) {bad} out of range: this model has classes 0..{n - 1}")
        return labels.to(self.device)
