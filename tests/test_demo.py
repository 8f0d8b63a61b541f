"""The built-in demo model: shipped weights load, seeded generation is deterministic, CLI and eval run on it, and
the training path (VAE loss, teacher-forced transformer with autograd) is the inference model's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastvar import load_pipeline
from fastvar.backbones.infinity.model import Infinity
from fastvar.backbones.infinity.vae import InfinityVAE
from fastvar.cli import main
from fastvar.demo import train
from fastvar.demo.data import EmojiSet
from fastvar.demo.text import ByteTextEncoder, ByteTextConfig
from fastvar.errors import FastVARError


@pytest.fixture(scope="module")
def demo():
    pipe = load_pipeline("demo")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_demo_is_deterministic_per_seed(demo):
    a = demo("a red apple", seed=0, output_type="pt")
    b = demo("a red apple", seed=0, output_type="pt")
    c = demo("a red apple", seed=1, output_type="pt")
    assert a.images.shape == (1, 3, 64, 64)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.stats["scale_schedule"][-1] == [16, 16]


def test_demo_pruned_run_skips_and_prunes(demo):
    out = demo(["a red apple", "a banana"], seed=0, pruning="0.5,1", output_type="np")
    assert out.images.shape == (2, 64, 64, 3)
    assert out.stats["skipped_steps"] == [6] and out.stats["pruned_steps"] == [5]


def test_cli_generate_without_paths(tmp_path):
    path = tmp_path / "apple.png"
    assert main(["generate", "a red apple", "--out", str(path), "--quiet"]) == 0
    assert Image.open(path).size == (64, 64)


def test_cli_eval_on_demo(tmp_path, capsys):
    table, grid = tmp_path / "t.md", tmp_path / "g.png"
    assert main(["eval", "--model", "demo", "a red apple", "--seeds", "0-1", "--schedules", "0.5,1|1",
                 "--markdown", str(table), "--grid", str(grid), "--quiet"]) == 0
    text = table.read_text()
    assert "none (baseline)" in text and "| 0.5,1 |" in text
    assert Image.open(grid).width == 3 * 128  # 64x64 tiles enlarged x2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA (CI)")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(FastVARError, match="sees no CUDA GPU"):
        load_pipeline("demo", device="cuda")
    with pytest.raises(FastVARError, match="bad device"):
        load_pipeline("demo", device="gpu0")
    assert main(["generate", "a red apple", "--device", "cuda", "--quiet"]) == 2


def test_demo_rejects_paths():
    with pytest.raises(FastVARError, match="takes no"):
        load_pipeline("demo", vae="vae.pth")
    assert main(["generate", "--model", "demo", "--vae", "x.pth", "a red apple"]) == 2


def test_training_path_matches_inference_forward():
    """teacher_forced_logits (autograd on) equals the inference forward; the VAE and bit losses backpropagate."""
    torch.manual_seed(0)
    vae = InfinityVAE(train.VAE_CFG)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    loss, _ = train.vae_loss(vae, img)
    loss.backward()
    assert vae.encoder.conv_in.conv.weight.grad.abs().sum() > 0  # straight-through quantiser passes gradients
    vae.eval().requires_grad_(False)
    x, y = train.encode_dataset(vae, img)
    assert x.shape == (2, 520, 16) and y.shape == (2, 521, 16)
    model, text_enc = Infinity(train.INFINITY_CFG, vae), ByteTextEncoder(ByteTextConfig())
    train.init_transformer(model, (model.cfg_uncond, model.pos_start))
    text = text_enc(["a red apple", "a banana"])
    logits = model.teacher_forced_logits(text, x, train.SCALES, train.ROPE_GRID)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 2), y.reshape(-1).long()).backward()
    assert model.head.weight.grad is not None and text_enc.tok_embed.weight.grad.abs().sum() > 0
    with torch.no_grad():
        text = text_enc(["a red apple", "a banana"])
    np.testing.assert_array_equal(model(text, x, train.SCALES, train.ROPE_GRID).numpy(), logits.detach().numpy())


def test_var_training_path_and_export_load(tmp_path):
    """The class-conditional VAR trainer (fastvar.demo.train_var): the VQ-VAE losses reach encoder, codebook and phis;
    the teacher-forced transformer is differentiable and equals the inference forward; an exported run loads strictly
    through load_pipeline("var") and generates 64x64 images."""
    from fastvar.backbones.var.model import VAR
    from fastvar.backbones.var.vqvae import VQVAE
    from fastvar.demo import train_var

    torch.manual_seed(0)
    vae = VQVAE(train_var.VAE_CFG)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    loss, _, idx, f = train_var.vqvae_loss(vae, img)
    loss.backward()
    assert f.shape == (2, 16, 16, 16) and [i.shape[1] for i in idx] == [p * p for p in train_var.PATCHES]
    for p in (vae.encoder.conv_in.weight, vae.quantize.embedding.weight, vae.quantize.quant_resi.qresi_ls[0].weight):
        assert p.grad.abs().sum() > 0
    unused = torch.zeros(train_var.VAE_CFG.vocab_size, dtype=torch.bool)
    unused[[3, 7]] = True
    codebook = vae.quantize.embedding.weight.detach().clone()
    train_var.restart_codes(codebook, unused, f, torch.Generator().manual_seed(0))
    vectors = f.permute(0, 2, 3, 1).reshape(-1, 16)
    assert torch.equal(codebook[~unused], vae.quantize.embedding.weight[~unused])
    assert all((vectors == codebook[i]).all(-1).any() for i in (3, 7))  # each restarted code is a latent vector

    w = train_var.token_weights()
    assert w.shape == (680,) and torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.isclose(w[0], torch.tensor(0.5 / 680 + 0.5 / 10))  # the 1x1 step alone: half of 1/10 + its share

    vae.eval().requires_grad_(False)
    x, y = train_var.encode_dataset(vae, img)
    assert x.shape == (4, 679, 16) and y.shape == (4, 680)  # every image and its mirror
    model = VAR(train_var.var_config(num_classes=3), vae)
    train_var.init_transformer(model, (model.pos_start, model.pos_1LC))
    labels = torch.tensor([0, 3, 1, 2])  # 3 = the unconditional class (a dropped condition)
    logits = model(labels, x)
    torch.nn.functional.cross_entropy(logits.transpose(1, 2), y).backward()
    assert model.class_emb.weight.grad[3].abs().sum() > 0 and model.blocks[0].attn.mat_qkv.weight.grad is not None
    with torch.no_grad():
        np.testing.assert_array_equal(model(labels, x).numpy(), logits.detach().numpy())

    run, dest = tmp_path / "run", tmp_path / "model"
    run.mkdir()
    train._save(run / "vae_ckpt.pt", model=vae.state_dict(), step=1)
    train._save(run / "transformer_ckpt.pt", model=model.state_dict(), step=1)
    names = ["red apple", "pear", "banana"]
    train_var.export(run, dest, EmojiSet(img[:0], [], names), {"seed": 0})
    pipe = load_pipeline("var", config=str(dest / "config.json"), vae=str(dest / "vae.safetensors"),
                         transformer=str(dest / "var.safetensors"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[0, 2], seed=0, top_k=0, top_p=0.0, output_type="pt", pruning="0.5,1")
    assert out.images.shape == (2, 3, 64, 64) and out.stats["skipped_steps"] == [9]
    assert pipe.spec.image_size == 64


def test_bench_reports_the_demo_image_size(tmp_path):
    assert main(["bench", "a red apple", "--warmup", "0", "--repeats", "1", "--quiet"]) == 2  # prompts: not used
    assert main(["bench", "--resolution", "256", "--quiet"]) == 2  # --resolutions is bench's
    assert main(["bench", "--resolutions", "big", "--quiet"]) == 2
    out = tmp_path / "bench.json"
    assert main(["bench", "--warmup", "0", "--repeats", "1", "--quiet", "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    # the 0.06M schedule 1, 2, 4, 6, 8, 12, 16 (521 tokens); patch 4 -> 64 px images
    assert result["label"].startswith("64px") and result["tokens_forwarded"] == 521
    assert result["weights_mb"]["text_encoder"] > 0  # the demo's byte-level encoder is counted


def test_out_of_cpu_memory_is_a_clear_error(monkeypatch, capsys):
    def generate(args):
        torch.empty(2**62, dtype=torch.uint8)  # a real failed allocation: more than any machine has

    monkeypatch.setattr("fastvar.cli.cmd_generate", generate)
    assert main(["generate", "a red apple"]) == 3
    assert "out of CPU memory" in capsys.readouterr().err


def test_cli_generates_in_batches_each_with_its_seed(tmp_path):
    """--batch-size 2 on three prompts: two calls, the second with seed + 1, numbered files across them."""
    out = tmp_path / "x.png"
    assert main(["generate", "a red apple", "a banana", "pizza", "--batch-size", "2", "--seed", "5", "--quiet",
                 "--out", str(out), "--stats", str(tmp_path / "stats.json")]) == 0
    assert len(json.loads((tmp_path / "stats.json").read_text())["batches"]) == 2
    pipe = load_pipeline("demo")
    pipe.set_progress_bar_config(disable=True)
    first, second = pipe(["a red apple", "a banana"], seed=5).images, pipe(["pizza"], seed=6).images
    for i, image in enumerate(first + second):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"x_{i}.png")), np.asarray(image))
    assert main(["generate", "a red apple", "--batch-size", "0", "--out", str(out)]) == 2


def test_cli_eval_in_batches_keeps_baseline_and_variant_paired(tmp_path):
    table = tmp_path / "eval.json"
    assert main(["eval", "a red apple", "a banana", "pizza", "--seeds", "0-1", "--schedules", "none|0.5,1",
                 "--batch-size", "2", "--quiet", "--json", str(table)]) == 0
    baseline, same, pruned = json.loads(table.read_text())["rows"]
    assert baseline["runs"] == same["runs"] == pruned["runs"] == 6  # 3 prompts x 2 seeds, in 2 calls per seed
    assert same["identical_images"] == 6  # each image met its own baseline: same batch, same seed
    assert pruned["identical_images"] == 0 and pruned["psnr_db_mean"] < 40


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["generate", "a red apple", "--quiet", "--out", str(blocker / "apple.png")]) == 2
    assert main(["generate", "a red apple", "--quiet", "--save-steps", str(blocker / "steps"),
                 "--out", str(tmp_path / "apple.png")]) == 2
    assert capsys.readouterr().err.count("fastvar: error:") == 2


def test_cli_eval_makes_one_call_per_image_by_default(monkeypatch, tmp_path):
    from fastvar.demo.pipeline import DemoPipeline

    batches = []
    call = DemoPipeline.__call__

    def counting(self, prompts=None, **kwargs):
        batches.append(len(prompts))
        return call(self, prompts, **kwargs)

    monkeypatch.setattr(DemoPipeline, "__call__", counting)
    assert main(["eval", "a red apple", "a banana", "pizza", "--seeds", "0", "--schedules", "1", "--quiet"]) == 0
    assert batches == [1] * 6  # 3 images x (baseline + 1 schedule)
    batches.clear()
    assert main(["eval", "a red apple", "a banana", "pizza", "--seeds", "0", "--schedules", "1", "--batch-size", "2",
                 "--quiet"]) == 0
    assert batches == [2, 2, 1, 1]
    assert main(["eval", "a red apple", "--schedules", "1", "--grid-rows", "2"]) == 2  # no --grid to size
    assert main(["eval", "a red apple", "--schedules", "1", "--seeds", "5-2"]) == 2  # an empty range
    assert main(["eval", "a red apple", "--schedules", " | "]) == 2  # no schedule at all
