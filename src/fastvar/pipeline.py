"""``load_pipeline`` and what every backbone's pipeline shares: pruning, generator, the loop call, outputs."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .core.context import GenerationContext, StageTimer
from .core.loop import NextScaleModel, run_scales
from .errors import FastVARError
from .outputs import GenerationOutput, check_output_type, format_images
from .pruning import PruningSchedule, resolve_pruning
from .pruning.fastvar import kept_masks

BACKBONES = ("var", "infinity", "hart", "demo")
StepCallback = Callable[[int, Callable[[], torch.Tensor]], None]  # (scale step, decode the image so far)


class Pipeline:
    """Base of the backbone pipelines (diffusers-like: ``pipe(...)`` returns an output with ``.images``)."""

    model: NextScaleModel
    device: torch.device
    progress: bool = True

    def set_progress_bar_config(self, disable: bool = False) -> None:
        self.progress = not disable

    def run(
        self,
        state: Any,
        scales: Sequence[tuple[int, int]],
        *,
        pruning: None | str | PruningSchedule,
        generator: torch.Generator | None,
        cfg_off_last: int = 0,
        stages: StageTimer | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[list[torch.Tensor], GenerationContext]:
        """Run the shared next-scale loop over ``scales`` with the requested pruning (``state.B`` images).

        ``cfg_off_last=N``: the last N scale steps sample from the conditional logits alone and forward only the
        conditional rows (half their work). The unconditional rows never influence the conditional ones, so this is
        exactly guidance weight "off" at those steps (Infinity's ``cfg_list`` with 1 there), minus the wasted half.
        The KV and restoration caches are freed when the loop ends, before the backbone decodes: at 2048² they are
        GBs, and the VAE decoder's own activations peak then. ``stages``: the call's timer (``stage_timer``; None:
        untimed); the time until here is the ``condition`` stage, the loop and its set-up the ``loop`` stage, and an
        enabled timer also times every step. ``on_step(step, images)`` is called after each computed scale step;
        ``images()`` decodes what has been accumulated so far ((B, 3, H, W) in [0, 1]: a full VAE decode, so only
        on request)."""
        stages = stages or self.stage_timer(False)
        stages.mark("condition")
        schedule = resolve_pruning(pruning)
        pruner = schedule.pruner(len(scales), len(self.model.blocks)) if schedule is not None else None
        ctx = GenerationContext(scales, generator=generator, pruner=pruner, cfg_off_last=cfg_off_last,
                                timed=stages.enabled, device=self.device)
        report = None if on_step is None else lambda si: on_step(si, lambda: self.images(state))
        tokens = run_scales(self.model, state, ctx, progress=self.progress, on_step=report)
        ctx.kept_masks = kept_masks(ctx, rows=state.B)
        ctx.release()
        stages.mark("loop")
        return tokens, ctx

    def run_and_decode(self, state: Any, scales: Sequence[tuple[int, int]], *, pruning: None | str | PruningSchedule,
                       generator: torch.Generator | None, cfg_off_last: int, stages: StageTimer,
                       on_step: StepCallback | None, output_type: str, return_tokens: bool) -> GenerationOutput:
        """The end every backbone's call shares: ``run`` the loop, decode the images, make the output."""
        tokens, ctx = self.run(state, scales, pruning=pruning, generator=generator, cfg_off_last=cfg_off_last,
                               stages=stages, on_step=on_step)
        images = self.images(state)
        stages.mark("decode")
        return self.output(images, tokens, ctx, output_type=output_type, return_tokens=return_tokens, stages=stages)

    def images(self, state: Any) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] decoded from the latent ``state`` has accumulated (each backbone's own)."""
        raise NotImplementedError

    def stage_timer(self, timed: bool) -> StageTimer:
        """The timer of one call, started now (``timed=False``: records nothing)."""
        return StageTimer(self.device, timed)

    @staticmethod
    def output(images: torch.Tensor, tokens: list[torch.Tensor], ctx: GenerationContext, *, output_type: str,
               return_tokens: bool, stages: StageTimer) -> GenerationOutput:
        """The call's output; a timed call's stats get ``stages_ms`` (condition, loop, decode) and per-step times."""
        stats = ctx.stats()
        if stages.enabled:
            stats["stages_ms"] = stages.ms()
        return GenerationOutput(images=format_images(images, output_type), tokens=tokens if return_tokens else None,
                                stats=stats, kept_masks={si: m.cpu() for si, m in ctx.kept_masks.items()})


def resolve_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` wins; else a generator seeded with ``seed`` on ``device`` (the official RNG); else global RNG."""
    from .core.sampling import make_generator

    if generator is not None:
        if seed is not None:
            raise FastVARError("pass either seed= or generator=, not both")
        return generator
    return make_generator(seed, device)


def check_device(device: str | torch.device) -> None:
    """A clear error for a CUDA device this torch cannot use (instead of an assertion deep inside a constructor)."""
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise FastVARError(f"bad device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastVARError(f"device {str(device)!r} requested, but this torch {torch.__version__} sees no CUDA GPU "
                           "(use --device cpu, or a CUDA build of torch on a machine with a GPU)")


def load_pipeline(backbone: str, **kwargs) -> Pipeline:
    """Load a pipeline: ``load_pipeline("var", vae=..., transformer=..., config="var-d16", device=..., dtype=...)``;
    ``quantize="int8"`` keeps the transformer blocks' linear weights in int8 (half the bf16 memory; not exact).

    ``load_pipeline("demo")`` loads the built-in demo model (weights inside the package, no paths)."""
    check_device(kwargs.get("device", "cpu"))
    if kwargs.get("text_encoder_device") is not None:
        if kwargs.get("text_encoder") is None:
            raise FastVARError("text_encoder_device= needs a text_encoder= folder")
        check_device(kwargs["text_encoder_device"])
    if backbone == "var":
        from .backbones.var.pipeline import VARPipeline

        if kwargs.get("text_encoder") is not None:
            raise FastVARError("VAR is class-conditional: it takes no text encoder")
        return VARPipeline.from_files(**{k: v for k, v in kwargs.items() if k not in ("text_encoder",
                                                                                     "text_encoder_device")})
    if backbone == "hart":
        from .backbones.hart.pipeline import HARTPipeline

        return HARTPipeline.from_files(**kwargs)
    if backbone == "infinity":
        from .backbones.infinity.pipeline import InfinityPipeline

        return InfinityPipeline.from_files(**kwargs)
    if backbone == "demo":
        from .demo.pipeline import load_demo

        own = ("device", "dtype", "folder", "quantize")
        extra = sorted(k for k, v in kwargs.items() if k not in own and v not in (None, False))
        if extra:
            raise FastVARError(f"the built-in demo model takes no {', '.join(extra)} (its weights ship with fastvar)")
        return load_demo(**{k: v for k, v in kwargs.items() if k in own})
    raise FastVARError(f"unknown or not yet supported backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


__all__ = ["Pipeline", "load_pipeline", "check_output_type"]
