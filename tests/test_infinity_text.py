"""Infinity's T5 text path end to end on CPU: a tiny random T5 encoder and a word-level tokenizer written to a
folder (no download), loaded like the official Flan-T5, encoded with the official packing, then generation."""
from __future__ import annotations

import pytest
import torch

from fastvar import FastVARError, load_pipeline
from fastvar.backbones.infinity.text import TEXT_MAXLEN, T5TextEncoder, TextCondition, as_text_condition

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = "a cat dog sits on the red mat under blue sky".split()


def make_t5_folder(folder, d_model: int):
    """A T5 encoder (random, seeded) + tokenizer that appends </s> like T5's, saved as a local model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return make_t5_folder(tmp_path_factory.mktemp("t5"), d_model=128)  # = the golden model's text_channels


def test_encoder_packs_unpadded_features(t5_folder):
    encoder = T5TextEncoder(t5_folder)
    prompts = ["a cat sits on the mat", "a dog", "zebra under the blue sky"]
    text = encoder(prompts)
    assert text.lens == [7, 3, 6]  # words (unknown ones too) + </s>
    assert text.features.shape == (16, 128) and text.features.dtype == torch.float32
    assert text.cu_seqlens.tolist() == [0, 7, 10, 16]
    assert encoder.tokenizer.model_max_length == TEXT_MAXLEN
    start = 0
    for prompt, n in zip(prompts, text.lens):  # padding to 512 with the mask changes nothing in the first len_i rows
        ids = encoder.tokenizer(prompt, return_tensors="pt").input_ids
        alone = encoder.model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(text.features[start:start + n], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_text_condition_forms():
    padded = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    text = TextCondition.from_padded(padded, mask)
    assert text.lens == [2, 4] and torch.equal(text.features, torch.cat((padded[0, :2], padded[1])))
    listed = as_text_condition([padded[0, :2], padded[1]])
    assert listed.lens == text.lens and torch.equal(listed.features, text.features)
    assert as_text_condition(padded).lens == [4, 4]
    assert text.repeat(2).lens == [2, 4, 2, 4]
    with pytest.raises(FastVARError):
        TextCondition(torch.zeros(5, 8), [2, 2])
    with pytest.raises(FastVARError):
        as_text_condition("a cat")


def test_prompts_generate_like_their_embeddings(golden_infinity, t5_folder):
    root = golden_infinity.root
    pipe = load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                         config=root / "config.json", text_encoder=t5_folder)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red cat on the mat", "a blue dog under the sky"]
    args = dict(resolution=256, seed=1, cfg=4.0, tau=0.5, output_type="pt", return_tokens=True)
    out = pipe(prompts, **args)
    assert out.images.shape == (2, 3, 256, 256)
    embeds = pipe(prompt_embeds=pipe.text_encoder(prompts), **args)
    assert torch.equal(out.images, embeds.images) and all(map(torch.equal, out.tokens, embeds.tokens))
    negative = pipe(prompts, negative_prompt="blurry", **args)  # one negative prompt for the whole batch
    assert negative.images.shape == out.images.shape and not torch.equal(negative.images, out.images)
    pil = pipe("a cat", resolution=256, seed=1)
    assert len(pil.images) == 1 and pil.images[0].size == (256, 256)
    with pytest.raises(FastVARError, match="exactly one"):
        pipe(prompts, prompt_embeds=pipe.text_encoder(prompts), resolution=256)


def test_encoder_width_must_match(golden_infinity, tmp_path):
    root = golden_infinity.root
    with pytest.raises(FastVARError, match="channels"):
        load_pipeline("infinity", vae=root / "vae.pth", transformer=root / "infinity.pth",
                      config=root / "config.json", text_encoder=make_t5_folder(tmp_path, d_model=64))
    with pytest.raises(FastVARError, match="not found"):
        T5TextEncoder(tmp_path / "missing")


def test_long_prompt_is_truncated_with_a_warning(t5_folder):
    encoder = T5TextEncoder(t5_folder, device="cpu")
    with pytest.warns(UserWarning, match="truncated"):
        cond = encoder(["a " * 600, "red cat"])
    assert cond.lens == [TEXT_MAXLEN, 3]


def test_text_encoder_device_option(golden_infinity, golden_var, t5_folder):
    root = golden_infinity.root
    files = dict(vae=root / "vae.pth", transformer=root / "infinity.pth", config=root / "config.json")
    pipe = load_pipeline("infinity", **files, text_encoder=t5_folder, text_encoder_device="cpu")
    assert pipe.text_encoder.device == torch.device("cpu")
    with pytest.raises(FastVARError, match="needs a text_encoder"):
        load_pipeline("infinity", **files, text_encoder_device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FastVARError, match="sees no CUDA GPU"):
            load_pipeline("infinity", **files, text_encoder=t5_folder, text_encoder_device="cuda")
    with pytest.raises(FastVARError, match="takes no checkpoint paths"):
        load_pipeline("infinity", config=root / "config.json", random_weights=True, text_encoder=t5_folder)
    r = golden_var.root
    with pytest.raises(FastVARError, match="class-conditional"):
        load_pipeline("var", vae=r / "vae.pth", transformer=r / "var.pth", config=r / "config.json",
                      text_encoder=t5_folder)
    from fastvar.cli import main

    assert main(["generate", "--model", "infinity", "--config", str(root / "config.json"), "--vae",
                 str(root / "vae.pth"), "--transformer", str(root / "infinity.pth"), "--text-encoder-device", "cpu",
                 "a cat"]) == 2


def test_float16_keeps_the_feed_forward_output_in_float32_like_the_official_loader(t5_folder):
    """As the official ``T5EncoderModel.from_pretrained(t5_path, torch_dtype=torch.float16)`` (the CUDA default):
    float16 weights except the ``wo`` projections, which transformers keeps in float32 (T5 overflows float16 there);
    casting the loaded model to float16 afterwards would not."""
    from transformers import T5EncoderModel

    encoder = T5TextEncoder(t5_folder, dtype=torch.float16)
    official = T5EncoderModel.from_pretrained(str(t5_folder), torch_dtype=torch.float16)
    ours, theirs = dict(encoder.model.named_parameters()), dict(official.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(ours[n].dtype == theirs[n].dtype and torch.equal(ours[n], theirs[n]) for n in ours)
    assert {p.dtype for n, p in ours.items() if ".wo." in n} == {torch.float32}
    assert ours["encoder.block.0.layer.1.DenseReluDense.wi.weight"].dtype == torch.float16
