"""Classifier-free guidance off at the last scale steps (``cfg_off_last``): the unguided steps forward only the
conditional rows, and give exactly what the backbone gives when guidance is neutral at those steps while it still
computes both halves (the official code's behaviour for a guidance weight of 1 / a CFG ratio of 0)."""
from __future__ import annotations

import json

import pytest
import torch

from fastvar import FastVARError, PruningSchedule, load_pipeline
from fastvar.backbones.infinity import schedules
from fastvar.backbones.infinity.model import PackedText
from fastvar.backbones.infinity.text import TextCondition
from fastvar.cli import main
from fastvar.core.context import GenerationContext, KVCache
from fastvar.core.sampling import make_generator

# ------------------------------------------------------------------------------------------------ by hand


def test_kv_cache_serves_the_first_rows_to_a_step_with_fewer_rows():
    cache = KVCache(capacity=3)
    k2 = torch.arange(2 * 1 * 2 * 1, dtype=torch.float32).view(2, 1, 2, 1)  # rows 0, 1: keys [0, 1] and [2, 3]
    cache.append(k2, k2)
    k, v = cache.append(torch.full((1, 1, 1, 1), 9.0), torch.full((1, 1, 1, 1), 9.0))  # one row: the conditional
    assert k.tolist() == [[[[0.0], [1.0], [9.0]]]] and v.shape == (1, 1, 3, 1)
    k, _ = cache.append(torch.full((1, 1, 1, 1), 7.0), torch.full((1, 1, 1, 1), 7.0), store=False)
    assert k.tolist() == [[[[0.0], [1.0], [9.0], [7.0]]]]


def test_unguided_pruned_step_restores_from_the_conditional_rows_of_the_cache():
    # cache step 1 (2x2) with 2 rows, step 2 (4x4) pruned by 50 % with 1 row: the 8 pruned slots come from row 0
    ctx = GenerationContext([(1, 1), (2, 2), (4, 4)], pruner=PruningSchedule(ratios=(0.5,)).pruner(3, 1),
                            cfg_off_last=1)
    assert [ctx.guided(si) for si in range(3)] == [True, True, False]
    ctx.begin_step(1)
    cached = torch.stack([torch.arange(4.0), torch.full((4,), 100.0)]).view(2, 4, 1)
    ctx.branch(0, "ffn", lambda z: cached, torch.zeros(2, 4, 1))
    ctx.end_step(rows=2)
    ctx.begin_step(2)
    x = torch.zeros(1, 16, 1)
    x[0, :8, 0] = torch.tensor([10.0, -10, 11, -11, 12, -12, 13, -13])  # mean 0: these 8 are the farthest from it
    out = ctx.branch(0, "ffn", lambda z: z * -1, x)
    filler = cached[:1].view(1, 2, 2).repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(1, 16, 1)  # area
    expected = torch.where(torch.arange(16).view(1, 16, 1) < 8, -x, filler)
    assert torch.equal(out, expected)


def test_conditional_text_layout_is_sliced_not_rebuilt():
    """Dropping guidance keeps the first rows' text layout: equal to one built from their lengths (cond prompts of 3
    and 5 tokens, negatives of 7 and 2), taken by slicing on the device."""
    full = PackedText([3, 5, 7, 2], torch.device("cpu"))
    first, fresh = full.first(2), PackedText([3, 5], torch.device("cpu"))
    assert first.lens == [3, 5] and full.lens == [3, 5, 7, 2]
    assert torch.equal(first.index, fresh.index) and torch.equal(first.mask, fresh.mask)
    assert first.index.tolist() == [[0, 1, 2, 0, 0], [3, 4, 5, 6, 7]]  # packed rows of each prompt, 0 where padded


def test_bad_cfg_off_last_is_a_clear_error():
    for bad in (-1, 4, 1.5):
        with pytest.raises(FastVARError, match="cfg_off_last"):
            GenerationContext([(1, 1), (2, 2), (4, 4)], cfg_off_last=bad)


# ----------------------------------------------------------------------------------- golden checkpoints


def rows_per_step(out) -> list[int]:
    return [s["rows"] for s in out.stats["steps"]]


def test_var_unguided_after_step_0_equals_cfg_0(golden_var):
    """VAR's guidance is cfg * si/(K-1): 0 at step 0. So guidance off from step 1 is the official cfg=0 call (both
    halves computed, the conditional logits used), now with the 2B-row step-0 KV cache read by B-row steps."""
    r = golden_var.root
    pipe = load_pipeline("var", vae=r / "vae.pth", transformer=r / "var.pth", config=r / "config.json")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[3, 7], seed=5, top_k=0, top_p=0.0, output_type="pt", return_tokens=True)
    reference = pipe(cfg=0.0, **kwargs)
    off = pipe(cfg=4.0, cfg_off_last=6, **kwargs)
    assert rows_per_step(reference) == [4] * 7 and rows_per_step(off) == [4] + [2] * 6
    assert all(torch.equal(a, b) for a, b in zip(off.tokens, reference.tokens))
    torch.testing.assert_close(off.images, reference.images, atol=1e-5, rtol=0)
    guided = pipe(cfg=4.0, **kwargs)
    assert not all(torch.equal(a, b) for a, b in zip(guided.tokens, reference.tokens))


def test_infinity_unguided_last_steps_equal_cfg_1_with_pruning(golden_infinity):
    """Infinity mixes guidance into the logits only. With the guided steps' bits forced (official gt_leak), the
    unguided last steps must sample what a cfg=1 call (conditional rows only from the start) samples: here the
    FastVAR cache step (8x8) is guided (2B rows cached) and the two pruned steps after it are unguided."""
    root = golden_infinity.root
    pipe = load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                         config=root / "config.json")
    pipe.set_progress_bar_config(disable=True)
    text = TextCondition.from_padded(golden_infinity["text.features_padded"], golden_infinity["text.attention_mask"])
    scales, grid = schedules.scale_schedule(1.0, 256), schedules.rope_grid(1.0)  # 1, 2, 4, 6, 8, 12, 16
    first = pipe(prompt_embeds=text, seed=3, resolution=256, output_type="pt", return_tokens=True)
    forced = first.tokens[:5]  # steps 0..4

    def run(cfg: float, cfg_off_last: int):
        state = pipe.model.prepare(text, scales, grid, cfg=cfg, force_bits=forced)
        tokens, ctx = pipe.run(state, scales, pruning="0.4,0.5", generator=make_generator(11, "cpu"),
                               cfg_off_last=cfg_off_last)
        return tokens, ctx.stats(), pipe.decode(state.summed_codes)

    ref_tokens, ref_stats, ref_image = run(cfg=1.0, cfg_off_last=0)
    tokens, stats, image = run(cfg=3.0, cfg_off_last=2)
    assert [s["rows"] for s in ref_stats["steps"]] == [2] * 7
    assert [s["rows"] for s in stats["steps"]] == [4] * 5 + [2] * 2
    assert stats["pruned_steps"] == [5, 6]
    assert all(torch.equal(a, b) for a, b in zip(tokens, ref_tokens))
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)


def test_hart_unguided_after_step_0_equals_cfg_0(golden_hart):
    """HART's guidance is also cfg * ratio (0 at step 0): guidance off from step 1 samples the cfg=0 tokens; the
    final step's residual then comes from the diffusion head's unguided sampler."""
    golden = golden_hart
    pipe = load_pipeline("hart", vae=golden.root / "tokenizer", transformer=golden.root / "llm")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt_embeds=golden["inputs.context"][:1], prompt_attention_mask=golden["inputs.context_mask"][:1],
                  seed=2, top_k=10, more_smooth=False, scale_schedule=[1, 2, 3, 4, 5, 6], output_type="pt",
                  return_tokens=True)  # hard codebook lookups: the image is a function of the tokens
    reference = pipe(cfg=0.0, diffusion=False, **kwargs)
    off = pipe(cfg=4.5, cfg_off_last=5, diffusion=False, **kwargs)
    assert rows_per_step(off) == [2] + [1] * 5
    assert all(torch.equal(a, b) for a, b in zip(off.tokens, reference.tokens))
    torch.testing.assert_close(off.images, reference.images, atol=1e-5, rtol=0)
    with_diffusion = pipe(cfg=4.5, cfg_off_last=5, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(with_diffusion.tokens, reference.tokens))
    assert not torch.equal(with_diffusion.images, reference.images)  # the residual was added


def test_bench_reports_guidance_off_side_by_side(golden_var, tmp_path):
    r = golden_var.root
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
                 "--transformer", str(r / "var.pth"), "--pruning", "none", "--cfg-off-last", "0,2",
                 "--warmup", "0", "--repeats", "1", "--out", str(out)]) == 0
    base, off = json.loads(out.read_text())["results"]
    assert off["label"].endswith("cfg-off-last 2") and off["cfg_off_last"] == 2
    assert [s["rows"] for s in off["stats"]["steps"]] == [2] * 5 + [1] * 2
    assert off["transformer_tflop"] < base["transformer_tflop"]
    assert main(["bench", "--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
                 "--transformer", str(r / "var.pth"), "--cfg-off-last", "9", "--warmup", "0", "--repeats", "1"]) == 2


def test_eval_crosses_schedules_with_guidance_off(golden_var, tmp_path):
    """With cfg 0 (no guidance at any step) turning the unconditional rows off from step 1 changes nothing: the
    eval reports identical images and full token agreement for it, and a real difference for pruning."""
    r = golden_var.root
    js = tmp_path / "e.json"
    assert main(["eval", "--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
                 "--transformer", str(r / "var.pth"), "--quiet", "--class", "2", "--seeds", "0", "--cfg", "0",
                 "--schedules", "none|0.5,0.75", "--cfg-off-last", "0,6", "--json", str(js)]) == 0
    rows = {row["schedule"]: row for row in json.loads(js.read_text())["rows"]}
    assert list(rows) == ["none (baseline)", "none", "none + cfg-off-last 6", "0.5,0.75", "0.5,0.75 + cfg-off-last 6"]
    assert rows["none + cfg-off-last 6"]["identical_images"] == 1
    assert set(rows["none + cfg-off-last 6"]["token_agreement_per_step"].values()) == {1.0}
    assert rows["0.5,0.75 + cfg-off-last 6"]["psnr_db_mean"] == rows["0.5,0.75"]["psnr_db_mean"] < float("inf")
    # 140 tokens x 2 rows; unguided from step 1: 1 x 2 + 139 x 1 (VAR golden schedule 1..7)
    assert rows["none + cfg-off-last 6"]["work_ratio"] == round(280 / 141, 3)
    assert main(["eval", "--model", "var", "--config", str(r / "config.json"), "--vae", str(r / "vae.pth"),
                 "--transformer", str(r / "var.pth"), "--quiet", "--class", "2", "--schedules", "none",
                 "--cfg-off-last", "x"]) == 2
