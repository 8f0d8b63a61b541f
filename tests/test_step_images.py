"""``on_step``: the image decoded after every computed scale step (every backbone), and ``--save-steps``."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from fastvar import load_pipeline
from fastvar.cli import main


def collect(pipe, **kwargs):
    seen = {}
    out = pipe(on_step=lambda si, images: seen.__setitem__(si, images()), output_type="pt", **kwargs)
    return out, seen


def test_var_step_images_end_at_the_output(golden_var):
    root = golden_var.root
    pipe = load_pipeline("var", vae=root / "vae.pth", transformer=root / "var.pth", config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    out, seen = collect(pipe, class_labels=[1, 2], seed=0, pruning="0.5,1")  # the last step skipped
    assert sorted(seen) == [s["step"] for s in out.stats["steps"] if not s["skipped"]] == list(range(6))
    assert torch.equal(seen[5], out.images)  # the last computed step's image is the output
    assert not torch.equal(seen[0], out.images) and seen[0].shape == out.images.shape
    plain = pipe(class_labels=[1, 2], seed=0, pruning="0.5,1", output_type="pt")
    assert torch.equal(plain.images, out.images)  # asking for the images changes nothing


def test_infinity_and_hart_step_images_end_at_the_output(golden_infinity, golden_hart):
    from fastvar.backbones.infinity.text import TextCondition

    root = golden_infinity.root
    pipe = load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                         config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    text = TextCondition.from_padded(golden_infinity["text.features_padded"], golden_infinity["text.attention_mask"])
    out, seen = collect(pipe, prompt_embeds=text, seed=0, resolution=256)
    assert sorted(seen) == list(range(7)) and torch.equal(seen[6], out.images)
    hart = load_pipeline("hart", vae=golden_hart.root / "tokenizer", transformer=golden_hart.root / "llm")
    hart.set_progress_bar_config(disable=True)
    out, seen = collect(hart, prompt_embeds=golden_hart["inputs.context"], seed=0, scale_schedule=[1, 2, 4])
    assert sorted(seen) == [0, 1, 2] and torch.equal(seen[2], out.images)


def test_cli_saves_the_image_of_every_step(tmp_path):
    steps = tmp_path / "steps"
    assert main(["generate", "a red apple", "--pruning", "0.5,1", "--save-steps", str(steps), "--quiet",
                 "--out", str(tmp_path / "apple.png")]) == 0
    assert sorted(p.name for p in steps.iterdir()) == [f"apple_step{i:02d}.png" for i in range(6)]  # 16x16 skipped
    last, final = (np.asarray(Image.open(p)) for p in (steps / "apple_step05.png", tmp_path / "apple.png"))
    assert np.array_equal(last, final)


def test_cli_eval_reports_how_close_each_step_already_is(tmp_path):
    table = tmp_path / "eval.json"
    assert main(["eval", "a red apple", "a banana", "--seeds", "0-1", "--schedules", "0.5,1", "--convergence",
                 "--quiet", "--json", str(table)]) == 0
    baseline = json.loads(table.read_text())["rows"][0]
    per_step = baseline["convergence_per_step"]
    assert list(per_step) == [str(si) for si in range(7)]  # every step of the unaccelerated run
    assert per_step["6"] == {"psnr_db_to_final": float("inf"), "detail_of_final": 1.0}  # the last image is the final
    assert per_step["0"]["psnr_db_to_final"] < per_step["5"]["psnr_db_to_final"] < float("inf")
