"""Host-device synchronisations inside the next-scale loop, found with torch's CUDA sync debug mode.

    python scripts/check_syncs.py [--models infinity-2b,hart-0.7b,var-d30] [--device cuda]

For each model (seeded random weights, bf16, its FastVAR preset, guidance off at the last 2 steps, one warm call),
every synchronising CUDA call made while ``run_scales`` runs is recorded with the fastvar line that made it; the goal
is none. ``--device cpu`` only runs the same calls (there is nothing to detect on a CPU).
"""
from __future__ import annotations

import argparse
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

import fastvar.pipeline
from fastvar import load_pipeline

PRESETS = {"infinity": "infinity-paper", "hart": "hart-paper", "var": "var-fastvar", "demo": "0.5,1"}
SRC = str(Path(fastvar.pipeline.__file__).parent)


def recording_loop(loop, sites: Counter, cuda: bool):
    """``loop`` (``run_scales``) with the sync debug mode on while it runs; each warning counted at its innermost
    fastvar line."""

    def run_scales(*args, **kwargs):
        def record(message, category, filename, lineno, file=None, line=None):
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(SRC)]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"
            sites[f"{where} ({str(message).splitlines()[0][:80]})"] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                return loop(*args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")

    return run_scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="infinity-2b,hart-0.7b,var-d30")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resolution", type=int, help="Infinity resolution (default: the model's bench default)")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    for name in args.models.split(","):
        backbone = name.split("-")[0]
        extra = {} if backbone == "demo" else {"config": name, "random_weights": True}
        pipe = load_pipeline(backbone, device=args.device, dtype=dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        call = pipe.bench_config(1, args.resolution)["kwargs"]
        call.update(pruning=PRESETS[backbone], cfg_off_last=2, output_type="pt")
        pipe(**call)  # warm-up: first-use allocations and caches are not the loop's
        sites: Counter = Counter()
        loop = fastvar.pipeline.run_scales
        fastvar.pipeline.run_scales = recording_loop(loop, sites, cuda)
        try:
            pipe(**call)
        finally:
            fastvar.pipeline.run_scales = loop
        print(f"{name}: {sum(sites.values())} synchronising calls inside the loop")
        for site, n in sites.most_common():
            print(f"  {n} x {site}")


if __name__ == "__main__":
    main()
