"""Time the official VAR / Infinity code against fastvar on the same weights, interleaved in one process.

    python scripts/time_official.py --backbone infinity --official-root /path/to/Infinity --config infinity-cpu \
        --resolution 256 --dtype fp32 --device cpu --warmup 1 --repeats 5 --out result.json
    python scripts/time_official.py --backbone var --official-root /path/to/VAR --config var-d12 --out var.json
    python scripts/time_official.py --dump-config infinity-2b > infinity_2b.json   # a preset as JSON

1. Builds the OFFICIAL model from ``--config`` (official constructor arguments in the golden ``config.json``
   layout, or a preset name below) with seeded random weights, saves them in the official checkpoint format to a
   temporary folder, and reads them back with the official loaders (``load_cnn`` / ``Infinity.load_state_dict`` /
   ``VAR.load_state_dict(strict=True)``; every key must be used).
2. Loads the same files into fastvar's pipeline (``fastvar.load_pipeline``; strict loading).
3. One untimed check call per side (same seed, same conditioning) records the sampled tokens and the float image of
   each, then ``--warmup`` untimed pairs, then ``--repeats`` timed pairs; the order alternates inside the pairs
   (official first in even pairs, fastvar first in odd ones) so that slow drifts of a shared machine cancel out.

Timed span, both sides: one whole generation call = text/class conditioning, the next-scale loop with CFG and
sampling, and the VAE decode to an image tensor on the device (official: ``autoregressive_infer_cfg(..., ret_img=True)``,
whose uint8 BGR conversion is included; fastvar: ``pipe(..., output_type="pt")``, float RGB). Not timed: text
encoding (both take the same ready-made random T5 features), model loading, PNG writing. CUDA: synchronise before and
after each call; ``torch.cuda.max_memory_allocated`` is reset before and read after each call.

Precision (``--dtype``): fp32 = both pure float32 (official without autocast). bf16 = each side's own recipe:
official Infinity = ``load_infinity(bf16=1)`` (blocks cast to bfloat16) + ``gen_one_img``'s bfloat16 autocast;
official VAR = float32 weights under bfloat16 autocast (``demo_sample.ipynb`` uses float16 autocast);
fastvar = ``load_pipeline(dtype=torch.bfloat16)``.

Compilation: the official Infinity decorates its AdaLN norms (``fused_op.py``) with ``@torch.compile``; they run
compiled by default, as in the official scripts. ``--official-eager`` runs their bodies eagerly instead: then the
float32 CPU numerics of both sides are bitwise equal (compiled norms differ by 1-2 ulp, which the official bfloat16
casts in cross-attention can amplify into a few different samples that the following scales inherit).

Missing optional imports of the official code (flash_attn, timm, ...) are replaced by ``scripts/official_shims``
stand-ins only when the real package is not installed (reported as ``shims_used``); see its README.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's fastvar (as bench_gpu.sh)
SHIM_DIR = Path(__file__).resolve().with_name("official_shims")
SHIMS = {"infinity": ("flash_attn", "timm", "torchvision", "imageio", "pytz"), "var": ("huggingface_hub",)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------------ presets


def infinity_preset(depth: int, embed_dim: int, num_heads: int, block_chunks: int, vae_base_ch: int = 128) -> dict:
    """``tools/run_infinity.py`` ``load_infinity`` flags + ``load_transformer`` sizes; Flan-T5-XL text (2048),
    VAE d32 (``infinity_vae_d32reg.pth`` architecture, ``vae_model`` base_ch 128 unless reduced)."""
    vae = {"loader_args": {"schedule_mode": "dynamic", "codebook_dim": 32, "codebook_size": 2**32, "test_mode": True,
                           "patch_size": 16, "encoder_ch_mult": [1, 2, 4, 4, 4], "decoder_ch_mult": [1, 2, 4, 4, 4]}}
    if vae_base_ch != 128:
        vae["hard_coded_namespace_values_changed"] = {"base_ch": [128, vae_base_ch]}
    kwargs = {"text_channels": 2048, "text_maxlen": 512, "shared_aln": True, "raw_scale_schedule": None,
              "checkpointing": "full-block", "customized_flash_attn": False, "fused_norm": True,
              "pad_to_multiplier": 128, "use_flex_attn": False, "add_lvl_embeding_only_first_block": 1,
              "use_bit_label": 1, "rope2d_each_sa_layer": 1, "rope2d_normalized_by_hw": 2, "pn": "1M",
              "apply_spatial_patchify": 0, "inference_mode": True, "train_h_div_w_list": [1.0], "depth": depth,
              "embed_dim": embed_dim, "num_heads": num_heads, "drop_path_rate": 0.1, "mlp_ratio": 4,
              "block_chunks": block_chunks}
    return {"vae": vae, "infinity": {"kwargs": kwargs}}


def var_preset(depth: int) -> dict:
    """``models.build_vae_var`` (256px): width 64*depth, heads = depth, VAE ``vae_ch160v4096z32``."""
    patch_nums = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    vae = {"vocab_size": 4096, "z_channels": 32, "ch": 160, "dropout": 0.0, "beta": 0.25, "using_znorm": False,
           "quant_conv_ks": 3, "quant_resi": 0.5, "share_quant_resi": 4, "default_qresi_counts": 0,
           "v_patch_nums": patch_nums, "test_mode": True}
    var = {"num_classes": 1000, "depth": depth, "embed_dim": 64 * depth, "num_heads": depth, "mlp_ratio": 4.0,
           "drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.1 * depth / 24, "norm_eps": 1e-6,
           "shared_aln": False, "cond_drop_rate": 0.1, "attn_l2_norm": True, "patch_nums": patch_nums,
           "flash_if_available": True, "fused_if_available": True}
    return {"vae_kwargs": vae, "var_kwargs": var}


PRESETS = {
    "infinity-2b": infinity_preset(32, 2048, 16, 8),
    # reduced for CPU: the 2B flags, head dim 128 and 4 blocks per chunk; VAE base_ch 32 instead of 128
    "infinity-cpu": infinity_preset(8, 1024, 8, 2, vae_base_ch=32),
    "var-d12": var_preset(12),
    "var-d16": var_preset(16),
    "var-d30": var_preset(30),
}


# -------------------------------------------------------------------------------------------- official imports


def fail(message: str) -> None:
    raise SystemExit(f"time_official: error: {message}")


def check_official_root(root: Path, backbone: str) -> None:
    """A clear error unless ``root`` is a working copy of the official repository of ``backbone``."""
    marker = {"infinity": "infinity/models/infinity.py", "var": "models/var.py"}[backbone]
    repo = {"infinity": "FoundationVision/Infinity", "var": "FoundationVision/VAR"}[backbone]
    if not root.is_dir():
        fail(f"--official-root {root} is not a folder (give a working copy of {repo})")
    if (root / marker).is_file():
        return
    if (root / "HEAD").is_file() and (root / "objects").is_dir():
        fail(f"--official-root {root} is a bare git directory; export a working copy first, e.g. "
             f"mkdir -p OUT && git -C {root} archive HEAD | tar -x -C OUT")
    other = "models/var.py" if backbone == "infinity" else "infinity/models/infinity.py"
    hint = " (it looks like the other backbone's repository)" if (root / other).is_file() else ""
    fail(f"--official-root {root} is not a {repo} checkout: {marker} not found{hint}")


def use_shims(names: tuple[str, ...]) -> list[str]:
    """Import a stand-in from ``official_shims`` for every name whose real package is not installed."""
    used = []
    for name in names:
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        init = SHIM_DIR / name / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        used.append(name)
    return used


def import_official(root: Path, modules: list[str]) -> list:
    sys.path.insert(0, str(root))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return [importlib.import_module(m) for m in modules]
    except ModuleNotFoundError as exc:
        fail(f"the official code in {root} needs the package {exc.name!r}, which is not installed "
             f"(pip install {exc.name}, or pip install --target DIR {exc.name} and pass --extra-path DIR)")


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 and (root / ".git").exists() else None


# ---------------------------------------------------------------------------------------------- random weights


@torch.no_grad()
def redraw_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter from one seeded generator (buffers keep their constructor values): linear/conv
    weights N(0, 1/fan_in), norm weights 1 + N(0, 0.1), attention log-scales + N(0, 0.1), other vectors
    N(0, 0.1), other tensors (embeddings, positions, cfg_uncond, ada_gss, ...) N(0, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "scale_mul" in name:
                value = p.float() + 0.1 * noise
            elif name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                value = noise / p[0].numel() ** 0.5
            elif name == "weight" and p.ndim == 1 and "Norm" in type(module).__name__:
                value = 1 + 0.1 * noise
            else:
                value = noise * (0.1 if p.ndim == 1 else 0.5)
            p.copy_(value)


def size_mb(*modules: nn.Module) -> float:
    """Parameters and buffers held on the device."""
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20


def state_dict_cpu(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- Infinity


class InfinityBench:
    """Official Infinity (``load_visual_tokenizer`` + ``load_infinity`` + ``gen_one_img``) vs fastvar."""

    def __init__(self, args: argparse.Namespace, config: dict, tmp: Path):
        vae_mod, inf_mod, dynres = import_official(args.official_root, [
            "infinity.models.bsq_vae.vae", "infinity.models.infinity", "infinity.utils.dynamic_resolution"])
        self.device, self.args = torch.device(args.device), args
        torch._dynamo.config.cache_size_limit = 64  # as tools/run_infinity.py sets at import
        if args.official_eager:  # the bodies of fused_op.py's @torch.compile functions, run eagerly
            for name in ("fused_ada_layer_norm", "fused_ada_rms_norm"):
                fn = getattr(inf_mod, name)
                if fn is not None:
                    setattr(inf_mod, name, getattr(fn, "_torchdynamo_orig_callable", fn))
        bf16 = args.dtype == "bf16"

        # VAE: vae_model() builds AutoEncoder from a hard-coded namespace; apply the config's changes to it
        loader_args = {k: v for k, v in config["vae"]["loader_args"].items() if k != "vqgan_ckpt"}
        changed = {k: new for k, (_old, new) in config["vae"].get("hard_coded_namespace_values_changed", {}).items()}
        real_autoencoder = vae_mod.AutoEncoder

        def autoencoder(ns):
            vars(ns).update(changed)
            return real_autoencoder(ns)

        vae_mod.AutoEncoder = autoencoder
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                vae = vae_mod.vae_model(None, **loader_args)
        finally:
            vae_mod.AutoEncoder = real_autoencoder
        redraw_(vae, args.seed + 1)
        torch.save({"vae": state_dict_cpu(vae)}, tmp / "vae.pth")
        _, left, _ = vae_mod.load_cnn(vae, torch.load(tmp / "vae.pth", map_location="cpu", weights_only=True)["vae"],
                                      prefix="", expand=False)  # official reader of the file just written
        if left:
            fail(f"official load_cnn left VAE keys unused: {sorted(left)[:5]}")
        self.vae = vae.to(self.device)
        self.codebook_dim = loader_args["codebook_dim"]

        # transformer: load_infinity (built on CPU, moved, bf16 blocks, eval, official non-strict load)
        with contextlib.redirect_stdout(io.StringIO()):
            model = inf_mod.Infinity(vae_local=vae, **config["infinity"]["kwargs"])
        redraw_(model, args.seed + 2)
        torch.save(state_dict_cpu(model), tmp / "infinity.pth")
        model = model.to(self.device)
        if bf16:
            for block in model.unregistered_blocks:
                block.bfloat16()
        model.eval().requires_grad_(False)
        result = model.load_state_dict(torch.load(tmp / "infinity.pth", map_location=self.device))
        if result.missing_keys or result.unexpected_keys:
            fail(f"official Infinity.load_state_dict: missing {result.missing_keys[:5]}, "
                 f"unexpected {result.unexpected_keys[:5]}")
        model.rng = torch.Generator(device=self.device)
        self.model = model
        self.autocast = bf16

        from fastvar import load_pipeline
        from fastvar.backbones.infinity.schedules import pn_name

        self.pipe = load_pipeline("infinity", vae=tmp / "vae.pth", transformer=tmp / "infinity.pth", config=config,
                                  device=self.device, dtype=DTYPES[args.dtype])
        self.pipe.set_progress_bar_config(disable=True)

        # run_infinity: template nearest to h/w = 1, then t replaced by 1
        template = dynres.h_div_w_templates[abs(dynres.h_div_w_templates - 1.0).argmin()]
        pn = pn_name(args.resolution)
        if pn not in dynres.dynamic_resolution_h_w[template]:
            fail(f"the official schedule table has no {pn} ({args.resolution}px) entry")
        self.schedule = [(1, h, w) for _, h, w in dynres.dynamic_resolution_h_w[template][pn]["scales"]]

        # the same random T5 features for both sides (Flan-T5 outputs stand-in), one prompt per image
        g = torch.Generator().manual_seed(args.seed + 3)
        C = config["infinity"]["kwargs"]["text_channels"]
        self.feats = [torch.randn(args.text_tokens, C, generator=g).to(self.device) for _ in range(args.batch)]
        lens = [f.shape[0] for f in self.feats]
        cu = torch.nn.functional.pad(torch.tensor(lens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
        self.text = (torch.cat(self.feats), lens, cu.to(self.device), max(lens))  # encode_prompt's tuple
        self.sampling = {"cfg": 4.0 if args.cfg is None else args.cfg, "tau": args.tau,
                         "top_k": 900 if args.top_k is None else args.top_k,
                         "top_p": 0.97 if args.top_p is None else args.top_p}

    def official(self) -> torch.Tensor:
        s, n = self.sampling, len(self.schedule)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            _, _, img = self.model.autoregressive_infer_cfg(
                vae=self.vae, scale_schedule=self.schedule, label_B_or_BLT=self.text, g_seed=self.args.seed,
                B=self.args.batch, negative_label_B_or_BLT=None, force_gt_Bhw=None, cfg_sc=3,
                cfg_list=[s["cfg"]] * n, tau_list=[s["tau"]] * n, top_k=s["top_k"], top_p=s["top_p"], returns_vemb=1,
                ratio_Bl1=None, gumbel=0, norm_cfg=False, cfg_exp_k=0.0, cfg_insertion_layer=[0],
                vae_type=self.codebook_dim, softmax_merge_topk=-1, ret_img=True, trunk_scale=1000, gt_leak=-1,
                gt_ls_Bl=None, inference_mode=True, sampling_per_bits=1)
        return img  # (B, H, W, 3) uint8 BGR

    def ours(self, return_tokens: bool = False):
        return self.pipe(prompt_embeds=self.feats, seed=self.args.seed, resolution=self.args.resolution,
                         h_div_w=1.0, output_type="pt", return_tokens=return_tokens, **self.sampling)

    def official_checked(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One official call recording the sampled bits (B, h*w, d) per scale and the float image in [0, 1]."""
        lfq, tokens, images = self.vae.quantizer.lfq, [], []
        to_codes, decode = lfq.indices_to_codes, self.vae.decode

        def record_bits(indices, *a, **kw):
            tokens.append(indices.reshape(indices.shape[0], -1, indices.shape[-1]).to(torch.uint8))  # (B,1,h,w,d)
            return to_codes(indices, *a, **kw)

        def record_image(*a, **kw):
            out = decode(*a, **kw)
            images.append(out.float().add(1).div(2))
            return out

        lfq.indices_to_codes, self.vae.decode = record_bits, record_image
        try:
            self.official()
        finally:
            del lfq.indices_to_codes, self.vae.decode
        return tokens, images[0]

    def ours_checked(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = self.ours(return_tokens=True)
        if [tuple(s) for s in out.stats["scale_schedule"]] != [(h, w) for _, h, w in self.schedule]:
            fail(f"schedules differ: fastvar {out.stats['scale_schedule']} vs official {self.schedule}")
        return [t.to(torch.uint8) for t in out.tokens], out.images.float()

    @staticmethod
    def official_u8(img: torch.Tensor) -> torch.Tensor:
        return img

    @staticmethod
    def ours_u8(images: torch.Tensor) -> torch.Tensor:
        """fastvar's float RGB -> the official (B, H, W, 3) BGR uint8 (truncating conversion)."""
        return images.permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))

    def weights_mb(self) -> dict:
        return {"official": size_mb(self.model, self.vae), "ours": size_mb(self.pipe.model, self.pipe.vae)}

    def describe(self) -> dict:
        return {"scale_schedule": [list(s) for s in self.schedule], "text_tokens_per_prompt": self.args.text_tokens,
                **self.sampling, "cfg_insertion_layer": [0], "seed": self.args.seed}


# --------------------------------------------------------------------------------------------------------- VAR


class VARBench:
    """Official VAR (``build_vae_var`` + ``demo_sample.ipynb``) vs fastvar."""

    def __init__(self, args: argparse.Namespace, config: dict, tmp: Path):
        var_mod, vqvae_mod = import_official(args.official_root, ["models.var", "models.vqvae"])
        self.var_mod, self.device, self.args = var_mod, torch.device(args.device), args
        vae = vqvae_mod.VQVAE(**config["vae_kwargs"])
        redraw_(vae, args.seed + 1)
        with contextlib.redirect_stdout(io.StringIO()):
            var = var_mod.VAR(vae_local=vae, **config["var_kwargs"])
        redraw_(var, args.seed + 2)
        torch.save(state_dict_cpu(vae), tmp / "vae.pth")
        torch.save(state_dict_cpu(var), tmp / "var.pth")
        vae.load_state_dict(torch.load(tmp / "vae.pth", map_location="cpu"), strict=True)  # as demo_sample.ipynb
        var.load_state_dict(torch.load(tmp / "var.pth", map_location="cpu"), strict=True)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.model = var.to(self.device).eval().requires_grad_(False)
        self.model.rng = torch.Generator(device=self.device)  # VAR makes it on dist.get_device() (cuda:0 or cpu)
        self.autocast = args.dtype == "bf16"

        from fastvar import load_pipeline

        self.pipe = load_pipeline("var", vae=tmp / "vae.pth", transformer=tmp / "var.pth", config=config,
                                  device=self.device, dtype=DTYPES[args.dtype])
        self.pipe.set_progress_bar_config(disable=True)
        n = config["var_kwargs"]["num_classes"]
        self.labels = [(207 + 97 * i) % n for i in range(args.batch)]
        self.sampling = {"cfg": 4.0 if args.cfg is None else args.cfg,
                         "top_k": 900 if args.top_k is None else args.top_k,
                         "top_p": 0.95 if args.top_p is None else args.top_p}

    def official(self) -> torch.Tensor:
        label_B = torch.tensor(self.labels, device=self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model.autoregressive_infer_cfg(B=len(self.labels), label_B=label_B, g_seed=self.args.seed,
                                                       more_smooth=False, **self.sampling)  # (B, 3, H, W) in [0, 1]

    def ours(self, return_tokens: bool = False):
        return self.pipe(class_labels=self.labels, seed=self.args.seed, output_type="pt",
                         return_tokens=return_tokens, **self.sampling)

    def official_checked(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        sample, tokens = self.var_mod.sample_with_top_k_top_p_, []

        def record(*a, **kw):
            idx = sample(*a, **kw)
            tokens.append(idx[:, :, 0])
            return idx

        self.var_mod.sample_with_top_k_top_p_ = record
        try:
            img = self.official()
        finally:
            self.var_mod.sample_with_top_k_top_p_ = sample
        return tokens, img.float()

    def ours_checked(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = self.ours(return_tokens=True)
        return list(out.tokens), out.images.float()

    @staticmethod
    def official_u8(img: torch.Tensor) -> torch.Tensor:
        return img.float().mul(255).to(torch.uint8)

    ours_u8 = official_u8

    def weights_mb(self) -> dict:
        return {"official": size_mb(self.model, self.vae), "ours": size_mb(self.pipe.model, self.pipe.vae)}

    def describe(self) -> dict:
        return {"patch_nums": list(self.model.patch_nums), "class_labels": self.labels, **self.sampling,
                "more_smooth": False, "seed": self.args.seed}


# ------------------------------------------------------------------------------------------------------ timing


def timed_call(call: Callable[[], object], device: torch.device) -> tuple[object, float, dict]:
    """(output, wall milliseconds, extra) of one call; on CUDA synchronised around it, with peak memory; on CPU
    with the process CPU time (all threads), less sensitive than wall time to other jobs on a shared machine."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = call()
    if cuda:
        torch.cuda.synchronize(device)
    ms = (time.perf_counter() - t0) * 1e3
    if not cuda:
        return out, ms, {"cpu_ms": (time.process_time() - c0) * 1e3}
    peak = torch.cuda.max_memory_allocated(device)
    return out, ms, {"peak_mb": peak / 2**20, "peak_above_start_mb": (peak - before) / 2**20}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def compare(official_out, ours_out) -> dict:
    """Tokens of the check calls (exact) and images (float of the check calls, uint8 of the last timed calls)."""
    (tok_o, img_o), (tok_f, img_f) = official_out, ours_out
    steps = [i for i, (a, b) in enumerate(zip(tok_o, tok_f)) if a.shape != b.shape or not torch.equal(a.cpu(), b.cpu())]
    return {
        "token_steps": [len(tok_o), len(tok_f)],
        "tokens_identical": len(tok_o) == len(tok_f) and not steps,
        "first_differing_step": steps[0] if steps else None,
        "differing_token_values": sum(int((tok_o[i].cpu() != tok_f[i].cpu()).sum()) for i in steps
                                      if tok_o[i].shape == tok_f[i].shape),
        "image_max_abs_diff_float": float((img_o.cpu() - img_f.cpu()).abs().max()),
    }


def run(bench, device: torch.device, warmup: int, repeats: int) -> dict:
    checks = compare(bench.official_checked(), bench.ours_checked())
    sides = {"official": bench.official, "ours": bench.ours}
    for _ in range(warmup):
        for side in sides.values():
            timed_call(side, device)
    times = {"official": [], "ours": []}
    extra = {"official": [], "ours": []}
    last = {}
    for i in range(repeats):
        order = ("official", "ours") if i % 2 == 0 else ("ours", "official")
        for name in order:
            out, ms, more = timed_call(sides[name], device)
            times[name].append(ms)
            extra[name].append(more)
            last[name] = out
            print(f"  pair {i + 1}/{repeats} {name}: {ms:.1f} ms", file=sys.stderr, flush=True)
    ours_img = last["ours"].images
    diff_u8 = (bench.official_u8(last["official"]).int() - bench.ours_u8(ours_img).int()).abs()
    checks.update(image_max_abs_diff_u8=int(diff_u8.max()), image_u8_values_differing=int((diff_u8 > 0).sum()),
                  image_u8_values=diff_u8.numel())
    ratios = [f / o for f, o in zip(times["ours"], times["official"])]
    result = {"official_ms": spread(times["official"]), "ours_ms": spread(times["ours"]),
              "ratio_ours_over_official": spread(ratios), "match": checks}
    if device.type == "cuda":
        for name in sides:
            result[f"{name}_peak_mb"] = max(m["peak_mb"] for m in extra[name])
            result[f"{name}_peak_above_start_mb"] = max(m["peak_above_start_mb"] for m in extra[name])
    else:
        cpu = {name: [m["cpu_ms"] for m in extra[name]] for name in sides}
        result.update(official_cpu_ms=spread(cpu["official"]), ours_cpu_ms=spread(cpu["ours"]),
                      cpu_ratio_ours_over_official=spread([f / o for f, o in zip(cpu["ours"], cpu["official"])]))
    return result


def markdown_row(r: dict) -> str:
    o, f, q, m = r["official_ms"], r["ours_ms"], r["ratio_ours_over_official"], r["match"]
    mem = (f"{r['official_peak_above_start_mb']:.0f} / {r['ours_peak_above_start_mb']:.0f}"
           if "ours_peak_mb" in r else "n/a")
    c = r.get("cpu_ratio_ours_over_official")
    cpu = f"{c['median']:.3f} ({c['min']:.3f}-{c['max']:.3f})" if c else "n/a"
    return (f"| {r['backbone']} {r['config']} | {r['resolution']}px b{r['batch']} | {r['dtype']} | {r['device_name']} | "
            f"{o['median']:.0f} ({o['min']:.0f}-{o['max']:.0f}) | {f['median']:.0f} ({f['min']:.0f}-{f['max']:.0f}) | "
            f"{q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f}) | {'yes' if m['tokens_identical'] else 'NO'} | "
            f"{m['image_max_abs_diff_float']:.2g} / {m['image_max_abs_diff_u8']} | {mem} | {cpu} |")


HEADER = ("| model | size | dtype | device | official ms (median, min-max) | fastvar ms (median, min-max) | "
          "fastvar/official per pair (median, min-max) | tokens identical | max abs image diff (float / uint8) | "
          "peak MB above start (official / fastvar) | fastvar/official CPU time per pair |\n|" + "---|" * 11)


# -------------------------------------------------------------------------------------------------------- main


def load_config(value: str) -> dict:
    if value in PRESETS:
        return copy.deepcopy(PRESETS[value])
    path = Path(value)
    if not path.is_file():
        fail(f"--config {value!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    return json.loads(path.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--backbone", choices=("infinity", "var"))
    p.add_argument("--official-root", type=Path, help="working copy of FoundationVision/Infinity or /VAR")
    p.add_argument("--config", help=f"golden-format JSON of official constructor arguments, or a preset: {', '.join(PRESETS)}")
    p.add_argument("--dump-config", metavar="PRESET", choices=sorted(PRESETS), help="print a preset as JSON and exit")
    p.add_argument("--resolution", type=int, default=256, help="Infinity: 256/512/768/1024 (VAR: fixed by its config)")
    p.add_argument("--batch", type=int, default=1, help="images per call (prompts / class labels)")
    p.add_argument("--text-tokens", type=int, default=64, help="Infinity: T5 tokens per (random) prompt")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cfg", type=float, help="default: Infinity 4 (scripts/infer.sh), VAR 4 (demo)")
    p.add_argument("--tau", type=float, default=0.5, help="Infinity logit temperature (2B: 0.5)")
    p.add_argument("--top-k", type=int, help="default 900 (both)")
    p.add_argument("--top-p", type=float, help="default: Infinity 0.97, VAR 0.95")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (g_seed); weights use seed+1, seed+2")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs after the check pair")
    p.add_argument("--repeats", type=int, default=5, help="timed pairs")
    p.add_argument("--official-eager", action="store_true",
                   help="Infinity: run the official @torch.compile'd fused_op.py norms eagerly (bitwise as fastvar)")
    p.add_argument("--extra-path", action="append", default=[], help="folder appended to sys.path (e.g. einops)")
    p.add_argument("--tmpdir", help="where the official-format checkpoints are written (default: system temp)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.dump_config is None and not (args.backbone and args.official_root and args.config):
        p.error("--backbone, --official-root and --config are required (or --dump-config PRESET)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dump_config:
        print(json.dumps(PRESETS[args.dump_config], indent=1))
        return 0
    args.official_root = args.official_root.resolve()
    check_official_root(args.official_root, args.backbone)
    config = load_config(args.config)
    want = "infinity" if args.backbone == "infinity" else "var_kwargs"
    if want not in config:
        fail(f"--config {args.config} is not a {args.backbone} config (no {want!r} key)")
    sys.path.extend(args.extra_path)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {args.device}: this torch {torch.__version__} sees no CUDA GPU")
    if args.backbone == "infinity" and args.dtype == "bf16" and device.type != "cuda":
        fail("the official Infinity bf16 recipe (bf16 blocks under autocast) runs on CUDA only; use --dtype fp32")
    shims = use_shims(SHIMS[args.backbone])
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)  # official
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        print(f"building official {args.backbone} ({args.config}) and loading fastvar ...", file=sys.stderr, flush=True)
        bench = (InfinityBench if args.backbone == "infinity" else VARBench)(args, config, Path(tmp))
        result = run(bench, device, args.warmup, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {
        "backbone": args.backbone, "config": args.config, "config_args": config,
        "resolution": args.resolution if args.backbone == "infinity" else 16 * bench.model.patch_nums[-1],
        "batch": args.batch, "dtype": args.dtype, "device": str(device), "device_name": name,
        "torch": torch.__version__, "official_root": str(args.official_root),
        "official_commit": git_commit(args.official_root), "shims_used": shims,
        "flash_attn": "real" if "flash_attn" in sys.modules and "flash_attn" not in shims else
                      ("stand-in" if "flash_attn" in shims else "not imported"),
        "official_torch_compile": not args.official_eager, "warmup_pairs": args.warmup, "timed_pairs": args.repeats,
        "call": bench.describe(), "weights_mb": bench.weights_mb(),
        "timed_span": "one whole generation call each: conditioning, next-scale loop (CFG, sampling), VAE decode "
                      "to an image tensor (official: autoregressive_infer_cfg; fastvar: pipe(output_type='pt'))",
        **result,
    }
    print(HEADER)
    print(markdown_row(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
