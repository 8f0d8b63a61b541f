"""HART diffusion head against the official DiffLoss / SimpleMLPAdaLN / SpacedDiffusion outputs (golden `diff` case)."""
from __future__ import annotations

import json

import pytest
import torch

from fastvar.backbones.hart.diffusion import DiffusionHead, DiffusionHeadConfig, space_timesteps
from fastvar.core.loading import build_and_load, read_state_dict
from fastvar.errors import FastVARError

CFG_T = 3.6  # cases.json diff.arguments.cfg_t (= 4.5 * (K-2)/(K-1) in ar_greedy)


def load_head(golden) -> DiffusionHead:
    sd = read_state_dict(golden.root / "llm" / "ema_model.bin", what="HART transformer")
    sd = {k.removeprefix("diffloss."): v for k, v in sd.items() if k.startswith("diffloss.")}
    cvae = golden["ar_greedy.diff_noise_init"].shape[1]
    llm_config = json.loads((golden.root / "llm" / "config.json").read_text())
    config = DiffusionHeadConfig.from_hart_config(llm_config, target_channels=cvae)
    return build_and_load(lambda: DiffusionHead(config), sd, what="HART diffusion head")


def x_T(golden) -> torch.Tensor:
    noise = golden["ar_greedy.diff_noise_init"]
    return torch.cat([noise, noise], dim=0)  # (N, Cvae)


def assert_diffusion_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """README tolerance for diffusion outputs: 99.9% of elements within 1e-4 and max within 1e-2."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    err = (actual - expected).abs().flatten()
    assert err.max().item() <= 1e-2, f"max error {err.max().item():.3g}"
    assert torch.quantile(err.double(), 0.999).item() <= 1e-4, f"99.9% error {torch.quantile(err.double(), 0.999):.3g}"


def test_config_from_golden(golden_hart):
    head = load_head(golden_hart)
    c = head.config
    assert (c.target_channels, c.z_channels, c.diff_width, c.diff_depth) == (8, 128, 64, 2)
    assert (c.num_sampling_steps, c.sampler) == ("8", "iddpm")


def test_schedule(golden_hart):
    diffusion = load_head(golden_hart).gen_diffusion
    assert torch.equal(diffusion.timestep_map, golden_hart["diff.timestep_map"])
    assert diffusion.timestep_map.tolist() == golden_hart.cases["cases"]["diff"]["run_info"]["timestep_map"]
    for name in (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    ):  # fmt: skip
        expected = golden_hart[f"diff.schedule.{name}"]
        assert expected.dtype == torch.float64
        torch.testing.assert_close(diffusion.schedule[name], expected, rtol=1e-12, atol=0, msg=name)


def test_net_forward(golden_hart):
    head, z, x = load_head(golden_hart), golden_hart["ar_greedy.diff_z"], x_T(golden_hart)
    t = torch.full((x.shape[0],), 999, dtype=torch.int64)
    torch.testing.assert_close(head.net(x, t, z), golden_hart["diff.net_forward_t999"], atol=1e-4, rtol=1e-4)
    out = head.net.forward_with_cfg(x, t, z, cfg_scale=CFG_T)
    torch.testing.assert_close(out, golden_hart["diff.net_forward_with_cfg_t999"], atol=1e-4, rtol=1e-4)


def test_loop_temperature_0(golden_hart):
    head, z, x = load_head(golden_hart), golden_hart["ar_greedy.diff_z"], x_T(golden_hart)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return head.net.forward_with_cfg(x, t, c=z, cfg_scale=CFG_T)

    steps = list(head.gen_diffusion.p_sample_loop_progressive(model, x, torch.Generator(), temperature=0.0))
    assert len(steps) == 8
    assert_diffusion_close(torch.stack([s[0] for s in steps]), golden_hart["diff.loop_T0_x_steps"])
    assert_diffusion_close(torch.stack([s[1] for s in steps]), golden_hart["diff.loop_T0_x0_steps"])
    assert_diffusion_close(steps[-1][0] * head.vae_scale, golden_hart["diff.loop_T0"])
    final = head.gen_diffusion.p_sample_loop(model, x, torch.Generator(), temperature=0.0)
    assert torch.equal(final, steps[-1][0])


def test_sample_seeded_matches_official_global_generator(golden_hart):
    head, z = load_head(golden_hart), golden_hart["ar_greedy.diff_z"]
    out = head.sample(z, cfg=CFG_T, generator=torch.Generator().manual_seed(1), temperature=1.0)
    assert_diffusion_close(out, golden_hart["diff.sample_T1"])
    # ar_greedy: h_diff is the cond half of the same call, (B, pn_last^2, Cvae)
    h_diff = golden_hart["ar_greedy.h_diff"]
    assert_diffusion_close(out[: out.shape[0] // 2].reshape(h_diff.shape), h_diff)


def test_noise_order(golden_hart):
    """Initial draw (N/2, Cvae), then one (N, Cvae) draw per step: replays ar_greedy's recorded noise and x steps."""
    head, z = load_head(golden_hart), golden_hart["ar_greedy.diff_z"]
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(golden_hart["ar_greedy.diff_noise_init"].shape, generator=gen)
    assert torch.equal(init, golden_hart["ar_greedy.diff_noise_init"])
    state = gen.get_state()
    recorded = golden_hart["ar_greedy.diff_noise_steps"]
    assert torch.equal(torch.stack([torch.randn(recorded.shape[1:], generator=gen) for _ in range(8)]), recorded)
    gen.set_state(state)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return head.net.forward_with_cfg(x, t, c=z, cfg_scale=CFG_T)

    xs = torch.stack([x for x, _ in head.gen_diffusion.p_sample_loop_progressive(model, torch.cat([init, init]), gen)])
    assert_diffusion_close(xs, golden_hart["ar_greedy.diff_x_steps"])


def test_space_timesteps_and_errors():
    assert space_timesteps(1000, "1000") == set(range(1000))
    assert sorted(space_timesteps(1000, "8")) == [0, 143, 285, 428, 571, 714, 856, 999]
    with pytest.raises(FastVARError):
        DiffusionHeadConfig(target_channels=8, z_channels=16, sampler="ddim")
    with pytest.raises(FastVARError):
        space_timesteps(1000, "ddim25")
    with pytest.raises(FastVARError):
        space_timesteps(10, "20")
