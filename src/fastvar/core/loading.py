"""Checkpoint reading and strict loading.

Official files are read unchanged (``.pth``/``.bin`` with ``weights_only=True``, ``.safetensors``, or a folder of
sharded safetensors with an index). Loading is strict: every model key must be present with its shape, and every
checkpoint key must be used, except keys the caller names as derived buffers (recomputed by fastvar) or as
belonging to something we do not run (a GAN discriminator). Models are built on the meta device and the tensors are
assigned, so a 2B model costs no random initialisation, then moved to the device one tensor at a time in its final
dtype.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .quantize import quantize_linears

StateDict = dict[str, torch.Tensor]
DtypeRule = torch.dtype | Callable[[str], torch.dtype]  # one dtype, or one per parameter name


def read_state_dict(path: str | Path, *, what: str, unwrap: Iterable[str] = ()) -> StateDict:
    """Read a state dict from ``path``; ``unwrap`` names top-level wrapper keys to descend into (e.g. ``"vae"``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    try:
        if path.is_dir():
            sd = _read_folder(path)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, pickle with code, truncated download ...
        raise CheckpointError(f"cannot read {what} checkpoint {path}: {type(exc).__name__}: {exc}") from None
    for key in unwrap:
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} checkpoint {path} does not hold a state dict of tensors")
    return dict(sd)


def _read_folder(folder: Path) -> StateDict:
    from safetensors.torch import load_file

    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files (or index) in folder {folder}")
    sd: StateDict = {}
    for name in files:
        sd.update(load_file(str(folder / name)))
    return sd


def key_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whether a key fully matches one of the regular expressions ``patterns``."""
    regex = [re.compile(p) for p in patterns]
    return lambda key: any(r.fullmatch(key) for r in regex)


def check_state_dict(
    expected: Mapping[str, torch.Size],
    sd: Mapping[str, torch.Tensor],
    *,
    what: str,
    derived: Iterable[str] = (),
    hint: str = "",
) -> StateDict:
    """Compare a checkpoint with the expected key -> shape map. Returns the state dict restricted to expected keys.

    ``derived`` are regular expressions of checkpoint keys that may be present and are dropped (buffers fastvar
    recomputes, or parts of the release that inference does not use).
    """
    is_derived = key_matcher(derived)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not is_derived(k)]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k])}" for k in expected if k in sd and sd[k].shape != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" ... (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(f"{what} checkpoint does not match the model: " + "; ".join(parts) + (f". {hint}" if hint else ""))
    return {k: sd[k] for k in expected}


def build_and_load(
    factory: Callable[[], nn.Module],
    sd: Mapping[str, torch.Tensor],
    *,
    what: str,
    derived: Iterable[str] = (),
    hint: str = "",
    device: torch.device | str = "cpu",
    dtype: DtypeRule = torch.float32,
    quantize: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Build ``factory()`` on the meta device, strictly load ``sd`` into it and move it to ``device`` and ``dtype``
    (see ``move_parameters``: the device never holds more than the final weights plus one tensor; ``quantize``
    too), eval mode."""
    with torch.device("meta"):
        model = factory()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    checked = check_state_dict(expected, sd, what=what, derived=derived, hint=hint)
    model.load_state_dict(checked, strict=True, assign=True)
    return move_parameters(model, device, dtype, quantize).eval().requires_grad_(False)


def move_parameters(model: nn.Module, device: torch.device | str, dtype: DtypeRule,
                    quantize: Callable[[str], bool] | None = None) -> nn.Module:
    """Move the parameters to ``device`` one at a time, each floating one in its dtype: ``dtype`` is one for all, or
    a function of the parameter's name (bfloat16 blocks beside a float32 head). ``model.to(device, dtype)`` followed
    by casting parts back would round those parts and hold the whole model in the first dtype; here a parameter
    already in place is kept as it is (no copy) and the peak is the final weights plus one tensor. ``quantize``
    selects, by qualified name, linear layers to store in int8 first (``fastvar.core.quantize``)."""
    if quantize is not None:
        quantize_linears(model, quantize, device)
    dtype_of = dtype if callable(dtype) else lambda name: dtype
    for name, param in model.named_parameters():
        target = dtype_of(name) if param.is_floating_point() else param.dtype  # int8 weights stay int8
        param.data = param.data.to(device=device, dtype=target)
    return model


def release_hint(depth: int, width: int, releases: Mapping[str, tuple[int, int]], details: str = "",
                 otherwise: str = "") -> str:
    """Error-message hint: the sizes found in a transformer checkpoint and the registry name with those sizes."""
    found = f"the checkpoint has depth {depth}, width {width}{details}"
    matches = [name for name, size in releases.items() if size == (depth, width)]
    return f"{found}: try config={matches[0]!r}" if matches else found + otherwise
