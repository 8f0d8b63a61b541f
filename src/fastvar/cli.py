"""The ``fastvar`` command line: a thin layer over the Python API.

    fastvar generate "a red apple" --out apple.png      # the built-in demo model (no paths)
    fastvar generate --model var-d16 --vae vae_ch160v4096z32.pth --transformer var_d16.pth --class 207 --out a.png
    fastvar info CHECKPOINT
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .core.quantize import QUANTIZATIONS
from .errors import FastVARError

CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory"  # how torch reports a failed CPU allocation
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
BACKBONES = ("var", "infinity", "hart", "demo")


def split_model(name: str) -> tuple[str, str | None]:
    """``var-d16`` -> ("var", "var-d16"); ``var`` -> ("var", None) (then --config names the JSON)."""
    backbone = name.split("-")[0]
    if backbone not in BACKBONES:
        raise FastVARError(f"unknown model {name!r}: names start with one of {', '.join(BACKBONES)} (e.g. var-d16)")
    return backbone, (None if name == backbone else name)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise FastVARError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _output_paths(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def load_from_args(args: argparse.Namespace):
    """The pipeline the model arguments name, its progress bar set by ``--quiet``."""
    from . import load_pipeline

    backbone, config = split_model(args.model)
    if backbone == "demo":
        flags = ("config", "vae", "transformer", "text_encoder", "text_encoder_device", "random_weights")
        given = [f"--{n.replace('_', '-')}" for n in flags if getattr(args, n)]
        if given:
            raise FastVARError(f"--model demo is the built-in demo model: it takes no {', '.join(given)}")
        pipe = load_pipeline("demo", device=args.device, dtype=_dtype(args.dtype), quantize=args.quantize)
        pipe.set_progress_bar_config(disable=args.quiet)
        return pipe
    config = args.config or config
    if config is None and backbone != "hart":  # HART reads the transformer folder's own config.json
        raise FastVARError(f"--model {backbone} needs --config (a registry name or a JSON file)")
    extra = {"random_weights": True} if args.random_weights else {}
    if args.text_encoder:
        extra["text_encoder"] = args.text_encoder
    if args.text_encoder_device:
        extra["text_encoder_device"] = args.text_encoder_device
    pipe = load_pipeline(backbone, vae=args.vae, transformer=args.transformer, config=config, device=args.device,
                         dtype=_dtype(args.dtype), quantize=args.quantize, **extra)
    pipe.set_progress_bar_config(disable=args.quiet)
    return pipe


# sampling options a backbone does not have: given anyway, they are an error rather than silently ignored
NOT_FOR = {"var": ("aspect", "resolution", "tau"), "hart": ("aspect", "tau"), "infinity": ("more_smooth",),
           "demo": ("more_smooth",)}


def sampling_kwargs(backbone: str, args: argparse.Namespace) -> dict:
    """Sampling options for the backbone's ``__call__``; unset values keep each backbone's official defaults."""
    given = [f"--{name.replace('_', '-')}" for name in NOT_FOR[backbone] if getattr(args, name) is not None]
    if given:
        raise FastVARError(f"{backbone} takes no {', '.join(given)}")
    kwargs = {k: v for k, v in (("cfg", args.cfg), ("top_k", args.top_k), ("top_p", args.top_p),
                                ("more_smooth", args.more_smooth), ("tau", args.tau)) if v is not None}
    if args.aspect:
        kwargs["h_div_w"] = _aspect(args.aspect)
    if args.resolution:
        kwargs["resolution"] = int(args.resolution) if args.resolution.isdigit() else args.resolution
    return kwargs


def _aspect(text: str) -> float:
    """``16:9`` (width:height) -> h/w = 0.5625; a plain number is taken as h/w."""
    try:
        if ":" in text:
            w, h = text.split(":")
            return float(h) / float(w)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise FastVARError(f"bad --aspect {text!r}: use width:height like 16:9, or h/w as a number") from None


def prompts_of(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FastVARError(f"prompts file not found: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts


def conditions(backbone: str, args: argparse.Namespace) -> list[dict]:
    """One keyword dict per image to generate."""
    if backbone == "var":
        if args.prompt:
            raise FastVARError("VAR is class-conditional: use --class N instead of a prompt")
        return [{"class_labels": [c]} for c in (args.class_labels or [])]
    if args.class_labels:
        raise FastVARError(f"{backbone} is text-to-image: give prompts, not --class")
    return [{"prompts": [p]} for p in prompts_of(args)]


def cmd_generate(args: argparse.Namespace) -> None:
    backbone = split_model(args.model)[0]
    kwargs, calls = sampling_kwargs(backbone, args), _generate_calls(backbone, args)  # checked before loading
    pipe = load_from_args(args)
    paths = _output_paths(Path(args.out), sum(n for _, n in calls))
    stats, start = [], 0
    for k, (call, n) in enumerate(calls):  # batch k draws with seed + k
        batch_paths, start = paths[start:start + n], start + n
        on_step = _step_saver(Path(args.save_steps), batch_paths) if args.save_steps else None
        out = pipe(seed=args.seed + k, pruning=args.pruning, cfg_off_last=args.cfg_off_last, timed=True,
                   on_step=on_step, **kwargs, **call)
        for image, path in zip(out.images, batch_paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
        if args.save_masks:
            _save_masks(out, batch_paths, Path(args.save_masks))
        stats.append(out.stats)
    loop_ms = sum(s.get("ms", 0.0) for st in stats for s in st["steps"])
    shown = ", ".join(map(str, paths)) if len(paths) <= 8 else f"{paths[0]} ... {paths[-1]} ({len(paths)} images)"
    print(f"wrote {shown} ({len(stats[0]['steps'])} scale steps, skipped {stats[0]['skipped_steps']}, "
          f"pruned {stats[0]['pruned_steps']}, transformer loop {loop_ms:.0f} ms"
          + (f" in {len(calls)} batches)" if len(calls) > 1 else ")"))
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats[0] if len(stats) == 1 else {"batches": stats}, indent=1))


def _step_saver(folder: Path, paths: list[Path]):
    """An ``on_step`` callback writing the image decoded after every computed scale step (``--save-steps``)."""
    from .outputs import format_images

    folder.mkdir(parents=True, exist_ok=True)

    def save(si: int, images) -> None:
        for image, path in zip(format_images(images(), "pil"), paths):
            image.save(folder / f"{path.stem}_step{si:02d}.png")

    return save


def _batch_size(args: argparse.Namespace, default: int) -> int:
    """``--batch-size``, checked; ``default`` when not given."""
    if args.batch_size is not None and args.batch_size < 1:
        raise FastVARError(f"--batch-size must be >= 1, got {args.batch_size}")
    return args.batch_size or default


def _generate_calls(backbone: str, args: argparse.Namespace) -> list[tuple[dict, int]]:
    """The pipeline calls of ``fastvar generate`` with their image counts: all at once, or ``--batch-size`` each."""
    if backbone != "var":
        if args.class_labels or args.num_images is not None:
            raise FastVARError(f"{backbone} is text-to-image: one image per prompt (no --class or --num-images)")
        items, key = prompts_of(args), "prompts"
        if not items:
            raise FastVARError(f"{backbone} needs a prompt: fastvar generate --model {args.model} ... \"a red apple\"")
    elif args.prompt or args.prompts_file:
        raise FastVARError("VAR is class-conditional: use --class N (or --num-images N) instead of a prompt")
    elif args.class_labels:
        items, key = args.class_labels, "class_labels"
    else:  # labels drawn from each batch's generator, as the official code draws them
        count = 1 if args.num_images is None else args.num_images
        if count < 1:
            raise FastVARError(f"--num-images must be >= 1, got {count}")
        items, key = [None] * count, "num_images"
    size = _batch_size(args, len(items))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if key == "num_images":
        return [({"class_labels": None, "num_images": len(c)}, len(c)) for c in chunks]
    return [({key: c}, len(c)) for c in chunks]


def _save_masks(out, paths: list[Path], folder: Path) -> None:
    from PIL import Image

    from .outputs import mask_overlay

    if not out.kept_masks:
        raise FastVARError("--save-masks needs a pruning schedule that prunes some step (--pruning ...)")
    folder.mkdir(parents=True, exist_ok=True)
    for si, masks in sorted(out.kept_masks.items()):
        h, w = masks.shape[1:]
        for image, mask, path in zip(out.images, masks, paths):
            k = max(1, 256 // image.size[0])  # enlarge small images (the demo's 64x64) so the token grid is visible
            image = image.resize((image.size[0] * k, image.size[1] * k), Image.NEAREST)
            mask_overlay(image, mask).save(folder / f"{path.stem}_step{si}_{h}x{w}.png")
    print(f"wrote pruned-token maps of steps {sorted(out.kept_masks)} to {folder}")


def _seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            a, b = text.split("-")
            seeds = list(range(int(a), int(b) + 1))
        else:
            seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds:
        raise FastVARError(f"bad --seeds {text!r}: use a range like 0-63 or a list like 0,1,2")
    return seeds


def _schedule_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split("|") if n.strip()]
    if not names:
        raise FastVARError(f"no schedule in {text!r}: give presets or schedules separated by '|', e.g. none|0.5,1")
    return names


def _cfg_off_values(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise FastVARError(f"bad --cfg-off-last {text!r}: use a step count like 2 or a list like 0,1,2") from None
    if any(v < 0 for v in values):
        raise FastVARError(f"--cfg-off-last counts scale steps: {text!r} has a negative value")
    return values


def _variant_label(pruning: str, cfg_off_last: int) -> str:
    return pruning if cfg_off_last == 0 else f"{pruning} + cfg-off-last {cfg_off_last}"


def cmd_eval(args: argparse.Namespace) -> None:
    from .eval.features import load_feature_model, reference_features
    from .eval.runner import evaluate, image_grid, markdown_table
    from .pruning import resolve_pruning

    # every argument is checked before anything loads
    backbone = split_model(args.model)[0]
    grid_rows, batch_size, seeds = _grid_rows(args), _batch_size(args, 1), _seeds(args.seeds)
    kwargs, conds = sampling_kwargs(backbone, args), conditions(backbone, args)
    if not conds:
        raise FastVARError("fastvar eval needs at least one --class (or prompt)")
    variants = {_variant_label(name, off): {"pruning": resolve_pruning(name), "cfg_off_last": off}
                for name in _schedule_names(args.schedules) for off in _cfg_off_values(args.cfg_off_last)}
    if args.reference_dir and not args.features:
        raise FastVARError("--reference-dir needs --features (the network whose features are compared)")
    pipe = load_from_args(argparse.Namespace(**{**vars(args), "quantize": None}))  # the reference
    variant_pipe = load_from_args(args) if args.quantize else None  # variants on int8 weights
    for p in (pipe, variant_pipe or pipe):
        p.set_progress_bar_config(disable=True)
    features = load_feature_model(args.features, pipe.device) if args.features else None
    reference = reference_features(args.reference_dir, features, pipe.device) if args.reference_dir else None
    report = lambda i, n: print(f"\r{i}/{n} runs", end="", file=sys.stderr, flush=True)  # noqa: E731
    rows, grid = evaluate(pipe, conds, seeds, variants, progress=None if args.quiet else report,
                          grid_images=grid_rows, variant_pipe=variant_pipe, features=features,
                          reference=reference, batch_size=batch_size, convergence=args.convergence, **kwargs)
    print(file=sys.stderr)
    table = markdown_table(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seeds": seeds, "conditions": conds}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.grid:
        image_grid([images for _, _, images in grid], ["baseline", *variants],
                   [f"{_caption(c)}, seed {s}" for c, s, _ in grid]).save(args.grid)


def _grid_rows(args: argparse.Namespace) -> int:
    """Rows of the eval grid: 0 without ``--grid``; ``--grid-rows`` alone is an error, not ignored."""
    if args.grid_rows is not None and not args.grid:
        raise FastVARError("--grid-rows needs --grid (where to write the grid)")
    if args.grid_rows is not None and args.grid_rows < 1:
        raise FastVARError(f"--grid-rows must be >= 1, got {args.grid_rows}")
    return (args.grid_rows or 8) if args.grid else 0


def _caption(cond: dict) -> str:
    """A grid caption: the prompt, or ``class N``."""
    if "prompts" in cond:
        return ", ".join(cond["prompts"])
    return "class " + ", ".join(map(str, cond["class_labels"]))


def cmd_bench(args: argparse.Namespace) -> None:
    from .eval.bench import environment, format_results, plot, run_bench
    from .pruning import resolve_pruning

    if args.prompt or args.prompts_file or args.class_labels:
        raise FastVARError("fastvar bench conditions on seeded random text features or labels of the right shape: "
                           "it takes no prompts or --class")
    if args.resolution:
        raise FastVARError("fastvar bench takes --resolutions (a comma list), not --resolution")
    try:
        resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else [None]
    except ValueError:
        raise FastVARError(f"bad --resolutions {args.resolutions!r}: use image sizes like 512,1024") from None
    kwargs = sampling_kwargs(split_model(args.model)[0], args)
    prunings, offs = _schedule_names(args.pruning), _cfg_off_values(args.cfg_off_last)
    for name in prunings:
        resolve_pruning(name)  # a bad schedule fails here, before the model loads
    pipe = load_from_args(args)
    pipe.set_progress_bar_config(disable=True)
    configs = []
    for resolution in resolutions:
        for pruning in prunings:
            for off in offs:
                cfg = pipe.bench_config(args.batch, resolution)
                cfg["kwargs"].update(pruning=None if pruning == "none" else pruning, cfg_off_last=off, **kwargs)
                size = f"{cfg['resolution']}px" + (f" {args.aspect}" if args.aspect else "")
                cfg.update(label=f"{size} b{args.batch} {_variant_label(pruning, off)}",
                           group=cfg["resolution"], pruning=pruning, cfg_off_last=off)
                configs.append(cfg)
    results = run_bench(pipe, configs, warmup=args.warmup, repeats=args.repeats, peak_tflops=args.peak_tflops)
    device = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    weights = f"dtype {args.dtype}" + (f", {args.quantize} block weights" if args.quantize else "")
    print(f"{args.model} on {device}, {weights}, warm runs: {args.warmup} warm-up + {args.repeats} timed")
    print(format_results(results))
    if args.out:
        report = {"model": args.model, "device": device, "dtype": args.dtype, "quantize": args.quantize,
                  "environment": environment(pipe.device, "fastvar " + " ".join(args.argv)), "results": results}
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    if args.plot:
        plot(results, args.plot)


def cmd_train_demo(args: argparse.Namespace) -> None:
    from .demo.train import run

    run(args)


def cmd_info(args: argparse.Namespace) -> None:
    from .info import describe, format_description

    for path in args.checkpoint:
        d = describe(path)
        print(json.dumps(d, indent=1, default=str) if args.json else format_description(d))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="*", help="text prompt(s) (text-to-image models)")
    p.add_argument("--model", default="demo",
                   help="registry name, e.g. var-d16 (or a backbone name with --config); default: the built-in demo")
    p.add_argument("--config", help="registry name or JSON file of constructor arguments (golden config.json format)")
    p.add_argument("--vae", help="VAE / tokenizer checkpoint")
    p.add_argument("--transformer", help="transformer checkpoint")
    p.add_argument("--random-weights", action="store_true", help="random weights (smoke tests; images are noise)")
    p.add_argument("--class", dest="class_labels", type=int, action="append", help="class label (repeatable)")
    p.add_argument("--cfg", type=float, help="guidance scale (default: the backbone's official default)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--more-smooth", action=argparse.BooleanOptionalAction,
                   help="Gumbel-softmax smoothing (official visual option; default: VAR off, HART on, as officially)")
    p.add_argument("--text-encoder", help="local text model folder (Flan-T5 for Infinity, Qwen2 for HART)")
    p.add_argument("--text-encoder-device", help="run the text encoder there (e.g. cpu: its weights stay off the GPU)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--aspect", help="aspect ratio width:height (nearest template is used), e.g. 16:9")
    p.add_argument("--resolution", help="image size / schedule (Infinity: 256/512/768/1024 or 0.06M..1M)")
    p.add_argument("--tau", type=float, help="Infinity logit temperature (official 0.5 for 2B, 1.0 for 8B)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--quantize", choices=QUANTIZATIONS, help="keep the transformer blocks' linear weights in int8 "
                   "(half the bf16 weight memory; not exact, see docs/fidelity.md)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images")
    add_model_args(g)
    g.add_argument("--num-images", type=int, help="images to draw when no class label is given")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--pruning", help="FastVAR preset (infinity-paper, hart-paper) or schedule like '0.4,0.5,1,1;layers=3:28'")
    g.add_argument("--cfg-off-last", type=int, default=0, metavar="N",
                   help="run the last N scale steps without classifier-free guidance (half their work)")
    g.add_argument("--out", default="out.png", help="output PNG (several images: out_0.png, out_1.png, ...)")
    g.add_argument("--batch-size", type=int, help="images per pipeline call (default: all at once); batch k draws "
                   "with seed + k")
    g.add_argument("--stats", help="write per-step statistics as JSON here")
    g.add_argument("--save-masks", metavar="DIR", help="write each pruned step's image with pruned slots dimmed")
    g.add_argument("--save-steps", metavar="DIR", help="write the image decoded after every scale step (a VAE decode "
                   "each: slower)")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="speed and fidelity of pruning schedules against the unpruned output")
    add_model_args(e)
    e.add_argument("--seeds", default="0-3", help="seed range 0-63 or list 0,1,2")
    e.add_argument("--schedules", required=True,
                   help="'|'-separated presets or schedule strings, e.g. 'infinity-paper|0.5,1|0.4,0.5;granularity=block'"
                        "; with --quantize int8 they (and 'none') run on int8 weights against the full-precision "
                        "baseline")
    e.add_argument("--cfg-off-last", default="0", metavar="N[,N...]",
                   help="also turn guidance off at the last N scale steps (each value crossed with each schedule; "
                        "the baseline stays guided), e.g. 0,2")
    e.add_argument("--batch-size", type=int, help="images per pipeline call (default 1); a batch's baseline and its "
                   "variants run with the same seed")
    e.add_argument("--features", metavar="MODEL",
                   help="your image network for feature fidelity: a TorchScript file, or package.module:function; "
                        "(B,3,H,W) images in [0,1] -> (B,D) features (adds feature cosine and Fréchet distance)")
    e.add_argument("--reference-dir", metavar="DIR",
                   help="real images (png/jpg/webp, any size): adds each row's Fréchet distance to them with --features")
    e.add_argument("--convergence", action="store_true",
                   help="also report, per scale step, how close the unaccelerated image already is to its final "
                        "image (PSNR, detail): where pruning can start (a VAE decode per step)")
    e.add_argument("--json", help="write the table as JSON here")
    e.add_argument("--markdown", help="write the table as markdown here")
    e.add_argument("--grid", help="write a side-by-side image grid (baseline, then each schedule) here")
    e.add_argument("--grid-rows", type=int, help="rows of the --grid (default 8)")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="warm latency, memory and TFLOP/s per resolution and pruning schedule")
    add_model_args(b)
    b.add_argument("--resolutions", help="comma list of image sizes (default: the model's own)")
    b.add_argument("--pruning", default="none", help="'|'-separated schedules, e.g. 'none|infinity-paper'")
    b.add_argument("--cfg-off-last", default="0", metavar="N[,N...]",
                   help="guidance off at the last N scale steps, crossed with each schedule, e.g. 0,2")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--peak-tflops", type=float, help="the device's dense peak, to report the share achieved")
    b.add_argument("--out", help="write results as JSON here")
    b.add_argument("--plot", help="write a latency/memory plot (PNG) here")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("train-demo", help="train the built-in demo model (or, --backbone var, the VAR the VAR preset is measured on)")
    from .demo.train import add_args as add_train_args

    add_train_args(t)
    t.set_defaults(func=cmd_train_demo)

    i = sub.add_parser("info", help="describe checkpoint files or folders")
    i.add_argument("checkpoint", nargs="+")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except FastVARError as exc:
        print(f"fastvar: error: {exc}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print("fastvar: error: out of GPU memory; try a smaller batch or resolution, --pruning, --dtype bf16, "
              "--text-encoder-device cpu or --quantize int8", file=sys.stderr)
        return 3
    except OSError as exc:  # an output path that cannot be written (a file where a folder should be, permissions...)
        print(f"fastvar: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if CPU_OUT_OF_MEMORY not in str(exc):
            raise
        print("fastvar: error: out of CPU memory; try a smaller batch or resolution, --pruning or --quantize int8",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
