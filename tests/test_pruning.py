"""FastVAR's PTS and CTR on hand-computed tensors; no backbone is imported."""
from __future__ import annotations

import pytest
import torch

from fastvar.core.context import GenerationContext
from fastvar.errors import FastVARError
from fastvar.pruning import PRESETS, PruningSchedule, resolve_pruning, select_pivotal_tokens
from fastvar.pruning.fastvar import describe, gather_tokens, restore_tokens


def test_pts_keeps_tokens_farthest_from_the_mean_per_row():
    # Row 0: values 0,0,0,10,0,-6 (C=1); mean 2/3; distances^2: 0.44,0.44,0.44,87.1,0.44,44.4 -> keep [3, 5].
    # Row 1 (another CFG row) chooses for itself: 1,1,1,1,9,1 -> mean 7/3 -> token 4 first, then ties.
    x = torch.tensor([[0, 0, 0, 10, 0, -6], [1, 1, 1, 1, 9, 1]], dtype=torch.float32).unsqueeze(-1)
    assert select_pivotal_tokens(x, 2)[0].tolist() == [3, 5]
    assert select_pivotal_tokens(x, 1)[1].tolist() == [4]


def test_pts_score_sums_over_channels():
    # Token 0 differs in both channels by 1 (score 2), token 1 in one channel by 1.5 (score 2.25) -> token 1 first.
    x = torch.tensor([[[1.0, 1.0], [1.5, 0.0], [0.0, 0.0], [0.0, 0.0], [-2.5, -1.0]]])
    x = x - x.mean(1, keepdim=True)  # make the mean zero so scores are plain squared norms
    score = x.square().sum(-1)[0]
    assert select_pivotal_tokens(x, 5)[0].tolist() == score.argsort(descending=True).tolist()


def test_ctr_area_upsamples_cache_and_scatters_computed_rows():
    # Cached 2x2 map (C=1) -> 4x4: each cached value fills a 2x2 block; computed rows replace positions 0 and 15.
    cached = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    computed = torch.tensor([[[-1.0], [-9.0]]])
    out = restore_tokens(computed, torch.tensor([[0, 15]]), cached, (2, 2), (4, 4))
    expected = torch.tensor([[-1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, -9]], dtype=torch.float32)
    assert torch.equal(out.view(4, 4), expected)


def test_ctr_non_square_and_non_integer_scale():
    # Cached 1x2 -> 2x3: rows replicate; columns use overlapping area windows [0,1), [0,2), [1,2): a, (a+b)/2, b.
    cached = torch.tensor([[[2.0], [4.0]], [[10.0], [20.0]]])  # B=2
    computed = torch.tensor([[[0.5]], [[7.0]]])
    idx = torch.tensor([[4], [0]])  # row 0 replaces (1,1); row 1 replaces (0,0)
    out = restore_tokens(computed, idx, cached, (1, 2), (2, 3)).view(2, 2, 3)
    assert torch.equal(out[0], torch.tensor([[2.0, 3.0, 4.0], [2.0, 0.5, 4.0]]))
    assert torch.equal(out[1], torch.tensor([[7.0, 15.0, 20.0], [10.0, 15.0, 20.0]]))


def test_gather_tokens():
    x = torch.arange(12.0).view(1, 6, 2)
    assert gather_tokens(x, torch.tensor([[4, 1]])).tolist() == [[[8.0, 9.0], [2.0, 3.0]]]


def run_branch_steps(schedule, scales, inputs, fn, depth=1):
    """Drive the pruner like a model would: one branch per layer per step; returns outputs per step."""
    ctx = GenerationContext(scales, pruner=schedule.pruner(len(scales), depth))
    outs = []
    for si, x in enumerate(inputs):
        if ctx.pruner.skips(si):
            ctx.skip_step(si)
            outs.append(None)
            continue
        ctx.begin_step(si)
        outs.append([ctx.branch(layer, "ffn", fn, x) for layer in range(depth)])
        ctx.end_step(rows=x.shape[0])
    return outs, ctx


def test_pruned_step_fills_from_cache_step_and_computes_kept_rows_only():
    seen = []

    def fn(z):
        seen.append(z.shape[1])
        return z * 10

    scales = [(1, 1), (2, 2), (4, 4), (8, 8)]
    x1 = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    x2 = torch.zeros(1, 16, 1)
    x2[0, 5, 0] = 100.0  # the single most distinctive token
    inputs = [torch.zeros(1, 1, 1), x1, x2, torch.zeros(1, 64, 1)]
    outs, ctx = run_branch_steps(PruningSchedule(ratios=(0.9375, 1.0)), scales, inputs, fn)
    # step 1 is the cache step (before the first pruned step 2); step 2 keeps 16 - int(16*0.9375) = 1 token; step 3 skipped
    assert seen == [1, 4, 1]
    expected = torch.tensor([[10, 10, 20, 20], [10, 1000, 20, 20], [30, 30, 40, 40], [30, 30, 40, 40]], dtype=torch.float32)
    assert torch.equal(outs[2][0].view(4, 4), expected)
    assert outs[3] is None
    assert ctx.stats()["skipped_steps"] == [3] and ctx.stats()["pruned_steps"] == [2]
    assert ctx.stats()["steps"][2]["kept_per_layer"] == {"0": 1}
    assert ctx.keep_idx is None


def test_kept_masks_mark_the_first_selection_of_each_pruned_step():
    from fastvar.pruning.fastvar import kept_masks

    scales = [(1, 1), (1, 2), (2, 3)]
    # values 0,-3,2,0.1,5,0.2 (mean 0.717): squared distances .51, 13.8, 1.65, .38, 18.4, .27 -> keep 4, 1, 2
    x = torch.tensor([0.0, -3.0, 2.0, 0.1, 5.0, 0.2]).view(1, 6, 1).repeat(4, 1, 1)  # 2 images x 2 CFG rows
    _, ctx = run_branch_steps(PruningSchedule(ratios=(0.5,)), scales, [torch.zeros(4, 1, 1), torch.zeros(4, 2, 1), x],
                              lambda z: z)
    masks = kept_masks(ctx, rows=2)
    assert list(masks) == [2] and masks[2].shape == (2, 2, 3)
    assert masks[2][0].tolist() == [[False, True, True], [False, True, False]]


def test_only_listed_layers_prune_and_cache():
    scales = [(1, 1), (2, 2), (4, 4)]
    inputs = [torch.randn(2, 1, 3), torch.randn(2, 4, 3), torch.randn(2, 16, 3)]
    outs, ctx = run_branch_steps(PruningSchedule(ratios=(0.5,), layers=(1,)), scales, inputs, lambda z: z + 1, depth=3)
    assert torch.equal(outs[2][0], inputs[2] + 1) and torch.equal(outs[2][2], inputs[2] + 1)
    assert not torch.equal(outs[2][1], inputs[2] + 1)
    assert {k[0] for k in ctx.pruning_state if isinstance(k[0], int)} == {1}  # restoration caches: layer 1 only


def test_block_granularity_selects_once_per_block():
    scales = [(1, 1), (2, 2), (4, 4)]
    ctx = GenerationContext(scales, pruner=PruningSchedule(ratios=(0.5,), granularity="block").pruner(3, 1))
    chosen = []

    def fn(z):
        chosen.append(ctx.keep_idx.clone() if ctx.keep_idx is not None else None)
        return z

    for si, L in enumerate([1, 4, 16]):
        ctx.begin_step(si)
        x = torch.randn(1, L, 2)
        ctx.branch(0, "sa", fn, x)
        ctx.branch(0, "ffn", fn, torch.randn(1, L, 2))  # a different stream: same selection in block mode
    assert torch.equal(chosen[-1], chosen[-2]) and chosen[-1].shape == (1, 8)


def test_schedule_string_form_and_presets():
    s = PruningSchedule.parse("0.4,0.5,1,1;layers=3:28;granularity=block;cache=-5")
    assert s.ratios == (0.4, 0.5, 1.0, 1.0) and s.layers == tuple(range(3, 28))
    assert s.granularity == "block" and s.cache_step == -5
    assert resolve_pruning("infinity-paper") is PRESETS["infinity-paper"]
    assert resolve_pruning(None) is None and resolve_pruning("none") is None
    assert PruningSchedule.parse("0.5;layers=0,2").layers == (0, 2)


def test_var_preset_on_the_official_256px_schedule():
    from fastvar.backbones.var.config import PATCH_NUMS
    from fastvar.pruning.fastvar import describe

    rows = describe(resolve_pruning("var-fastvar"), [(p, p) for p in PATCH_NUMS[256]], depth=16)
    assert rows[7] == {"step": 7, "hw": [10, 10], "tokens": 100, "cache": True}
    assert [r.get("kept") for r in rows[8:]] == [169 - 84, 256 - 192]  # 13x13 by 50 %, 16x16 by 75 %
    assert not any(r.get("skipped") for r in rows) and PRESETS["var-fastvar"].layers is None  # every block


def test_presets_clip_layers_to_a_shallower_model():
    assert PRESETS["infinity-paper"].pruner(13, 4).layers == {3}
    with pytest.raises(FastVARError, match="outside the model"):
        PruningSchedule(ratios=(0.5,), layers=tuple(range(3, 28))).pruner(13, 4)


def test_infinity_paper_plan_on_the_1m_schedule():
    scales = [(p, p) for p in (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)]
    rows = describe(PRESETS["infinity-paper"], scales, depth=32)
    assert rows[8].get("cache") and rows[9]["kept"] == 615 and rows[10]["kept"] == 800
    assert rows[11]["skipped"] and rows[12]["skipped"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(ratios=(1.2,)), "must lie in"),
    (dict(ratios=()), "at least one"),
    (dict(ratios=(0.5,), granularity="token"), "granularity"),
])
def test_bad_schedules(kwargs, message):
    with pytest.raises(FastVARError, match=message):
        PruningSchedule(**kwargs)


@pytest.mark.parametrize("schedule,message", [
    (PruningSchedule(ratios=(0.5, 0.5, 0.5)), "only 3 steps"),
    (PruningSchedule(ratios=(0.5,), layers=(4,)), "outside the model"),
    (PruningSchedule(ratios=(0.5, 0.5), cache_step=-1), "cache step"),
    (PruningSchedule(ratios=(0.5,), cache_step=2), "cache step"),
])
def test_schedules_that_do_not_fit_the_model(schedule, message):
    with pytest.raises(FastVARError, match=message):
        schedule.pruner(3, 4)


@pytest.mark.parametrize("text", ["0.4,abc", "0.5;layers=a:b", "0.5;foo=1", "0.5;layers"])
def test_bad_schedule_strings(text):
    with pytest.raises(FastVARError):
        PruningSchedule.parse(text)


def test_kv_cache_reserves_only_what_each_layer_stores():
    scales = [(1, 1), (2, 2), (4, 4), (8, 8)]
    ctx = GenerationContext(scales, pruner=PruningSchedule(ratios=(0.5, 0.0, 1.0), layers=(1,)).pruner(4, 2))
    assert ctx.final_step == 2  # 8x8 skipped: the 4x4 step is the last computed one, its keys are never cached
    assert ctx.kv_cache(0).capacity == 1 + 4  # unpruned layer: every computed step but the final one
    assert ctx.kv_cache(1).capacity == 1 + 4 - int(4 * 0.5)  # pruned layer: the kept half of 2x2
    plain = GenerationContext(scales)
    assert plain.final_step == 3 and plain.kv_cache(0).capacity == 1 + 4 + 16


def test_kv_cache_appends_at_offsets_and_grows_past_capacity():
    from fastvar.core.context import KVCache

    cache = KVCache(capacity=3)
    k1, v1 = torch.randn(2, 1, 2, 4), torch.randn(2, 1, 2, 4)
    k2, v2 = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    cache.append(k1, v1)
    k, v = cache.append(k2, v2, store=False)  # final step: joined in a temporary, the cache is unchanged
    assert torch.equal(k, torch.cat((k1, k2), 2)) and torch.equal(v, torch.cat((v1, v2), 2))
    assert cache.length == 2 and cache.k.shape[2] == 3
    k, v = cache.append(k2, v2)
    assert torch.equal(k, torch.cat((k1, k2), 2)) and torch.equal(v, torch.cat((v1, v2), 2))
