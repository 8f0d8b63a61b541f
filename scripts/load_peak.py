"""Memory and time of loading an Infinity checkpoint: peak host RSS and (on CUDA) peak device memory.

    python scripts/load_peak.py --config infinity-2b --checkpoint-dtype bf16 --dtype bf16 --device cuda --dir CKPT

Writes a seeded random-weights checkpoint of ``--config`` in the official layout (``vae.pth``, ``transformer.pth``,
in ``--checkpoint-dtype``) into ``--dir`` unless it is there, then loads it with ``load_pipeline`` in a fresh
process and prints one JSON line (Linux): load seconds, the transformer's weights, peak RSS, peak device memory.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def write_checkpoint(config: str, folder: Path, dtype: torch.dtype, device: str) -> None:
    from fastvar.backbones.infinity.pipeline import InfinityPipeline

    pipe = InfinityPipeline.from_files(config=config, random_weights=True, device=device)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in pipe.vae.state_dict().items()}, folder / "vae.pth")
    torch.save({k: v.to("cpu", dtype) for k, v in pipe.model.state_dict().items()}, folder / "transformer.pth")


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux ``VmHWM``; unlike ``ru_maxrss`` it does not inherit the parent's)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure(config: str, folder: Path, dtype: torch.dtype, device: str) -> dict:
    from fastvar import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline("infinity", vae=folder / "vae.pth", transformer=folder / "transformer.pth", config=config,
                         device=device, dtype=dtype)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    gib = 2 ** 30
    result = {"config": config, "device": device, "dtype": str(dtype), "load_s": round(seconds, 2),
              "transformer_weights_gib": round(sum(p.nbytes for p in pipe.model.parameters()) / gib, 3),
              "peak_rss_gib": round(peak_rss_bytes() / gib, 3)}
    if device.startswith("cuda"):
        result["peak_device_gib"] = round(torch.cuda.max_memory_allocated() / gib, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="infinity-2b")
    parser.add_argument("--checkpoint-dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype= of load_pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, required=True, help="where the checkpoint is (or is written)")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # the fresh process
    args = parser.parse_args()
    folder = args.dir / f"{args.config}-{args.checkpoint_dtype}"
    if args.measure_only:
        print(json.dumps(measure(args.config, folder, DTYPES[args.dtype], args.device)))
        return
    if not (folder / "transformer.pth").is_file():
        write_checkpoint(args.config, folder, DTYPES[args.checkpoint_dtype], args.device)
    subprocess.run([sys.executable, *sys.argv, "--measure-only"], check=True)


if __name__ == "__main__":
    main()
