"""VAR VQ-VAE against the golden outputs of the official FoundationVision/VAR code (vae_tokenize_and_reconstruct)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from fastvar.backbones.var.vqvae import VQVAE, VQVAEConfig
from fastvar.core.loading import build_and_load, read_state_dict
from fastvar.errors import CheckpointError, FastVARError

DERIVED = [r"quantize\.ema_vocab_hit_SV"]
WHAT = "VAR VQ-VAE"


def load_vae(golden, sd=None) -> VQVAE:
    cfg = VQVAEConfig.from_kwargs(golden.config["vae_kwargs"])
    if sd is None:
        sd = read_state_dict(golden.root / "vae.pth", what=WHAT)
    return build_and_load(lambda: VQVAE(cfg), sd, what=WHAT, derived=DERIVED)


def assert_close(actual, expected, golden, category):
    tol = golden.cases["suggested_tolerance"]
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"][category])


def golden_idx(golden) -> list[torch.Tensor]:
    return [golden[f"vae.idx.s{k}"] for k in range(len(golden.config["vae_kwargs"]["v_patch_nums"]))]


def test_state_dict_keys_match_official(golden_var):
    official = json.loads((golden_var.root / "keys.json").read_text())["vae"]
    expected = [(k, shape) for k, shape, _ in official if not any(re.fullmatch(p, k) for p in DERIVED)]
    with torch.device("meta"):
        model = VQVAE(VQVAEConfig.from_kwargs(golden_var.config["vae_kwargs"]))
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected


def test_tokenize_matches_golden(golden_var):
    vae = load_vae(golden_var)
    with torch.no_grad():
        f = vae.img_to_f(golden_var["vae.input_img"])
        idx, fhat = vae.quantize.f_to_idx_and_fhat(f)
        idx_from_img = vae.img_to_idx(golden_var["vae.input_img"])
    assert_close(f, golden_var["vae.f"], golden_var, "latents")
    for k, expected in enumerate(golden_idx(golden_var)):
        assert idx[k].dtype == torch.int64
        assert torch.equal(idx[k], expected), f"scale {k}"
        assert torch.equal(idx_from_img[k], expected), f"scale {k}"
    assert_close(torch.stack(fhat), golden_var["vae.fhat_per_scale"], golden_var, "latents")


def test_var_input_and_reconstruction_match_golden(golden_var):
    vae = load_vae(golden_var)
    idx = golden_idx(golden_var)
    with torch.no_grad():
        var_input = vae.idx_to_var_input(idx)
        fhat = vae.idx_to_fhat(idx)
        recon = vae.idx_to_img(idx)
    assert var_input.shape == (2, golden_var.config["derived"]["L"] - 1, vae.Cvae)
    assert_close(var_input, golden_var["vae.var_input"], golden_var, "latents")
    assert_close(fhat, golden_var["vae.recon_fhat"], golden_var, "latents")
    assert_close(recon, golden_var["vae.recon"], golden_var, "images")


def test_next_autoregressive_input_accumulates_like_golden(golden_var):
    """Stepping scale by scale (as VAR inference does) gives the golden f_hat per scale and teacher-forcing input."""
    vae = load_vae(golden_var)
    pns = vae.patch_nums
    B, C = 2, vae.Cvae
    f_hat = torch.zeros(B, C, pns[-1], pns[-1])
    next_inputs = []
    with torch.no_grad():
        for si, idx in enumerate(golden_idx(golden_var)):
            h = vae.embed_idx(idx).transpose(1, 2).reshape(B, C, pns[si], pns[si])  # (B, l, C) -> (B, C, pn, pn)
            f_hat, nxt = vae.next_autoregressive_input(si, pns, f_hat, h)
            assert_close(f_hat, golden_var["vae.fhat_per_scale"][si], golden_var, "latents")
            if si == len(pns) - 1:
                assert nxt is None
            else:
                assert nxt.shape == (B, C, pns[si + 1], pns[si + 1])
                next_inputs.append(nxt.flatten(2).transpose(1, 2))  # (B, pn_next^2, C)
    assert_close(torch.cat(next_inputs, dim=1), golden_var["vae.var_input"], golden_var, "latents")
    assert_close(vae.fhat_to_img(f_hat), golden_var["vae.recon"], golden_var, "images")


def test_quant_resi_index_table(golden_var):
    vae = load_vae(golden_var)
    table = golden_var.cases["quant_resi_index_table"]["index_per_scale"]
    for n, expected in table.items():
        assert [vae.quant_resi_index(si, int(n)) for si in range(int(n))] == expected, f"{n} scales"
    assert table["7"] == golden_var.config["derived"]["quant_resi_index_per_scale"]
    assert table["10"] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # the official 10 scales (ties at scales 2 and 7)
    with pytest.raises(FastVARError, match="at least 2 scales"):
        vae.quant_resi_index(0, 1)


def test_wrong_key_raises_checkpoint_error(golden_var):
    sd = read_state_dict(golden_var.root / "vae.pth", what=WHAT)
    sd["quantize.embeddings.weight"] = sd.pop("quantize.embedding.weight")
    expected = r"missing: quantize\.embedding\.weight.*unexpected: quantize\.embeddings\.weight"
    with pytest.raises(CheckpointError, match=expected):
        load_vae(golden_var, sd)


def test_config_from_kwargs(golden_var):
    cfg = VQVAEConfig.from_kwargs(golden_var.config["vae_kwargs"])
    assert cfg.v_patch_nums == (1, 2, 3, 4, 5, 6, 7) and cfg.vocab_size == 64 and cfg.ch == 32
    with pytest.raises(FastVARError, match="unknown VQVAE argument.*z_chanels"):
        VQVAEConfig.from_kwargs({"z_chanels": 8})


def test_image_size_must_match_patch_nums(golden_var):
    vae = load_vae(golden_var)
    with pytest.raises(FastVARError, match="does not match the last patch num"):
        vae.img_to_idx(torch.zeros(1, 3, 96, 96))


def test_default_config_is_official_release_size():
    """The default config is the official release vae_ch160v4096z32 (models.build_vae_var: V=4096, Cvae=32, ch=160).

    108_948_355 parameters (encoder 44_107_872, decoder 64_653_923, codebook 131_072, 4 phi convs, 2 quant convs):
    obtained by constructing the official FoundationVision/VAR ``models.vqvae.VQVAE(vocab_size=4096, z_channels=32,
    ch=160, share_quant_resi=4)`` (commit 78b95394) on the meta device and summing ``p.numel()`` over its parameters
    (its one buffer, ema_vocab_hit_SV, excluded).
    """
    with torch.device("meta"):
        model = VQVAE(VQVAEConfig())
    assert sum(p.numel() for p in model.parameters()) == 108_948_355
    assert model.quantize.embedding.weight.shape == (4096, 32)
    assert model.cfg.downsample == 16
