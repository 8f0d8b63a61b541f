"""Per-generation state: scale schedule, guided steps, RNG, KV caches, the pruning hook and statistics.

One ``GenerationContext`` is made for every call and never stored on a module, so batches, aspect ratios and
concurrent pipelines never share state. Every residual branch of every block goes through ``ctx.branch``; with no
pruning it is ``fn(x)``, so a disabled plug-in is bit-identical to the backbone by construction.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import FastVARError


class Pruner(Protocol):
    """What the loop and blocks ask of a token-pruning method (see ``fastvar.pruning``)."""

    def skips(self, si: int) -> bool: ...

    def tokens_kept(self, si: int, layer: int, num_tokens: int) -> int: ...  # K/V rows a layer adds at step si

    def branch(self, ctx: GenerationContext, layer: int, name: str, fn: Callable[[torch.Tensor], torch.Tensor],
               x: torch.Tensor) -> torch.Tensor: ...


class NoPruning:
    """Identity: every step computed, every token forwarded."""

    def skips(self, si: int) -> bool:
        return False

    def tokens_kept(self, si: int, layer: int, num_tokens: int) -> int:
        return num_tokens

    def branch(self, ctx, layer, name, fn, x):
        return fn(x)


class KVCache:
    """Keys/values of one attention layer, preallocated for the whole schedule and written at an offset.

    Shapes are (B, H, capacity, D). The capacity is what the layer will store (pruned steps add only their kept
    tokens, skipped steps nothing, and the final computed step nothing: no later step reads its keys), so no memory is
    reserved for tokens that never come; writing past it grows the buffer (a safety net, never needed when the
    capacity is right). A step may forward fewer rows than the cache holds (the unguided last steps forward only the
    conditional rows, which come first): it writes and reads those first rows only.
    """

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor, store: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, l, D) keys/values after the cached ones; return views of everything cached so far.

        ``store=False`` (the final step) returns the cached keys/values joined with these in a temporary instead: one
        layer's temporary at a time replaces every layer holding the final step's keys (at 2048² Infinity-2B without
        pruning the final 128x128 step is 40 % of the KV cache)."""
        rows = k.shape[0]
        if not store:
            if self.length == 0:
                return k, v
            return (torch.cat((self.k[:rows, :, :self.length], k), 2),
                    torch.cat((self.v[:rows, :, :self.length], v), 2))
        if self.k is None:
            B, H, _, D = k.shape
            self.k = k.new_empty(B, H, self.capacity, D)
            self.v = v.new_empty(B, H, self.capacity, v.shape[-1])
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            self.k, self.v = (torch.cat((t, t.new_empty(*t.shape[:2], end - t.shape[2], t.shape[3])), 2)
                              for t in (self.k, self.v))
        self.k[:rows, :, self.length:end] = k
        self.v[:rows, :, self.length:end] = v
        self.length = end
        return self.k[:rows, :, :end], self.v[:rows, :, :end]


class StepClock:
    """Per-step wall time that never synchronises inside the loop: CUDA events on a CUDA device (read after the
    loop), ``perf_counter`` elsewhere (CPU work is synchronous)."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"

    def now(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def ms(self, start, end) -> float:
        if not self.cuda:
            return (end - start) * 1e3
        end.synchronize()
        return start.elapsed_time(end)


class StageTimer:
    """Named stages of one pipeline call, timed like the steps (``StepClock``: CUDA events read when the output is
    made, no synchronisation in between). ``mark(name)`` ends the stage ``name`` at the current point; disabled, it
    records nothing."""

    def __init__(self, device: torch.device, enabled: bool):
        self.clock = StepClock(device) if enabled else None
        self._marks = [("start", self.clock.now())] if enabled else []

    @property
    def enabled(self) -> bool:
        return self.clock is not None

    def mark(self, name: str) -> None:
        if self.clock is not None:
            self._marks.append((name, self.clock.now()))

    def ms(self) -> dict[str, float]:
        """Milliseconds per stage, in call order."""
        return {name: round(self.clock.ms(start, end), 3)
                for (_, start), (name, end) in zip(self._marks, self._marks[1:])}


@dataclass
class StepStats:
    """What one scale step did: its map size, batch rows forwarded (with CFG 2B, B when unguided), tokens forwarded
    per layer (when pruned), time."""

    step: int
    hw: tuple[int, int]
    skipped: bool = False
    rows: int = 0
    kept: dict[int, int] = field(default_factory=dict)  # layer -> tokens forwarded (pruned layers only)
    ms: float | None = None  # the whole step: input embedding, blocks, head, sampling, latent update
    blocks_ms: float | None = None  # the transformer blocks alone

    @property
    def tokens(self) -> int:
        """Tokens of the step's map (what unpruned layers forward; pruned layers' counts are in ``kept``)."""
        if self.skipped:
            return 0
        return self.hw[0] * self.hw[1]

    def as_dict(self) -> dict:
        d = {"step": self.step, "hw": list(self.hw), "skipped": self.skipped, "tokens": self.tokens, "rows": self.rows}
        if self.kept:
            d["kept_per_layer"] = {str(k): v for k, v in sorted(self.kept.items())}
        if self.ms is not None:
            d["ms"], d["blocks_ms"] = round(self.ms, 3), round(self.blocks_ms, 3)
        return d


class GenerationContext:
    """All state of one generation call. Blocks read ``si``/``hw``/``keep_idx`` and use ``kv_cache(layer)``."""

    def __init__(
        self,
        scales: Sequence[tuple[int, int]],
        *,
        generator: torch.Generator | None = None,
        pruner: Pruner | None = None,
        cfg_off_last: int = 0,
        timed: bool = False,
        device: torch.device | str = "cpu",
    ):
        self.scales = [tuple(s) for s in scales]
        if not (isinstance(cfg_off_last, int) and 0 <= cfg_off_last <= len(self.scales)):
            raise FastVARError(f"cfg_off_last must be an integer from 0 to the {len(self.scales)} scale steps, "
                               f"got {cfg_off_last!r}")
        self.unguided_from = len(self.scales) - cfg_off_last  # the last cfg_off_last steps run without guidance
        self.generator = generator
        self.pruner: Pruner = pruner or NoPruning()
        self.kv_extra = 0  # K/V rows beyond the scale maps (HART's context tokens at step 0); set before any cache
        # the last step the loop computes (trailing skipped steps end it): its keys/values are never cached
        self.final_step = max((si for si in range(len(self.scales)) if not self.pruner.skips(si)), default=-1)
        self.clock = StepClock(torch.device(device)) if timed else None
        self._marks: list[list] = []  # [step, start, blocks done, end] per computed step until read by stats()
        self.si = -1
        self.keep_idx: torch.Tensor | None = None  # (B, K) kept token positions while a pruned branch runs
        self.attn_mask: torch.Tensor | None = None  # teacher forcing: a full-sequence mask replaces the KV cache
        self.kv: dict[int, KVCache] = {}
        self.pruning_state: dict = {}  # owned by the pruner (restoration caches, selections)
        self.steps: list[StepStats] = []
        self.kept_masks: dict[int, torch.Tensor] = {}  # per pruned step, the kept-token maps (set after the loop)

    @property
    def hw(self) -> tuple[int, int]:
        return self.scales[self.si]

    @property
    def token_offset(self) -> int:
        """Index of the current scale's first token in the full (unpruned) sequence."""
        return sum(h * w for h, w in self.scales[: self.si])

    def guided(self, si: int) -> bool:
        """Whether step ``si`` uses classifier-free guidance (forwards the unconditional rows too)."""
        return si < self.unguided_from

    def kv_cache(self, layer: int) -> KVCache:
        if layer not in self.kv:
            final = self.final_step
            maps = sum(self.pruner.tokens_kept(si, layer, h * w) for si, (h, w) in enumerate(self.scales) if si != final)
            self.kv[layer] = KVCache(maps + (self.kv_extra if final != 0 else 0))
        return self.kv[layer]

    def branch(self, layer: int, name: str, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Run residual branch ``fn`` of sub-layer ``name`` in block ``layer`` on (B, L, C) ``x`` via the pruner."""
        return self.pruner.branch(self, layer, name, fn, x)

    def begin_step(self, si: int) -> None:
        self.si = si
        self.steps.append(StepStats(step=si, hw=self.scales[si]))
        if self.clock is not None:
            self._marks.append([self.steps[-1], self.clock.now()])

    def blocks_done(self) -> None:
        """The step's transformer blocks have run (what follows is the head, sampling and the latent update)."""
        if self.clock is not None:
            self._marks[-1].append(self.clock.now())

    def end_step(self, rows: int) -> None:
        self.steps[-1].rows = rows
        if self.clock is not None:
            self._marks[-1].append(self.clock.now())

    def skip_step(self, si: int) -> None:
        self.steps.append(StepStats(step=si, hw=self.scales[si], skipped=True))

    def stats(self) -> dict:
        for step, start, blocks_done, end in self._marks:
            step.ms, step.blocks_ms = self.clock.ms(start, end), self.clock.ms(start, blocks_done)
        self._marks.clear()
        return {
            "steps": [s.as_dict() for s in self.steps],
            "skipped_steps": [s.step for s in self.steps if s.skipped],
            "pruned_steps": [s.step for s in self.steps if s.kept],
        }

    def release(self) -> None:
        """Free the KV and restoration caches (they can be GBs at 2K); statistics and kept-token maps stay."""
        self.kv.clear()
        self.pruning_state.clear()

