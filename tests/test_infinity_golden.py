"""Infinity (+ FastVAR) against the official code's outputs (../shared/golden/infinity): text conditioning, teacher
forcing, greedy and seeded sampling at 256², the full 1024² schedule with and without FastVAR; configs, schedules,
non-square and batched generation on the tiny golden model."""
from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import load_golden

import fastvar.pruning.fastvar as fastvar_pruning
from fastvar import FastVARError, PruningSchedule, load_pipeline
from fastvar.backbones.infinity import schedules
from fastvar.backbones.infinity.config import CONFIGS, load_spec
from fastvar.backbones.infinity.model import Infinity, Rope2D
from fastvar.backbones.infinity.text import TextCondition
from fastvar.backbones.infinity.vae import InfinityVAE
from fastvar.core.sampling import make_generator, sample_top_k_top_p
from fastvar.errors import CheckpointError

TF_TOL = dict(atol=5e-4, rtol=1e-3)  # transformer floats (README: bf16 casts in cross-attention)
GUIDED_TOL = dict(atol=3e-3, rtol=1e-3)  # CFG amplifies raw-logit differences up to 14x
FASTVAR = "infinity-paper"  # the authors' blocks range(3, 28) on this depth-4 model: block 3
SHORT = schedules.scale_schedule(1.0, 256)
GRID = schedules.rope_grid(1.0)


@pytest.fixture(scope="module")
def golden():
    return load_golden("infinity")


@pytest.fixture(scope="module")
def pipe(golden):
    root = golden.root
    p = load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                      config=root / "config.json", device="cpu", dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def text_of(golden, name: str) -> TextCondition:
    return TextCondition.from_padded(golden[f"{name}.features_padded"], golden[f"{name}.attention_mask"])


def sizes(scales) -> list[int]:
    return [h * w for h, w in scales]


@contextmanager
def recorded_logits(model):
    """Record the guided logits of every step (a copy: the sampler filters them in place)."""
    logits, original = [], model.guided_logits
    model.guided_logits = lambda x, state, si: logits.append(original(x, state, si)) or logits[-1].clone()
    try:
        yield logits
    finally:
        del model.guided_logits


def generate(pipe, text, **kwargs):
    """Run the pipeline with the goldens' greedy CFG-4 call unless overridden; returns the output and the logits."""
    args = dict(prompt_embeds=text, cfg=4.0, tau=0.5, top_k=1, top_p=0.97, seed=0, output_type="pt",
                return_tokens=True)
    with recorded_logits(pipe.model) as logits:
        return pipe(**{**args, **kwargs}), logits


def bgr_u8(images: torch.Tensor) -> torch.Tensor:
    """Our RGB float (B, 3, H, W) -> the official returned image: BGR uint8 (B, H, W, 3), truncated."""
    return images.permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))


def assert_u8_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (actual.int() - expected.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.02, (diff.max(), (diff > 0).float().mean())


def assert_bits_equal(bits: torch.Tensor, golden, name: str) -> None:
    wrong = (bits != golden[f"{name}.bits_flat"]).nonzero()
    fragile = {tuple(r) for r in golden[f"{name}.fragile_bits_idx"].tolist()}
    first = wrong[0].tolist() if len(wrong) else None
    assert first is None, f"{len(wrong)} bits differ, first {first} (a listed fragile bit: {tuple(first) in fragile})"


# ---------------------------------------------------------------------------------------------- (b) text


def test_text_packing(golden):
    for name in ("text", "text1m"):
        text = text_of(golden, name)
        assert torch.equal(text.features, golden[f"{name}.kv_compact"])
        assert text.lens == golden[f"{name}.lens"].tolist()
        assert torch.equal(text.cu_seqlens, golden[f"{name}.cu_seqlens_k"])


def test_cfg_text_conditioning(pipe, golden):
    seen = []
    hook = pipe.model.text_norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        state = pipe.model.prepare(text_of(golden, "text"), SHORT, GRID, cfg=4.0)
    finally:
        hook.remove()
    assert torch.equal(seen[0], golden["ar_greedy.kv_compact_cfg"])  # prompts, then cfg_uncond[:len_i] per prompt
    cu = F.pad(torch.tensor(state.text.lens).cumsum(0), (1, 0)).int()
    assert torch.equal(cu, golden["ar_greedy.cu_seqlens_k_cfg"])
    torch.testing.assert_close(state.cond_BD, golden["ar_greedy.cond_BD"], **TF_TOL)


def test_rope_positions(golden):
    rope = Rope2D(schedules.scale_schedule(1.0, 1024), GRID, head_dim=32, device=torch.device("cpu"))
    assert torch.equal(rope.positions.short(), golden["rope.pos_rowcol_1m"])
    zero_shot = Rope2D([(84, 84)], GRID, head_dim=32, device=torch.device("cpu"))  # rows r*64/84: 0, .76, 1.52, 2.29
    assert zero_shot.positions[:84 * 6:84, 0].tolist() == [0, 1, 2, 2, 3, 4]  # .. 3.05, 3.81, rounded


# ----------------------------------------------------------------------------------- (c) teacher forcing


def test_teacher_forced_forward(pipe, golden):
    outputs = []
    hook = pipe.model.blocks[0].register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        logits = pipe.model(text_of(golden, "text"), golden["tf.x_BLC_wo_prefix"], SHORT, GRID)
    finally:
        hook.remove()
    torch.testing.assert_close(logits, golden["tf.logits"], **TF_TOL)
    torch.testing.assert_close(outputs[0], golden["tf.block0_out"], **TF_TOL)
    cond = pipe.model.prepare(text_of(golden, "text"), SHORT, GRID, cfg=1.0).cond_BD
    torch.testing.assert_close(cond, golden["tf.cond_BD"], **TF_TOL)


def test_cached_ar_with_forced_bits_equals_teacher_forcing(pipe, golden):
    """cfg=1, tau=1 and the VAE bits forced (official gt_leak): the KV-cached loop gives the forward's logits."""
    forced = golden["vae.bits_flat"].split(sizes(SHORT), dim=1)
    state = pipe.model.prepare(text_of(golden, "text"), SHORT, GRID, cfg=1.0, tau=1.0, top_k=1, top_p=0.0,
                               force_bits=forced)
    with recorded_logits(pipe.model) as logits:
        tokens, _ = pipe.run(state, SHORT, pruning=None, generator=make_generator(0, "cpu"))
    assert torch.equal(torch.cat(tokens, 1), golden["vae.bits_flat"])
    torch.testing.assert_close(torch.cat(logits, 1), golden["tf.logits"], **TF_TOL)


def test_per_step_cfg_and_tau_lists(pipe, golden):
    """Official ``cfg_list``/``tau_list``: a step with cfg 1 uses the conditional rows' logits alone (teacher-forced
    golden logits, all bits forced), a guided step the same logits as a scalar-cfg call; tau scales per step; the
    trailing cfg-1 step forwards only the conditional rows."""
    forced = golden["vae.bits_flat"].split(sizes(SHORT), dim=1)
    text, n = text_of(golden, "text"), len(SHORT)

    def run(cfg, tau):
        state = pipe.model.prepare(text, SHORT, GRID, cfg=cfg, tau=tau, top_k=1, top_p=0.0, force_bits=forced)
        with recorded_logits(pipe.model) as logits:
            _, ctx = pipe.run(state, SHORT, pruning=None, generator=make_generator(0, "cpu"),
                              cfg_off_last=state.unguided_tail)
        return logits, ctx.stats()

    cfg_list = [1.0, 4.0, 1.0, 4.0, 1.0, 4.0, 1.0]
    mixed, stats = run(cfg_list, 1.0)
    guided, _ = run(4.0, 1.0)
    teacher = golden["tf.logits"].split(sizes(SHORT), dim=1)
    for si, c in enumerate(cfg_list):
        if c == 1:
            torch.testing.assert_close(mixed[si], teacher[si], **TF_TOL)
        else:
            assert torch.equal(mixed[si], guided[si])
    assert [s["rows"] for s in stats["steps"]] == [4] * (n - 1) + [2]
    halved, _ = run(4.0, [1.0] * (n - 1) + [0.5])
    assert all(torch.equal(a, b) for a, b in zip(halved[:-1], guided[:-1])) and torch.equal(halved[-1], 2 * guided[-1])
    for bad in ([3.0] * (n - 1), [3.0] * (n + 1)):
        with pytest.raises(FastVARError, match="one per scale step"):
            pipe(prompt_embeds=text, cfg=bad, resolution=256)
    with pytest.raises(FastVARError, match="tau"):
        pipe(prompt_embeds=text, tau=[0.5] * (n - 1) + [0.0], resolution=256)


def test_trailing_cfg_1_steps_forward_conditional_rows_only(pipe, golden):
    text = text_of(golden, "text")
    kwargs = dict(prompt_embeds=text, seed=4, resolution=256, output_type="pt", return_tokens=True)
    listed = pipe(cfg=[3.0] * 5 + [1.0, 1.0], **kwargs)
    off = pipe(cfg=3.0, cfg_off_last=2, **kwargs)
    assert [s["rows"] for s in listed.stats["steps"]] == [4] * 5 + [2] * 2
    assert all(torch.equal(a, b) for a, b in zip(listed.tokens, off.tokens))
    assert torch.equal(listed.images, off.images)


# ------------------------------------------------------------------------------------- (d), (f) 256²


def test_greedy_short_schedule(pipe, golden):
    out, logits = generate(pipe, text_of(golden, "text"), resolution=256)
    assert_bits_equal(torch.cat(out.tokens, 1), golden, "ar_greedy")
    torch.testing.assert_close(torch.cat(logits, 1), golden["ar_greedy.guided_logits"], **GUIDED_TOL)
    assert out.images.shape == (2, 3, 256, 256)
    assert_u8_close(bgr_u8(out.images), golden["ar_greedy.img_u8_bgr"])
    other, _ = generate(pipe, text_of(golden, "text"), resolution=256, seed=987)  # greedy: seed-independent
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, other.tokens))


def test_seeded_sampling_short_schedule(pipe, golden):
    out, logits = generate(pipe, text_of(golden, "text"), resolution=256, top_k=900, seed=42)
    assert_bits_equal(torch.cat(out.tokens, 1), golden, "ar_sample")
    torch.testing.assert_close(torch.cat(logits, 1), golden["ar_sample.guided_logits"], **GUIDED_TOL)
    img = bgr_u8(out.images)
    assert_u8_close(img[:, :64, :64], golden["ar_sample.img_tl64_u8_bgr"])
    pooled = F.avg_pool2d(img.float().permute(0, 3, 1, 2), 8).permute(0, 2, 3, 1)
    torch.testing.assert_close(pooled, golden["ar_sample.img_pool8_f32_bgr"], atol=0.1, rtol=0)


def test_sampler_on_official_logits(golden):
    """The official guided logits + seed 42 give the official bits: one multinomial per scale, in order."""
    rng = make_generator(42, "cpu")
    bits = []
    for logits in golden["ar_sample.guided_logits"].split(sizes(SHORT), dim=1):
        B, l, V = logits.shape
        bits.append(sample_top_k_top_p(logits.reshape(B, l * V // 2, 2).clone(), 900, 0.97, rng).view(B, l, V // 2))
    assert torch.equal(torch.cat(bits, 1).to(torch.uint8), golden["ar_sample.bits_flat"])


# ---------------------------------------------------------------------------------- (e) 1024², FastVAR


@pytest.fixture(scope="module")
def runs_1m(pipe, golden):
    """Both 1M-schedule generations, run once: outputs, guided logits and every FastVAR token selection."""
    selections = []
    select = fastvar_pruning.select_pivotal_tokens

    def recording_select(x, num_keep):
        idx = select(x, num_keep)
        selections.append(idx.clone())
        return idx

    fastvar_pruning.select_pivotal_tokens = recording_select
    try:
        runs = {}
        for name, pruning in (("ar1m_base", None), ("ar1m_fastvar", FASTVAR)):
            selections.clear()
            out, logits = generate(pipe, text_of(golden, "text1m"), resolution=1024, pruning=pruning)
            runs[name] = (out, logits, list(selections))
    finally:
        fastvar_pruning.select_pivotal_tokens = select
    return runs


@pytest.mark.parametrize("name", ["ar1m_base", "ar1m_fastvar"])
def test_1m_schedule(runs_1m, golden, name):
    out, logits, _ = runs_1m[name]
    assert len(out.tokens) == (13 if name == "ar1m_base" else 11)
    assert_bits_equal(torch.cat(out.tokens, 1), golden, name)
    torch.testing.assert_close(logits[9], golden[f"{name}.guided_logits_s32"], **GUIDED_TOL)
    img = bgr_u8(out.images)
    assert img.shape == (1, 1024, 1024, 3)
    assert_u8_close(img[:, 448:576, 448:576], golden[f"{name}.img_center128_u8_bgr"])
    pooled = F.avg_pool2d(img.float().permute(0, 3, 1, 2), 16).permute(0, 2, 3, 1)
    torch.testing.assert_close(pooled, golden[f"{name}.img_pool16_f32_bgr"], atol=0.1, rtol=0)


def test_fastvar_kept_tokens_and_stats(runs_1m, golden):
    out, _, selections = runs_1m["ar1m_fastvar"]
    assert len(selections) == 6  # layer 3 x (32x32, 40x40) x (sa, ca, ffn)
    for step, key in enumerate(("kept_idx_s32", "kept_idx_s40")):
        expected = golden[f"ar1m_fastvar.{key}"][0]  # (sub-layer, row, K)
        for sub in range(3):
            ours = selections[3 * step + sub]
            assert ours.shape == expected[sub].shape
            for row in range(2):
                assert set(ours[row].tolist()) == set(expected[sub, row].tolist()), (key, sub, row)
    assert out.stats["skipped_steps"] == [11, 12] and out.stats["pruned_steps"] == [9, 10]
    base = runs_1m["ar1m_base"][0]
    assert all(torch.equal(a, b) for a, b in zip(base.tokens[:9], out.tokens[:9]))  # scales <= 24 unchanged


# ------------------------------------------------------------------- non-square, batches, schedules, configs


def batch3(golden) -> TextCondition:
    t, t1m = text_of(golden, "text"), text_of(golden, "text1m")
    return TextCondition(torch.cat((t.features, t1m.features)), t.lens + t1m.lens)


@pytest.mark.parametrize("h_div_w, template", [(0.5, 0.5), (9 / 16, 0.571)])
def test_non_square_batch_with_and_without_pruning(pipe, golden, h_div_w, template):
    text = batch3(golden)
    scales = schedules.scale_schedule(template, 256)
    (h, w) = scales[-1]
    plain, _ = generate(pipe, text, h_div_w=h_div_w, resolution=256, top_k=900, seed=3)
    assert plain.stats["h_div_w_template"] == template and plain.stats["scale_schedule"] == [list(s) for s in scales]
    assert plain.images.shape == (3, 3, 16 * h, 16 * w) and 0 <= plain.images.min() and plain.images.max() <= 1
    assert [t.shape for t in plain.tokens] == [(3, a * b, 16) for a, b in scales]
    disabled = PruningSchedule(ratios=(0.4, 0.5, 1.0, 1.0), layers=(3,), enabled=False)
    for off in ("none", disabled):
        same, _ = generate(pipe, text, h_div_w=h_div_w, resolution=256, top_k=900, seed=3, pruning=off)
        assert torch.equal(same.images, plain.images) and all(map(torch.equal, same.tokens, plain.tokens))
    pruned, _ = generate(pipe, text, h_div_w=h_div_w, resolution=256, top_k=900, seed=3, pruning=FASTVAR)
    assert len(pruned.tokens) == len(scales) - 2 and pruned.stats["skipped_steps"] == [5, 6]
    assert pruned.images.shape == plain.images.shape and torch.isfinite(pruned.images).all()
    assert all(map(torch.equal, pruned.tokens[:3], plain.tokens[:3]))  # before the first pruned step
    assert not torch.equal(pruned.images, plain.images)


def test_zero_shot_1344_non_square_with_its_preset(pipe, golden):
    """The 1.8M schedule (a 71x94 step beyond what Infinity was trained on, 4:3 portrait template) runs end to end
    with the infinity-1344 preset: the five steps after the cache step are pruned, none skipped. (Later steps' inputs
    are resized from the final latent size, so only the first step is shared with a plain 256px run.)"""
    text = text_of(golden, "text")
    scales = schedules.scale_schedule(0.75, 1344)
    assert len(scales) == 14 and scales[8:] == [(21, 28), (27, 36), (36, 48), (45, 60), (54, 72), (71, 94)]
    out, _ = generate(pipe, text, h_div_w=0.75, resolution=1344, top_k=900, pruning="infinity-1344")
    assert out.images.shape == (2, 3, 16 * 71, 16 * 94) and torch.isfinite(out.images).all()
    assert out.stats["pruned_steps"] == [9, 10, 11, 12, 13] and out.stats["skipped_steps"] == []
    last = out.stats["steps"][-1]
    assert last["kept_per_layer"] == {"3": 71 * 94 - int(71 * 94 * 0.75)}  # blocks 3..27 of a depth-4 model: 3
    plain, _ = generate(pipe, text, h_div_w=0.75, resolution=256, top_k=900)
    assert torch.equal(out.tokens[0], plain.tokens[0])


def test_bf16_load_rounds_only_the_blocks(golden):
    """dtype=bfloat16 (the official ``--bf16 1``): block weights are the checkpoint's rounded to bfloat16, text
    pooling, embeddings and head keep the checkpoint's float32 values."""
    root = golden.root
    pipe16 = load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                           config=root / "config.json", dtype=torch.bfloat16)
    sd = torch.load(root / "infinity.pth", map_location="cpu", weights_only=True)
    blocks = 0
    for name, param in pipe16.model.named_parameters():
        in_block = name.startswith(("blocks.", "block_chunks."))
        blocks += in_block
        want = sd[name].to(torch.bfloat16) if in_block else sd[name]
        assert param.dtype == want.dtype and torch.equal(param, want), name
    assert 0 < blocks < len(sd)


def test_bf16_pipeline_decodes_under_bf16_autocast(pipe, golden):
    """With bfloat16 blocks the VAE decode runs as the official ``gen_one_img`` runs it, inside bfloat16 autocast
    (convolutions in bfloat16): float32 images close to, but not equal to, the float32 decode."""
    root = golden.root
    pipe16 = load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                           config=root / "config.json", dtype=torch.bfloat16)
    z = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    full = pipe.decode(z)
    assert torch.equal(full, pipe.vae.decode(z))  # float32 pipelines decode exactly as before
    half = pipe16.decode(z)
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    assert (half - full).abs().max() < 0.1


def test_explicit_schedule_and_negative_prompt(pipe, golden):
    text = text_of(golden, "text")
    explicit, _ = generate(pipe, text, scale_schedule=[(1, h, w) for h, w in SHORT])
    by_name, _ = generate(pipe, text, resolution="0.06M")
    assert all(map(torch.equal, explicit.tokens, by_name.tokens))
    uncond = TextCondition(torch.cat([pipe.model.cfg_uncond[:n] for n in text.lens]), text.lens)
    negative, _ = generate(pipe, text, resolution=256, negative_prompt_embeds=uncond)
    assert all(map(torch.equal, negative.tokens, by_name.tokens))  # the default negative is cfg_uncond[:len_i]
    single = TextCondition(golden["text1m.kv_compact"], golden["text1m.lens"].tolist())
    other, _ = generate(pipe, text, resolution=256, negative_prompt_embeds=single)  # one for all prompts
    assert other.images.shape == (2, 3, 256, 256)
    with pytest.raises(FastVARError, match="prefix"):
        generate(pipe, text, scale_schedule=[(1, 1), (2, 2), (3, 5)])
    with pytest.raises(FastVARError, match="resolution"):
        generate(pipe, text, resolution=300)
    with pytest.raises(FastVARError, match="text encoder"):
        pipe(prompts="a cat", resolution=256)
    with pytest.raises(FastVARError, match="channels"):
        generate(pipe, TextCondition(torch.zeros(3, 64), [3]), resolution=256)


def test_schedules():
    assert len(schedules.TEMPLATES) == 15
    assert list(schedules.TEMPLATES)[:5] == [1.0, 1.25, 0.8, 1.333, 0.75]
    for ratio, hws in schedules.TEMPLATES.items():
        for name, n in schedules.PN_LENGTHS.items():  # the official table's own check; looser for zero-shot scales
            assert abs(hws[n - 1][0] / hws[n - 1][1] - ratio) < (0.025 if name in schedules.ZERO_SHOT else 0.01)
    assert schedules.nearest_template(9 / 16) == 0.571 and schedules.nearest_template(16 / 9) == 1.75
    assert schedules.nearest_template(1.125) == 1.0  # a tie resolves to the first template, like np.argmin
    assert schedules.scale_schedule(1.0, 1024)[-1] == (64, 64) and len(schedules.scale_schedule(2.0, 512)) == 10
    assert schedules.check_schedule([(1, 1), (2, 2), (4, 2)]) == ([(1, 1), (2, 2), (4, 2)], 2.0)
    assert [s[0] for s in schedules.scale_schedule(1.0, 2048)[-4:]] == [64, 84, 104, 128]
    assert schedules.scale_schedule(0.75, 1344)[-1] == (71, 94) and schedules.rope_grid(0.75) == (54, 72)
    for bad in ((0.0, 1024), (1.0, 3000), (1.0, "2M")):
        with pytest.raises(FastVARError):
            schedules.scale_schedule(*bad)


def test_golden_schedules_and_config(golden):
    assert [list(s) for s in SHORT] == [s[1:] for s in golden.config["schedules"]["short_0.06M_h_div_w_1"]]
    assert [list(s) for s in schedules.scale_schedule(1.0, 1024)] == [
        s[1:] for s in golden.config["schedules"]["full_1M_h_div_w_1"]]
    spec = load_spec(golden.root / "config.json")
    assert spec.vae.base_ch == 24 and spec.infinity.block_chunks == 2
    assert load_spec(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(FastVARError, match="unknown Infinity config"):
        load_spec("infinity-3b")
    with pytest.raises(FastVARError, match="unsupported"):
        load_spec({"vae": {"loader_args": {}}, "infinity": {"kwargs": {"rope2d_normalized_by_hw": 1}}})


@pytest.mark.parametrize("name, n_params, d", [("infinity-2b", 2_204_564_032, 32), ("infinity-8b", 8_375_791_824, 56)])
def test_release_sizes_on_meta(golden, name, n_params, d):
    spec = CONFIGS[name]
    with torch.device("meta"):
        model = Infinity(spec.infinity, InfinityVAE(spec.vae))
    assert sum(p.numel() for p in model.parameters()) == n_params
    # official key set = the golden model's keys with 8 chunks of depth/8 blocks (+ the derived zero_k_bias buffers)
    official = json.loads((golden.root / "keys.json").read_text())["infinity.pth"]["state_dict"]
    per_chunk = spec.infinity.depth // spec.infinity.block_chunks
    expected = {k for k in official if not k.startswith("block_chunks.")}
    block_keys = {k.split(".", 4)[4] for k in official if k.startswith("block_chunks.0.module.0.")}
    expected |= {f"block_chunks.{c}.module.{j}.{k}" for c in range(8) for j in range(per_chunk) for k in block_keys}
    ours = model.state_dict()
    assert set(ours) | {k for k in expected if k.endswith("zero_k_bias")} == expected
    C = spec.infinity.embed_dim
    assert ours["word_embed.weight"].shape == (C, d) and ours["head.weight"].shape == (2 * d, C)
    assert ours["cfg_uncond"].shape == (512, 2048) and ours["lvl_embed.weight"].shape == (15, C)


def test_checkpoint_errors(golden, tmp_path):
    root = golden.root
    with pytest.raises(CheckpointError, match="swap"):
        load_pipeline("infinity", vae=root / "infinity.pth", transformer=root / "vae.pth", config=root / "config.json")
    with pytest.raises(CheckpointError, match="does not match"):
        load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth", config="infinity-2b")
    with pytest.raises(FastVARError, match="dtype"):
        load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                      config=root / "config.json", dtype=torch.float16)


def test_sharded_safetensors_folder_loads_like_the_pth(golden, tmp_path):
    """The 8B release layout: a folder of safetensors shards with an index file."""
    from safetensors.torch import save_file

    sd = torch.load(golden.root / "infinity.pth", weights_only=True)
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    folder = tmp_path / "infinity_8b_weights"
    folder.mkdir()
    for name, part in shards.items():
        save_file({k: sd[k].clone().contiguous() for k in part}, str(folder / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    a = load_pipeline("infinity", vae=golden.root / "vae.pth", transformer=folder, config=golden.root / "config.json")
    b = load_pipeline("infinity", vae=golden.root / "vae.pth", transformer=golden.root / "infinity.pth",
                      config=golden.root / "config.json")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_cli_info_names_the_release(golden_infinity, capsys):
    from fastvar.cli import main
    from fastvar.info import _kind

    assert main(["info", str(golden_infinity.root / "infinity.pth")]) == 0
    assert "Infinity transformer" in capsys.readouterr().out
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731  (shapes of the 2B release)
    sd = {"word_embed.weight": meta(2048, 32), "cfg_uncond": meta(512, 2048), "text_proj_for_sos.ca.mat_q": meta(1)}
    sd.update({f"block_chunks.{i // 4}.module.{i % 4}.sa.mat_qkv.weight": meta(6144, 2048) for i in range(32)})
    kind, details = _kind(sd)
    assert kind == "Infinity transformer" and details["depth"] == 32 and "config='infinity-2b'" in details["hint"]
