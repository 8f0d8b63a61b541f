"""FastVAR cached token pruning (Guo et al., ICCV 2025, arXiv 2503.23367) as a backbone-agnostic plug-in.

* Pivotal Token Selection (PTS): per batch row, score each token of the step's map by its squared distance to the
  map's mean token (its high-frequency energy) and forward only the top-K tokens through a residual branch.
* Cached Token Restoration (CTR): at the cache step (the last unpruned step before the pruned ones) each pruned
  layer stores its branch outputs; at a pruned step the stored map is area-interpolated to the current (h, w) and
  the computed rows are scattered into it, so the 2D token map stays whole.
* Steps whose ratio is 1.0 are skipped entirely.

This module sees only tensors, (h, w) and indices; it is driven through ``GenerationContext.branch``. Attention
layers read ``ctx.keep_idx`` to take RoPE rows at the kept tokens' true positions; K/V of pruned tokens are never
computed, so they never enter the KV cache.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.context import GenerationContext
from ..errors import FastVARError

GRANULARITIES = ("sublayer", "block")


@dataclass(frozen=True)
class PruningSchedule:
    """Which steps and layers FastVAR prunes.

    ``ratios`` apply to the LAST ``len(ratios)`` steps of whatever scale schedule runs (so one schedule serves every
    resolution and aspect ratio): ratio r keeps ``L - int(L * r)`` of a step's L tokens, 0 keeps all, 1 skips the step.
    ``layers``: block indices that prune (None: all). ``granularity``: "sublayer" reselects tokens before every
    residual branch (the authors' choice), "block" selects once per block from its input (cheaper).
    ``cache_step``: the step whose branch outputs fill pruned tokens (None: the step before the first pruned one;
    negative counts from the end). ``enabled=False`` turns the whole method off (bit-identical to the backbone).
    ``clip_layers``: drop listed layers beyond the model's depth instead of raising (presets written for a release,
    like the authors' ``range(3, 28)``, then mean the same on a shallower model).
    """

    ratios: tuple[float, ...]
    layers: tuple[int, ...] | None = None
    granularity: str = "sublayer"
    cache_step: int | None = None
    enabled: bool = True
    clip_layers: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.ratios:
            raise FastVARError("pruning schedule needs at least one ratio")
        bad = [r for r in self.ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise FastVARError(f"pruning ratios must lie in [0, 1], got {bad}")
        if self.granularity not in GRANULARITIES:
            raise FastVARError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    @classmethod
    def parse(cls, text: str) -> PruningSchedule:
        """Parse the CLI form ``RATIOS[;layers=A:B][;granularity=block][;cache=N]``, e.g. ``0.4,0.5,1,1;layers=3:28``.

        RATIOS is a comma list for the last steps; ``layers=A:B`` is the Python range A..B-1 (or a comma list);
        ``cache=N`` the cache step index (negative from the end).
        """
        head, *options = [p.strip() for p in text.split(";")]
        try:
            ratios = tuple(float(r) for r in head.split(","))
        except ValueError:
            raise FastVARError(f"bad pruning schedule {text!r}: ratios must be numbers like 0.4,0.5,1,1") from None
        kwargs: dict = {}
        for option in options:
            key, sep, value = option.partition("=")
            try:
                if not sep:
                    raise ValueError
                if key == "layers":
                    if ":" in value:
                        a, b = value.split(":")
                        kwargs["layers"] = tuple(range(int(a), int(b)))
                    else:
                        kwargs["layers"] = tuple(int(v) for v in value.split(","))
                elif key == "granularity":
                    kwargs["granularity"] = value
                elif key == "cache":
                    kwargs["cache_step"] = int(value)
                else:
                    raise ValueError
            except ValueError:
                raise FastVARError(
                    f"bad pruning option {option!r} in {text!r}; use layers=A:B, granularity=sublayer|block, cache=N"
                ) from None
        return cls(ratios=ratios, **kwargs)

    def pruner(self, num_steps: int, depth: int) -> FastVARPruner:
        return FastVARPruner(self, num_steps, depth)


PRESETS: dict[str, PruningSchedule] = {
    # Paper, Infinity-2B 1024²: cache at 24x24, prune 32x32 by 40% and 40x40 by 50%, skip 48 and 64; blocks 3..27.
    "infinity-paper": PruningSchedule(ratios=(0.4, 0.5, 1.0, 1.0), layers=tuple(range(3, 28)), clip_layers=True),
    # Paper, HART-0.7B 1024²: cache at 36, prune 48 by 50% and 64 by 75%, every block.
    "hart-paper": PruningSchedule(ratios=(0.5, 0.75)),
    # VAR (256px schedule ..., 8, 10, 13, 16): cache at 10x10, prune 13x13 by 50% and 16x16 by 75%, every block, no
    # skipping. Chosen on a trained class-conditional VAR (docs/fidelity.md): the knee of the token/fidelity curve
    # (41% fewer tokens, PSNR 23.7 dB; pruning 10x10 too costs 1.7 dB more), and skipping 16x16 halves the detail.
    "var-fastvar": PruningSchedule(ratios=(0.5, 0.75)),
    # Zero-shot Infinity 1344² (1.8M schedule ..., 24, 32, 40, 48, 64, 84) and 2048² (4M: ..., 64, 84, 104, 128):
    # cache at 24x24 as the paper, ratios rising with the map, and no step skipped, since the steps beyond 1M are what
    # make the resolution. Speed and memory: docs/benchmarks.md; image quality is unmeasured (no Infinity weights).
    "infinity-1344": PruningSchedule(ratios=(0.4, 0.5, 0.6, 0.7, 0.75), layers=tuple(range(3, 28)), clip_layers=True),
    "infinity-2048": PruningSchedule(ratios=(0.4, 0.5, 0.6, 0.7, 0.75, 0.75, 0.8), layers=tuple(range(3, 28)),
                                     clip_layers=True),
}


def resolve_pruning(spec: None | str | PruningSchedule) -> PruningSchedule | None:
    """Normalise the user's ``pruning=`` argument: None / "none", a preset name, a schedule string, or a schedule."""
    if spec is None or isinstance(spec, PruningSchedule):
        return spec if spec is None or spec.enabled else None
    if not isinstance(spec, str):
        raise FastVARError(f"pruning must be None, a preset name, a schedule string or a PruningSchedule, got {spec!r}")
    if spec.lower() in ("", "none", "off"):
        return None
    if spec in PRESETS:
        return PRESETS[spec]
    if spec[0].isdigit() or spec.startswith("."):
        return PruningSchedule.parse(spec)
    raise FastVARError(f"unknown pruning preset {spec!r}; presets: {', '.join(PRESETS)}, or a schedule like 0.4,0.5,1,1")


def select_pivotal_tokens(x: torch.Tensor, num_keep: int) -> torch.Tensor:
    """PTS: indices (B, num_keep) of the tokens of (B, L, C) ``x`` farthest (squared L2) from their row's mean token.

    Ordered by descending score like the authors' ``argsort(descending=True)[:, :num_keep]``; ties resolve by topk.
    """
    score = (x - x.mean(dim=1, keepdim=True)).square().sum(dim=-1)  # (B, L)
    return score.topk(num_keep, dim=1, largest=True, sorted=True).indices


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, L, C), (B, K) -> (B, K, C)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def restore_tokens(computed: torch.Tensor, idx: torch.Tensor, cached: torch.Tensor,
                   cached_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """CTR: area-resize the cached (B, hc*wc, C) map to ``hw`` and scatter the (B, K, C) computed rows at ``idx``."""
    B, _, C = cached.shape
    grid = cached.view(B, *cached_hw, C).permute(0, 3, 1, 2)  # (B, C, hc, wc)
    filler = F.interpolate(grid, size=hw, mode="area").permute(0, 2, 3, 1).reshape(B, hw[0] * hw[1], C)
    return filler.to(computed.dtype).scatter_(1, idx.unsqueeze(-1).expand(-1, -1, C), computed)


class FastVARPruner:
    """A ``PruningSchedule`` bound to a scale schedule of ``num_steps`` steps and a model of ``depth`` blocks."""

    def __init__(self, schedule: PruningSchedule, num_steps: int, depth: int):
        n = len(schedule.ratios)
        if n >= num_steps:
            raise FastVARError(
                f"pruning schedule has {n} ratios but the scale schedule has only {num_steps} steps "
                f"(at least one earlier step must run unpruned)"
            )
        self.schedule = schedule
        ratios = {num_steps - n + i: r for i, r in enumerate(schedule.ratios)}
        self.skipped = {si for si, r in ratios.items() if r >= 1.0}
        self.ratio = {si: r for si, r in ratios.items() if 0.0 < r < 1.0}
        layers = schedule.layers if schedule.layers is not None else tuple(range(depth))
        if schedule.clip_layers:
            layers = tuple(i for i in layers if i < depth)
        outside = [i for i in layers if not 0 <= i < depth]
        if outside:
            raise FastVARError(f"pruning layers {outside} outside the model's blocks 0..{depth - 1}")
        self.layers = frozenset(layers)
        self.cache_step: int | None = None
        if self.ratio:
            first = min(self.ratio)
            cache = schedule.cache_step if schedule.cache_step is not None else first - 1
            cache = cache + num_steps if cache < 0 else cache
            if not 0 <= cache < first or cache in self.skipped:
                raise FastVARError(
                    f"cache step {schedule.cache_step} must be an unpruned step before the first pruned step {first}"
                )
            self.cache_step = cache

    def skips(self, si: int) -> bool:
        return si in self.skipped

    @staticmethod
    def num_keep(num_tokens: int, ratio: float) -> int:
        return num_tokens - int(num_tokens * ratio)

    def tokens_kept(self, si: int, layer: int, num_tokens: int) -> int:
        if si in self.skipped:
            return 0
        if si in self.ratio and layer in self.layers:
            return self.num_keep(num_tokens, self.ratio[si])
        return num_tokens

    def branch(self, ctx: GenerationContext, layer: int, name: str, fn: Callable[[torch.Tensor], torch.Tensor],
               x: torch.Tensor) -> torch.Tensor:
        si = ctx.si
        if layer not in self.layers or (si != self.cache_step and si not in self.ratio):
            return fn(x)
        if si == self.cache_step:
            out = fn(x)
            ctx.pruning_state[(layer, name)] = (out, ctx.hw)
            return out
        idx = self._selection(ctx, layer, x)
        ctx.pruning_state.setdefault(("kept", si), idx)  # the step's first selection, for pruned-token maps
        ctx.keep_idx = idx
        try:
            computed = fn(gather_tokens(x, idx))
        finally:
            ctx.keep_idx = None
        cached, cached_hw = ctx.pruning_state[(layer, name)]
        ctx.steps[-1].kept[layer] = idx.shape[1]
        # an unguided step forwards only the first (conditional) rows of a guided cache step
        return restore_tokens(computed, idx, cached[: x.shape[0]], cached_hw, ctx.hw)

    def _selection(self, ctx: GenerationContext, layer: int, x: torch.Tensor) -> torch.Tensor:
        k = self.num_keep(x.shape[1], self.ratio[ctx.si])
        if self.schedule.granularity == "sublayer":
            return select_pivotal_tokens(x, k)
        key = ("selection", layer)
        step, idx = ctx.pruning_state.get(key, (None, None))
        if step != ctx.si:
            idx = select_pivotal_tokens(x, k)
            ctx.pruning_state[key] = (ctx.si, idx)
        return idx


def kept_masks(ctx: GenerationContext, rows: int) -> dict[int, torch.Tensor]:
    """Per pruned step, a (rows, h, w) bool map of the tokens the first pruned branch kept (paper Fig. 7), on the
    generation's device (copied to the CPU with the output, after the decode: no synchronisation here)."""
    masks = {}
    for key, idx in ctx.pruning_state.items():
        if key[0] == "kept":
            h, w = ctx.scales[key[1]]
            mask = torch.zeros(idx.shape[0], h * w, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)
            masks[key[1]] = mask[:rows].view(rows, h, w)
    return masks


def describe(schedule: PruningSchedule, scales: Iterable[tuple[int, int]], depth: int) -> list[dict]:
    """Per step: map size and tokens each pruned layer forwards (for reports and ``fastvar info``)."""
    scales = list(scales)
    pruner = schedule.pruner(len(scales), depth)
    rows = []
    for si, (h, w) in enumerate(scales):
        L = h * w
        row = {"step": si, "hw": [h, w], "tokens": L}
        if si in pruner.skipped:
            row["skipped"] = True
        elif si in pruner.ratio:
            row["kept"] = pruner.num_keep(L, pruner.ratio[si])
        elif si == pruner.cache_step:
            row["cache"] = True
        rows.append(row)
    return rows
