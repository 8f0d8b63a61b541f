"""Weight-only int8 (``quantize="int8"``): hand-computed rounding, what is and is not quantized on the official
checkpoint layouts, and how far the trained demo model's predictions move."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastvar import load_pipeline
from fastvar.cli import main
from fastvar.core.quantize import Int8Linear
from fastvar.demo import train
from fastvar.errors import FastVARError


def test_rows_round_to_nearest_on_their_own_scale():
    layer = nn.Linear(3, 3)
    with torch.no_grad():  # row maxima 127, 0, 254: scales 1, (zero row), 2 -- every product exact in float32
        layer.weight.copy_(torch.tensor([[127.0, -63.5, 0.25], [0.0, 0.0, 0.0], [-254.0, 100.4, 3.0]]))
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    q = Int8Linear.from_linear(layer, "cpu")
    assert q.qweight.dtype == torch.int8
    assert q.qweight.tolist() == [[127, -64, 0], [0, 0, 0], [-127, 50, 2]]  # -63.5 and 1.5: halves to even
    assert q.scale[0] == 1 and q.scale[2] == 2
    expanded = torch.tensor([[127.0, -64.0, 0.0], [0.0, 0.0, 0.0], [-254.0, 100.0, 4.0]])
    assert torch.equal(q.weight, expanded)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q(x), F.linear(x, expanded, layer.bias))


def test_error_is_at_most_half_a_step_per_row():
    layer = nn.Linear(64, 32)
    before = layer.weight.detach().clone()
    q = Int8Linear.from_linear(layer, "cpu")
    assert torch.equal(layer.weight, before)  # the source layer (a checkpoint's tensor) is left as it was
    step = before.abs().amax(dim=1, keepdim=True) / 127
    assert ((q.weight - before).abs() <= step / 2 * (1 + 1e-5)).all()


def test_only_block_linears_are_int8_and_the_rest_is_the_checkpoint(golden_infinity):
    root = golden_infinity.root
    args = dict(vae=root / "vae.pth", transformer=root / "infinity.pth", config=root / "config.json",
                dtype=torch.bfloat16)
    plain, int8 = load_pipeline("infinity", **args), load_pipeline("infinity", quantize="int8", **args)
    quantized = {n for n, m in int8.model.named_modules() if isinstance(m, Int8Linear)}
    block_linears = {n for n, m in plain.model.named_modules()
                     if type(m) is nn.Linear and n.startswith(("blocks.", "block_chunks."))}
    assert quantized == block_linears and quantized
    q_params = dict(int8.model.named_parameters())
    for name, param in plain.model.named_parameters():
        layer = name.rpartition(".")[0]
        if layer in quantized and name.endswith(".weight"):
            assert q_params[f"{layer}.qweight"].dtype == torch.int8
            assert q_params[f"{layer}.scale"].dtype == torch.bfloat16  # the blocks' dtype
        else:  # biases, norms, AdaLN, embeddings, head: untouched
            assert torch.equal(q_params[name], param), name
    sd = torch.load(root / "infinity.pth", map_location="cpu", weights_only=True)
    for layer in quantized:  # rounded from the checkpoint's float32 values, not from their bfloat16 rounding
        weight, module = sd[f"{layer}.weight"], int8.model.get_submodule(layer)
        step = weight.abs().amax(dim=1, keepdim=True) / 127
        assert torch.equal(module.qweight, (weight / step).round().to(torch.int8)), layer
        assert torch.equal(module.scale, step.squeeze(1).to(torch.bfloat16)), layer


def test_var_and_hart_quantize_their_blocks(golden_var, golden_hart):
    var = load_pipeline("var", vae=golden_var.root / "vae.pth", transformer=golden_var.root / "var.pth",
                        config=golden_var.root / "config.json", quantize="int8")
    hart = load_pipeline("hart", vae=golden_hart.root / "tokenizer", transformer=golden_hart.root / "llm",
                         quantize="int8")
    for pipe in (var, hart):
        pipe.set_progress_bar_config(disable=True)
        names = [n for n, m in pipe.model.named_modules() if isinstance(m, Int8Linear)]
        assert names and all(n.startswith("blocks.") for n in names)
        assert isinstance(pipe.model.head, nn.Linear) and not isinstance(pipe.model.head, Int8Linear)
    assert var(class_labels=[1, 2], seed=0, output_type="pt").images.shape == (2, 3, 112, 112)
    out = hart(prompt_embeds=golden_hart["inputs.context"], seed=0, scale_schedule=[1, 2], output_type="pt")
    assert torch.isfinite(out.images).all()


def test_trained_demo_predicts_the_same_bits_teacher_forced():
    """On the trained demo model, int8 blocks move the teacher-forced logits by about 1 % (RMS) and keep 99.5 % of
    the bit decisions (sampled images can still drift: one changed early bit changes what follows)."""
    full, int8 = load_pipeline("demo"), load_pipeline("demo", quantize="int8")
    full.set_progress_bar_config(disable=True)
    prompts = ["a red apple", "a banana", "pizza", "a cherry"]
    out = full(prompts, seed=0, output_type="pt", return_tokens=True)
    x = full.vae.teacher_forcing_input(out.tokens, train.SCALES)
    with torch.no_grad():
        text = full.text_encoder(prompts)
    ref = full.model(text, x, train.SCALES, train.ROPE_GRID)
    got = int8.model(text, x, train.SCALES, train.ROPE_GRID)
    assert (ref - got).square().mean().sqrt() < 0.03 * ref.square().mean().sqrt()
    bits = lambda logits: logits.unflatten(-1, (-1, 2)).argmax(-1)  # noqa: E731
    assert (bits(ref) == bits(got)).float().mean() > 0.995
    weights = lambda pipe: sum(p.nbytes for b in pipe.model.blocks for p in b.parameters())  # noqa: E731
    assert weights(int8) < 0.3 * weights(full)  # float32 -> int8 (+ scales and biases)


def test_unknown_quantization_is_an_error():
    with pytest.raises(FastVARError, match="unknown quantization 'int4'"):
        load_pipeline("demo", quantize="int4")


def test_cli_eval_compares_int8_against_the_full_precision_baseline(tmp_path):
    table = tmp_path / "eval.json"
    assert main(["eval", "--model", "demo", "a red apple", "--seeds", "0", "--schedules", "none", "--quantize",
                 "int8", "--quiet", "--json", str(table)]) == 0
    baseline, int8 = json.loads(table.read_text())["rows"]
    assert int8["schedule"] == "none" and int8["tokens_forwarded"] == baseline["tokens_forwarded"]
    assert 30 < int8["psnr_db_mean"] < float("inf")  # close to, but not equal to, the float32 image
    bench = tmp_path / "bench.json"
    assert main(["bench", "--quantize", "int8", "--warmup", "0", "--repeats", "1", "--quiet", "--out", str(bench)]) == 0
    report = json.loads(bench.read_text())
    assert report["quantize"] == "int8"
    plain = tmp_path / "plain.json"
    assert main(["bench", "--warmup", "0", "--repeats", "1", "--quiet", "--out", str(plain)]) == 0
    work = [json.loads(f.read_text())["results"][0]["transformer_tflop"] for f in (bench, plain)]
    assert work[0] == work[1] > 0  # int8 weights do the same multiply-adds
    assert report["results"][0]["weights_mb"]["transformer"] < 10  # 16.1 MB of float32 transformer weights


def test_info_predicts_the_loaded_weights(golden_var, golden_infinity, golden_hart):
    """``fastvar info``'s bytes per dtype choice, from the checkpoint alone, equal what each loaded model holds."""
    from fastvar.info import describe

    cases = [("var", golden_var.root / "var.pth", dict(vae=golden_var.root / "vae.pth",
                                                       config=golden_var.root / "config.json")),
             ("infinity", golden_infinity.root / "infinity.pth", dict(vae=golden_infinity.root / "vae.pth",
                                                                     config=golden_infinity.root / "config.json")),
             ("hart", golden_hart.root / "llm", dict(vae=golden_hart.root / "tokenizer"))]
    for backbone, transformer, kwargs in cases:
        predicted = describe(transformer)["device_weights_bytes"]
        for label, dtype, quantize in (("float32", torch.float32, None), ("bfloat16", torch.bfloat16, None),
                                       ("bfloat16 + int8 blocks", torch.bfloat16, "int8")):
            pipe = load_pipeline(backbone, transformer=transformer, dtype=dtype, quantize=quantize, **kwargs)
            assert predicted[label] == sum(p.nbytes for p in pipe.model.parameters()), (backbone, label)
