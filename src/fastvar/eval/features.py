"""Fidelity in the feature space of an image network the user supplies (fastvar ships none: no pretrained
Inception or CLIP can be downloaded here).

A feature model maps images (B, 3, H, W) in [0, 1], float32, on the generation's device, to features (B, D). It is
given as a TorchScript file (``torch.jit.save`` of a module that resizes and normalises as its network expects; a
``.pt`` of pytorch-fid's Inception wrapped that way gives the usual FID features) or as ``package.module:function``
(any importable callable). Two measures against the unaccelerated images: the mean cosine similarity of each image's
features to its own baseline's, and the Fréchet distance between the two sets (FID's formula: the usual FID when the
model is Inception-v3's pool layer and the sets are large).
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import FastVARError

FeatureModel = Callable[[torch.Tensor], torch.Tensor]


def load_feature_model(spec: str, device: torch.device) -> FeatureModel:
    """A TorchScript file (loaded on ``device``, eval mode) or ``package.module:function``; a clear error otherwise."""
    path = Path(spec)
    if path.is_file():
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch, yet it is how feature networks ship
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FastVARError(f"cannot load the feature model {path} as TorchScript: {first}") from None
    else:
        module_name, _, attr = spec.partition(":")
        if not attr:
            raise FastVARError(f"feature model {spec!r} is neither a file nor package.module:function")
        try:
            model = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise FastVARError(f"cannot import the feature model {spec!r}: {exc}") from None
        if not callable(model):
            raise FastVARError(f"feature model {spec!r} is not callable")
    return model


@torch.inference_mode()
def extract(model: FeatureModel, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, D) float64 features on the CPU, with a clear error for a bad output."""
    features = model(images.clamp(0, 1))
    if not isinstance(features, torch.Tensor) or features.ndim < 2 or features.shape[0] != images.shape[0]:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise FastVARError(f"the feature model must return (B, D) features for B images, got {shape}")
    return features.flatten(1).double().cpu()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def reference_features(folder: str | Path, model: FeatureModel, device: torch.device) -> torch.Tensor:
    """(N, D) features of every image under ``folder`` (e.g. real images of the prompts' domain), one at a time at
    its own size, RGB in [0, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FastVARError(f"reference image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise FastVARError(f"{folder} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}); the Fréchet distance "
                           "needs at least 2")
    rows = []
    for path in paths:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        except OSError as exc:
            raise FastVARError(f"cannot read reference image {path}: {exc}") from None
        rows.append(extract(model, torch.from_numpy(pixels).permute(2, 0, 1)[None].to(device)))
    return torch.cat(rows)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row of two (N, D) feature sets: cos(a_i, b_i)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID's formula):
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``, covariances with N - 1, in float64.
    Both square roots are of symmetric positive semi-definite matrices, taken by eigendecomposition."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise FastVARError(f"Fréchet distance needs two (N, D) feature sets of the same D with N >= 2, got "
                           f"{tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T
