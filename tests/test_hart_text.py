"""HART's Qwen2 text path end to end on CPU: a tiny random Qwen2 and a byte-level BPE tokenizer built here (no
download), checked against the official ``encode_prompts`` steps written out, then fed to the golden HART model."""
from __future__ import annotations

import pytest
import torch

from fastvar import load_pipeline
from fastvar.backbones.hart.text import (
    SYSTEM_PROMPT,
    Qwen2TextEncoder,
    context_position_ids,
)
from fastvar.errors import FastVARError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CONTEXT = 16  # the golden transformer's context_token
PROMPTS = ["a cat", "a cat sleeping"]  # 3 and 12 byte-level tokens: right-padded to 16


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE (every byte is a token, a few merges); pad = eos = <|endoftext|> as in Qwen2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [("c", "a"), ("ca", "t"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t"), ("Ġ", "a")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny random Qwen2 (hidden size 48 = the golden context_dim) with its tokenizer, as a local folder."""
    folder = tmp_path_factory.mktemp("qwen2")
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(folder)
    config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def official_encode_prompts(folder, prompts, max_length):
    """``hart.utils.encode_prompts(..., use_llm_system_prompt=True)`` step by step with the HF objects."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()

    def tokenize_fn(strings, padding_mode):
        return [tokenizer(t, return_tensors="pt", padding=padding_mode, max_length=max_length,
                          truncation=True).input_ids[0] for t in strings]

    context_tokens = torch.stack(tokenize_fn(prompts, "max_length"))
    context_mask = context_tokens != tokenizer.pad_token_id
    system = tokenize_fn([SYSTEM_PROMPT], "longest")[0].unsqueeze(0).repeat(context_tokens.shape[0], 1)
    system_mask = torch.ones_like(context_mask)[:, : system.shape[1]]
    with torch.no_grad():
        hidden = model(torch.cat([system, context_tokens], dim=1),
                       attention_mask=torch.cat([system_mask, context_mask], dim=1),
                       output_hidden_states=True).hidden_states[-1][:, system.shape[1]:]
    return context_mask, torch.cumsum(context_mask, dim=1) - 1, hidden.float()


def test_encoder_matches_official_encode_prompts(qwen_dir):
    encoder = Qwen2TextEncoder(qwen_dir)
    features, mask = encoder(PROMPTS, CONTEXT)
    ref_mask, ref_positions, ref_features = official_encode_prompts(qwen_dir, PROMPTS, CONTEXT)
    assert features.shape == (2, CONTEXT, 48) and features.dtype == torch.float32
    assert mask.dtype == torch.bool and torch.equal(mask, ref_mask)
    assert torch.equal(context_position_ids(mask), ref_positions)
    assert mask.sum(1).tolist() == [3, 12] and not mask[:, -1].any()  # right padding, rows of different lengths
    torch.testing.assert_close(features, ref_features, atol=1e-6, rtol=1e-6)
    assert not torch.equal(features, Qwen2TextEncoder(qwen_dir, system_prompt=None)(PROMPTS, CONTEXT)[0])


def test_long_prompt_is_truncated_with_a_warning(qwen_dir):
    encoder = Qwen2TextEncoder(qwen_dir)
    with pytest.warns(UserWarning, match="keeps the first 16"):
        features, mask = encoder(["a very long prompt " * 10], CONTEXT)
    assert features.shape == (1, CONTEXT, 48) and bool(mask.all())


def test_pipeline_prompts_equal_prompt_embeds(qwen_dir, golden_hart):
    root = golden_hart.root
    pipe = load_pipeline("hart", vae=root / "tokenizer", transformer=root / "llm", text_encoder=qwen_dir)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"seed": 5, "cfg": 3.0, "output_type": "pt", "return_tokens": True}
    out = pipe(prompts=PROMPTS, **kwargs)
    features, mask = pipe.text_encoder(PROMPTS, CONTEXT)
    ref = pipe(prompt_embeds=features, prompt_attention_mask=mask, **kwargs)
    assert out.images.shape == (2, 3, 96, 96)
    assert torch.equal(out.images, ref.images)
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, ref.tokens))
    with pytest.raises(FastVARError, match="prompt_embeds"):
        pipe(prompts=PROMPTS, prompt_embeds=features)


def test_text_encoder_errors(qwen_dir, golden_hart, tmp_path):
    root = golden_hart.root
    with pytest.raises(FastVARError, match="folder not found"):
        Qwen2TextEncoder(tmp_path / "missing")
    with pytest.raises(FastVARError, match="cannot load a Qwen2"):
        Qwen2TextEncoder(tmp_path)
    encoder = Qwen2TextEncoder(qwen_dir)
    with pytest.raises(FastVARError, match="list of strings"):
        encoder("a cat", CONTEXT)
    small = tmp_path / "qwen_small"
    make_tokenizer().save_pretrained(small)
    config = transformers.Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.Qwen2ForCausalLM(config).save_pretrained(small)
    with pytest.raises(FastVARError, match="hidden size 32.*context_dim 48"):
        load_pipeline("hart", vae=root / "tokenizer", transformer=root / "llm", text_encoder=small)


def test_cli_generates_from_the_release_folders_and_a_qwen2_folder(qwen_dir, golden_hart, tmp_path):
    from fastvar.cli import main

    r = golden_hart.root
    out = tmp_path / "cat.png"
    assert main(["generate", "--model", "hart", "--vae", str(r / "tokenizer"), "--transformer", str(r / "llm"),
                 "--text-encoder", str(qwen_dir), "a cat", "--seed", "1", "--pruning", "hart-paper",
                 "--out", str(out), "--quiet"]) == 0
    assert out.exists()


def test_weights_load_in_float32_like_the_official_sample(qwen_dir, tmp_path):
    """The release stores Qwen2-VL in bfloat16; the official sample.py loads float32 weights (transformers 4.x's
    default; it runs them under float16 autocast on CUDA). So does the encoder, whatever transformers defaults to."""
    transformers.AutoModel.from_pretrained(str(qwen_dir), torch_dtype=torch.bfloat16).save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    encoder = Qwen2TextEncoder(tmp_path)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.float32}
    half = Qwen2TextEncoder(tmp_path, dtype=torch.float16)
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}
