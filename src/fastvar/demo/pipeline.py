"""The built-in demo model: a small Infinity (BSQ-VAE + transformer) with a byte-level text encoder, trained on
Noto emoji by ``fastvar.demo.train`` and shipped in ``fastvar/demo/weights`` (see docs/demo-model.md).

``load_demo()`` (= ``load_pipeline("demo")``) needs no paths and no network: 64x64 images from the 1:1 ``0.06M``
schedule (1, 2, 4, 6, 8, 12, 16: final token map 16x16), with the demo's own sampling defaults.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..backbones.common import quantized_layers
from ..backbones.infinity import schedules
from ..backbones.infinity.config import InfinityModelSpec, load_spec
from ..backbones.infinity.model import Infinity
from ..backbones.infinity.pipeline import INFINITY_DERIVED, InfinityPipeline, weight_dtypes
from ..backbones.infinity.vae import DERIVED_KEYS as VAE_DERIVED
from ..backbones.infinity.vae import InfinityVAE
from ..core.loading import build_and_load, read_state_dict
from ..errors import FastVARError
from ..outputs import GenerationOutput
from .text import ByteTextConfig, ByteTextEncoder

# sampling defaults of the demo (chosen on the shipped weights, docs/demo-model.md); any call argument overrides them
DEMO_DEFAULTS = {"cfg": 1.0, "tau": 0.5, "top_k": 0, "top_p": 0.0, "resolution": "0.06M"}
# FastVAR preset for the demo: prune the 12x12 step by 50 % (cached from 8x8), skip the 16x16 step
DEMO_PRUNING = "0.5,1"


def demo_folder() -> Path:
    return Path(str(resources.files("fastvar.demo")))


class DemoPipeline(InfinityPipeline):
    """``InfinityPipeline`` whose unset call arguments take the demo's defaults (``DEMO_DEFAULTS``)."""

    def __call__(self, prompts=None, **kwargs) -> GenerationOutput:
        if kwargs.get("scale_schedule") is None:
            kwargs.setdefault("resolution", DEMO_DEFAULTS["resolution"])
        for name in ("cfg", "tau", "top_k", "top_p"):
            kwargs.setdefault(name, DEMO_DEFAULTS[name])
        return super().__call__(prompts, **kwargs)

    def bench_config(self, batch: int, resolution: int | None, text_tokens: int = 12) -> dict:
        """``resolution`` names an Infinity schedule (256 = 0.06M, the demo's own); the report gives the image side
        (the demo's VAE has patch 4: 64 px at 0.06M)."""
        cfg = super().bench_config(batch, resolution or 256, text_tokens)
        cfg["resolution"] = schedules.scale_schedule(1.0, resolution or 256)[-1][1] * self.vae.cfg.patch_size
        return cfg


def load_demo(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              folder: str | Path | None = None, quantize: str | None = None) -> DemoPipeline:
    """Build the demo pipeline from ``demo.json`` and ``weights/*.safetensors`` (the package's own by default);
    ``quantize="int8"`` as for Infinity."""
    int8_layers = quantized_layers(quantize)
    folder = Path(folder) if folder is not None else demo_folder()
    config_path, weights = folder / "demo.json", folder / "weights"
    if not config_path.is_file() or not (weights / "transformer.safetensors").is_file():
        raise FastVARError(f"demo model files missing in {folder} (train them: fastvar train-demo --out RUN "
                           f"--export {folder})")
    config = json.loads(config_path.read_text())
    spec: InfinityModelSpec = load_spec({"vae": config["vae"], "infinity": config["infinity"]})
    device = torch.device(device)
    vae = build_and_load(lambda: InfinityVAE(spec.vae), read_state_dict(weights / "vae.safetensors", what="demo VAE"),
                         what="demo VAE", derived=VAE_DERIVED, device=device)
    model = build_and_load(lambda: Infinity(spec.infinity, vae),
                           read_state_dict(weights / "transformer.safetensors", what="demo transformer"),
                           what="demo transformer", derived=INFINITY_DERIVED, device=device,
                           dtype=weight_dtypes(dtype), quantize=int8_layers)
    text_cfg = ByteTextConfig(**config["text_encoder"])
    text = build_and_load(lambda: ByteTextEncoder(text_cfg),
                          read_state_dict(weights / "text_encoder.safetensors", what="demo text encoder"),
                          what="demo text encoder", device=device)
    return DemoPipeline(spec, vae, model, device, text)
