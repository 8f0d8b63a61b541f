"""HART's residual diffusion head: the MLP denoiser and its respaced IDDPM sampler (inference only).

Reproduces mit-han-lab/hart ``hart/modules/diffusion/diffloss.py`` (``DiffLoss``, ``SimpleMLPAdaLN``) and the
sampling path of ``gaussian_diffusion.py`` / ``respace.py`` / ``__init__.create_diffusion`` (cosine betas over 1000
steps, respacing, learned-range variance, ``p_sample_loop``). The schedule is float64 (numpy, as official) and each
coefficient is cast to float32 where it is used. The official code draws its noise from the global generator;
here it comes from an explicit ``torch.Generator`` in the same order (initial noise, then one draw per step).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import FastVARError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (N, C), original timesteps (N,)) -> (N, 2C)


@dataclass(frozen=True)
class DiffusionHeadConfig:
    """``DiffLoss`` arguments under the HART config names (``HARTForT2IConfig``; defaults = the release)."""

    target_channels: int  # Cvae: channels of the residual being sampled
    z_channels: int  # transformer embed_dim: channels of the condition z
    diff_width: int = 1024
    diff_depth: int = 6
    num_sampling_steps: str = "8"  # IDDPM respacing of the 1000-step schedule
    sampler: str = "iddpm"

    def __post_init__(self) -> None:
        if self.sampler != "iddpm":
            raise FastVARError(f"HART diffusion sampler {self.sampler!r} is not supported (only 'iddpm')")

    @classmethod
    def from_hart_config(cls, config: Mapping[str, Any], target_channels: int) -> DiffusionHeadConfig:
        """From a HART transformer config dict (``llm/config.json``) and the tokenizer's Cvae."""
        return cls(
            target_channels=target_channels,
            z_channels=config["embed_dim"],
            diff_width=config.get("diff_width", cls.diff_width),
            diff_depth=config.get("diff_depth", cls.diff_depth),
            num_sampling_steps=str(config.get("num_sampling_steps", cls.num_sampling_steps)),
            sampler=config.get("sampler", cls.sampler),
        )


# ---------------------------------------------------------------------------------------------------- denoiser MLP


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ordered [cos, sin] (official ``TimestepEmbedder.timestep_embedding``), (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Sinusoid of the timestep -> Linear -> SiLU -> Linear (official ``diffloss.TimestepEmbedder``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x), shift, scale)) with (shift, scale, gate) from y (official ``ResBlock``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels, bias=True),
            nn.SiLU(),
            nn.Linear(channels, channels, bias=True),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels, bias=True))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(y).chunk(3, dim=-1)
        h = modulate(self.in_ln(x), shift_mlp, scale_mlp)
        h = self.mlp(h)
        return x + gate_mlp * h


class FinalLayer(nn.Module):
    """Linear(modulate(LN(x) without affine, shift, scale)) (official ``FinalLayer``)."""

    def __init__(self, model_channels: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 2 * model_channels, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x)


class SimpleMLPAdaLN(nn.Module):
    """The denoiser: eps and variance values for x (N, in) at timesteps t (N,) given z (N, z) (official class)."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int, num_res_blocks: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList(ResBlock(model_channels) for _ in range(num_res_blocks))
        self.final_layer = FinalLayer(model_channels, out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)  # (N, out_channels) = [eps | variance values]

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Run the FIRST half of x under both conditions; eps = (1+s) eps_cond - s eps_uncond, variance unguided."""
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, c)
        eps, rest = model_out[:, : self.in_channels], model_out[:, self.in_channels :]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = cond_eps * (1 + cfg_scale) - cfg_scale * uncond_eps
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


# ---------------------------------------------------------------------------------------------------- IDDPM sampler


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (official ``get_named_beta_schedule("cosine")`` via ``betas_for_alpha_bar``), float64."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    )


def space_timesteps(num_timesteps: int, section_counts: str) -> set[int]:
    """Steps kept by the respacing (official ``respace.space_timesteps``, comma-separated section counts)."""
    try:
        counts = [int(x) for x in section_counts.split(",")]
    except ValueError:
        raise FastVARError(f"unsupported num_sampling_steps {section_counts!r} (expected e.g. '8' or '10,5')") from None
    size_per, extra = divmod(num_timesteps, len(counts))
    start_idx = 0
    all_steps: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 0 < count <= size:
            raise FastVARError(f"num_sampling_steps {section_counts!r}: cannot divide {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur_idx = 0.0
        for _ in range(count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


class RespacedIDDPM:
    """The official ``create_diffusion(num_sampling_steps, "cosine")`` (``SpacedDiffusion``, learned-range variance,
    eps prediction) reduced to sampling. Schedule arrays are float64 CPU tensors indexed by the respaced step."""

    def __init__(self, num_sampling_steps: str, diffusion_steps: int = 1000):
        base_alphas_cumprod = np.cumprod(1.0 - cosine_betas(diffusion_steps), axis=0)
        use_timesteps = space_timesteps(diffusion_steps, num_sampling_steps)
        last_alpha_cumprod = 1.0
        new_betas, timestep_map = [], []
        for i, alpha_cumprod in enumerate(base_alphas_cumprod):
            if i in use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        betas = np.array(new_betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(timestep_map, dtype=torch.int64, device="cpu")  # respaced -> original step

        # GaussianDiffusion.__init__ on the respaced betas
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        arrays = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
        }
        self.schedule = {name: torch.from_numpy(arr) for name, arr in arrays.items()}  # float64, (num_timesteps,)

    def _coef(self, name: str, i: int, like: torch.Tensor) -> torch.Tensor:
        """schedule[name][i] as a float32 scalar (official ``_extract_into_tensor``: float64 index, then .float())."""
        return self.schedule[name][i].float().to(like.device)

    def p_sample(
        self,
        model: Denoiser,
        x: torch.Tensor,
        i: int,
        generator: torch.Generator,
        temperature: float = 1.0,
        clip_denoised: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step x_i -> x_(i-1) (official ``p_mean_variance`` + ``p_sample``). Returns (sample, pred_xstart)."""
        n, c = x.shape
        t = torch.full((n,), int(self.timestep_map[i]), dtype=torch.int64, device=x.device)  # original timesteps
        eps, model_var_values = torch.split(model(x, t), c, dim=1)
        min_log = self._coef("posterior_log_variance_clipped", i, x)
        max_log = self._coef("log_betas", i, x)
        frac = (model_var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (  # official _predict_xstart_from_eps
            self._coef("sqrt_recip_alphas_cumprod", i, x) * x - self._coef("sqrt_recipm1_alphas_cumprod", i, x) * eps
        )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean = self._coef("posterior_mean_coef1", i, x) * pred_xstart + self._coef("posterior_mean_coef2", i, x) * x
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x)
        nonzero_mask = float(i != 0)  # drawn at the last step too, multiplied by 0
        sample = mean + nonzero_mask * torch.exp(0.5 * model_log_variance) * noise * temperature
        return sample, pred_xstart

    @torch.no_grad()
    def p_sample_loop_progressive(
        self,
        model: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator,
        temperature: float = 1.0,
        clip_denoised: bool = True,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, pred_xstart) after each step i = num_timesteps-1 .. 0, starting from x = noise (N, C)."""
        x = noise
        for i in reversed(range(self.num_timesteps)):
            x, pred_xstart = self.p_sample(model, x, i, generator, temperature, clip_denoised)
            yield x, pred_xstart

    def p_sample_loop(
        self,
        model: Denoiser,
        noise: torch.Tensor,
        generator: torch.Generator,
        temperature: float = 1.0,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """The final x_0 of ``p_sample_loop_progressive`` (official ``p_sample_loop``)."""
        for x, _ in self.p_sample_loop_progressive(model, noise, generator, temperature, clip_denoised):
            pass
        return x


# ---------------------------------------------------------------------------------------------------- DiffLoss


class DiffusionHead(nn.Module):
    """Inference part of the official ``DiffLoss`` (``diffloss`` in HART): ``net`` is the ``SimpleMLPAdaLN``."""

    vae_scale = 0.6

    def __init__(self, config: DiffusionHeadConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.target_channels
        self.net = SimpleMLPAdaLN(
            in_channels=config.target_channels,
            model_channels=config.diff_width,
            out_channels=config.target_channels * 2,
            z_channels=config.z_channels,
            num_res_blocks=config.diff_depth,
        )
        self.gen_diffusion = RespacedIDDPM(config.num_sampling_steps)  # plain attribute: no buffers

    @torch.no_grad()
    def sample(
        self, z: torch.Tensor, cfg: float, generator: torch.Generator, temperature: float = 1.0
    ) -> torch.Tensor:
        """Official ``DiffLoss.sample``: z (N, z_channels) -> residual (N, Cvae), both CFG halves, scaled by 0.6.

        With ``cfg != 1`` the rows are [cond; uncond] and one noise of N/2 rows is drawn and duplicated; with
        ``cfg == 1`` N rows of noise and no guidance. Then one (N, Cvae) draw per step from ``generator``.
        """
        if cfg != 1.0:
            noise = torch.randn(z.shape[0] // 2, self.in_channels, generator=generator, device=generator.device)
            noise = torch.cat([noise, noise], dim=0).to(z)

            def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.net.forward_with_cfg(x, t, c=z, cfg_scale=cfg)

        else:
            noise = torch.randn(z.shape[0], self.in_channels, generator=generator, device=generator.device)
            noise = noise.to(z)

            def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.net(x, t, c=z)

        x = self.gen_diffusion.p_sample_loop(model, noise, generator, temperature=temperature, clip_denoised=True)
        return x * self.vae_scale
