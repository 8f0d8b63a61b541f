"""``fastvar bench``: warm latency, peak memory, tokens and achieved TFLOP/s per (resolution, pruning) configuration.

What is timed: the whole pipeline call (``total_ms``) after ``warmup`` untimed calls, synchronised before and after,
and inside it, with CUDA events on a GPU (nothing synchronises inside the call) or ``perf_counter`` on a CPU, its
stages: ``condition_ms`` (text encoding or class embedding, and the per-call set-up), ``loop_ms`` (the sum of the
scale steps: the paper's number), split into ``blocks_ms`` (the transformer blocks) and ``sampling_ms`` (per step:
input embedding, head, guidance, sampling, latent update; HART's diffusion head is here), ``decode_ms`` (VAE or
tokenizer decode) and ``rest_ms`` (the rest: loop set-up, caches freed, output). Work is counted from what actually
ran (tokens forwarded per layer, keys attended), so pruned and skipped steps count less: ``transformer_tflop`` and
``achieved_tflops`` = work / loop time.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..core.quantize import Int8Linear
from .runner import tokens_forwarded

EXCLUDED_LINEARS = ("ada_lin", "mat_kv")  # per-image condition projections and text-side K/V, not per image token


def token_linear_params(block: nn.Module) -> int:
    """Weights every image token of a block multiplies (attention projections, FFN; int8 ones too)."""
    return sum(m.in_features * m.out_features for name, m in block.named_modules()
               if isinstance(m, (nn.Linear, Int8Linear)) and not any(e in name for e in EXCLUDED_LINEARS))


def transformer_flops(model: nn.Module, stats: dict, text_tokens: int = 0, prefix_tokens: int = 0) -> float:
    """FLOPs of the block stack for one call: 2 x linear weights per token, 4 x C per (query, key) pair in
    self-attention (QK^T and AV) and per (query, text token) in cross-attention, times the rows each step forwarded
    (batch incl. CFG); ``prefix_tokens`` = extra tokens the first step forwards (HART's context beyond the 1x1 map)."""
    blocks = list(model.blocks)
    width = blocks[0].C if hasattr(blocks[0], "C") else model.cfg.embed_dim
    linear = [token_linear_params(b) for b in blocks]
    keys = [0] * len(blocks)
    flops = 0.0
    for step in stats["steps"]:
        if step["skipped"]:
            continue
        kept = step.get("kept_per_layer", {})
        for i in range(len(blocks)):
            q = kept.get(str(i), step["tokens"]) + (prefix_tokens if step["step"] == 0 else 0)
            keys[i] += q
            flops += step["rows"] * (2 * linear[i] * q + 4 * width * q * keys[i] + 4 * width * q * text_tokens)
    return flops


def weights_mb(pipe) -> dict[str, float]:
    """MiB of parameters and buffers each loaded component holds: transformer (with HART's diffusion head), VAE or
    tokenizer, and the text encoder when loaded. Peak memory minus their sum is what a call itself needs."""
    parts = {"transformer": pipe.model, "vae": pipe.vae}
    text = getattr(pipe, "text_encoder", None)
    if text is not None:
        parts["text_encoder"] = text if isinstance(text, nn.Module) else text.model
    return {name: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers())) / 2**20
            for name, m in parts.items()}


def environment(device: torch.device, command: str) -> dict:
    """What a reader needs to reproduce a timing: versions, hardware, threads, the command and fastvar's commit."""
    import platform

    from .. import __version__

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    env = {"fastvar": __version__, "git_commit": commit, "torch": torch.__version__, "python": platform.python_version(),
           "cpu": cpu, "cpu_threads": torch.get_num_threads(), "command": command}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows has no peak resident set in the standard library
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process peak RSS: KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def bench_one(call: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """Time ``call`` (returns a GenerationOutput with timed stats) ``repeats`` times after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: dict[str, list[float]] = defaultdict(list)
    out = None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = call()
        _sync(device)
        total = (time.perf_counter() - t0) * 1e3
        steps, stages = out.stats["steps"], out.stats["stages_ms"]
        loop, blocks = (sum(s.get(k, 0.0) for s in steps) for k in ("ms", "blocks_ms"))
        split = dict(total=total, condition=stages["condition"], loop=loop, blocks=blocks, sampling=loop - blocks,
                     decode=stages["decode"], rest=total - stages["condition"] - loop - stages["decode"])
        for k, v in split.items():
            times[k].append(v)
    return {
        "total_ms_median": statistics.median(times["total"]), "total_ms_min": min(times["total"]),
        "total_ms_max": max(times["total"]),
        "loop_ms_median": statistics.median(times["loop"]), "loop_ms_min": min(times["loop"]),
        "loop_ms_max": max(times["loop"]),
        **{f"{k}_ms_median": statistics.median(times[k]) for k in ("condition", "blocks", "sampling", "decode", "rest")},
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "stats": out.stats,
    }


def run_bench(pipe, configs: list[dict], *, warmup: int, repeats: int, peak_tflops: float | None = None) -> list[dict]:
    """``configs``: dicts with ``label``, ``kwargs`` (the pipeline call) and optional ``text_tokens`` /
    ``prefix_tokens`` for the work count. Speedups are against the first config of each group."""
    results, weights = [], weights_mb(pipe)
    for i, cfg in enumerate(configs):
        print(f"[{i + 1}/{len(configs)}] {cfg['label']}", file=sys.stderr, flush=True)
        r = bench_one(lambda: pipe(**cfg["kwargs"], timed=True, output_type="pt"), pipe.device, warmup, repeats)
        flops = transformer_flops(pipe.model, r["stats"], cfg.get("text_tokens", 0), cfg.get("prefix_tokens", 0))
        r.update(label=cfg["label"], group=cfg.get("group", ""), pruning=cfg.get("pruning") or "none",
                 cfg_off_last=cfg["kwargs"].get("cfg_off_last", 0), weights_mb=weights,
                 peak_above_weights_mb=round(r["peak_memory_mb"] - sum(weights.values()), 1),
                 tokens_forwarded=tokens_forwarded(r["stats"], len(pipe.model.blocks)),
                 transformer_tflop=flops / 1e12,
                 achieved_tflops=flops / 1e12 / (r["loop_ms_median"] / 1e3))
        if peak_tflops:
            r["share_of_peak"] = r["achieved_tflops"] / peak_tflops
        base = next(b for b in results + [r] if b["group"] == r["group"])
        r["speedup_total"] = base["total_ms_median"] / r["total_ms_median"]
        r["speedup_loop"] = base["loop_ms_median"] / r["loop_ms_median"]
        results.append(r)
    return results


def format_results(results: list[dict]) -> str:
    """Markdown table; ms are medians: loop = blocks + sampling (the paper's number), condition, decode, rest."""
    lines = ["| config | total ms (median, min-max) | loop ms (blocks + sampling) | condition ms | decode ms | rest ms "
             "| speedup (loop) | tokens forwarded | TFLOP | TFLOP/s | peak MB (above weights) |", "|" + "---|" * 11]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['total_ms_median']:.1f} ({r['total_ms_min']:.1f}-{r['total_ms_max']:.1f}) | "
            f"{r['loop_ms_median']:.1f} ({r['blocks_ms_median']:.1f} + {r['sampling_ms_median']:.1f}) | "
            f"{r['condition_ms_median']:.1f} | {r['decode_ms_median']:.1f} | {r['rest_ms_median']:.1f} | "
            f"{r['speedup_loop']:.2f}x | {r['tokens_forwarded']:.0f} | {r['transformer_tflop']:.4g} | "
            f"{r['achieved_tflops']:.4g} | {r['peak_memory_mb']:.0f} ({r['peak_above_weights_mb']:.0f}) |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Latency and peak memory against tokens per image, one line per pruning schedule (the paper's Fig. 2)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import FastVARError

        raise FastVARError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, list] = {}
    for r in results:
        tokens = sum(s["hw"][0] * s["hw"][1] for s in r["stats"]["steps"])
        series.setdefault(r["pruning"], []).append((tokens, r["loop_ms_median"], r["peak_memory_mb"]))
    for name, points in series.items():
        points.sort()
        ax1.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax2.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=name)
    ax1.set(xlabel="tokens per image (all scales)", ylabel="transformer loop ms", title="latency")
    ax2.set(xlabel="tokens per image (all scales)", ylabel="peak memory MB", title="memory")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
