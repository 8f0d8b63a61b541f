"""Fidelity metrics on hand-computed images."""
import math

import torch

from fastvar.eval.fidelity import detail_ratio, high_frequency_energy, psnr, ssim, token_agreement


def test_psnr_constant_offset():
    a = torch.full((2, 3, 16, 16), 0.5)
    assert torch.allclose(psnr(a, a + 0.1), torch.tensor([20.0, 20.0], dtype=torch.float64))  # MSE 0.01 -> 20 dB
    assert math.isinf(psnr(a, a)[0].item())


def test_ssim_identical_and_constant_images():
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(1, dtype=torch.float64))
    # Two constant images a, b: variance terms vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 1e-4
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert abs(ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)).item() - expected) < 1e-6  # inputs are float32


def test_token_agreement_indices_and_bits():
    assert token_agreement(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 0, 3, 4]])) == 0.75
    bits_a = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8)
    bits_b = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)
    assert token_agreement(bits_a, bits_b) == 0.5


def test_high_frequency_energy_and_detail_ratio():
    checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2  # 0/1 checkerboard
    x = checker.float().expand(1, 3, 6, 6)
    # every interior pixel: four neighbours of the other colour -> Laplacian +-4 -> squared 16
    assert torch.equal(high_frequency_energy(x), torch.tensor([16.0], dtype=torch.float64))
    assert high_frequency_energy(torch.full((2, 3, 6, 6), 0.7)).eq(0).all()  # a flat image has no detail
    half_contrast = 0.5 + (x - 0.5) * 0.5
    assert torch.allclose(detail_ratio(half_contrast, x), torch.tensor([0.25], dtype=torch.float64))
