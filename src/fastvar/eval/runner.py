"""``fastvar eval``: generate with and without each acceleration (pruning schedule, guidance off at the last steps)
and report speed and fidelity."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageDraw

from ..outputs import format_images
from .features import FeatureModel, cosine_similarity, extract, frechet_distance
from .fidelity import detail_ratio, psnr, ssim, token_agreement


def tokens_forwarded(stats: dict, depth: int, per_row: bool = False) -> float:
    """Tokens each block forwards per image, averaged over blocks and summed over the computed steps; ``per_row``:
    times the batch rows each step forwarded (CFG doubles them, the unguided steps do not)."""
    total = 0.0
    for step in stats["steps"]:
        if step["skipped"]:
            continue
        kept = step.get("kept_per_layer", {})
        total += (sum(kept.values()) + (depth - len(kept)) * step["tokens"]) / depth * (step["rows"] if per_row else 1)
    return total


@dataclass
class ScheduleResult:
    name: str
    loop_ms: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    row_tokens: list[float] = field(default_factory=list)  # tokens x rows: what the transformer forwarded
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    detail: list[float] = field(default_factory=list)
    agreement: dict[int, list[float]] = field(default_factory=dict)  # step -> per-run token agreement
    skipped: list[int] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)  # per call, (B, D) features of the user's model
    images: int = 0
    convergence: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)  # step -> (PSNR, detail)

    def summary(self, baseline: ScheduleResult | None, reference: torch.Tensor | None = None) -> dict:
        """The row of this schedule; against ``baseline`` (None: this is the baseline) and, with features, against
        ``reference`` features (real images)."""
        finite = [p for p in self.psnr if p != float("inf")]
        mine = torch.cat(self.features) if self.features else None  # (runs x B, D)
        row = {
            "schedule": self.name,
            "runs": self.images,  # images generated (loop times are per call of a batch)
            "tokens_forwarded": round(statistics.mean(self.tokens), 1),
            "loop_ms_median": round(statistics.median(self.loop_ms), 2),
            "skipped_steps": self.skipped,
        }
        if baseline is not None:
            row["speedup"] = round(statistics.median(baseline.loop_ms) / statistics.median(self.loop_ms), 3)
            row["tokens_ratio"] = round(statistics.mean(baseline.tokens) / statistics.mean(self.tokens), 3)
            row["work_ratio"] = round(statistics.mean(baseline.row_tokens) / statistics.mean(self.row_tokens), 3)
            row["psnr_db_mean"] = _finite_mean(self.psnr)
            row["identical_images"] = len(self.psnr) - len(finite)
            row["ssim_mean"] = round(statistics.mean(self.ssim), 4)
            row["detail_ratio_mean"] = round(statistics.mean(self.detail), 3)
            row["token_agreement_per_step"] = {s: round(statistics.mean(v), 4) for s, v in sorted(self.agreement.items())}
            if mine is not None:
                theirs = torch.cat(baseline.features)
                row["feature_cosine_mean"] = round(cosine_similarity(mine, theirs).mean().item(), 5)
                if len(mine) >= 2:
                    row["frechet_distance"] = round(frechet_distance(mine, theirs), 5)
        if reference is not None and mine is not None and len(mine) >= 2:
            row["frechet_distance_to_reference"] = round(frechet_distance(mine, reference), 5)
        if self.convergence:
            row["convergence_per_step"] = {
                step: {"psnr_db_to_final": _finite_mean(p), "detail_of_final": round(statistics.mean(d), 3)}
                for step, (p, d) in sorted(self.convergence.items())}
        return row


def evaluate(pipe, conditions: Sequence[dict], seeds: Sequence[int], variants: dict[str, dict], *, progress=None,
             grid_images: int = 0, variant_pipe=None, features: FeatureModel | None = None,
             reference: torch.Tensor | None = None, batch_size: int = 1, convergence: bool = False,
             **call_kwargs) -> tuple[list[dict], list[tuple[dict, int, list[Image.Image]]]]:
    """Run every (condition, seed) unaccelerated and under each variant; returns summary rows and, for a grid, rows
    of images (condition and seed of the row's first image, baseline then variants).

    ``conditions`` are keyword dicts for one image each (``{"class_labels": [207]}`` or ``{"prompts": ["a cat"]}``),
    generated ``batch_size`` per call (the baseline and its variants always in the same batch, with the same seed);
    ``variants`` map a name to the call arguments that accelerate (``{"pruning": ..., "cfg_off_last": ...}``).
    ``variant_pipe`` (e.g. the same model with int8 weights) runs the variants instead of ``pipe``, which still
    makes the reference. ``features`` (a user's image network, ``fastvar.eval.features``) adds the feature cosine
    similarity to the baseline and the Fréchet distance between the variant's and the baseline's image sets;
    ``reference`` (features of real images) adds every row's Fréchet distance to them (FID with Inception features).
    ``convergence``: the baseline row also says, per scale step, how close the image decoded after that step already
    is to the final one (PSNR, share of its high-frequency detail): what FastVAR relies on (a VAE decode per step).
    """
    variant_pipe = variant_pipe or pipe
    depth = len(pipe.model.blocks)
    base = ScheduleResult("none (baseline)")
    results = {name: ScheduleResult(name) for name in variants}
    grid: list[tuple[dict, int, list[Image.Image]]] = []
    chunks = [conditions[i:i + batch_size] for i in range(0, len(conditions), batch_size)]
    runs = [(chunk, s) for chunk in chunks for s in seeds]
    for i, (chunk, seed) in enumerate(runs):
        cond = {key: [v for c in chunk for v in c[key]] for key in chunk[0]}  # one call for the chunk's images
        steps: dict[int, torch.Tensor] = {}
        keep = (lambda si, images: steps.__setitem__(si, images())) if convergence else None
        ref = pipe(**cond, seed=seed, pruning=None, output_type="pt", return_tokens=True, timed=True, on_step=keep,
                   **call_kwargs)
        _record(base, ref, depth, features)
        for si, image in steps.items():
            p, d = base.convergence.setdefault(si, ([], []))
            p += psnr(image, ref.images).tolist()
            d += detail_ratio(image, ref.images).tolist()
        row = format_images(ref.images, "pil")[:1] if i < grid_images else None
        for name, variant in variants.items():
            out = variant_pipe(**cond, seed=seed, **variant, output_type="pt", return_tokens=True, timed=True,
                               **call_kwargs)
            r = results[name]
            _record(r, out, depth, features)
            r.psnr += psnr(out.images, ref.images).tolist()
            r.ssim += ssim(out.images, ref.images).tolist()
            r.detail += detail_ratio(out.images, ref.images).tolist()
            steps = [s["step"] for s in out.stats["steps"] if not s["skipped"]]
            for step, a, b in zip(steps, out.tokens, ref.tokens):
                r.agreement.setdefault(step, []).append(token_agreement(a, b))
            if row is not None:
                row += format_images(out.images, "pil")[:1]
        if row is not None:
            grid.append((chunk[0], seed, row))
        if progress:
            progress(i + 1, len(runs))
    rows = [base.summary(None, reference)] + [r.summary(base, reference) for r in results.values()]
    return rows, grid


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (identical images have infinite PSNR); inf when all are."""
    finite = [v for v in values if v != float("inf")]
    return round(statistics.mean(finite), 2) if finite else float("inf")


def _record(r: ScheduleResult, out, depth: int, features: FeatureModel | None) -> None:
    if features is not None:
        r.features.append(extract(features, out.images))
    r.images += out.images.shape[0]
    r.loop_ms.append(sum(s.get("ms", 0.0) for s in out.stats["steps"]))
    r.tokens.append(tokens_forwarded(out.stats, depth))
    r.row_tokens.append(tokens_forwarded(out.stats, depth, per_row=True))
    r.skipped = out.stats["skipped_steps"]


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table; with a feature model, two more columns (feature cosine, Fréchet distance)."""
    with_features = any("feature_cosine_mean" in r for r in rows)
    with_reference = any("frechet_distance_to_reference" in r for r in rows)
    head = ("| schedule | tokens forwarded / image | work (tokens x rows) saved | loop ms (median) | speedup | "
            "PSNR dB (mean) | SSIM (mean) | detail kept (mean) | token agreement at pruned/last steps |"
            + (" feature cosine (mean) | Fréchet distance |" if with_features else "")
            + (" Fréchet distance to reference |" if with_reference else ""))
    lines = [head, "|" + "---|" * (9 + 2 * with_features + with_reference)]
    for r in rows:
        agree = r.get("token_agreement_per_step", {})
        last = ", ".join(f"{s}: {v:.3f}" for s, v in list(agree.items())[-3:])
        line = (f"| {r['schedule']} | {r['tokens_forwarded']:.0f} | {r.get('work_ratio', 1.0):.2f}x | "
                f"{r['loop_ms_median']:.1f} | "
                f"{r.get('speedup', 1.0):.2f}x | {r.get('psnr_db_mean', '-')} | {r.get('ssim_mean', '-')} | "
                f"{r.get('detail_ratio_mean', '-')} | {last or '-'} |")
        if with_features:
            line += f" {r.get('feature_cosine_mean', '-')} | {r.get('frechet_distance', '-')} |"
        if with_reference:
            line += f" {r.get('frechet_distance_to_reference', '-')} |"
        lines.append(line)
    converged = next((r["convergence_per_step"] for r in rows if "convergence_per_step" in r), None)
    if converged:
        lines += ["", "| scale step | PSNR dB of the image so far vs the final (mean) | its share of the final detail |",
                  "|---|---|---|"]
        lines += [f"| {step} | {v['psnr_db_to_final']} | {v['detail_of_final']} |" for step, v in converged.items()]
    return "\n".join(lines)


def image_grid(rows: list[list[Image.Image]], header: Sequence[str], captions: Sequence[str]) -> Image.Image:
    """Rows of images (baseline first) with the schedule names on top and a caption under each row.

    Images smaller than 128 px (the demo model's 64x64) are enlarged (nearest) so that captions fit."""
    k = max(1, 128 // rows[0][0].size[0])
    rows = [[image.resize((image.size[0] * k, image.size[1] * k), Image.NEAREST) for image in row] for row in rows]
    w, h = rows[0][0].size
    pad = 14
    grid = Image.new("RGB", (w * len(rows[0]), pad + (h + pad) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(header):
        draw.text((j * w + 2, 1), name, fill="black")
    for i, (row, caption) in enumerate(zip(rows, captions)):
        for j, image in enumerate(row):
            grid.paste(image, (j * w, pad + i * (h + pad)))
        draw.text((2, pad + i * (h + pad) + h + 1), caption, fill="black")
    return grid
